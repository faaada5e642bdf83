"""The idempotency store on SQLite and PostgreSQL: a retry of a finished key is only a read.

Each check looks inside the unit of work's own transaction, right after the claim: on
PostgreSQL no transaction id was assigned, no tuple was inserted, updated or deleted
(``pg_stat_xact_user_tables``) and the key's id sequence did not move; on SQLite the
connection changed no row. The same probes see the claim of a new key, so they are not blind.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from orderly.adapters.db.postgres import PgIdempotencyStore
from orderly.adapters.db.repositories import SqlIdempotencyStore
from orderly.services import idempotency
from orderly.services.idempotency import ActionResult
from orderly.services.idempotency_types import (
    Claimed,
    Existing,
    IdempotencyScope,
    InFlight,
    StoredResponse,
)
from orderly.services.ports import UnitOfWork
from tests.conftest import Backend

RESPONSE = StoredResponse(202, (("content-type", "application/json"),), b'{"ok":true}')

PG_PROBE = """
SELECT pg_current_xact_id_if_assigned() IS NOT NULL AS xid,
       (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)
        FROM pg_stat_xact_user_tables) AS tuples,
       pg_sequence_last_value('idempotency_keys_id_seq') AS sequence
"""


@dataclass(frozen=True)
class Writes:
    """What the open transaction has written so far (SQLite: rows changed only)."""

    xid: bool = False
    tuples: int = 0
    sequence: int | None = None


async def writes(uow: UnitOfWork) -> Writes:
    store: Any = uow.idempotency
    if isinstance(store, PgIdempotencyStore):
        row = await store._db.fetchrow(PG_PROBE)
        assert row is not None
        return Writes(row["xid"], int(row["tuples"]), row["sequence"])
    assert isinstance(store, SqlIdempotencyStore)
    conn = store._conn
    if conn.dialect.name == "postgresql":
        row = (await conn.execute(sa.text(PG_PROBE))).one()
        return Writes(row.xid, int(row.tuples), row.sequence)
    changed = (await conn.execute(sa.text("SELECT total_changes()"))).scalar_one()
    return Writes(tuples=int(changed))


UowKind = Callable[[Backend], UnitOfWork]
KINDS: dict[str, UowKind] = {
    "uow": lambda backend: backend.container.uow(),
    "message_uow": lambda backend: backend.container.message_uow(),
}


def scope() -> IdempotencyScope:
    return IdempotencyScope("alice", "POST", "/api/orders", str(uuid.uuid4()))


async def finish(backend: Backend, key: IdempotencyScope, fingerprint: str = "fp") -> None:
    async def action(_uow: UnitOfWork) -> ActionResult:
        return ActionResult(RESPONSE, "order-1", "PENDING")

    outcome = await idempotency.execute(
        backend.container.uow,
        key,
        fingerprint,
        action,
        clock=backend.clock,
        ttl=timedelta(hours=24),
    )
    assert not outcome.replayed


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_of_a_finished_key_writes_nothing(backend: Backend, kind: str) -> None:
    key = scope()
    await finish(backend, key)
    now = backend.clock.now()
    async with KINDS[kind](backend) as uow:
        before = await writes(uow)
        claim = await uow.idempotency.claim(key, "fp", now, now + timedelta(hours=24))
        after = await writes(uow)
    assert isinstance(claim, Existing)
    assert claim.record.response == RESPONSE
    assert claim.record.fingerprint == "fp"
    assert after == before
    assert not after.xid


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_with_another_body_writes_nothing(backend: Backend, kind: str) -> None:
    key = scope()
    await finish(backend, key, fingerprint="first")
    now = backend.clock.now()
    async with KINDS[kind](backend) as uow:
        before = await writes(uow)
        claim = await uow.idempotency.claim(key, "second", now, now + timedelta(hours=24))
        assert await writes(uow) == before
    assert isinstance(claim, Existing)
    assert claim.record.fingerprint == "first"


@pytest.mark.parametrize("kind", KINDS)
async def test_the_probe_sees_a_new_claim(backend: Backend, kind: str) -> None:
    now = backend.clock.now()
    async with KINDS[kind](backend) as uow:
        before = await writes(uow)
        claim = await uow.idempotency.claim(scope(), "fp", now, now + timedelta(hours=24))
        after = await writes(uow)
    assert isinstance(claim, Claimed)
    assert after.tuples == before.tuples + 1
    if backend.is_postgres:
        assert after.xid
        assert after.sequence != before.sequence


@pytest.mark.parametrize("kind", KINDS)
async def test_an_expired_key_is_taken_over(backend: Backend, kind: str) -> None:
    key = scope()
    await finish(backend, key, fingerprint="old")
    later = backend.clock.now() + timedelta(hours=24, seconds=1)
    async with KINDS[kind](backend) as uow:
        claim = await uow.idempotency.claim(key, "new", later, later + timedelta(hours=24))
    assert isinstance(claim, Claimed)


async def test_a_key_held_by_an_open_transaction_is_in_flight(backend: Backend) -> None:
    """On PostgreSQL a second claim sees the first in flight; SQLite has one writer, so the
    second transaction waits for the first instead (and never claims the key twice)."""
    key = scope()
    now = backend.clock.now()
    async with backend.container.uow() as holder:
        assert isinstance(
            await holder.idempotency.claim(key, "fp", now, now + timedelta(hours=1)), Claimed
        )
        if not backend.is_postgres:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(backend.container.uow().__aenter__(), timeout=0.3)
            return
        async with backend.container.uow() as other:
            claim = await other.idempotency.claim(key, "fp", now, now + timedelta(hours=1))
    assert isinstance(claim, InFlight)
