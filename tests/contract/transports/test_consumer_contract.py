"""The consumer runtime's promises, on every transport's real server and a real database.

Applied exactly once (inbox), retried with backoff, dead-lettered after N attempts with its
context and an alert, replayable through the same inbox. The handler's effect is a stock
movement, so "exactly once" is checked on data, not on counters.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import pytest
import sqlalchemy as sa

from orderly.adapters.db.engine import create_engine, dispose_engine
from orderly.adapters.db.outbox_queue import OutboxQueue
from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.tables import outbox_messages, stock
from orderly.adapters.system import SystemClock
from orderly.adapters.transports.local import OutboxDeliveries
from orderly.domain.events import Message
from orderly.domain.processing import Allocation
from orderly.services.consumer import (
    ConsumerRuntime,
    Handler,
    HandlerFn,
    PermanentError,
    RetryPolicy,
    RuntimeOptions,
)
from orderly.services.dead_letters import DeadLetterDesk, NotReplayable
from orderly.services.messaging import Transport
from orderly.services.ports import JSON, MessageUnitOfWork, NewDeadLetter
from orderly.services.relay import Relay
from tests.contract.transports.conftest import OpenTransport, ReadDeadLetters

pytestmark = pytest.mark.timeout(90)

SKU, WAREHOUSE, START = "PROD-006", "WH-AUS", 50
TYPE = "test.stock-added"


@dataclass
class RecordingAlerts:
    letters: list[tuple[NewDeadLetter, int]] = field(default_factory=list)

    async def needs_attention(self, order_id: str, why: str, detail: dict[str, Any]) -> None:
        raise AssertionError(f"no saga runs here, yet {order_id} needs attention: {why}")

    async def dead_lettered(self, letter: NewDeadLetter, letter_id: int) -> None:
        self.letters.append((letter, letter_id))


@dataclass
class Switch:
    """What the test handler does: fail (transiently or for good) or apply its effect."""

    failing: bool = False
    permanent: bool = False
    calls: list[tuple[str, float]] = field(default_factory=list)


def stock_adding_handler(switch: Switch, policy: RetryPolicy) -> Handler:
    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        switch.calls.append((message.id, time.monotonic()))
        if switch.failing:
            if switch.permanent:
                raise PermanentError("this message can never work")
            raise ConnectionError("the downstream service is down")
        await uow.stock.put_back(Allocation(SKU, WAREHOUSE, int(message.payload["n"])))

    async def on_dead_letter(uow: MessageUnitOfWork, message: Message, reason: str) -> JSON:
        return {"n": message.payload["n"]}

    return Handler("stock-adder", frozenset({TYPE}), handle, policy, on_dead_letter)


def adding(n: int = 1, message_id: str | None = None) -> Message:
    key = f"order-{uuid.uuid4().hex[:6]}"
    return Message(
        id=message_id or str(uuid.uuid4()),
        type=TYPE,
        key=key,
        payload={"n": n},
        created_at=datetime.now(UTC),
        correlation_id=key,
    )


@dataclass
class Harness:
    runtime: ConsumerRuntime
    alerts: RecordingAlerts
    desk: DeadLetterDesk
    on_hand: Callable[[], Awaitable[int]]


@asynccontextmanager
async def running(
    open_transport: OpenTransport,
    database_url: str,
    switch: Switch,
    policy: RetryPolicy,
    more: tuple[Handler, ...] = (),
    wrap: Callable[[Transport], Transport] | None = None,
) -> AsyncIterator[tuple[Harness, Transport]]:
    engine = create_engine(database_url, pool_size=10)
    alerts = RecordingAlerts()
    stop = asyncio.Event()

    def uow() -> MessageUnitOfWork:
        return SqlUnitOfWork(engine)

    async def on_hand() -> int:
        async with engine.connect() as conn:
            query = sa.select(stock.c.on_hand).where(
                stock.c.sku == SKU, stock.c.warehouse_id == WAREHOUSE
            )
            return int((await conn.execute(query)).scalar_one())

    try:
        async with open_transport(redelivery_after=5.0) as transport:
            handler = stock_adding_handler(switch, policy)
            # What the worker delivers to itself is settled as in bootstrap.consumer_runtime.
            own = OutboxDeliveries(
                OutboxQueue(engine, clock=SystemClock(), worker_id="contract-worker"),
                lease=5.0,
                transport=transport,
            )
            runtime = ConsumerRuntime(
                wrap(transport) if wrap else transport,
                uow,
                [handler, *more],
                clock=SystemClock(),
                alerts=alerts,
                options=RuntimeOptions(lanes=4, batch=16, receive_timeout=0.3),
                own=own,
            )
            # Declared before anything is published (RabbitMQ drops what no queue is bound for).
            for subscriber in (handler, *more):
                await transport.subscribe(subscriber.subscription)
            tasks = [asyncio.create_task(runtime.run(stop))]
            if transport.needs_relay:
                # Replays go back through the outbox, which the relay moves to the broker.
                queue = OutboxQueue(engine, clock=SystemClock(), worker_id="contract-relay")
                relay = Relay(queue, transport, uow, clock=SystemClock(), alerts=alerts)
                tasks.append(asyncio.create_task(relay.run(stop)))
            harness = Harness(runtime, alerts, DeadLetterDesk(uow, SystemClock()), on_hand)
            try:
                yield harness, transport
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
    finally:
        await dispose_engine(engine)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


FAST = RetryPolicy(attempts=3, base_delay=0.5, jitter=0.0, timeout=10)


async def test_each_message_is_applied_exactly_once(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch()
    async with running(open_transport, runtime_database, switch, FAST) as (harness, transport):
        sent = [adding(n) for n in range(1, 21)]
        await transport.publish(sent)

        async def all_applied() -> bool:
            return await harness.on_hand() == START + sum(range(1, 21))

        async def all_settled() -> bool:
            # Counted once acknowledged, which on a broker comes after the commit.
            return harness.runtime.stats.processed >= 20

        await eventually(all_applied)
        await eventually(all_settled)
        await asyncio.sleep(0.5)
        assert await harness.on_hand() == START + sum(range(1, 21))
        assert harness.runtime.stats.processed == 20


async def test_a_duplicated_message_is_skipped_by_the_inbox(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch()
    async with running(open_transport, runtime_database, switch, FAST) as (harness, transport):
        twice = adding(5)
        await transport.publish([twice])
        await transport.publish([twice])

        async def both_seen() -> bool:
            return harness.runtime.stats.processed == 2

        await eventually(both_seen)
        assert await harness.on_hand() == START + 5
        assert harness.runtime.stats.duplicates == 1


async def test_a_failing_message_is_retried_with_backoff_then_dead_lettered(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch(failing=True)
    async with running(open_transport, runtime_database, switch, FAST) as (harness, transport):
        doomed = adding(7)
        await transport.publish([doomed])

        async def parked() -> bool:
            return len(harness.alerts.letters) == 1

        await eventually(parked)
        await asyncio.sleep(1.5)

        times = [at for message_id, at in switch.calls if message_id == doomed.id]
        assert len(times) == 3, "3 attempts, then no more"
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert gaps[0] >= 0.45, f"first backoff 0.5 s, got {gaps}"
        assert gaps[1] >= 0.95, f"second backoff 1 s, got {gaps}"

        letter, letter_id = harness.alerts.letters[0]
        assert letter.attempts == 3
        assert "ConnectionError" in letter.error
        stored = await harness.desk.show(letter_id)
        assert stored.message == doomed
        assert stored.status == "parked"
        assert stored.context["n"] == 7
        assert [f["attempt"] for f in stored.context["failures"]] == [1, 2, 3]
        assert stored.first_failed_at < stored.last_failed_at
        assert "ConnectionError" in stored.traceback
        assert await harness.on_hand() == START


async def test_a_permanent_error_is_dead_lettered_without_retries(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch(failing=True, permanent=True)
    async with running(open_transport, runtime_database, switch, FAST) as (harness, transport):
        await transport.publish([adding(3)])

        async def parked() -> bool:
            return len(harness.alerts.letters) == 1

        await eventually(parked)
        await asyncio.sleep(1.0)
        assert len(switch.calls) == 1
        assert harness.alerts.letters[0][0].attempts == 1


async def test_a_replay_applies_once_and_a_second_replay_is_refused(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch(failing=True, permanent=True)
    async with running(open_transport, runtime_database, switch, FAST) as (harness, transport):
        await transport.publish([adding(4)])

        async def parked() -> bool:
            return len(harness.alerts.letters) == 1

        await eventually(parked)
        letter_id = harness.alerts.letters[0][1]
        switch.failing = False

        dry = await harness.desk.replay(letter_id, requested_by="ops", dry_run=True)
        assert dry.replay_id is None
        assert await harness.on_hand() == START
        outcome = await harness.desk.replay(letter_id, requested_by="ops")

        async def applied() -> bool:
            return await harness.on_hand() == START + 4

        await eventually(applied)
        stored = await harness.desk.show(letter_id)
        assert stored.status == "replayed"
        [replay] = stored.replays
        assert replay.id == outcome.replay_id
        assert replay.requested_by == "ops"
        assert replay.result == "applied"
        with pytest.raises(NotReplayable):
            await harness.desk.replay(letter_id, requested_by="ops")


async def test_replaying_a_message_whose_effect_was_applied_changes_nothing(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch(failing=True, permanent=True)
    async with running(open_transport, runtime_database, switch, FAST) as (harness, transport):
        parked_message = adding(6)
        await transport.publish([parked_message])

        async def parked() -> bool:
            return len(harness.alerts.letters) == 1

        await eventually(parked)
        # The same message arrives again (a producer retry) and, the fault fixed, is applied.
        switch.failing = False
        await transport.publish([parked_message])

        async def applied() -> bool:
            return await harness.on_hand() == START + 6

        await eventually(applied)
        letter_id = harness.alerts.letters[0][1]
        await harness.desk.replay(letter_id, requested_by="ops")

        async def settled() -> bool:
            stored = await harness.desk.show(letter_id)
            return stored.replays[0].result != "queued"

        await eventually(settled)
        stored = await harness.desk.show(letter_id)
        assert stored.replays[0].result == "already-applied"
        assert await harness.on_hand() == START + 6


class Wrapping:
    """A transport that passes everything it does not override to ``inner``."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


