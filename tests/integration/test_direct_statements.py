"""``adapters/db/direct.py`` on SQLite and the real PostgreSQL: the same statements give the same
answers whether they run on the asyncpg driver or through SQLAlchemy, and always inside the
unit of work's transaction."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import sqlalchemy as sa

from orderly.adapters.db import direct
from orderly.adapters.db.engine import create_engine, dispose_engine
from orderly.adapters.db.tables import saga_log, stock
from tests.conftest import Backend

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

_STOCK_OF = (
    sa.select(stock).where(stock.c.sku == sa.bindparam("_sku")).order_by(stock.c.warehouse_id)
)
_ADD = (
    stock.update()
    .where(stock.c.sku == sa.bindparam("_sku"))
    .values(on_hand=stock.c.on_hand + sa.bindparam("_n"))
)
_FIXED = sa.select(stock.c.on_hand).where(
    stock.c.sku == "PROD-001", stock.c.warehouse_id == "WH-AUS"
)
_IN = sa.select(stock.c.sku).where(stock.c.sku.in_(sa.bindparam("_skus", expanding=True)))
_LOG = saga_log.insert()
_LOGGED = sa.select(saga_log.c.kind, saga_log.c.detail, saga_log.c.at).order_by(saga_log.c.id)


async def on_hand(backend: Backend, sku: str) -> int:
    async with backend.container.engine.connect() as conn:
        total = await conn.scalar(sa.select(sa.func.sum(stock.c.on_hand)).where(stock.c.sku == sku))
        return int(total or 0)


async def test_rows_read_like_sqlalchemy_rows(backend: Backend) -> None:
    async with backend.container.engine.begin() as conn:
        rows = (await direct.execute(conn, _STOCK_OF, {"_sku": "PROD-001"})).all()
        assert rows, "the demo catalogue has PROD-001"
        first = rows[0]
        assert first.sku == "PROD-001"
        assert first._mapping["warehouse_id"] == first.warehouse_id
        assert set(dict(first._mapping)) >= {"sku", "warehouse_id", "on_hand", "reserved"}
        assert await direct.scalar(conn, _FIXED) == first.on_hand
        missing = await direct.execute(conn, _STOCK_OF, {"_sku": "NOPE"})
        assert missing.one_or_none() is None
        # Expanding parameters go through SQLAlchemy, with the same answer.
        found = await direct.execute(conn, _IN, {"_skus": ["PROD-001", "PROD-003", "NOPE"]})
        assert sorted({r.sku for r in found}) == ["PROD-001", "PROD-003"]


async def test_updates_count_rows_and_many_rows_insert_with_json_and_times(
    backend: Backend,
) -> None:
    before = await on_hand(backend, "PROD-003")
    async with backend.container.engine.begin() as conn:
        moved = await direct.execute(conn, _ADD, {"_sku": "PROD-003", "_n": 2})
        assert moved.rowcount >= 1
        none = await direct.execute(conn, _ADD, {"_sku": "NOPE", "_n": 2})
        assert none.rowcount == 0
        entries = [
            {"saga_id": "s", "kind": f"k{i}", "step": None, "detail": {"i": i}, "at": T0}
            for i in range(3)
        ]
        await direct.execute(conn, _LOG, entries)
        logged = (await direct.execute(conn, _LOGGED)).all()
    assert [(r.kind, r.detail, r.at) for r in logged] == [(f"k{i}", {"i": i}, T0) for i in range(3)]
    assert await on_hand(backend, "PROD-003") == before + 2 * moved.rowcount


async def test_a_first_statement_on_the_driver_is_inside_the_transaction(backend: Backend) -> None:
    """SQLAlchemy's asyncpg adapter begins lazily; a write sent straight to the driver as the
    transaction's first statement must still be rolled back with it."""
    before = await on_hand(backend, "PROD-001")
    engine = backend.container.engine
    async with engine.connect() as conn:  # as the unit of work opens its transaction
        await conn.begin()
        await direct.execute(conn, _ADD, {"_sku": "PROD-001", "_n": 5})
        await conn.rollback()
    assert await on_hand(backend, "PROD-001") == before
    async with engine.connect() as conn:
        await conn.begin()
        await direct.execute(conn, _ADD, {"_sku": "PROD-001", "_n": 5})
        await conn.commit()
    async with engine.connect() as conn:
        # The same pooled connection again: the next transaction is begun as well.
        await conn.begin()
        await direct.execute(conn, _ADD, {"_sku": "PROD-001", "_n": 7})
        # closed without commit
    assert await on_hand(backend, "PROD-001") == before + 5 * await rows_of(backend, "PROD-001")


async def rows_of(backend: Backend, sku: str) -> int:
    async with backend.container.engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).select_from(stock).where(stock.c.sku == sku)
        )
        return int(count or 0)


async def test_a_cancelled_statement_leaves_no_transaction_open(backend: Backend) -> None:
    """A handler's timeout may cancel a statement on the driver at any point, even inside the
    BEGIN. The connection must not go back to the pool with the server's transaction still
    open: its next transaction would be a savepoint inside the old one, whose commit keeps
    every change (and lock) uncommitted."""
    engine = create_engine(backend.container.engine.url.render_as_string(False), pool_size=1)
    before, rows = await on_hand(backend, "PROD-003"), await rows_of(backend, "PROD-003")
    untouched = await on_hand(backend, "PROD-001")
    try:
        for turns in range(8):  # cancelled after 0, 1, ... turns of the event loop
            async with engine.connect() as conn:
                await conn.begin()
                task = asyncio.create_task(
                    direct.execute(conn, _ADD, {"_sku": "PROD-001", "_n": 1})
                )
                for _ in range(turns):
                    await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # The pool's only connection (or its replacement) commits for real.
            async with engine.begin() as conn:
                await direct.execute(conn, _ADD, {"_sku": "PROD-003", "_n": 1})
            assert await on_hand(backend, "PROD-003") == before + (turns + 1) * rows, turns
    finally:
        await dispose_engine(engine)
    assert await on_hand(backend, "PROD-001") == untouched
