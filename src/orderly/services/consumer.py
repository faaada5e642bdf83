"""The consumer runtime: one behaviour above every transport.

For each delivery, in ONE database transaction: record ``(consumer, message id)`` in the inbox
(a duplicate is acknowledged and skipped), run the handler, and (local transport, or a message
the worker delivered to itself) acknowledge the outbox row; commit, then acknowledge to the
broker. A failure is logged as an attempt; a transient one is retried after an exponential,
jittered delay by the transport (never blocking other messages); a permanent one, or the last
attempt, parks the message in the dead-letter store with its context, runs the handler's
``on_dead_letter`` (an order is failed), removes it from the transport and fires the alert
hook.

An unreachable database is not the message's fault: the delivery is kept and tried again when
the database answers, without spending attempts.
"""

from __future__ import annotations

import asyncio
import random
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from orderly.domain.events import Message
from orderly.services.messaging import (
    H_REPLAY_OF,
    Delivery,
    OwnDeliveries,
    Subscription,
    Transport,
    TransportUnavailable,
)
from orderly.services.ports import (
    JSON,
    Alerts,
    Clock,
    FailedAttempt,
    MessageUnitOfWork,
    MessageUnitOfWorkFactory,
    NewDeadLetter,
    StorageUnavailable,
)
from orderly.services.waiting import sleep_or_stop

log = structlog.get_logger("orderly.consumer")


class PermanentError(Exception):
    """A failure that no retry can fix (bad data, a broken invariant): dead-letter at once."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, stretched by up to ``jitter``.

    Defaults follow seed 000 (BullMQ ``attempts: 3, backoff: 2s``): tries at 0 s, ~2 s, ~4 s.
    """

    attempts: int = 3
    base_delay: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.25
    timeout: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed ``attempt`` (counting from 1); never below the base."""
        exponential = min(self.base_delay * 2.0 ** (attempt - 1), self.max_delay)
        return float(exponential * (1 + self.jitter * rng.random()))


HandlerFn = Callable[[MessageUnitOfWork, Message], Awaitable[None]]
PrepareFn = Callable[[Message], Awaitable[Any]]
ApplyFn = Callable[[MessageUnitOfWork, Message, Any], Awaitable[None]]
DeadLetterFn = Callable[[MessageUnitOfWork, Message, str], Awaitable[JSON]]


async def _no_context(uow: MessageUnitOfWork, message: Message, reason: str) -> JSON:
    return {}


@dataclass(frozen=True, slots=True)
class Handler:
    """A consumer: its durable name, the message types it handles, what it does with them.

    ``on_dead_letter`` runs in the dead-letter transaction (fail the order, say) and returns
    context stored with the letter.

    A handler that calls a slow outside service (a payment gateway) sets ``prepare``: it runs
    before the transaction opens, so no database connection waits on the network, and its
    result goes to ``apply`` inside the transaction. ``prepare`` must be safe to repeat (an
    idempotency key), since a redelivered message runs it again. ``lanes`` overrides how many
    deliveries of this consumer run at once.
    """

    consumer: str
    types: frozenset[str]
    handle: HandlerFn
    policy: RetryPolicy = RetryPolicy()
    on_dead_letter: DeadLetterFn = _no_context
    prepare: PrepareFn | None = None
    apply: ApplyFn | None = None
    lanes: int | None = None
    inline: bool = True

    @property
    def takes_hand_offs(self) -> bool:
        """Whether it may run inside the transaction that produced its message: only a
        handler without ``prepare`` (no outside call may hold a transaction open)."""
        return self.inline and self.prepare is None

    @property
    def subscription(self) -> Subscription:
        return Subscription(self.consumer, self.types)


@dataclass
class RuntimeStats:
    """Counters a benchmark or a metrics endpoint reads."""

    processed: int = 0
    duplicates: int = 0
    retried: int = 0
    handed_off: int = 0
    hand_offs_refused: int = 0
    claimed_on_write: int = 0
    """Messages a transaction wrote already claimed, delivered here without a claim."""
    dead_lettered: int = 0
    storage_waits: int = 0
    by_consumer: dict[str, int] = field(default_factory=dict)


@dataclass
class RuntimeOptions:
    lanes: int = 16
    batch: int = 64
    receive_timeout: float = 1.0
    max_backoff: float = 30.0
    drain_timeout: float = 10.0
    hand_off_limit: int = 32
    """Messages a transaction may hand to this runtime's own consumers (0: none)."""


