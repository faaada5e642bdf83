"""A local delivery's acknowledgement and its inbox record, in the handler's transaction: on
PostgreSQL they go to the server as one statement (the acknowledgement waits for the inbox
insert), on SQLite as two; either way both happen or neither, and an acknowledgement no inbox
insert follows still happens at commit. A message a worker delivered to itself and
dead-lettered is settled on its row even when the broker cannot take its dead-letter copy."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
import structlog

from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.tables import outbox_messages, processed_messages
from orderly.adapters.transports.local import LocalTransport, OutboxDeliveries
from orderly.domain.events import Message
from orderly.services.messaging import Delivery, Subscription, TransportUnavailable
from tests.conftest import Backend

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


async def queued(backend: Backend) -> tuple[int, str]:
    """A claimable outbox row: its id (the delivery's handle) and its message id."""
    message = Message(
        id=str(uuid.uuid4()),
        type="test.ack",
        key="k",
        payload={},
        created_at=NOW,
        correlation_id="k",
    )
    async with SqlUnitOfWork(backend.container.engine) as uow:
        await uow.outbox.add(message)
        await uow.commit()
    async with backend.container.engine.connect() as conn:
        row_id = await conn.scalar(
            sa.select(outbox_messages.c.id).where(outbox_messages.c.message_id == message.id)
        )
    assert row_id is not None
    return int(row_id), message.id


async def state(backend: Backend, row_id: int, message_id: str) -> tuple[bool, bool]:
    """(the row is acknowledged, the inbox holds the message)."""
    async with backend.container.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(outbox_messages.c.sent_at, outbox_messages.c.message_id).where(
                    outbox_messages.c.id == row_id
                )
            )
        ).one()
        recorded = await conn.scalar(
            sa.select(sa.func.count())
            .select_from(processed_messages)
            .where(
                processed_messages.c.consumer == "c", processed_messages.c.message_id == message_id
            )
        )
    assert row.message_id == message_id  # the acknowledgement changes nothing else
    return row.sent_at is not None, recorded == 1


async def test_acknowledged_with_the_inbox_record(backend: Backend) -> None:
    row_id, message_id = await queued(backend)
    async with SqlUnitOfWork(backend.container.engine) as uow:
        await uow.acks.acknowledge(row_id, NOW)
        assert await uow.inbox.record("c", message_id, NOW)
        await uow.commit()
    assert await state(backend, row_id, message_id) == (True, True)


async def test_a_duplicate_is_acknowledged_and_not_recorded_again(backend: Backend) -> None:
    row_id, message_id = await queued(backend)
    async with SqlUnitOfWork(backend.container.engine) as uow:
        assert await uow.inbox.record("c", message_id, NOW)
        await uow.commit()
    async with SqlUnitOfWork(backend.container.engine) as uow:
        await uow.acks.acknowledge(row_id, NOW)
        assert not await uow.inbox.record("c", message_id, NOW)
        await uow.commit()
    assert await state(backend, row_id, message_id) == (True, True)


async def test_rolled_back_together(backend: Backend) -> None:
    row_id, message_id = await queued(backend)
    async with SqlUnitOfWork(backend.container.engine) as uow:
        await uow.acks.acknowledge(row_id, NOW)
        assert await uow.inbox.record("c", message_id, NOW)
        # no commit: the handler failed
    assert await state(backend, row_id, message_id) == (False, False)


async def test_an_acknowledgement_alone_happens_at_commit(backend: Backend) -> None:
    row_id, message_id = await queued(backend)
    async with SqlUnitOfWork(backend.container.engine) as uow:
        await uow.acks.acknowledge(row_id, NOW)
        await uow.commit()
    assert await state(backend, row_id, message_id) == (True, False)


class RefusingDeadLetterQueue(LocalTransport):
    """A transport whose dead-letter queue cannot be reached (the layer above is under test)."""

    name = "refusing"

    async def copy_to_dead_letters(
        self, message: Message, attempt: int, consumer: str, reason: str
    ) -> None:
        raise TransportUnavailable("the broker is down")


async def test_a_dead_letter_the_broker_cannot_copy_is_settled_and_the_miss_logged(
    backend: Backend,
) -> None:
    """A message delivered by its writer and dead-lettered: the store already holds it, so a
    broker that cannot take its copy fails nothing; the row is settled, the miss logged."""
    row_id, message_id = await queued(backend)
    queue = backend.container.outbox_queue()
    own = OutboxDeliveries(queue, lease=5.0, transport=RefusingDeadLetterQueue(queue))
    message = Message(
        id=message_id, type="test.ack", key="k", payload={}, created_at=NOW, correlation_id="k"
    )
    delivery = Delivery(message, 1, Subscription.of("c", ["test.ack"]), row_id, written_here=True)

    with structlog.testing.capture_logs() as logs:
        await own.dead_letter(delivery, "PermanentError: bad")

    assert await state(backend, row_id, message_id) == (True, False)
    [missed] = [e for e in logs if e["event"].startswith("dead letter not copied")]
    assert (missed["message_id"], missed["consumer"], missed["transport"]) == (
        message_id,
        "c",
        "refusing",
    )
