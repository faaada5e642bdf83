"""The commit batch (``adapters/db/batch.py``) on SQLite and the real PostgreSQL: the writes a
unit of work buffers, sent on PostgreSQL as one statement of data-modifying CTEs over array
parameters, else (SQLite, or ``one_statement=False``) as a statement each. Either way each kind
of write must do the same: insert every row with its JSON and times, overwrite a read-model row
only from a lower version, update a saga only at the version its holder read, and give back
what RETURNING names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from orderly.adapters.db.batch import PER_ROW_LIMIT, CommitBatch, Insert, Update
from orderly.adapters.db.tables import (
    outbox_messages,
    reservation_lines,
    rm_order_history,
    saga_log,
    sagas,
)
from tests.conftest import Backend


@pytest.fixture(params=[True, False], ids=["one statement", "a statement each"])
def one_statement(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def saga_row(saga_id: str, version: int) -> dict[str, Any]:
    return {
        "id": saga_id,
        "definition": "toy",
        "key": saga_id,
        "status": "RUNNING",
        "step": 0,
        "step_status": "REQUESTED",
        "done": [],
        "data": {"n": 0},
        "deadline_at": None,
        "reason": None,
        "detail": {},
        "version": version,
        "resends": 0,
        "created_at": T0,
        "updated_at": T0,
    }


def saved(saga_id: str, previous: int, n: int) -> dict[str, Any]:
    return {
        "id": saga_id,
        "_previous": previous,
        "status": "RUNNING",
        "step": n,
        "data": {"n": n},
        "deadline_at": T0 + timedelta(seconds=n),
        "version": previous + 1,
        "updated_at": T0 + timedelta(seconds=n),
    }


def history_row(order_id: str, version: int, status: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": "alice",
        "status": status,
        "failure_reason": None,
        "version": version,
        "placed_at": T0,
        "updated_at": T0 + timedelta(seconds=version),
    }


def outbox_row(message_id: str, claimed_by: str | None) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "type": "test.message",
        "key": "k",
        "payload": {"id": message_id, "nested": [1, None, "x"]},
        "headers": {},
        "correlation_id": "k",
        "causation_id": None,
        "created_at": T0,
        "available_at": T0,
        "attempts": 0,
        "claimed_by": claimed_by,
        "claimed_until": T0 + timedelta(seconds=30) if claimed_by else None,
    }


async def run(backend: Backend, one_statement: bool, fill: Any) -> None:
    async with backend.container.engine.connect() as conn, conn.begin():
        batch = CommitBatch(one_statement=one_statement)
        fill(batch)
        await batch.execute(conn)


async def rows(backend: Backend, query: Any) -> list[Any]:
    async with backend.container.engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def test_inserts_every_row_with_its_json_and_times(
    backend: Backend, one_statement: bool
) -> None:
    entries: list[dict[str, Any]] = [
        {"saga_id": "s-1", "kind": "a", "step": None, "detail": {}, "at": T0},
        {"saga_id": "s-1", "kind": "b", "step": "x", "detail": {"k": [1, 2]}, "at": T0},
        {"saga_id": "s-2", "kind": "c", "step": None, "detail": {"n": None}, "at": T0},
    ]
    await run(backend, one_statement, lambda b: b.add(Insert.of(saga_log, entries), entries))
    found = await rows(
        backend,
        sa.select(saga_log.c.saga_id, saga_log.c.kind, saga_log.c.step, saga_log.c.detail)
        .add_columns(saga_log.c.at)
        .order_by(saga_log.c.id),
    )
    assert [tuple(r) for r in found] == [
        ("s-1", "a", None, {}, T0),
        ("s-1", "b", "x", {"k": [1, 2]}, T0),
        ("s-2", "c", None, {"n": None}, T0),
    ]


async def test_a_guarded_upsert_only_overwrites_a_lower_version(
    backend: Backend, one_statement: bool
) -> None:
    first = [history_row("o-1", 3, "RESERVED"), history_row("o-2", 3, "RESERVED")]
    await run(
        backend,
        one_statement,
        lambda b: b.add(Insert.of(rm_order_history, first, **GUARDED), first),
    )
    later = [history_row("o-1", 2, "PENDING"), history_row("o-2", 4, "CONFIRMED")]
    later.append(history_row("o-3", 1, "PENDING"))
    await run(
        backend,
        one_statement,
        lambda b: b.add(Insert.of(rm_order_history, later, **GUARDED), later),
    )
    found = await rows(
        backend,
        sa.select(
            rm_order_history.c.order_id, rm_order_history.c.version, rm_order_history.c.status
        ).order_by(rm_order_history.c.order_id),
    )
    assert [tuple(r) for r in found] == [
        ("o-1", 3, "RESERVED"),  # the older row did not win
        ("o-2", 4, "CONFIRMED"),
        ("o-3", 1, "PENDING"),
    ]


GUARDED: dict[str, Any] = {"conflict": ("order_id",), "guard": "version"}


@pytest.mark.parametrize(
    "count", [1, 3, PER_ROW_LIMIT + 4], ids=["one saga", "several sagas", "many sagas (unnest)"]
)
async def test_a_versioned_update_moves_only_rows_still_at_the_version_read(
    backend: Backend, one_statement: bool, count: int
) -> None:
    stored = [saga_row(f"s-{i}", 5) for i in range(count)]
    async with backend.container.engine.begin() as conn:
        await conn.execute(sagas.insert(), stored)
    updates = [saved(f"s-{i}", 5, 7) for i in range(count)]
    stale = saved("s-0", 4, 9)  # read at version 4: someone else has moved it since
    returned: list[list[tuple[Any, ...]]] = []

    await run(
        backend,
        one_statement,
        lambda b: b.add(
            Update.versioned(sagas, "id", "version", updates), updates, returned.append
        ),
    )
    await run(
        backend,
        one_statement,
        lambda b: b.add(
            Update.versioned(sagas, "id", "version", [stale]), [stale], returned.append
        ),
    )

    assert sorted(returned[0]) == sorted((f"s-{i}",) for i in range(count))
    assert returned[1] == []
    found = await rows(
        backend,
        sa.select(
            sagas.c.id, sagas.c.version, sagas.c.step, sagas.c.data, sagas.c.deadline_at
        ).order_by(sagas.c.id),
    )
    assert [tuple(r) for r in found] == sorted(
        (f"s-{i}", 6, 7, {"n": 7}, T0 + timedelta(seconds=7)) for i in range(count)
    )


async def test_a_held_row_that_moved_anyway_fails_the_commit(
    backend: Backend, one_statement: bool
) -> None:
    async with backend.container.engine.begin() as conn:
        await conn.execute(sagas.insert(), [saga_row("s-1", 5), saga_row("s-2", 5)])
    held = [saved("s-1", 5, 7)]
    await run(backend, one_statement, lambda b: b.add_held(sagas, "id", "version", held, "saga"))
    moved = [saved("s-1", 5, 8), saved("s-2", 5, 8)]  # s-1 is at version 6 now
    with pytest.raises(RuntimeError, match="saga s-1 moved under a transaction that held it"):
        await run(
            backend, one_statement, lambda b: b.add_held(sagas, "id", "version", moved, "saga")
        )
    found = await rows(backend, sa.select(sagas.c.id, sagas.c.version).order_by(sagas.c.id))
    assert [tuple(r) for r in found] == [("s-1", 6), ("s-2", 5)], "the failed commit wrote nothing"


@pytest.mark.parametrize(
    "count", [1, 3, PER_ROW_LIMIT + 4], ids=["one row", "several rows", "many rows (unnest)"]
)
async def test_a_keyed_update_sets_every_row_with_the_key_and_gives_back_nothing(
    backend: Backend, one_statement: bool, count: int
) -> None:
    stored = [saga_row(f"s-{i}", 5) for i in range(count + 1)]
    async with backend.container.engine.begin() as conn:
        await conn.execute(sagas.insert(), stored)
    updates = [{"id": f"s-{i}", "step": 10 + i, "reason": f"r{i}"} for i in range(count)]
    returned: list[list[tuple[Any, ...]]] = []

    await run(
        backend,
        one_statement,
        lambda b: b.add(Update.keyed(sagas, "id", updates), updates, returned.append),
    )

    assert returned == [[]]
    found = await rows(
        backend, sa.select(sagas.c.id, sagas.c.step, sagas.c.reason, sagas.c.version)
    )
    assert sorted(tuple(r) for r in found) == sorted(
        [*((f"s-{i}", 10 + i, f"r{i}", 5) for i in range(count)), (f"s-{count}", 0, None, 5)]
    )


@pytest.mark.parametrize(
    "count", [1, 3, PER_ROW_LIMIT + 4], ids=["one row", "several rows", "many rows (unnest)"]
)
async def test_a_keyed_update_on_a_composite_key_sets_only_rows_with_the_whole_key(
    backend: Backend, one_statement: bool, count: int
) -> None:
    lines = [
        {"order_id": order, "sku": f"S{i}", "warehouse_id": "W1", "quantity": 1, "status": "A"}
        for order in ("o-1", "o-2")
        for i in range(count)
    ]
    async with backend.container.engine.begin() as conn:
        await conn.execute(reservation_lines.insert(), lines)
    updates = [
        {"order_id": "o-1", "sku": f"S{i}", "warehouse_id": "W1", "status": f"B{i}"}
        for i in range(count)
    ]
    key = ("order_id", "sku", "warehouse_id")

    await run(
        backend,
        one_statement,
        lambda b: b.add(Update.keyed(reservation_lines, key, updates), updates),
    )

    found = await rows(
        backend,
        sa.select(
            reservation_lines.c.order_id, reservation_lines.c.sku, reservation_lines.c.status
        ),
    )
    assert sorted(tuple(r) for r in found) == sorted(
        [
            *(("o-1", f"S{i}", f"B{i}") for i in range(count)),
            *(("o-2", f"S{i}", "A") for i in range(count)),
        ]
    )


async def test_several_writes_in_one_statement_each_give_back_their_returning(
    backend: Backend,
    one_statement: bool,
) -> None:
    async with backend.container.engine.begin() as conn:
        await conn.execute(sagas.insert(), [saga_row("s-1", 1)])
    messages = [outbox_row("m-1", None), outbox_row("m-2", "worker-1"), outbox_row("m-3", None)]
    update = [saved("s-1", 1, 1)]
    log: list[dict[str, Any]] = [
        {"saga_id": "s-1", "kind": "a", "step": None, "detail": {}, "at": T0}
    ]
    returned: dict[str, list[tuple[Any, ...]]] = {}

    def fill(batch: CommitBatch) -> None:
        batch.add(Insert.of(saga_log, log), log)
        write = Insert.of(outbox_messages, messages, returning=("message_id", "id"))
        batch.add(write, messages, lambda r: returned.__setitem__("outbox", r))
        batch.add(
            Update.versioned(sagas, "id", "version", update),
            update,
            lambda r: returned.__setitem__("sagas", r),
        )

    await run(backend, one_statement, fill)

    ids = {
        r.message_id: (r.id, r.claimed_by, r.payload)
        for r in await rows(backend, sa.select(outbox_messages))
    }
    assert dict(returned["outbox"]) == {m: ids[m][0] for m in ("m-1", "m-2", "m-3")}
    assert ids["m-2"][1] == "worker-1"
    assert ids["m-1"][1] is None
    assert ids["m-1"][2] == {"id": "m-1", "nested": [1, None, "x"]}
    assert returned["sagas"] == [("s-1",)]
    assert len(await rows(backend, sa.select(saga_log.c.id))) == 1


async def test_nothing_to_write_sends_nothing(backend: Backend, one_statement: bool) -> None:
    batch = CommitBatch()
    batch.add(Insert.of(saga_log, []), [])
    assert not batch
    async with backend.container.engine.connect() as conn:
        await batch.execute(conn)  # outside a transaction: it would raise if it sent anything


async def test_a_failing_write_fails_the_whole_statement(
    backend: Backend, one_statement: bool
) -> None:
    """A duplicate key (two writers of one saga, say) fails every write sent with it."""
    log: list[dict[str, Any]] = [
        {"saga_id": "s-1", "kind": "a", "step": None, "detail": {}, "at": T0}
    ]
    duplicate = [saga_row("s-1", 1), saga_row("s-1", 1)]

    def fill(batch: CommitBatch) -> None:
        batch.add(Insert.of(saga_log, log), log)
        batch.add(Insert.of(sagas, duplicate), duplicate)

    with pytest.raises((asyncpg.UniqueViolationError, sa.exc.IntegrityError)):
        await run(backend, one_statement, fill)
    assert await rows(backend, sa.select(saga_log.c.id)) == []
    assert await rows(backend, sa.select(sagas.c.id)) == []
