"""What the message unit of work keeps for its transaction and writes at commit, on SQLite and
the real PostgreSQL: sagas it holds, their log, order events and the order read models.

Several handlers may run in one transaction (hand-offs), so a saga is read once and written
once, an order's read-model rows are read once and upserted once. What must hold: a commit
writes exactly the last state, a rollback writes nothing, a reader inside the transaction sees
its own writes, and a save of a saga this transaction does not hold is still checked against
the stored version.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from orderly.adapters.db.tables import (
    idempotency_keys,
    order_events,
    orders,
    payment_operations,
    payments,
    reservation_lines,
    reservations,
    rm_order_history,
    saga_log,
    sagas,
    shipments,
    stock,
    stock_ledger,
)
from orderly.domain.inventory import Pick
from orderly.domain.saga import LogEntry, SagaState, SagaStatus, StepStatus
from orderly.services.saga_ports import (
    NewOrderEvent,
    PaymentOperation,
    PaymentRecord,
    ReservedLine,
    Shipment,
)
from tests.conftest import Backend, place_order

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def a_saga(saga_id: str) -> SagaState:
    return SagaState(
        id=saga_id,
        definition="toy",
        key=saga_id,
        status=SagaStatus.RUNNING,
        step=0,
        step_status=StepStatus.REQUESTED,
        done=(),
        data={"n": 0},
        deadline=None,
        reason=None,
        detail={},
        version=1,
        resends=0,
        created_at=T0,
        updated_at=T0,
    )


def moved(state: SagaState, n: int) -> SagaState:
    return replace(
        state, version=state.version + 1, data={"n": n}, updated_at=T0 + timedelta(seconds=n)
    )


async def stored(backend: Backend, query: Any) -> list[Any]:
    async with backend.container.engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def test_a_held_saga_is_written_once_with_its_last_state_at_commit(backend: Backend) -> None:
    first = a_saga("s-1")
    async with backend.container.message_uow() as uow:
        assert await uow.sagas.insert(first)
        second = moved(first, 1)
        assert await uow.sagas.save(second)
        assert await uow.sagas.load("s-1") == second
        third = moved(second, 2)
        assert await uow.sagas.save(third)
        await uow.sagas.log("s-1", [LogEntry("a", None), LogEntry("b", "step")], T0)
        await uow.sagas.log("s-1", [LogEntry("c", None, {"x": 1})], T0)
        await uow.commit()

    [row] = await stored(backend, sa.select(sagas.c.version, sagas.c.data))
    assert (row.version, row.data) == (3, {"n": 2})
    logged = await stored(
        backend, sa.select(saga_log.c.kind, saga_log.c.step, saga_log.c.detail).order_by("id")
    )
    assert [tuple(r) for r in logged] == [("a", None, {}), ("b", "step", {}), ("c", None, {"x": 1})]


async def test_a_rolled_back_transaction_writes_none_of_what_it_held(backend: Backend) -> None:
    async with backend.container.message_uow() as uow:
        assert await uow.sagas.insert(a_saga("s-1"))
        await uow.commit()
    async with backend.container.message_uow() as uow:
        loaded = await uow.sagas.load("s-1")
        assert loaded is not None
        assert await uow.sagas.save(moved(loaded, 1))
        await uow.sagas.log("s-1", [LogEntry("a", None)], T0)
        # no commit

    [row] = await stored(backend, sa.select(sagas.c.version))
    assert row.version == 1
    assert await stored(backend, sa.select(saga_log.c.id)) == []


async def test_a_save_of_a_saga_not_held_is_checked_against_the_stored_version(
    backend: Backend,
) -> None:
    state = a_saga("s-1")
    async with backend.container.message_uow() as uow:
        assert await uow.sagas.insert(state)
        await uow.commit()
    async with backend.container.message_uow() as uow:
        assert await uow.sagas.save(moved(state, 1))
        await uow.commit()
    async with backend.container.message_uow() as uow:
        assert not await uow.sagas.save(moved(state, 2)), "a stale save went through"
        await uow.commit()

    [row] = await stored(backend, sa.select(sagas.c.version, sagas.c.data))
    assert (row.version, row.data) == (2, {"n": 1})


async def test_order_events_appended_in_a_transaction_are_read_back_by_its_projection(
    backend: Backend, client: Any
) -> None:
    """The read model fills a gap from the stored stream; events this transaction appended
    are still in its buffer and must be written before that read."""
    order_id = await place_order(client, backend, "k-1", [{"sku": "PROD-001", "quantity": 1}])

    async with backend.container.message_uow() as uow:
        facts = await uow.order_stream.facts(order_id)
        assert facts is not None
        first = await uow.order_stream.append(
            order_id, [NewOrderEvent("order.reserved", {}, status="RESERVED")], T0, order_id, None
        )
        second = await uow.order_stream.append(
            order_id, [NewOrderEvent("order.noted", {"n": 1})], T0, order_id, None
        )
        # Only the second batch is offered: versions 1 (intake) and 2 must come from the stream.
        await uow.read_models.apply_order_events(order_id, "alice", facts.created_at, second)
        # A copy of the first batch changes nothing: the row is already past it.
        await uow.read_models.apply_order_events(order_id, "alice", facts.created_at, first)
        await uow.commit()

    versions = await stored(
        backend,
        sa.select(order_events.c.version, order_events.c.type)
        .where(order_events.c.order_id == order_id)
        .order_by(order_events.c.version),
    )
    assert [tuple(v) for v in versions] == [
        (1, "order.placed"),
        (2, "order.reserved"),
        (3, "order.noted"),
    ]
    [history] = await stored(
        backend,
        sa.select(rm_order_history.c.version, rm_order_history.c.status).where(
            rm_order_history.c.order_id == order_id
        ),
    )
    assert (history.version, history.status) == (3, "RESERVED")


async def test_ledger_entries_and_payment_operations_are_written_by_the_commit_only(
    backend: Backend, client: Any
) -> None:
    """Both logs are buffered until commit (on PostgreSQL they go in the commit's one
    statement): a commit writes each entry once, with the stock move it records; a rollback
    writes neither."""
    order_id = await place_order(client, backend, "k-logs", [{"sku": "PROD-003", "quantity": 1}])
    ledger = sa.select(stock_ledger.c.kind, stock_ledger.c.on_hand_delta).where(
        stock_ledger.c.order_id == order_id
    )
    operations = sa.select(payment_operations.c.kind, payment_operations.c.amount_minor).where(
        payment_operations.c.order_id == order_id
    )
    on_hand = sa.select(stock.c.on_hand).where(
        stock.c.sku == "PROD-003", stock.c.warehouse_id == "WH-NYC"
    )
    [(before,)] = await stored(backend, on_hand)

    for commit in (False, True):
        async with backend.container.message_uow() as uow:
            await uow.reservations.restock(order_id, [ReservedLine("PROD-003", "WH-NYC", 2)], T0)
            operation = PaymentOperation(
                order_id, "refund", f"k-{commit}", 500, True, "r", None, None
            )
            await uow.payments.record(operation, T0)
            if commit:
                await uow.commit()

    assert [tuple(r) for r in await stored(backend, ledger)] == [("restock", 2)]
    assert [tuple(r) for r in await stored(backend, operations)] == [("refund", 500)]
    assert await stored(backend, on_hand) == [(before + 2,)]


async def test_an_order_appended_to_twice_in_a_transaction_moves_its_row_at_commit(
    backend: Backend, client: Any
) -> None:
    """The first append moves the row (and locks it); the second numbers its events from the
    version the transaction holds and moves the row at commit: the row ends at the last
    version and the last status, the events are numbered without a gap, and a rollback leaves
    the row as it was."""
    order_id = await place_order(client, backend, "k-twice", [{"sku": "PROD-001", "quantity": 1}])
    row = sa.select(orders.c.version, orders.c.status, orders.c.failure_reason).where(
        orders.c.id == order_id
    )
    events = (
        sa.select(order_events.c.version, order_events.c.type)
        .where(order_events.c.order_id == order_id)
        .order_by(order_events.c.version)
    )

    for commit in (False, True):
        async with backend.container.message_uow() as uow:
            first = await uow.order_stream.append(
                order_id,
                [NewOrderEvent("order.reserved", {}, status="RESERVED")],
                T0,
                order_id,
                None,
            )
            second = await uow.order_stream.append(
                order_id,
                [
                    NewOrderEvent("order.noted", {"n": 1}),
                    NewOrderEvent(
                        "order.failed", {}, status="FAILED", failure_reason="OUT_OF_STOCK"
                    ),
                ],
                T0,
                order_id,
                None,
            )
            assert [e["version"] for e in [*first, *second]] == [2, 3, 4]
            facts = await uow.order_stream.facts(order_id)
            assert facts is not None
            assert (facts.version, facts.status, facts.failure_reason) == (
                4,
                "FAILED",
                "OUT_OF_STOCK",
            )
            if commit:
                await uow.commit()
        if not commit:
            assert [tuple(r) for r in await stored(backend, row)] == [(1, "PENDING", None)]
            assert [tuple(r) for r in await stored(backend, events)] == [(1, "order.placed")]

    assert [tuple(r) for r in await stored(backend, row)] == [(4, "FAILED", "OUT_OF_STOCK")]
    assert [tuple(r) for r in await stored(backend, events)] == [
        (1, "order.placed"),
        (2, "order.reserved"),
        (3, "order.noted"),
        (4, "order.failed"),
    ]

    # A later transaction starts from the stored row again.
    async with backend.container.message_uow() as uow:
        [third] = await uow.order_stream.append(
            order_id, [NewOrderEvent("order.noted", {"n": 2})], T0, order_id, None
        )
        await uow.commit()
    assert third["version"] == 5
    assert [tuple(r) for r in await stored(backend, row)] == [(5, "FAILED", "OUT_OF_STOCK")]


async def test_an_append_before_any_read_gives_the_order_facts_a_read_would(
    backend: Backend, client: Any
) -> None:
    """On PostgreSQL the first append returns the whole order with its lines, so the facts
    asked for after it need no read; they must be what a read gives."""
    order_id = await place_order(
        client,
        backend,
        "k-facts",
        [{"sku": "PROD-003", "quantity": 2}, {"sku": "PROD-001", "quantity": 1}],
    )
    async with backend.container.message_uow() as uow:
        await uow.order_stream.append(
            order_id, [NewOrderEvent("order.noted", {})], T0, order_id, None
        )
        after_append = await uow.order_stream.facts(order_id)
        await uow.commit()
    async with backend.container.message_uow() as uow:
        read = await uow.order_stream.facts(order_id)
    assert after_append is not None
    assert read is not None
    assert after_append == read
    assert [(line.sku, line.quantity) for line in read.lines] == [("PROD-003", 2), ("PROD-001", 1)]


def a_payment(order_id: str, status: str, authorized: int) -> PaymentRecord:
    return PaymentRecord(
        order_id, "simulated", "ref-1", status, "USD", authorized, 0, 0, None, None
    )


async def test_a_payment_record_put_is_read_back_in_the_transaction_and_written_at_commit(
    backend: Backend,
) -> None:
    query = sa.select(payments.c.status, payments.c.authorized_minor).where(
        payments.c.order_id == "o-pay"
    )
    for commit in (False, True):
        async with backend.container.message_uow() as uow:
            assert await uow.payments.get("o-pay") is None
            await uow.payments.put(a_payment("o-pay", "AUTHORIZED", 900), T0)
            await uow.payments.put(a_payment("o-pay", "AUTHORIZED", 1000), T0)
            assert await uow.payments.get("o-pay") == a_payment("o-pay", "AUTHORIZED", 1000)
            assert not await uow.payments.tombstone("o-pay", "USD", T0), "a record exists"
            if commit:
                await uow.commit()
        if not commit:
            assert await stored(backend, query) == []
    assert [tuple(r) for r in await stored(backend, query)] == [("AUTHORIZED", 1000)]

    async with backend.container.message_uow() as uow:
        record = await uow.payments.get("o-pay")
        assert record == a_payment("o-pay", "AUTHORIZED", 1000)
        await uow.payments.put(replace(record, status="CAPTURED", captured_minor=1000), T0)
        await uow.commit()
    assert [tuple(r) for r in await stored(backend, query)] == [("CAPTURED", 1000)]

    async with backend.container.message_uow() as uow:
        assert await uow.payments.tombstone("o-none", "USD", T0)
        assert (await uow.payments.get("o-none")) is not None
        await uow.commit()


async def test_an_idempotency_record_follows_its_order_at_commit(
    backend: Backend, client: Any
) -> None:
    order_id = await place_order(client, backend, "k-follow", [{"sku": "PROD-001", "quantity": 1}])
    query = sa.select(idempotency_keys.c.resource_status).where(
        idempotency_keys.c.resource_id == order_id
    )
    assert await stored(backend, query) == [("PENDING",)]
    async with backend.container.message_uow() as uow:
        await uow.key_status.follow(order_id, "FAILED")
    assert await stored(backend, query) == [("PENDING",)]
    async with backend.container.message_uow() as uow:
        await uow.key_status.follow(order_id, "FAILED")
        await uow.key_status.follow(order_id, "CONFIRMED")
        await uow.commit()
    assert await stored(backend, query) == [("CONFIRMED",)]


async def test_shipments_created_in_a_transaction_are_kept_and_written_once_at_commit(
    backend: Backend,
) -> None:
    """Nobody else sees a shipment before its transaction commits, so it is read back and
    moved in memory, and written with its last status by the commit; a rollback writes none."""
    mine = [
        Shipment(
            "o-s:WH-AUS", "o-s", "WH-AUS", "REQUESTED", (ReservedLine("P", "WH-AUS", 1),), 5, T0, T0
        ),
        Shipment(
            "o-s:WH-NYC", "o-s", "WH-NYC", "REQUESTED", (ReservedLine("Q", "WH-NYC", 2),), 7, T0, T0
        ),
    ]
    query = sa.select(shipments.c.id, shipments.c.status, shipments.c.lines).order_by(
        shipments.c.id
    )
    later = T0 + timedelta(seconds=1)
    for commit in (False, True):
        async with backend.container.message_uow() as uow:
            assert await uow.shipments.for_order("o-s") == []
            await uow.shipments.create(mine)
            assert await uow.shipments.get("o-s:WH-AUS") == mine[0]
            assert await uow.shipments.move("o-s:WH-AUS", "REQUESTED", "SHIPPED", later)
            assert not await uow.shipments.move("o-s:WH-AUS", "REQUESTED", "FAILED", later)
            listed = await uow.shipments.for_order("o-s")
            assert [(s.id, s.status) for s in listed] == [
                ("o-s:WH-AUS", "SHIPPED"),
                ("o-s:WH-NYC", "REQUESTED"),
            ]
            if commit:
                await uow.commit()
        if not commit:
            assert await stored(backend, query) == []
    assert [tuple(r) for r in await stored(backend, query)] == [
        ("o-s:WH-AUS", "SHIPPED", [{"sku": "P", "warehouseId": "WH-AUS", "quantity": 1}]),
        ("o-s:WH-NYC", "REQUESTED", [{"sku": "Q", "warehouseId": "WH-NYC", "quantity": 2}]),
    ]
    async with backend.container.message_uow() as uow:  # a later transaction reads the table
        assert await uow.shipments.move("o-s:WH-NYC", "REQUESTED", "CANCELLED", later)
        assert [s.status for s in await uow.shipments.for_order("o-s")] == ["SHIPPED", "CANCELLED"]
        await uow.commit()


async def test_reservation_lines_and_headers_are_written_at_commit_and_read_back_before(
    backend: Backend,
) -> None:
    """A reservation's lines and its header's moves wait for the commit; a read of the lines
    in the same transaction writes them first, so it sees them."""
    lines = sa.select(
        reservation_lines.c.sku, reservation_lines.c.warehouse_id, reservation_lines.c.status
    ).where(reservation_lines.c.order_id == "o-r")
    header = sa.select(reservations.c.status).where(reservations.c.order_id == "o-r")
    picks = [Pick("PROD-001", "WH-AUS", 1), Pick("PROD-003", "WH-NYC", 2)]
    expires = T0 + timedelta(minutes=15)

    for commit in (False, True):
        async with backend.container.message_uow() as uow:
            assert await uow.reservations.open("o-r", expires, T0) is None
            assert await uow.reservations.reserve("o-r", picks, T0)
            held = await uow.reservations.lines("o-r", "ACTIVE")
            assert sorted((x.sku, x.quantity) for x in held) == [("PROD-001", 1), ("PROD-003", 2)]
            if commit:
                await uow.commit()
        if not commit:
            assert await stored(backend, lines) == []
    assert await stored(backend, header) == [("ACTIVE",)]

    async with backend.container.message_uow() as uow:  # ship one warehouse, then the other
        assert [x.sku for x in await uow.reservations.ship("o-r", "WH-AUS", T0)] == ["PROD-001"]
        assert [x.sku for x in await uow.reservations.lines("o-r", "ACTIVE")] == ["PROD-003"]
        assert [x.sku for x in await uow.reservations.ship("o-r", "WH-NYC", T0)] == ["PROD-003"]
        assert await uow.reservations.lines("o-r", "ACTIVE") == []
        await uow.commit()
    assert sorted(tuple(r) for r in await stored(backend, lines)) == [
        ("PROD-001", "WH-AUS", "SHIPPED"),
        ("PROD-003", "WH-NYC", "SHIPPED"),
    ]
    assert await stored(backend, header) == [("SHIPPED",)]


async def test_a_reservation_made_and_released_in_one_transaction_is_written_released(
    backend: Backend,
) -> None:
    async with backend.container.message_uow() as uow:
        assert await uow.reservations.open("o-x", T0 + timedelta(minutes=15), T0) is None
        assert await uow.reservations.reserve("o-x", [Pick("PROD-001", "WH-AUS", 1)], T0)
        released = await uow.reservations.release("o-x", T0)
        assert [(x.sku, x.quantity) for x in released] == [("PROD-001", 1)]
        assert await uow.reservations.release("o-x", T0) == []  # nothing left to release
        await uow.commit()
    assert await stored(
        backend, sa.select(reservation_lines.c.status).where(reservation_lines.c.order_id == "o-x")
    ) == [("RELEASED",)]
    assert await stored(
        backend, sa.select(reservations.c.status).where(reservations.c.order_id == "o-x")
    ) == [("RELEASED",)]
