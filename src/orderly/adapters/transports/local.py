"""The local transport: the outbox table is the queue (SQLite or PostgreSQL, no other server).

A message is delivered by claiming its outbox row (a lease), acknowledged by marking the row
sent inside the handler's own transaction, retried by moving ``available_at`` forward and
dead-lettered by marking it sent (the dead-letter store keeps it), all through
``OutboxDeliveries``, which also settles what a worker delivers to itself from rows its own
transaction wrote claimed, on this transport and on the broker transports alike. Each
message type goes to
one consumer (no fan-out); rows are claimed in insertion order, but competing lanes and
processes may finish them out of order, so no per-key order is promised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import structlog

from orderly.adapters.db.outbox_queue import OutboxQueue
from orderly.domain.events import Message
from orderly.services.messaging import (
    Delivery,
    PublishRejected,
    Subscription,
    Transport,
    TransportUnavailable,
    WriteLease,
)
from orderly.services.ports import StorageUnavailable

log = structlog.get_logger("orderly.transport.local")


class LocalTransport:
    name = "local"
    acks_in_transaction = True
    needs_relay = False
    fans_out = False
    ordered_per_key = False

    def __init__(self, queue: OutboxQueue, *, lease: float = 30.0) -> None:
        self._queue = queue
        self._lease = lease
        self._owners: dict[str, str] = {}
        self._rows = OutboxDeliveries(queue, lease=lease)
        self._idle: dict[str, _Idle] = {}

    async def connect(self) -> None:
        await self._queue.start()
        try:
            await self._queue.pending()
        except StorageUnavailable as exc:
            raise TransportUnavailable(str(exc)) from exc

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for waiting in idle.values():
            self._queue.forget(waiting.event)
        await self._queue.stop()

    async def publish(
        self, messages: Sequence[Message], attempts: Sequence[int] | None = None
    ) -> None:
        try:
            await self._queue.add(messages, attempts)
        except StorageUnavailable as exc:
            raise TransportUnavailable(str(exc)) from exc

    async def subscribe(self, subscription: Subscription) -> None:
        for type_ in subscription.types:
            owner = self._owners.setdefault(type_, subscription.consumer)
            if owner != subscription.consumer:
                raise ValueError(
                    f"the local transport delivers {type_!r} to one consumer ({owner!r})"
                )

    async def receive(
        self, subscription: Subscription, max_messages: int, timeout: float
    ) -> list[Delivery]:
        """Claim up to ``max_messages``; with none due, wait for a wake-up, at most ``timeout``.

        After a claim comes back empty the consumer does not claim again, across calls, until
        it is woken (a new row or one put back, of its types) or the queue's quiet time has
        passed (``OutboxQueue.quiet_for``: on PostgreSQL, until one of its rows may come due)."""
        idle = self._idle.get(subscription.consumer)
        if idle is None:
            idle = self._idle[subscription.consumer] = _Idle(self._queue.waiter(subscription.types))
        deadline = _loop_time() + timeout
        while True:
            if idle.event.is_set() or _loop_time() >= idle.quiet_until:
                idle.event.clear()
                # Until this claim and the look after it succeed, claim again next time.
                idle.quiet_until = 0.0
                try:
                    rows = await self._queue.claim(subscription.types, max_messages, self._lease)
                except StorageUnavailable as exc:
                    raise TransportUnavailable(str(exc)) from exc
                if rows:  # more may wait behind them: claim again next time
                    return [
                        Delivery(row.message, row.attempts + 1, subscription, row.id)
                        for row in rows
                    ]
                idle.quiet_until = _loop_time() + await self._queue.quiet_for(subscription.types)
            now = _loop_time()
            if now >= deadline:
                return []
            await self._queue.wait(idle.event, min(deadline, idle.quiet_until) - now)

    async def ack(self, delivery: Delivery) -> None:
        await _settle(self._queue.mark_sent([_row_id(delivery)]))

    async def retry(self, delivery: Delivery, delay: float) -> None:
        await self._rows.retry(delivery, delay)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._rows.dead_letter(delivery, reason)

    async def copy_to_dead_letters(
        self, message: Message, attempt: int, consumer: str, reason: str
    ) -> None:
        """Nothing to do: the dead-letter store is this transport's dead-letter queue."""


class OutboxDeliveries:
    """Settles what a worker delivers to itself from the outbox rows its own transactions
    wrote claimed (``OwnDeliveries``), whatever the transport. Such a row is the message's
    only copy: acknowledged, it is marked sent in the handler's transaction; retried, it is
    put back unclaimed, due after the delay, its attempt counted, for the next claim (local)
    or the relay (which publishes it with that attempt); dead-lettered, it is marked sent and
    copied to the dead-letter queue of ``transport`` (the broker's, where there is one), where
    the messages the broker delivered and dead-lettered wait too.

    The copy comes after the dead-letter store holds the message (the runtime parks it there
    first), so a broker that cannot take it loses nothing: the miss is logged, and the stored
    letter is what ``orderly dlq`` lists and replays either way."""

    def __init__(
        self, queue: OutboxQueue, *, lease: float, transport: Transport | None = None
    ) -> None:
        self._queue = queue
        self._transport = transport
        self.write_lease = WriteLease(queue.worker_id, lease)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        await _settle(self._queue.reschedule(_row_id(delivery), delay))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await _settle(self._queue.mark_sent([_row_id(delivery)]))
        if self._transport is None:
            return
        message, consumer = delivery.message, delivery.subscription.consumer
        try:
            await self._transport.copy_to_dead_letters(message, delivery.attempt, consumer, reason)
        except (TransportUnavailable, PublishRejected) as exc:
            log.warning(
                "dead letter not copied to the broker's dead-letter queue (it is in the store)",
                transport=self._transport.name,
                consumer=consumer,
                message_id=message.id,
                error=str(exc),
            )


class _Idle:
    """A consumer's wake-ups (kept across receives, so none is missed between them) and the
    loop time before which, unwoken, it does not claim again."""

    __slots__ = ("event", "quiet_until")

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        self.quiet_until = 0.0


async def _settle(work: Awaitable[None]) -> None:
    try:
        await work
    except StorageUnavailable as exc:
        raise TransportUnavailable(str(exc)) from exc


def _row_id(delivery: Delivery) -> int:
    if not isinstance(delivery.handle, int):
        raise TypeError(f"not a local delivery: {delivery!r}")
    return delivery.handle


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