W = TypeVar("W", bound=Wrapping)


def wrapping(kind: Callable[[Transport], W]) -> tuple[list[W], Callable[[Transport], Transport]]:
    """The wrappers ``running`` makes of its transport (for the test to read), and the ``wrap``
    that makes them."""
    made: list[W] = []

    def wrap(transport: Transport) -> Transport:
        made.append(kind(transport))
        return cast(Transport, made[-1])

    return made, wrap


class FailingOnce(Wrapping):
    """A transport whose first receive fails with an error no adapter classified."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.failed = False

    async def receive(self, subscription: Any, max_messages: int, timeout: float) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("an unexpected receive error")
        return await self._inner.receive(subscription, max_messages, timeout)


async def test_an_unexpected_receive_error_does_not_stop_the_consumer(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch()
    wrapped, failing_once = wrapping(FailingOnce)
    async with running(open_transport, runtime_database, switch, FAST, wrap=failing_once) as (
        harness,
        transport,
    ):
        await transport.publish([adding(4)])

        async def applied() -> bool:
            return await harness.on_hand() == START + 4

        await eventually(applied)
        assert wrapped[0].failed


class RecordingAsks(Wrapping):
    """A transport that records how many messages each receive of the stock adder asked for
    and got."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.asks: list[tuple[int, int]] = []

    async def receive(self, subscription: Any, max_messages: int, timeout: float) -> Any:
        got = await self._inner.receive(subscription, max_messages, timeout)
        if subscription.consumer == "stock-adder" and got:
            self.asks.append((max_messages, len(got)))
        return got


