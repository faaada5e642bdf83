"""A claim of one type walks only that type's first unsent rows, whatever else the outbox holds
and whatever the database's statistics last said about it.

The local transport's consumers claim their own types, often one message at a time. Under a
burst of orders the outbox holds a backlog of one type and every message ever sent. A claim that
walks either is slower the longer the backlog or the older the database: seen in the saga
benchmark as 1.1 ms per claim. PostgreSQL chose its path from statistics taken at an earlier
moment (``ANALYZE``, autovacuum), so both moments are tried: statistics from before the backlog
(few unsent rows) and from during it (many).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from orderly.adapters.db.outbox_queue import _CLAIM, OutboxQueue
from orderly.adapters.db.tables import outbox_messages
from tests.conftest import Backend

SENT, BACKLOG = 3000, 1000


def rows(type_: str, count: int, backend: Backend, *, sent: bool) -> list[dict[str, Any]]:
    now = backend.clock.now() - timedelta(seconds=1)
    return [
        {
            "message_id": str(uuid.uuid4()),
            "type": type_,
            "key": f"k{n}",
            "payload": {},
            "headers": {},
            "correlation_id": f"k{n}",
            "created_at": now,
            "available_at": now,
            "sent_at": now if sent else None,
        }
        for n in range(count)
    ]


async def insert(backend: Backend, batch: list[dict[str, Any]]) -> None:
    async with backend.container.engine.begin() as conn:
        await conn.execute(outbox_messages.insert(), batch)


async def analyze(backend: Backend) -> None:
    if backend.is_postgres:
        async with backend.container.engine.connect() as conn:
            await conn.execute(sa.text("ANALYZE outbox_messages"))


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The nodes that read a table or an index."""
    if "Scan" in plan["Node Type"] and ("Relation Name" in plan or "Index Name" in plan):
        yield plan
    for child in plan.get("Plans", ()):
        yield from scans(child)


async def rows_examined(backend: Backend, types: list[str], limit: int) -> dict[str, int]:
    """The claim of ``types`` run under ``EXPLAIN ANALYZE`` (rolled back): per scan, the rows
    it read each time it ran (returned plus filtered out), by the index or table it scanned."""
    now = backend.clock.now()
    values: dict[str, Any] = {"now": now, "limit": limit, "worker": "w", "until": now}
    if len(types) == 1:
        statement, values["_type"] = _CLAIM[("postgresql", "one")], types[0]
    else:
        statement, values["types"] = _CLAIM[("postgresql", "many")], types
    async with backend.container.engine.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        names = compiled.positiontup or []
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        claiming = driver.transaction()
        await claiming.start()
        try:
            plan_json = await driver.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.string, *[values[n] for n in names]
            )
        finally:
            await claiming.rollback()
    # The engine's connections decode json themselves (adapters/db/engine.py).
    decoded = orjson.loads(plan_json) if isinstance(plan_json, str | bytes) else plan_json
    plan = decoded[0]["Plan"]
    return {
        scan.get("Index Name", scan["Node Type"]): (
            scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
        )
        for scan in scans(plan)
    }


async def test_a_claim_walks_neither_the_backlog_nor_the_sent_rows(backend: Backend) -> None:
    """A claim of one type, and of several (each read up to the limit, the relay's claim of
    all types too: it claims every type with unsent rows as several)."""
    if not backend.is_postgres:
        return
    await insert(backend, rows("t.sent", SENT, backend, sent=True))
    await analyze(backend)  # statistics from before the burst: almost no unsent rows
    await insert(backend, rows("t.backlog", BACKLOG, backend, sent=False))
    await insert(backend, rows("t.mine", 3, backend, sent=False))
    for moment in ("statistics before the backlog", "statistics during the backlog"):
        for types in (["t.mine"], ["t.backlog"], ["t.none"], ["t.backlog", "t.mine", "t.none"]):
            examined = await rows_examined(backend, types, limit=2)
            # The claim index, read up to the limit; then the rows chosen, by primary key.
            assert examined.pop("ix_outbox_messages_pending_claim") <= 2, (moment, types)
            assert set(examined) <= {"pk_outbox_messages", "Bitmap Heap Scan"}, (moment, types)
        await analyze(backend)


async def test_sqlite_walks_the_claim_index_in_order(backend: Backend) -> None:
    if backend.is_postgres:
        return
    claim = _CLAIM[("sqlite", "one")].compile(dialect=backend.container.engine.dialect).string
    # The SELECT inside the claim's IN (...): what picks the rows. Its parameters: now, now,
    # the type, the limit and the offset; the plan does not depend on their values.
    picking = claim[claim.index("(SELECT") + 1 : claim.rindex(")")]
    async with backend.container.engine.connect() as conn:
        plan = await conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + picking, ("2026", "2026", "t", 1, 0)
        )
        details = " | ".join(row[-1] for row in plan.all())
    assert "USING INDEX ix_outbox_messages_pending_claim (type=?)" in details, details
    assert "TEMP B-TREE" not in details, details


async def test_claims_take_the_oldest_rows_of_their_types_in_order(backend: Backend) -> None:
    await insert(backend, rows("t.backlog", 5, backend, sent=False))
    await insert(backend, rows("t.mine", 4, backend, sent=False))
    await insert(backend, rows("t.other", 2, backend, sent=False))
    queue = OutboxQueue(backend.container.engine, clock=backend.clock, worker_id="w")
    first = await queue.claim({"t.mine"}, 3, lease=30)
    assert [q.message.type for q in first] == ["t.mine"] * 3
    assert [q.message.key for q in first] == ["k0", "k1", "k2"]
    both = await queue.claim({"t.mine", "t.other"}, 10, lease=30)
    assert [(q.message.type, q.message.key) for q in both] == [
        ("t.mine", "k3"),
        ("t.other", "k0"),
        ("t.other", "k1"),
    ]
    rest = await queue.claim(None, 10, lease=30)
    assert [q.message.key for q in rest] == [f"k{n}" for n in range(5)]
    assert [q.id for q in rest] == sorted(q.id for q in rest)