class ConsumerRuntime:
    """Receives deliveries for every handler and processes them in per-key lanes.

    Messages with the same key go to the same lane, one at a time, so a transport that delivers
    one key in order has it processed in order; different keys run concurrently.
    """

    def __init__(
        self,
        transport: Transport,
        uow: MessageUnitOfWorkFactory,
        handlers: Sequence[Handler],
        *,
        clock: Clock,
        alerts: Alerts,
        options: RuntimeOptions | None = None,
        rng: random.Random | None = None,
        own: OwnDeliveries | None = None,
    ) -> None:
        """``own``: how to settle the messages this runtime delivers to itself
        (``OutboxDeliveries``); None: it delivers none."""
        _check_routing(transport, handlers)
        self._transport = transport
        self._uow = uow
        self._handlers = list(handlers)
        self._clock = clock
        self._alerts = alerts
        self._options = options or RuntimeOptions()
        self._rng = rng or random.Random()
        # Only a type with exactly one consumer here is handed off: a type two consumers want
        # (a fan-out transport) goes through the transport to both.
        wanted = Counter(type_ for handler in self._handlers for type_ in handler.types)
        self._inline = {
            type_: handler
            for handler in self._handlers
            if handler.takes_hand_offs
            for type_ in handler.types
            if wanted[type_] == 1
        }
        # A message added here for a consumer of this runtime (and not handed off) is written
        # claimed by this worker and delivered after the commit, on every transport.
        self._own_deliveries = own
        self._own = {
            type_: handler
            for handler in self._handlers
            for type_ in handler.types
            if wanted[type_] == 1
        }
        self._intakes: dict[str, _Intake] = {}
        self.stats = RuntimeStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish what was received and return."""
        await self._subscribe_all(stop)
        async with asyncio.TaskGroup() as group:
            for handler in self._handlers:
                group.create_task(self._pump(handler, stop))

    async def _subscribe_all(self, stop: asyncio.Event) -> None:
        pause = 0.5
        while not stop.is_set():
            try:
                for handler in self._handlers:
                    await self._transport.subscribe(handler.subscription)
                return
            except TransportUnavailable as exc:
                log.warning("transport unavailable, retrying", error=str(exc), wait=pause)
                await sleep_or_stop(stop, pause)
                pause = min(pause * 2, self._options.max_backoff)

    async def _pump(self, handler: Handler, stop: asyncio.Event) -> None:
        options = self._options
        lane_count = handler.lanes or options.lanes
        # Hold at most two deliveries per lane: a message claimed under a lease must not wait
        # in a queue until the lease runs out (it would be handed out again, a duplicate).
        room = _Room(2 * lane_count)
        # Under a backlog, receive again only once a quarter of the room is free, not at every
        # settled delivery: one receive per message made a claim transaction per message on
        # the local transport (bench/README.md, "Saga"). The lanes stay busy meanwhile: three
        # quarters of the room is still held.
        refill = max(1, room.capacity // 4)
        lanes = _KeyLanes(lane_count)
        self._intakes[handler.consumer] = _Intake(
            lanes, room, stop, lambda d: self._settle(handler, d, room)
        )
        pause = 0.5
        try:
            while not stop.is_set():
                free = await room.wait_for_space(stop, refill)
                if free == 0:
                    continue
                try:
                    deliveries = await self._transport.receive(
                        handler.subscription, min(options.batch, free), options.receive_timeout
                    )
                except TransportUnavailable as exc:
                    log.warning(
                        "receive failed, retrying",
                        consumer=handler.consumer,
                        error=str(exc),
                        wait=pause,
                    )
                    await sleep_or_stop(stop, pause)
                    pause = min(pause * 2, options.max_backoff)
                    continue
                except Exception:
                    # An error no adapter classified: logged with its traceback, and retried
                    # like an outage. It must not stop this consumer, or the worker with it.
                    log.exception(
                        "receive failed unexpectedly, retrying", consumer=handler.consumer
                    )
                    await sleep_or_stop(stop, pause)
                    pause = min(pause * 2, options.max_backoff)
                    continue
                pause = 0.5
                room.take(len(deliveries))
                for delivery in deliveries:
                    lanes.add(delivery, lambda d: self._settle(handler, d, room))
        finally:
            self._intakes.pop(handler.consumer, None)
            await lanes.drain(options.drain_timeout)

    async def _settle(self, handler: Handler, delivery: Delivery, room: _Room) -> None:
        try:
            await self.process(handler, delivery)
        except TransportUnavailable as exc:
            # The message stays unacknowledged; the transport hands it out again.
            log.warning(
                "could not settle a delivery",
                consumer=handler.consumer,
                message_id=delivery.message.id,
                error=str(exc),
            )
        except Exception:
            log.exception(
                "consumer runtime error", consumer=handler.consumer, message_id=delivery.message.id
            )
        finally:
            room.give_back()

    async def process(self, handler: Handler, delivery: Delivery) -> None:
        """Apply one delivery exactly once, or account for its failure."""
        try:
            fresh = await self._while_storage_is_down(lambda: self._apply(handler, delivery))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(handler, delivery, exc)
            return
        if not self._acks_in_transaction(delivery):
            await self._transport.ack(delivery)
        self.stats.processed += 1
        if not fresh:
            self.stats.duplicates += 1

    async def _apply(self, handler: Handler, delivery: Delivery) -> bool:
        message = delivery.message
        prepared: Any = None
        if handler.prepare is not None:
            async with asyncio.timeout(handler.policy.timeout):
                prepared = await handler.prepare(message)
        try:
            fresh = await self._transaction(handler, delivery, prepared, hand_off=True)
        except _HandOffFailed as failed:
            # Everything was rolled back; do the delivery alone, the rest goes the usual way.
            self.stats.hand_offs_refused += 1
            log.info(
                "hand-off failed, its message will be delivered",
                consumer=failed.handler.consumer,
                message_id=failed.message.id,
                type=failed.message.type,
                error=failed.error,
            )
            fresh = await self._transaction(handler, delivery, prepared, hand_off=False)
        if not fresh:
            log.info("duplicate skipped", consumer=handler.consumer, message_id=message.id)
        return fresh

    async def _transaction(
        self, handler: Handler, delivery: Delivery, prepared: Any, *, hand_off: bool
    ) -> bool:
        message = delivery.message
        handing: list[tuple[Handler, Message]] = []
        claiming: list[tuple[Handler, Message]] = []
        try:
            async with self._uow() as uow:
                now = self._clock.now()
                if self._acks_in_transaction(delivery):
                    # Before the inbox record, which the SQL adapter sends it with.
                    await uow.acks.acknowledge(delivery.handle, now)
                fresh = await uow.inbox.record(handler.consumer, message.id, now)
                if fresh:
                    async with asyncio.timeout(handler.policy.timeout):
                        if handler.apply is not None:
                            await handler.apply(uow, message, prepared)
                        else:
                            await handler.handle(uow, message)
                    if hand_off:
                        await self._hand_off(uow, handing)
                        claiming = self._claim_own(uow, now)
                replay = _replay_id(message)
                if replay is not None:
                    await uow.dead_letters.finish_replay(
                        replay, "applied" if fresh else "already-applied", now
                    )
                await uow.commit()
                if claiming:
                    self._deliver_own(claiming, uow.outbox.claimed_rows)
        except (StorageUnavailable, asyncio.CancelledError):
            raise
        except Exception as exc:
            if handing:
                taker, taken = handing[0]
                raise _HandOffFailed(taker, taken, f"{type(exc).__name__}: {exc}") from exc
            raise
        return fresh

    async def _hand_off(
        self, uow: MessageUnitOfWork, handing: list[tuple[Handler, Message]]
    ) -> None:
        """Let this runtime's consumers take, in this same transaction, the messages it added.

        A message whose consumer runs here and needs no outside call is handled at once,
        recorded in the inbox, and written to the outbox as already delivered: one transaction
        instead of one per message, and no wait for a delivery. If such a handler fails, the
        whole transaction is rolled back and the delivery is done again alone (see ``_apply``);
        the message then goes the usual way, with its consumer's retries and dead-lettering. A
        message due later, or a replay, always goes the usual way. At most ``hand_off_limit``
        per transaction.
        ``handing`` holds the hand-off under way, so a failure is blamed on it.
        """
        for _ in range(self._options.hand_off_limit):
            now = self._clock.now()
            found = self._next_hand_off(uow.outbox.added(), now)
            if found is None:
                return
            handler, message = found
            handing.append(found)
            async with asyncio.timeout(handler.policy.timeout):
                await handler.handle(uow, message)
            uow.outbox.hand_off(message.id)
            handing.clear()
            self.stats.handed_off += 1

    def _claim_own(self, uow: MessageUnitOfWork, now: datetime) -> list[tuple[Handler, Message]]:
        """Claim, as they are written, the messages this transaction added for this runtime's
        consumers and did not hand off (say, a payment command): after the commit they go
        straight to their consumer's lanes, with no claim transaction and no wake-up (and, on
        a broker transport, no relay or broker). Only what is due now and is no replay, at
        most ``hand_off_limit``. A worker that dies first leaves them to the lease's expiry,
        after which the next claim (local) or the relay (broker) hands them out."""
        if self._own_deliveries is None:
            return []
        lease = self._own_deliveries.write_lease
        until = now + timedelta(seconds=lease.seconds)
        claiming: list[tuple[Handler, Message]] = []
        for message in uow.outbox.added():
            if len(claiming) >= self._options.hand_off_limit:
                break
            handler = self._own.get(message.type)
            if handler is None or handler.consumer not in self._intakes:
                continue
            if _replay_id(message) is not None:
                continue
            if message.not_before is not None and message.not_before > now:
                continue
            uow.outbox.claim(message.id, lease.owner, until)
            claiming.append((handler, message))
        return claiming

    def _deliver_own(
        self, claiming: list[tuple[Handler, Message]], rows: Mapping[str, int]
    ) -> None:
        for handler, message in claiming:
            intake = self._intakes.get(handler.consumer)
            if intake is None or intake.stop.is_set():
                continue  # stopping: the lease runs out and the message is handed out again
            delivery = Delivery(
                message, 1, handler.subscription, rows[message.id], written_here=True
            )
            intake.room.take(1)
            intake.lanes.add(delivery, intake.settle)
            self.stats.claimed_on_write += 1

    def _next_hand_off(
        self, added: Sequence[Message], now: datetime
    ) -> tuple[Handler, Message] | None:
        for message in added:
            handler = self._inline.get(message.type)
            if handler is None or _replay_id(message) is not None:
                continue
            if message.not_before is not None and message.not_before > now:
                continue
            return handler, message
        return None

    async def _failed(self, handler: Handler, delivery: Delivery, exc: Exception) -> None:
        message = delivery.message
        permanent = isinstance(exc, PermanentError)
        last = permanent or delivery.attempt >= handler.policy.attempts
        error = f"{type(exc).__name__}: {exc}"
        failure = FailedAttempt(
            consumer=handler.consumer,
            message_id=message.id,
            type=message.type,
            correlation_id=message.correlation_id,
            attempt=delivery.attempt,
            error=error,
            permanent=permanent,
            failed_at=self._clock.now(),
        )
        logger = log.bind(
            consumer=handler.consumer,
            message_id=message.id,
            type=message.type,
            correlation_id=message.correlation_id,
            attempt=delivery.attempt,
        )
        if not last:
            await self._while_storage_is_down(lambda: self._record_failure(failure))
            delay = handler.policy.delay(delivery.attempt, self._rng)
            logger.warning("handler failed, will retry", error=error, retry_in=round(delay, 3))
            await self._settler(delivery).retry(delivery, delay)
            self.stats.retried += 1
            return
        trace = "".join(traceback.format_exception(exc))
        letter, letter_id = await self._while_storage_is_down(
            lambda: self._park(handler, delivery, failure, trace)
        )
        await self._settler(delivery).dead_letter(delivery, error)
        self.stats.dead_lettered += 1
        logger.error(
            "message dead-lettered", error=error, dead_letter_id=letter_id, permanent=permanent
        )
        try:
            await self._alerts.dead_lettered(letter, letter_id)
        except Exception:
            logger.exception("alert hook failed")

    async def _record_failure(self, failure: FailedAttempt) -> None:
        async with self._uow() as uow:
            await uow.failures.record(failure)
            await uow.commit()

    async def _park(
        self, handler: Handler, delivery: Delivery, failure: FailedAttempt, trace: str
    ) -> tuple[NewDeadLetter, int]:
        message = delivery.message
        try:
            return await self._park_in(handler, delivery, failure, trace, run_hook=True)
        except StorageUnavailable:
            raise
        except Exception:
            # The hook itself failed: park the message anyway, never lose it.
            log.exception("on_dead_letter failed", consumer=handler.consumer, message_id=message.id)
            return await self._park_in(handler, delivery, failure, trace, run_hook=False)

    async def _park_in(
        self,
        handler: Handler,
        delivery: Delivery,
        failure: FailedAttempt,
        trace: str,
        *,
        run_hook: bool,
    ) -> tuple[NewDeadLetter, int]:
        message = delivery.message
        async with self._uow() as uow:
            await uow.failures.record(failure)
            history = await uow.failures.history(handler.consumer, message.id)
            context: JSON = {}
            if run_hook:
                context = await handler.on_dead_letter(uow, message, failure.error)
            context["failures"] = [
                {"attempt": f.attempt, "error": f.error, "failedAt": f.failed_at.isoformat()}
                for f in history
            ]
            letter = NewDeadLetter(
                consumer=handler.consumer,
                message=message,
                error=failure.error,
                traceback=trace,
                attempts=delivery.attempt,
                first_failed_at=min((f.failed_at for f in history), default=failure.failed_at),
                last_failed_at=failure.failed_at,
                context=context,
            )
            letter_id = await uow.dead_letters.add(letter, failure.failed_at)
            replay = _replay_id(message)
            if replay is not None:
                await uow.dead_letters.finish_replay(replay, "failed-again", failure.failed_at)
            if self._acks_in_transaction(delivery):
                await uow.acks.acknowledge(delivery.handle, failure.failed_at)
            await uow.commit()
        return letter, letter_id

    def _acks_in_transaction(self, delivery: Delivery) -> bool:
        return delivery.written_here or self._transport.acks_in_transaction

    def _settler(self, delivery: Delivery) -> Transport | OwnDeliveries:
        """Who retries and dead-letters ``delivery``: the transport that delivered it, or
        (a message this runtime delivered to itself) ``own``."""
        if delivery.written_here and self._own_deliveries is not None:
            return self._own_deliveries
        return self._transport

    async def _while_storage_is_down(self, work: Callable[[], Awaitable[Any]]) -> Any:
        pause = 0.5
        while True:
            try:
                return await work()
            except StorageUnavailable as exc:
                self.stats.storage_waits += 1
                log.warning("database unavailable, waiting", error=str(exc), wait=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self._options.max_backoff)


class _HandOffFailed(Exception):
    def __init__(self, handler: Handler, message: Message, error: str) -> None:
        super().__init__(error)
        self.handler = handler
        self.message = message
        self.error = error


class _KeyLanes:
    """One lane per message key, at most ``concurrency`` of them working at a time.

    Deliveries of one key are processed one after the other, in the order received; different
    keys run concurrently. Unlike a fixed set of lanes chosen by a hash of the key, two keys
    never wait for each other (with slow outside calls, such as a payment gateway's, a hash
    collision would queue one order behind another's call).
    """

    def __init__(self, concurrency: int) -> None:
        self._working = asyncio.Semaphore(concurrency)
        self._queues: dict[str, deque[Delivery]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, delivery: Delivery, settle: Callable[[Delivery], Awaitable[None]]) -> None:
        key = delivery.message.key
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(delivery)
            return
        queue = self._queues[key] = deque([delivery])
        task = asyncio.create_task(self._run(key, queue, settle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, key: str, queue: deque[Delivery], settle: Callable[[Delivery], Awaitable[None]]
    ) -> None:
        try:
            while queue:
                async with self._working:
                    await settle(queue[0])
                queue.popleft()
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]

    async def drain(self, timeout: float) -> None:
        """Let the lanes finish what they hold, for at most ``timeout``; then cancel them."""
        if not self._tasks:
            return
        _, unfinished = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class _Intake:
    """A running consumer's lanes and room, where its own transactions' messages go."""

    lanes: _KeyLanes
    room: _Room
    stop: asyncio.Event
    settle: Callable[[Delivery], Awaitable[None]]


class _Room:
    """How many more deliveries a consumer may hold (received, not yet settled)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._changed = asyncio.Event()

    def take(self, count: int) -> None:
        self._free -= count

    def give_back(self) -> None:
        self._free += 1
        self._changed.set()

    async def wait_for_space(self, stop: asyncio.Event, at_least: int = 1) -> int:
        """The free room, once it is ``at_least`` (0 if ``stop`` was set meanwhile)."""
        while self._free < at_least and not stop.is_set():
            self._changed.clear()
            stopping = asyncio.ensure_future(stop.wait())
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({stopping, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                changed.cancel()
        return max(self._free, 0) if not stop.is_set() else 0


def _replay_id(message: Message) -> int | None:
    value = message.headers.get(H_REPLAY_OF)
    return int(value) if value and value.isdigit() else None


def _check_routing(transport: Transport, handlers: Collection[Handler]) -> None:
    names = [h.consumer for h in handlers]
    if len(set(names)) != len(names):
        raise ValueError(f"two handlers share a consumer name: {sorted(names)}")
    if transport.fans_out:
        return
    seen: dict[str, str] = {}
    for handler in handlers:
        for type_ in handler.types:
            if type_ in seen:
                raise ValueError(
                    f"the {transport.name} transport delivers each type to one consumer; "
                    f"{type_!r} is wanted by {seen[type_]!r} and {handler.consumer!r}"
                )
            seen[type_] = handler.consumer