async def test_under_a_backlog_each_receive_asks_for_a_quarter_of_the_room_or_more(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    """Four lanes hold up to eight deliveries. Once they are full, the runtime receives again
    when two are settled, not after each one: a receive per message was a claim per message on
    the local transport."""
    switch = Switch()
    wrapped, recording = wrapping(RecordingAsks)
    async with running(open_transport, runtime_database, switch, FAST, wrap=recording) as (
        harness,
        transport,
    ):
        await transport.publish([adding(1) for _ in range(60)])

        async def applied() -> bool:
            return await harness.on_hand() == START + 60

        await eventually(applied, within=30)
    asks = wrapped[0].asks
    assert sum(got for _, got in asks) >= 60
    assert len(asks) > 1
    assert min(asked for asked, _ in asks) >= 2, asks


# ---- hand-offs: a message added by a handler, taken by its consumer in the same transaction ---

FORWARD = "test.stock-forward"


def forwarding_handler(policy: RetryPolicy, forwarded: list[Message], delay: float = 0) -> Handler:
    """Turns a ``test.stock-forward`` into a ``test.stock-added`` for the stock adder."""

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        now = datetime.now(UTC)
        out = Message(
            id=str(uuid.uuid4()),
            type=TYPE,
            key=message.key,
            payload={"n": message.payload["n"]},
            created_at=now,
            correlation_id=message.correlation_id,
            causation_id=message.id,
            not_before=now + timedelta(seconds=delay) if delay else None,
        )
        forwarded.append(out)
        await uow.outbox.add(out)

    return Handler("forwarder", frozenset({FORWARD}), handle, policy)


def forward(n: int) -> Message:
    return replace(adding(n), type=FORWARD)


async def outbox_rows(database_url: str, message_id: str) -> int:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            query = (
                sa.select(sa.func.count())
                .select_from(outbox_messages)
                .where(outbox_messages.c.message_id == message_id)
            )
            return int(await conn.scalar(query) or 0)
    finally:
        await dispose_engine(engine)


async def test_a_message_a_handler_adds_is_handed_to_its_consumer_in_the_same_transaction(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch()
    forwarded: list[Message] = []
    more = (forwarding_handler(FAST, forwarded),)
    async with running(open_transport, runtime_database, switch, FAST, more) as (
        harness,
        transport,
    ):
        await transport.publish([forward(3)])

        async def applied() -> bool:
            return await harness.on_hand() == START + 3

        await eventually(applied)
        await asyncio.sleep(1.5)  # time for a (wrong) second delivery of the handed-off message
        assert await harness.on_hand() == START + 3
        assert len(switch.calls) == 1
        stats = harness.runtime.stats
        assert (stats.processed, stats.handed_off, stats.hand_offs_refused) == (1, 1, 0)
        assert await outbox_rows(runtime_database, forwarded[0].id) == 0, (
            "a handed-off message is not written: no transport can deliver it again"
        )


async def test_a_failed_hand_off_leaves_its_message_to_the_usual_delivery(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch(failing=True, permanent=True)
    forwarded: list[Message] = []
    more = (forwarding_handler(FAST, forwarded),)
    async with running(open_transport, runtime_database, switch, FAST, more) as (
        harness,
        transport,
    ):
        await transport.publish([forward(4)])

        async def parked() -> bool:
            return len(harness.alerts.letters) == 1

        await eventually(parked)
        stats = harness.runtime.stats
        assert stats.hand_offs_refused == 1
        assert stats.handed_off == 0
        # Tried once in the hand-off (rolled back), once delivered (dead-lettered: permanent).
        assert len(switch.calls) == 2
        letter, _ = harness.alerts.letters[0]
        assert letter.consumer == "stock-adder"
        assert letter.message.id == forwarded[-1].id
        assert await harness.on_hand() == START


async def test_a_message_due_later_is_not_handed_off(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch()
    forwarded: list[Message] = []
    more = (forwarding_handler(FAST, forwarded, delay=1.0),)
    async with running(open_transport, runtime_database, switch, FAST, more) as (
        harness,
        transport,
    ):
        await transport.publish([forward(2)])

        async def applied() -> bool:
            return await harness.on_hand() == START + 2

        await eventually(applied)
        _, applied_at = switch.calls[0]

        async def both_settled() -> bool:
            # Counted once acknowledged, which on a broker comes after the commit.
            return harness.runtime.stats.processed == 2

        await eventually(both_settled)
        assert harness.runtime.stats.handed_off == 0
        created = forwarded[0].created_at.timestamp()
        assert time.time() - (time.monotonic() - applied_at) >= created + 0.9


PREPARED = "test.stock-prepared"


def forwarding_to_caller(forwarded: list[Message]) -> HandlerFn:
    """A handler that adds, for each message, one for the consumer with ``prepare``."""

    async def forward_to_caller(uow: MessageUnitOfWork, message: Message) -> None:
        out = replace(adding(message.payload["n"]), type=PREPARED, key=message.key)
        forwarded.append(out)
        await uow.outbox.add(out)

    return forward_to_caller


async def test_a_message_for_a_consumer_that_calls_out_is_delivered_once_by_its_writer(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    """A consumer with ``prepare`` (an outside call) never runs inside another transaction.
    Its message is written claimed by this worker and delivered after the commit, without a
    claim, and on a broker without the relay or the broker (the relay runs here, so a
    publication would come back as a duplicate): once."""
    prepared: list[str] = []
    forwarded: list[Message] = []

    async def call_out(message: Message) -> int:
        prepared.append(message.id)
        return int(message.payload["n"])

    async def apply(uow: MessageUnitOfWork, message: Message, n: int) -> None:
        await uow.stock.put_back(Allocation(SKU, WAREHOUSE, n))

    async def not_called(uow: MessageUnitOfWork, message: Message) -> None:
        raise AssertionError("a handler with prepare runs apply")

    more = (
        Handler("forwarder", frozenset({FORWARD}), forwarding_to_caller(forwarded), FAST),
        Handler("caller", frozenset({PREPARED}), not_called, FAST, prepare=call_out, apply=apply),
    )
    async with running(open_transport, runtime_database, Switch(), FAST, more) as (
        harness,
        transport,
    ):
        await transport.publish([forward(3)])

        async def applied() -> bool:
            return await harness.on_hand() == START + 3

        await eventually(applied)
        await asyncio.sleep(1.5)  # time for a (wrong) second delivery
        assert await harness.on_hand() == START + 3
        assert prepared == [forwarded[0].id]
        stats = harness.runtime.stats
        assert (stats.processed, stats.duplicates, stats.handed_off) == (2, 0, 0)
        assert stats.claimed_on_write == 1
        assert await outbox_rows(runtime_database, forwarded[0].id) == 1


async def test_a_message_delivered_by_its_writer_is_retried_through_the_transport_with_its_attempt(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    """Its first attempt fails in the worker that wrote it; the row is put back, and the
    transport (on a broker: the relay, then the broker) delivers the second attempt as
    attempt 2, the last of 2: dead-lettered after two calls, not three."""
    calls: list[str] = []
    forwarded: list[Message] = []
    twice = RetryPolicy(attempts=2, base_delay=0.5, jitter=0.0, timeout=10)

    async def call_out(message: Message) -> None:
        calls.append(message.id)
        raise ConnectionError("the payment gateway is down")

    async def not_called(uow: MessageUnitOfWork, message: Message) -> None:
        raise AssertionError("prepare fails before apply")

    more = (
        Handler("forwarder", frozenset({FORWARD}), forwarding_to_caller(forwarded), FAST),
        Handler("caller", frozenset({PREPARED}), not_called, twice, prepare=call_out),
    )
    async with running(open_transport, runtime_database, Switch(), FAST, more) as (
        harness,
        transport,
    ):
        await transport.publish([forward(2)])

        async def parked() -> bool:
            return len(harness.alerts.letters) == 1

        await eventually(parked)
        await asyncio.sleep(1.5)  # time for a (wrong) third call
        stats = harness.runtime.stats
        assert stats.claimed_on_write == 1
        assert calls == [forwarded[0].id, forwarded[0].id]
        letter, _ = harness.alerts.letters[0]
        assert (letter.consumer, letter.message.id, letter.attempts) == (
            "caller",
            forwarded[0].id,
            2,
        )
        assert await harness.on_hand() == START


async def test_a_message_delivered_by_its_writer_and_parked_at_once_is_copied_to_the_brokers_dlq(
    open_transport: OpenTransport, runtime_database: str, dead_letter_queue: ReadDeadLetters
) -> None:
    """A permanent error at its first attempt: it never went through the broker, yet its copy
    waits in the consumer's dead-letter queue there, as a broker delivery's would."""
    forwarded: list[Message] = []
    calls: list[str] = []

    async def call_out(message: Message) -> None:
        calls.append(message.id)
        raise PermanentError("the card is not a card")

    async def not_called(uow: MessageUnitOfWork, message: Message) -> None:
        raise AssertionError("prepare fails before apply")

    more = (
        Handler("forwarder", frozenset({FORWARD}), forwarding_to_caller(forwarded), FAST),
        Handler("caller", frozenset({PREPARED}), not_called, FAST, prepare=call_out),
    )
    async with running(open_transport, runtime_database, Switch(), FAST, more) as (
        harness,
        transport,
    ):
        await transport.publish([forward(1)])

        async def parked() -> bool:
            return len(harness.alerts.letters) == 1

        await eventually(parked)
        assert harness.runtime.stats.claimed_on_write == 1
        letter, _ = harness.alerts.letters[0]
        assert (letter.message.id, letter.attempts) == (forwarded[0].id, 1)
        copies = await dead_letter_queue("caller", 1)
        if copies is None:
            assert transport.name == "local"  # its dead-letter store is the only one
        else:
            assert copies == [(forwarded[0].id, 1, "PermanentError: the card is not a card")]
        await asyncio.sleep(1.0)  # time for a (wrong) second delivery through the relay
        assert calls == [forwarded[0].id]


async def test_a_type_two_consumers_want_goes_through_the_transport_to_both(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    switch = Switch()
    forwarded: list[Message] = []
    seen: list[str] = []

    async def watch(uow: MessageUnitOfWork, message: Message) -> None:
        seen.append(message.id)

    watcher = Handler("stock-watcher", frozenset({TYPE}), watch, FAST)
    more = (forwarding_handler(FAST, forwarded), watcher)
    async with open_transport(redelivery_after=5.0) as probe:
        fans_out = probe.fans_out
    if not fans_out:
        # One consumer per type on this transport: a second one is refused, never starved.
        with pytest.raises(ValueError, match="one consumer"):
            async with running(open_transport, runtime_database, switch, FAST, more):
                pass
        return
    async with running(open_transport, runtime_database, switch, FAST, more) as (
        harness,
        transport,
    ):
        await transport.publish([forward(5)])

        async def both() -> bool:
            return await harness.on_hand() == START + 5 and len(seen) == 1

        await eventually(both)
        assert seen == [forwarded[0].id]
        assert harness.runtime.stats.handed_off == 0
        assert await outbox_rows(runtime_database, forwarded[0].id) == 1


# ---- lanes: one per key, so a slow message holds up only its own key -------------------------

SLOW = "test.slow-call"


async def test_a_slow_message_holds_up_only_its_own_key(
    open_transport: OpenTransport, runtime_database: str
) -> None:
    """Like a payment gateway call: while one order's message waits, the others' go on (the
    handler has two lanes, so a hash of the key choosing between two fixed lanes would stop
    about half of them)."""
    gate = asyncio.Event()
    done: list[str] = []

    async def call_outside(message: Message) -> None:
        if message.key == "slow":
            await gate.wait()

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        done.append(message.key)

    patient = replace(FAST, timeout=60)  # the slow call never times out during the test
    slow_handler = Handler(
        "slow-caller", frozenset({SLOW}), handle, patient, prepare=call_outside, lanes=2
    )
    async with running(open_transport, runtime_database, Switch(), FAST, (slow_handler,)) as (
        _,
        transport,
    ):
        keys = [f"k{i:02d}" for i in range(12)]
        await transport.publish([replace(adding(), type=SLOW, key="slow")])
        await asyncio.sleep(0.5)
        await transport.publish([replace(adding(), type=SLOW, key=k) for k in keys])

        async def others_done() -> bool:
            return set(done) == set(keys)

        await eventually(others_done, within=5.0)
        assert "slow" not in done
        gate.set()

        async def slow_done() -> bool:
            return "slow" in done

        await eventually(slow_done)
