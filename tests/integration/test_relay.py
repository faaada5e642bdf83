"""The outbox relay against the real RabbitMQ server, on both databases: what it publishes,
with which attempt, and what it does with a row the broker refuses for good."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from orderly.adapters.db.tables import outbox_messages
from orderly.adapters.transports.rabbitmq import RabbitMqTransport
from orderly.domain.events import Message
from orderly.services.messaging import Delivery, Subscription
from orderly.services.relay import RELAY, Relay, RelayOptions
from orderly.testing import RecordingAlerts
from tests.conftest import Backend
from tests.contract.transports.rabbitmq import namespace_scope, transport_for

pytestmark = pytest.mark.timeout(60)

WORKER = Subscription.of("worker", ["test.happened"])


def message(type_: str = "test.happened") -> Message:
    key = f"order-{uuid.uuid4().hex[:6]}"
    return Message(
        id=str(uuid.uuid4()),
        type=type_,
        key=key,
        payload={"n": 1},
        created_at=datetime.now(UTC),
        correlation_id=key,
    )


@pytest.fixture
async def transport() -> AsyncIterator[RabbitMqTransport]:
    namespace = f"t{uuid.uuid4().hex[:12]}"
    async with namespace_scope(namespace), transport_for(namespace) as opened:
        await opened.subscribe(WORKER)
        yield opened


async def one(transport: RabbitMqTransport, within: float = 10.0) -> Delivery:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if got := await transport.receive(WORKER, 1, timeout=0.5):
            await transport.ack(got[0])
            return got[0]
    raise AssertionError("no delivery")


async def row_of(backend: Backend, message_id: str) -> tuple[int, int, bool]:
    """(attempts, refusals, sent) of the message's outbox row."""
    o = outbox_messages.c
    async with backend.container.engine.connect() as conn:
        query = sa.select(o.attempts, o.refusals, o.sent_at).where(o.message_id == message_id)
        attempts, refusals, sent_at = (await conn.execute(query)).one()
    return attempts, refusals, sent_at is not None


async def relay_for(
    backend: Backend, transport: RabbitMqTransport, alerts: RecordingAlerts
) -> Relay:
    # Only this test's rows: the demo catalogue's seeding queues a stock.changed message.
    async with backend.container.engine.begin() as conn:
        await conn.execute(outbox_messages.delete())
    return Relay(
        backend.container.outbox_queue(),
        transport,
        backend.container.message_uow,
        clock=backend.clock,
        alerts=alerts,
        options=RelayOptions(max_attempts=3, base_delay=1.0),
    )


async def test_a_row_put_back_after_failed_attempts_is_published_with_its_attempt(
    backend: Backend, transport: RabbitMqTransport
) -> None:
    relay = await relay_for(backend, transport, RecordingAlerts())
    fresh, carried = message(), message()
    queue = backend.container.outbox_queue()
    await queue.add([fresh])
    await queue.add([carried], attempts=[2])

    assert await relay.relay_once() == 2

    got = {d.message.id: d.attempt for d in [await one(transport), await one(transport)]}
    assert got == {fresh.id: 1, carried.id: 2}
    assert await row_of(backend, carried.id) == (1, 0, True)


async def test_a_row_the_broker_refuses_is_retried_with_backoff_then_parked(
    backend: Backend, transport: RabbitMqTransport
) -> None:
    """No queue is bound for its type, so RabbitMQ returns it (mandatory). The relay counts
    refusals apart from delivery attempts, and parks the row at the third."""
    alerts = RecordingAlerts()
    relay = await relay_for(backend, transport, alerts)
    unheard = message("test.unheard")
    await backend.container.outbox_queue().add([unheard])

    assert await relay.relay_once() == 1
    assert await row_of(backend, unheard.id) == (0, 1, False)
    assert await relay.relay_once() == 0, "not due before its 1 s backoff"
    backend.clock.advance(timedelta(seconds=1))
    assert await relay.relay_once() == 1
    assert await row_of(backend, unheard.id) == (0, 2, False)
    backend.clock.advance(timedelta(seconds=1))
    assert await relay.relay_once() == 0, "not due before its 2 s backoff"
    backend.clock.advance(timedelta(seconds=1))
    assert await relay.relay_once() == 1

    assert relay.stats.parked == 1
    assert await row_of(backend, unheard.id) == (0, 2, True)
    [letter_id] = alerts.dead_letters
    async with backend.container.message_uow() as uow:
        letter = await uow.dead_letters.get(letter_id)
    assert letter is not None
    assert (letter.consumer, letter.message.id, letter.attempts) == (RELAY, unheard.id, 3)
