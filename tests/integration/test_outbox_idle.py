"""An idle consumer of the local transport: how often it claims, and what wakes it.

On PostgreSQL, where NOTIFY tells the worker of new rows and of rows put back, a claim that came
back empty is not repeated until a wake-up or until one of the consumer's rows may come due (a
retry's delay, a lease running out), at most every ``idle_poll`` seconds. On SQLite, which hears
no other process, the consumer claims once per poll interval, as before.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from orderly.adapters.db.outbox_queue import OutboxQueue
from orderly.adapters.db.tables import outbox_messages
from orderly.adapters.system import SystemClock
from orderly.adapters.transports.local import LocalTransport
from orderly.domain.events import Message
from orderly.services.messaging import Subscription, TransportUnavailable
from orderly.services.ports import QueuedMessage, StorageUnavailable
from orderly.services.relay import Relay
from orderly.testing import RecordingAlerts
from tests.conftest import Backend
from tests.integration.test_outbox_wakeups import message as unsent

TYPE = "idle.test"
OTHER = "idle.other"


def message(type_: str = TYPE) -> Message:
    return unsent(type_)


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
        # Due already, yet not claimed (the test claims nothing): held by someone; poll.
        assert await queue.quiet_for({TYPE}) == 0.25
        backend.clock.advance(timedelta(seconds=2.99))
        assert await queue.quiet_for({OTHER}) == 0.02  # about to run out: the least wait
    finally:
        await queue.stop()


class FailingOnce(CountingQueue):
    fail_next = False

    async def claim(
        self, types: Collection[str] | None, limit: int, lease: float
    ) -> list[QueuedMessage]:
        if self.fail_next:
            self.fail_next = False
            raise StorageUnavailable("connection reset during the claim")
        return await super().claim(types, limit, lease)


async def test_a_consumer_whose_claim_failed_claims_again_at_once(backend: Backend) -> None:
    """What woke it is still there: the next receive claims, it does not wait out the quiet
    time of the claim before (5 s on PostgreSQL)."""
    queue = FailingOnce(backend.container.engine, clock=SystemClock(), worker_id="idle")
    transport = LocalTransport(queue)
    await transport.connect()
    try:
        assert await transport.receive(SUBSCRIPTION, 10, timeout=0.3) == []
        queue.fail_next = True
        added = message()
        await other_process(backend).add([added])
        with pytest.raises(TransportUnavailable):
            await transport.receive(SUBSCRIPTION, 10, timeout=1.0)
        loop = asyncio.get_running_loop()
        failed = loop.time()
        got = await transport.receive(SUBSCRIPTION, 10, timeout=3.0)
        assert [d.message.id for d in got] == [added.id]
        assert loop.time() - failed < (0.1 if backend.is_postgres else 0.4)
    finally:
        await transport.close()


async def test_an_update_that_makes_a_row_claimable_wakes_its_consumers(backend: Backend) -> None:
    """On PostgreSQL: a row put back unclaimed, sent again (the redrive of stranded orders) or
    made due earlier NOTIFYs its type; a claim, a lease moved on and an acknowledgement do not.
    SQLite hears no other process: nothing is woken by another connection's update."""
    queue = OutboxQueue(backend.container.engine, clock=SystemClock(), worker_id="q")
    await queue.start()
    other = other_process(backend)
    o = outbox_messages.c
    try:
        await other.add([message()])
        waiter = queue.waiter({TYPE})
        [row] = await other.claim({TYPE}, 10, lease=30)

        async def woken_by(*values: dict[Any, object]) -> list[bool]:
            answers = []
            for changed in values:
                waiter.clear()
                async with backend.container.engine.begin() as conn:
                    await conn.execute(
                        outbox_messages.update().where(o.id == row.id).values(changed)
                    )
                try:
                    await asyncio.wait_for(waiter.wait(), timeout=0.5)
                    answers.append(True)
                except TimeoutError:
                    answers.append(False)
            return answers

        now = datetime.now(UTC)
        expected = backend.is_postgres
        assert await woken_by(
            {o.claimed_until: now + timedelta(seconds=60)},  # the lease moved on
            {o.sent_at: now, o.claimed_by: None, o.claimed_until: None},  # acknowledged
            {o.sent_at: None, o.available_at: now + timedelta(hours=1)},  # sent again, later
            {o.available_at: now},  # due earlier
            {o.claimed_by: "w", o.claimed_until: now + timedelta(seconds=30)},  # claimed
            {o.claimed_by: None, o.claimed_until: None},  # put back
        ) == [False, False, expected, expected, False, expected]
    finally:
        await queue.stop()


async def test_a_due_row_locked_by_another_session_is_polled_for_not_spun_on(
    backend: Backend,
) -> None:
    """A session left idle in its transaction holding a due row: the consumer's claims skip it
    (SKIP LOCKED) and it claims again every poll interval, not in a tight loop."""
    if not backend.is_postgres:
        # SQLite has one writer and no row locks: the poll interval is all there is.
        assert await consumer_queue(backend, "x").quiet_for({TYPE}) == 0.25
        return
    other = other_process(backend)
    await other.add([message()])
    queue = consumer_queue(backend, "idle")
    transport = LocalTransport(queue)
    await transport.connect()
    try:
        async with backend.container.engine.connect() as holder:
            await holder.begin()
            await holder.execute(
                sa.select(outbox_messages.c.id)
                .where(outbox_messages.c.type == TYPE)
                .with_for_update()
            )
            assert await transport.receive(SUBSCRIPTION, 10, timeout=1.5) == []
            assert 4 <= queue.claims <= 8  # every 0.25 s
            await holder.rollback()
        got = await transport.receive(SUBSCRIPTION, 10, timeout=1.0)
        assert len(got) == 1
    finally:
        await transport.close()


