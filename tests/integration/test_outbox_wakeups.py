"""Wake-ups of the local transport: only the consumers of a new message's type, and nobody for
a message handed off (it is not written) or written claimed by its writer. On SQLite through
the in-process signal, on PostgreSQL through the trigger's NOTIFY (its payload is the type) as
well."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from orderly.adapters.db.outbox_queue import OutboxQueue, OutboxSignal
from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.tables import outbox_messages
from orderly.domain.events import Message
from tests.conftest import Backend


def message(type_: str) -> Message:
    return Message(
        id=str(uuid.uuid4()),
        type=type_,
        key="k",
        payload={},
        created_at=datetime.now(UTC),
        correlation_id="k",
    )


def queue_and_signal(backend: Backend) -> tuple[OutboxQueue, OutboxSignal]:
    """A queue and the in-process signal the worker's units of work share with it."""
    signal = OutboxSignal()
    engine = backend.container.engine
    return OutboxQueue(engine, clock=backend.clock, worker_id="t", signal=signal), signal


async def commit(backend: Backend, signal: OutboxSignal, added: Message) -> None:
    async with SqlUnitOfWork(backend.container.engine, signal.notify) as uow:
        await uow.outbox.add(added)
        await uow.commit()


async def woken(event: asyncio.Event) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout=1.0)
    except TimeoutError:
        return False
    return True


async def test_only_the_consumers_of_the_new_type_wake_up(backend: Backend) -> None:
    queue, signal = queue_and_signal(backend)
    await queue.start()
    try:
        reserve = queue.waiter({"inventory.reserve"})
        payment = queue.waiter({"payment.authorize"})
        relay = queue.waiter()
        await commit(backend, signal, message("inventory.reserve"))
        assert await woken(reserve)
        assert await woken(relay)
        assert not payment.is_set()
    finally:
        await queue.stop()


async def test_notify_carries_the_type_from_another_process(backend: Backend) -> None:
    """The listener is woken by a commit it did not make (another process's): on PostgreSQL
    through NOTIFY with the type as payload; SQLite has no cross-process wake-up (it polls)."""
    if not backend.is_postgres:
        return
    queue = OutboxQueue(backend.container.engine, clock=backend.clock, worker_id="t")
    await queue.start()
    try:
        reserve = queue.waiter({"inventory.reserve"})
        payment = queue.waiter({"payment.authorize"})
        # No in-process signal: only the database can tell the queue.
        async with SqlUnitOfWork(backend.container.engine) as uow:
            await uow.outbox.add(message("payment.authorize"))
            await uow.commit()
        assert await woken(payment)
        assert not reserve.is_set()
    finally:
        await queue.stop()


async def test_a_handed_off_message_is_not_written_and_wakes_nobody(backend: Backend) -> None:
    queue, signal = queue_and_signal(backend)
    await queue.start()
    try:
        anyone = queue.waiter()
        reserve = queue.waiter({"inventory.reserve"})
        handed, kept = message("inventory.reserve"), message("payment.authorize")
        async with SqlUnitOfWork(backend.container.engine, signal.notify) as uow:
            await uow.outbox.add(handed)
            await uow.outbox.add(kept)
            uow.outbox.hand_off(handed.id)
            await uow.commit()
        assert await woken(anyone)
        assert not reserve.is_set()
        async with backend.container.engine.connect() as conn:
            ids = outbox_messages.c.message_id
            written = await conn.scalars(sa.select(ids).where(ids.in_([handed.id, kept.id])))
            assert list(written) == [kept.id]
    finally:
        await queue.stop()


async def test_a_message_written_claimed_wakes_nobody_and_names_its_row(backend: Backend) -> None:
    queue, signal = queue_and_signal(backend)
    await queue.start()
    try:
        anyone = queue.waiter()
        claimed = message("payment.authorize")
        until = datetime.now(UTC) + timedelta(seconds=30)
        async with SqlUnitOfWork(backend.container.engine, signal.notify) as uow:
            await uow.outbox.add(claimed)
            uow.outbox.claim(claimed.id, "worker-a", until)
            await uow.commit()
            rows = dict(uow.outbox.claimed_rows)
        assert not await woken(anyone)
        async with backend.container.engine.connect() as conn:
            o = outbox_messages.c
            row = (
                await conn.execute(
                    sa.select(o.id, o.claimed_by, o.claimed_until, o.sent_at).where(
                        o.message_id == claimed.id
                    )
                )
            ).one()
        assert rows == {claimed.id: row.id}
        assert (row.claimed_by, row.claimed_until, row.sent_at) == ("worker-a", until, None)
        # Nobody else claims it while the lease runs; once it has run out (the writer died
        # before delivering it), anyone may.
        assert await queue.claim({"payment.authorize"}, 10, lease=30) == []
        backend.clock.set(until + timedelta(seconds=1))
        again = await queue.claim({"payment.authorize"}, 10, lease=30)
        assert [(q.id, q.message.id, q.attempts) for q in again] == [(row.id, claimed.id, 0)]
    finally:
        await queue.stop()


async def test_a_claim_takes_the_oldest_due_rows_of_its_types_up_to_its_limit(
    backend: Backend,
) -> None:
    """One type, several types and any type: oldest first, at most ``limit``, never a row
    claimed by another worker (until its lease runs out) or one not yet due."""
    queue, signal = queue_and_signal(backend)
    now = backend.clock.now()
    added = [replace(message(t), created_at=now) for t in ("a", "b", "a", "c", "a", "b")]
    later = replace(message("a"), created_at=now)
    async with SqlUnitOfWork(backend.container.engine, signal.notify) as uow:
        for m in added:
            await uow.outbox.add(m)
        await uow.outbox.add(replace(later, not_before=now + timedelta(minutes=1)))
        await uow.commit()
    ids = [m.id for m in added]

    oldest = await queue.claim(None, 1, lease=30)
    assert [q.message.id for q in oldest] == [ids[0]]
    first = await queue.claim({"a"}, 2, lease=30)
    assert [q.message.id for q in first] == [ids[2], ids[4]]
    assert await queue.claim({"a"}, 10, lease=30) == [], "claimed, or not due yet"
    both = await queue.claim({"b", "c"}, 10, lease=30)
    assert [q.message.id for q in both] == [ids[1], ids[3], ids[5]]
    assert await queue.claim(None, 10, lease=30) == []

    backend.clock.set(now + timedelta(minutes=2))  # every lease has run out; `later` is due
    again = await queue.claim({"a"}, 2, lease=30)
    assert [q.message.id for q in again] == [ids[0], ids[2]]
    rest = await queue.claim({"a", "b", "c"}, 10, lease=30)
    assert [q.message.id for q in rest] == [ids[1], ids[3], ids[4], ids[5], later.id]
