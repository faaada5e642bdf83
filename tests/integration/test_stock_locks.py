"""How transactions lock the rows orders of one SKU contend for (the stock rows and their
inventory read-model rows), on the real PostgreSQL: always in (sku, warehouse) order, and the
rows shipping and the read model move only for the commit. A transaction that broke either
rule deadlocked against a reservation (86 deadlocks in one run of the pipeline benchmark,
whose orders share six SKUs). And the locks a saga step takes as it reads what it is about to
change (an order's row, an order's reservation), holding them to the commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.tables import orders, reservations, rm_inventory_levels, stock
from orderly.domain.inventory import Pick
from orderly.services.saga_ports import NewOrderEvent, ReservedLine, Shipment
from tests.conftest import Backend, place_order

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@asynccontextmanager
async def holding(
    backend: Backend, table: sa.Table, sku: str, warehouse: str
) -> AsyncIterator[None]:
    """A transaction holding one row of ``table`` locked."""
    async with backend.container.engine.connect() as conn, conn.begin():
        await conn.execute(
            sa.select(table.c.sku)
            .where(table.c.sku == sku, table.c.warehouse_id == warehouse)
            .with_for_update()
        )
        yield


async def can_lock(backend: Backend, table: sa.Table, sku: str, warehouse: str) -> bool:
    """Whether a third transaction gets the row at once (no other transaction holds it)."""
    return await can_lock_where(
        backend, table, table.c.sku == sku, table.c.warehouse_id == warehouse
    )


async def can_lock_where(backend: Backend, table: sa.Table, *where: sa.ColumnElement[bool]) -> bool:
    """Whether a transaction gets the rows of ``table`` matching ``where`` at once."""
    async with backend.container.engine.connect() as conn, conn.begin():
        await conn.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
        try:
            await conn.execute(
                sa.select(*table.primary_key.columns).where(*where).with_for_update()
            )
        except sa.exc.DBAPIError as exc:
            if "lock timeout" in str(exc):
                return False
            raise
        return True


async def stock_rows(backend: Backend, *keys: tuple[str, str]) -> dict[str, tuple[int, int]]:
    """(on hand, reserved) of the given (sku, warehouse) rows, by SKU."""
    async with backend.container.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(stock).where(sa.tuple_(stock.c.sku, stock.c.warehouse_id).in_(keys))
        )
        return {r.sku: (r.on_hand, r.reserved) for r in rows}


async def reserved(backend: Backend, order_id: str, picks: list[Pick]) -> None:
    """A committed reservation of ``picks`` for ``order_id``."""
    async with SqlUnitOfWork(backend.container.engine) as uow:
        await uow.reservations.open(order_id, NOW + timedelta(minutes=15), NOW)
        assert await uow.reservations.reserve(order_id, picks, NOW)
        await uow.commit()


async def reservation_status(uow: SqlUnitOfWork, order_id: str) -> str | None:
    return await uow.reservations._lock_header(order_id)


async def test_a_reservation_locks_its_stock_rows_in_key_order(backend: Backend) -> None:
    """Picks given as (PROD-005, PROD-003): while PROD-003 is held elsewhere, the reservation
    waits for it holding nothing, so PROD-005 stays free (taken first, it would close a
    deadlock cycle with anyone holding PROD-005 and waiting for PROD-003)."""
    engine = backend.container.engine
    picks = [Pick("PROD-005", "WH-AUS", 1), Pick("PROD-003", "WH-AUS", 1)]
    rows = (("PROD-005", "WH-AUS"), ("PROD-003", "WH-AUS"))
    before = await stock_rows(backend, *rows)

    async def reserve() -> bool:
        async with SqlUnitOfWork(engine) as uow:
            await uow.reservations.open("order-sorted", NOW + timedelta(minutes=15), NOW)
            done = await uow.reservations.reserve("order-sorted", picks, NOW)
            await uow.commit()
            return done

    async with holding(backend, stock, "PROD-003", "WH-AUS"):
        task = asyncio.create_task(reserve())
        await asyncio.sleep(0.3)
        assert not task.done()  # waiting for PROD-003
        assert await can_lock(backend, stock, "PROD-005", "WH-AUS")
    assert await task
    after = await stock_rows(backend, *rows)
    assert after["PROD-005"][1] == before["PROD-005"][1] + 1
    assert after["PROD-003"][1] == before["PROD-003"][1] + 1


async def test_shipping_holds_the_stock_rows_only_for_the_commit(backend: Backend) -> None:
    engine = backend.container.engine
    picks = [Pick("PROD-003", "WH-AUS", 2), Pick("PROD-005", "WH-NYC", 1)]
    await reserved(backend, "order-ship", picks)
    shipping = (("PROD-003", "WH-AUS"), ("PROD-005", "WH-NYC"))
    before = await stock_rows(backend, *shipping)

    async with SqlUnitOfWork(engine) as uow:
        shipped = await uow.reservations.ship("order-ship", "WH-AUS", NOW)
        assert await reservation_status(uow, "order-ship") == "ACTIVE"  # WH-NYC still to ship
        shipped += await uow.reservations.ship("order-ship", "WH-NYC", NOW)
        assert await reservation_status(uow, "order-ship") == "SHIPPED"
        assert sorted((x.sku, x.quantity) for x in shipped) == [("PROD-003", 2), ("PROD-005", 1)]
        # Shipped, not yet committed: another order can still reserve these rows meanwhile.
        assert await can_lock(backend, stock, "PROD-003", "WH-AUS")
        assert await can_lock(backend, stock, "PROD-005", "WH-NYC")
        await uow.commit()

    after = await stock_rows(backend, *shipping)
    assert after["PROD-003"] == (before["PROD-003"][0] - 2, before["PROD-003"][1] - 2)
    assert after["PROD-005"] == (before["PROD-005"][0] - 1, before["PROD-005"][1] - 1)


async def level_reserved(backend: Backend) -> int | None:
    async with backend.container.engine.connect() as conn:
        return await conn.scalar(
            sa.select(rm_inventory_levels.c.reserved).where(
                rm_inventory_levels.c.sku == "PROD-001",
                rm_inventory_levels.c.warehouse_id == "WH-AUS",
            )
        )


async def test_inventory_levels_move_at_commit_summed(backend: Backend) -> None:
    engine = backend.container.engine
    entry = {
        "sku": "PROD-001",
        "warehouseId": "WH-AUS",
        "kind": "reserve",
        "onHandDelta": 0,
        "reservedDelta": 1,
    }
    async with SqlUnitOfWork(engine) as uow:  # the level row exists from here on
        await uow.read_models.apply_stock_entries([entry], NOW)
        await uow.commit()
    assert await level_reserved(backend) == 1
    async with SqlUnitOfWork(engine) as uow:
        await uow.read_models.apply_stock_entries([{**entry, "reservedDelta": 2}], NOW)
        await uow.read_models.apply_stock_entries([{**entry, "reservedDelta": 3}], NOW)
        assert await can_lock(backend, rm_inventory_levels, "PROD-001", "WH-AUS")
        await uow.commit()
    assert await level_reserved(backend) == 6


def a_shipment(order_id: str, warehouse: str, sku: str) -> Shipment:
    return Shipment(
        id=f"{order_id}:{warehouse}",
        order_id=order_id,
        warehouse_id=warehouse,
        status="REQUESTED",
        lines=(ReservedLine(sku, warehouse, 1),),
        value_minor=100,
        created_at=NOW,
        updated_at=NOW,
    )


async def test_shipments_read_before_the_reservation_lock_are_read_again_after_it(
    backend: Backend,
) -> None:
    """The warehouse's transactions of one order are ordered by its reservation's lock only:
    what one listed before taking it may have been shipped by another since. Listed again
    after the lock, the shipments must show it (else neither transaction sees every shipment
    shipped and the order never hears that it was)."""
    engine = backend.container.engine
    picks = [Pick("PROD-003", "WH-AUS", 1), Pick("PROD-005", "WH-NYC", 1)]
    async with SqlUnitOfWork(engine) as uow:
        await uow.reservations.open("order-two", NOW + timedelta(minutes=15), NOW)
        assert await uow.reservations.reserve("order-two", picks, NOW)
        await uow.shipments.create(
            [
                a_shipment("order-two", "WH-AUS", "PROD-003"),
                a_shipment("order-two", "WH-NYC", "PROD-005"),
            ]
        )
        await uow.commit()

    async with SqlUnitOfWork(engine) as first:
        listed = await first.shipments.for_order("order-two")
        assert [s.status for s in listed] == ["REQUESTED", "REQUESTED"]
        async with SqlUnitOfWork(engine) as second:  # the other warehouse, done meanwhile
            assert await second.reservations.ship("order-two", "WH-NYC", NOW)
            assert await second.shipments.move("order-two:WH-NYC", "REQUESTED", "SHIPPED", NOW)
            await second.commit()
        assert await first.reservations.ship("order-two", "WH-AUS", NOW)
        assert await first.shipments.move("order-two:WH-AUS", "REQUESTED", "SHIPPED", NOW)
        listed = await first.shipments.for_order("order-two")
        assert [(s.id, s.status) for s in listed] == [
            ("order-two:WH-AUS", "SHIPPED"),
            ("order-two:WH-NYC", "SHIPPED"),
        ]
        await first.commit()


async def test_lines_read_with_the_lock_hold_the_reservation_and_ship_from_what_was_read(
    backend: Backend,
) -> None:
    """The fulfil step reads the order's reserved lines with the reservation locked, so they
    cannot expire or be released under the shipments made of them; the warehouse, in the same
    transaction, ships from those lines, and what it settles is what later reads see."""
    engine = backend.container.engine
    picks = [Pick("PROD-003", "WH-AUS", 1), Pick("PROD-005", "WH-NYC", 2)]
    await reserved(backend, "order-held", picks)
    header = reservations.c.order_id == "order-held"
    assert await can_lock_where(backend, reservations, header)

    async with SqlUnitOfWork(engine) as uow:
        held = await uow.reservations.lines("order-held", "ACTIVE", lock=True)
        assert held == [
            ReservedLine("PROD-003", "WH-AUS", 1),
            ReservedLine("PROD-005", "WH-NYC", 2),
        ]
        assert not await can_lock_where(backend, reservations, header)
        assert await uow.reservations.ship("order-held", "WH-NYC", NOW) == [
            ReservedLine("PROD-005", "WH-NYC", 2)
        ]
        assert await uow.reservations.lines("order-held", "ACTIVE") == [
            ReservedLine("PROD-003", "WH-AUS", 1)
        ]
        assert await uow.reservations.lines("order-held", "SHIPPED") == [
            ReservedLine("PROD-005", "WH-NYC", 2)
        ]
        released = await uow.reservations.release("order-held", NOW)
        assert released == [ReservedLine("PROD-003", "WH-AUS", 1)]
        assert await uow.reservations.lines("order-held", "ACTIVE") == []
        await uow.commit()
    assert await can_lock_where(backend, reservations, header)

    async with SqlUnitOfWork(engine) as uow:  # a fresh read of what the commit wrote
        assert await uow.reservations.lines("order-held", "SHIPPED") == [
            ReservedLine("PROD-005", "WH-NYC", 2)
        ]
        assert await uow.reservations.lines("order-held", "RELEASED") == [
            ReservedLine("PROD-003", "WH-AUS", 1)
        ]


async def test_facts_read_with_the_lock_hold_the_order_row_and_appends_move_it_at_commit(
    backend: Backend, client: Any
) -> None:
    """The saga's start reads the order with its row locked (the first step appends to it in
    the same transaction): no other transaction can move the row meanwhile, the appends number
    their events from the version read, and the row moves once, at commit."""
    items = [{"sku": "PROD-001", "quantity": 1}]
    order_id = await place_order(client, backend, "k-locked-facts", items)
    row = orders.c.id == order_id
    version = sa.select(orders.c.version, orders.c.status).where(row)

    async with backend.container.message_uow() as uow:
        facts = await uow.order_stream.facts(order_id, lock=True)
        assert facts is not None
        assert (facts.version, facts.status) == (1, "PENDING")
        assert not await can_lock_where(backend, orders, row)
        first = await uow.order_stream.append(
            order_id, [NewOrderEvent("order.reserved", {}, status="RESERVED")], NOW, order_id, None
        )
        second = await uow.order_stream.append(
            order_id, [NewOrderEvent("order.noted", {})], NOW, order_id, None
        )
        assert [e["version"] for e in [*first, *second]] == [2, 3]
        async with backend.container.engine.connect() as conn:  # not moved before the commit
            assert (await conn.execute(version)).one() == (1, "PENDING")
        await uow.commit()
    assert await can_lock_where(backend, orders, row)
    async with backend.container.engine.connect() as conn:
        assert (await conn.execute(version)).one() == (3, "RESERVED")