async def test_a_lost_listener_is_replaced_once_and_its_waiters_hear_again(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every waiter of the process is woken when the listener is lost, and each then finds it
    gone: one of them reconnects, the others wait for it (no burst of connections)."""
    listens = 0
    add_listener = asyncpg.Connection.add_listener

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal listens
        listens += 1
        return await add_listener(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "add_listener", counted)
    queue = consumer_queue(backend, "idle")
    transport = LocalTransport(queue)
    await transport.connect()
    if not backend.is_postgres:
        assert not queue.listening  # SQLite: nothing to lose
        await transport.close()
        return
    subscriptions = [Subscription(f"c{i}", frozenset({f"{TYPE}.{i}"})) for i in range(10)]
    stop = asyncio.Event()

    received: dict[str, float] = {}

    async def pump(subscription: Subscription) -> None:
        while not stop.is_set():
            for delivery in await transport.receive(subscription, 10, timeout=1.0):
                received[delivery.message.id] = asyncio.get_running_loop().time()

    pumps = [asyncio.create_task(pump(s)) for s in subscriptions]
    try:
        await asyncio.sleep(0.5)  # all idle: quiet for 5 s
        listener = queue._listener
        assert listener is not None
        async with backend.container.engine.begin() as conn:
            await conn.execute(
                sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": listener.get_server_pid()}
            )
        await asyncio.sleep(1.0)
        assert queue.listening
        assert listens == 2  # the first listener and its one replacement
        async with backend.container.engine.connect() as conn:
            listeners = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
                )
            )
        assert listeners == 1
        added = message(f"{TYPE}.3")
        await other_process(backend).add([added])
        sent = asyncio.get_running_loop().time()
        await asyncio.sleep(0.3)
        assert received[added.id] - sent < 0.2  # the NOTIFY, heard by the new listener
    finally:
        stop.set()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await transport.close()


class RecordingTransport(LocalTransport):
    """What the relay publishes, and when (a broker stand-in: the relay is what is tested)."""

    def __init__(self, queue: OutboxQueue) -> None:
        super().__init__(queue)
        self.published: list[tuple[float, str, int]] = []

    async def publish(
        self, messages: Sequence[Message], attempts: Sequence[int] | None = None
    ) -> None:
        now = asyncio.get_running_loop().time()
        tries = attempts if attempts is not None else [1] * len(messages)
        self.published += [(now, m.id, a) for m, a in zip(messages, tries, strict=True)]


async def test_an_idle_relay_claims_rarely_and_publishes_a_row_put_back_when_it_is_due(
    backend: Backend,
) -> None:
    async with backend.container.engine.begin() as conn:
        await conn.execute(outbox_messages.delete())  # what the demo seed announced
    queue = consumer_queue(backend, "relay")
    transport = RecordingTransport(queue)
    relay = Relay(
        queue,
        transport,
        backend.container.message_uow,
        clock=SystemClock(),
        alerts=RecordingAlerts(),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.sleep(1.5)
        if backend.is_postgres:
            assert queue.claims == 1
        else:
            assert queue.claims >= 5  # every 0.25 s
        other, row = await claimed_by_other(backend, lease=30)
        loop = asyncio.get_running_loop()
        await other.reschedule(row.id, 1.0)  # its first attempt failed: due again in 1 s
        put_back = loop.time()
        for _ in range(40):
            if transport.published:
                break
            await asyncio.sleep(0.1)
        [(at, message_id, attempt)] = transport.published
        assert (message_id, attempt) == (row.message.id, 2)
        assert 0.9 <= at - put_back < 1.6
    finally:
        stop.set()
        await running


async def test_a_listener_that_stops_answering_is_replaced(backend: Backend) -> None:
    """A connection can die without a word (a NAT forgetting it, a failover): its backend is
    stopped here (SIGSTOP), so the socket stays open and nothing answers. The queue asks the
    listener for an answer while it waits, drops the silent one and listens again."""
    queue = OutboxQueue(
        backend.container.engine,
        clock=SystemClock(),
        worker_id="idle",
        listener_check_every=0.5,
        listener_check_timeout=0.5,
    )
    await queue.start()
    if not backend.is_postgres:
        assert not queue.listening  # SQLite: no listener
        return
    silent: asyncpg.Connection | None = queue._listener
    assert silent is not None
    pid = silent.get_server_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        waiter = queue.waiter({TYPE})
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 4.0 and not silent.is_closed():
            await queue.wait(waiter, 0.2)
        assert silent.is_closed()
        while loop.time() - started < 6.0 and not queue.listening:
            await queue.wait(waiter, 0.2)
        assert queue.listening
        assert queue._listener is not silent
        waiter.clear()
        await other_process(backend).add([message()])
        await asyncio.wait_for(waiter.wait(), timeout=1.0)  # the new listener hears
    finally:
        os.kill(pid, signal.SIGCONT)
        await queue.stop()
