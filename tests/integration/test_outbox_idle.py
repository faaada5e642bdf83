"""An idle consumer of the local transport: how often it claims, and what wakes it.

On PostgreSQL, where NOTIFY tells the worker of new rows and of rows put back, a claim that came
back empty is not repeated until a wake-up or until one of the consumer's rows may come due (a
retry's delay, a lease running out), at most every ``idle_poll`` seconds. On SQLite, which hears
no other process, the consumer claims once per poll interval, as before.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from orderly.adapters.db.outbox_queue import OutboxQueue
from orderly.adapters.db.tables import outbox_messages
from orderly.adapters.system import SystemClock
from orderly.adapters.transports.local import LocalTransport
from orderly.domain.events import Message
from orderly.services.messaging import Subscription
from orderly.services.ports import QueuedMessage
from tests.conftest import Backend

TYPE = "idle.test"
OTHER = "idle.other"


def message(type_: str = TYPE) -> Message:
    return Message(
        id=str(uuid.uuid4()),
        type=type_,
        key="k",
        payload={},
        created_at=datetime.now(UTC),
        correlation_id="k",
    )


class CountingQueue(OutboxQueue):
    """The real queue, counting its claims."""

    claims = 0

    async def claim(
        self, types: Collection[str] | None, limit: int, lease: float
    ) -> list[QueuedMessage]:
        self.claims += 1
        return await super().claim(types, limit, lease)


def consumer_queue(backend: Backend, worker: str) -> CountingQueue:
    return CountingQueue(backend.container.engine, clock=SystemClock(), worker_id=worker)


def other_process(backend: Backend) -> OutboxQueue:
    """Another process's queue: no in-process signal shared with the consumer's."""
    return OutboxQueue(backend.container.engine, clock=SystemClock(), worker_id="other")


SUBSCRIPTION = Subscription("idle-consumer", frozenset({TYPE}))


async def test_an_idle_consumer_claims_rarely_on_postgres_and_each_poll_interval_on_sqlite(
    backend: Backend,
) -> None:
    queue = consumer_queue(backend, "idle")
    transport = LocalTransport(queue)
    await transport.connect()
    try:
        for _ in range(3):
            assert await transport.receive(SUBSCRIPTION, 10, timeout=1.0) == []
        if backend.is_postgres:
            assert queue.listening
            # One claim, then nothing can come due (no rows): quiet for idle_poll (5 s).
            assert queue.claims == 1
        else:
            assert not queue.listening
            assert 9 <= queue.claims <= 14  # every 0.25 s for 3 s
    finally:
        await transport.close()


async def test_an_idle_consumer_wakes_at_once_for_a_row_another_process_adds(
    backend: Backend,
) -> None:
    if not backend.is_postgres:
        # SQLite hears no other process: the poll interval finds the row.
        assert not consumer_queue(backend, "x").listening
    queue = consumer_queue(backend, "idle")
    transport = LocalTransport(queue)
    await transport.connect()
    other = other_process(backend)
    try:
        assert await transport.receive(SUBSCRIPTION, 10, timeout=0.5) == []
        await other.add([message(OTHER)])  # another type: no wake-up, no claim
        assert await transport.receive(SUBSCRIPTION, 10, timeout=0.5) == []
        added = message()
        loop = asyncio.get_running_loop()

        async def add_soon() -> float:
            await asyncio.sleep(0.3)
            await other.add([added])
            return loop.time()

        adding = asyncio.create_task(add_soon())
        got = await transport.receive(SUBSCRIPTION, 10, timeout=3.0)
        latency = loop.time() - await adding
        assert [d.message.id for d in got] == [added.id]
        assert latency < (0.2 if backend.is_postgres else 0.5)
        if backend.is_postgres:
            assert queue.claims == 2  # the first, empty, and the one the NOTIFY woke
    finally:
        await transport.close()


async def claimed_by_other(backend: Backend, lease: float) -> tuple[OutboxQueue, QueuedMessage]:
    other = other_process(backend)
    await other.add([message()])
    [row] = await other.claim({TYPE}, 10, lease=lease)
    return other, row


async def test_a_row_another_process_puts_back_is_claimed_when_it_comes_due(
    backend: Backend,
) -> None:
    """A retry's new due time is only known to the process that set it: the put-back wakes
    the idle consumer (NOTIFY on PostgreSQL), which then waits for exactly that time."""
    other, row = await claimed_by_other(backend, lease=30)
    queue = consumer_queue(backend, "idle")
    transport = LocalTransport(queue)
    await transport.connect()
    try:
        assert await transport.receive(SUBSCRIPTION, 10, timeout=0.3) == []  # leased to other
        loop = asyncio.get_running_loop()
        await other.reschedule(row.id, 1.0)
        put_back = loop.time()
        got = await transport.receive(SUBSCRIPTION, 10, timeout=4.0)
        waited = loop.time() - put_back
        assert [(d.message.id, d.attempt) for d in got] == [(row.message.id, 2)]
        assert 0.9 <= waited < 1.6
    finally:
        await transport.close()


async def test_a_lease_running_out_is_noticed_when_it_runs_out(backend: Backend) -> None:
    """A process that claimed a row and died: the idle consumer claims it as its lease runs
    out, not at the next idle poll (5 s)."""
    _, row = await claimed_by_other(backend, lease=1.0)
    queue = consumer_queue(backend, "idle")
    transport = LocalTransport(queue)
    await transport.connect()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await transport.receive(SUBSCRIPTION, 10, timeout=4.0)
        assert [d.message.id for d in got] == [row.message.id]
        assert loop.time() - started < 1.7
    finally:
        await transport.close()


async def test_quiet_for_is_the_time_until_the_next_row_of_the_types_may_come_due(
    backend: Backend,
) -> None:
    queue = OutboxQueue(
        backend.container.engine, clock=backend.clock, worker_id="q", poll_interval=0.25
    )
    await queue.start()
    try:
        if not backend.is_postgres:
            assert await queue.quiet_for({TYPE}) == 0.25
            assert await queue.quiet_for(None) == 0.25
            return
        async with backend.container.engine.begin() as conn:
            await conn.execute(outbox_messages.delete())  # what the demo seed announced
        assert await queue.quiet_for({TYPE}) == 5.0  # nothing unsent
        assert await queue.quiet_for(None) == 5.0
        await queue.add([message(TYPE), message(OTHER)])
        rows = {r.message.type: r for r in await queue.claim(None, 10, lease=30)}
        await queue.reschedule(rows[TYPE].id, 2.0)  # due in 2 s
        assert await queue.quiet_for({TYPE}) == 2.0
        assert await queue.quiet_for({OTHER}) == 5.0  # leased for 30 s: idle_poll first
        assert await queue.quiet_for(None) == 2.0
        backend.clock.advance(timedelta(seconds=27))
        assert await queue.quiet_for({OTHER}) == 3.0  # its lease runs out in 3 s
        assert await queue.quiet_for({TYPE}) == 0.02  # due already: claim again soon
    finally:
        await queue.stop()
