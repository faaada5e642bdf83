"""The outbox relay: moves committed outbox messages to a broker, at least once.

Claims unsent rows in batches (a lease, so a dead relay's rows are picked up again), publishes
them with the broker's confirmations, then marks them sent. A relay killed between publish and
mark publishes those rows again on restart; consumers deduplicate by message id.

A broker outage is not the messages' fault: the claim is released, the relay backs off and
resumes, nothing is lost and no attempt is spent. A message the broker refuses for good is
retried with backoff and, after ``max_attempts``, parked in the dead-letter store (consumer
``relay``) and counted, so one bad row never blocks the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from orderly.services.messaging import PublishRejected, Transport, TransportUnavailable
from orderly.services.ports import (
    Alerts,
    Clock,
    MessageUnitOfWorkFactory,
    NewDeadLetter,
    OutboxQueue,
    QueuedMessage,
    StorageUnavailable,
)
from orderly.services.waiting import sleep_or_stop

log = structlog.get_logger("orderly.relay")

RELAY = "relay"


@dataclass
class RelayOptions:
    batch: int = 256
    lease: float = 30.0
    max_attempts: int = 10
    base_delay: float = 1.0
    max_backoff: float = 30.0


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    parked: int = 0
    outages: int = 0


class Relay:
    def __init__(
        self,
        queue: OutboxQueue,
        transport: Transport,
        uow: MessageUnitOfWorkFactory,
        *,
        clock: Clock,
        alerts: Alerts,
        options: RelayOptions | None = None,
    ) -> None:
        self._queue = queue
        self._transport = transport
        self._uow = uow
        self._clock = clock
        self._alerts = alerts
        self._options = options or RelayOptions()
        self.stats = RelayStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set."""
        await self._queue.start()
        event = self._queue.waiter()
        pause = self._options.base_delay
        try:
            while not stop.is_set():
                event.clear()
                try:
                    moved = await self.relay_once()
                    quiet = await self._queue.quiet_for(None) if moved == 0 else 0.0
                except (TransportUnavailable, StorageUnavailable) as exc:
                    self.stats.outages += 1
                    log.warning("relay paused", error=str(exc), wait=pause)
                    await sleep_or_stop(stop, pause)
                    pause = min(pause * 2, self._options.max_backoff)
                    continue
                pause = self._options.base_delay
                if moved == 0:
                    await self._queue.wait(event, quiet)
        finally:
            self._queue.forget(event)
            await self._queue.stop()

    async def relay_once(self) -> int:
        """Claim, publish and settle one batch; the number of rows handled."""
        rows = await self._queue.claim(None, self._options.batch, self._options.lease)
        if not rows:
            return 0
        try:
            # A row put back by the worker that delivered it to itself carries its attempts.
            await self._transport.publish(
                [row.message for row in rows], [row.attempts + 1 for row in rows]
            )
        except TransportUnavailable:
            await self._release_quietly(rows)
            raise
        except PublishRejected as rejected:
            refused = set(rejected.message_ids)
            accepted = [row for row in rows if row.message.id not in refused]
            await self._queue.mark_sent([row.id for row in accepted])
            self.stats.published += len(accepted)
            for row in rows:
                if row.message.id in refused:
                    await self._refused(row, rejected.reason)
            return len(rows)
        await self._queue.mark_sent([row.id for row in rows])
        self.stats.published += len(rows)
        self.stats.batches += 1
        return len(rows)

    async def _refused(self, row: QueuedMessage, reason: str) -> None:
        attempt = row.refusals + 1
        if attempt < self._options.max_attempts:
            delay = min(self._options.base_delay * 2 ** (attempt - 1), self._options.max_backoff)
            log.warning(
                "broker refused a message",
                message_id=row.message.id,
                reason=reason,
                attempt=attempt,
                retry_in=delay,
            )
            await self._queue.refuse(row.id, delay)
            return
        now = self._clock.now()
        letter = NewDeadLetter(
            consumer=RELAY,
            message=row.message,
            error=f"broker refused the message {attempt} times: {reason}",
            traceback="",
            attempts=attempt,
            first_failed_at=now,
            last_failed_at=now,
            context={"outboxRowId": row.id},
        )
        async with self._uow() as uow:
            letter_id = await uow.dead_letters.add(letter, now)
            await uow.acks.acknowledge(row.id, now)
            await uow.commit()
        self.stats.parked += 1
        log.error("relay parked a message", message_id=row.message.id, dead_letter_id=letter_id)
        try:
            await self._alerts.dead_lettered(letter, letter_id)
        except Exception:
            log.exception("alert hook failed")

    async def _release_quietly(self, rows: list[QueuedMessage]) -> None:
        # If the database is down too, the lease runs out on its own.
        with contextlib.suppress(StorageUnavailable):
            await self._queue.release([row.id for row in rows])
