"""The transport contract (``services.messaging.Transport``), on every transport's real server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from types import ModuleType

import pytest

from orderly.domain.events import Message
from orderly.services.messaging import (
    H_TRACEPARENT,
    Delivery,
    Subscription,
    Transport,
    TransportUnavailable,
)
from tests.contract.transports.conftest import OpenTransport, ReadDeadLetters

pytestmark = pytest.mark.timeout(60)


def message(type_: str = "test.happened", key: str = "order-1", **payload: object) -> Message:
    return Message(
        id=str(uuid.uuid4()),
        type=type_,
        key=key,
        payload={"n": 0, **payload},
        created_at=datetime.now(UTC),
        correlation_id=key,
    )


async def collect(
    transport: Transport, subscription: Subscription, count: int, *, within: float = 10.0
) -> list[Delivery]:
    """Receive until ``count`` deliveries arrived (without acknowledging them) or time is up."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got += await transport.receive(subscription, count - len(got), timeout=0.5)
    return got


async def nothing_more(transport: Transport, subscription: Subscription, wait: float) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        extra = await transport.receive(subscription, 10, timeout=0.2)
        assert extra == [], f"unexpected deliveries: {[d.message for d in extra]}"


async def ack_all(transport: Transport, deliveries: Iterable[Delivery]) -> None:
    for delivery in deliveries:
        await transport.ack(delivery)


async def test_every_published_message_is_delivered_once(transport: Transport) -> None:
    sub = Subscription.of("worker", ["test.happened"])
    await transport.subscribe(sub)
    sent = [message(n=i, key=f"order-{i % 4}") for i in range(25)]
    await transport.publish(sent)

    got = await collect(transport, sub, 25)
    await ack_all(transport, got)

    assert sorted(d.message.id for d in got) == sorted(m.id for m in sent)
    assert {d.attempt for d in got} == {1}
    await nothing_more(transport, sub, 1.0)


async def test_payload_and_headers_survive_the_trip(transport: Transport) -> None:
    sub = Subscription.of("worker", ["test.happened"])
    await transport.subscribe(sub)
    sent = Message(
        id=str(uuid.uuid4()),
        type="test.happened",
        key="order-9",
        payload={"orderId": "order-9", "items": [{"sku": "PROD-001", "quantity": 2}], "ok": True},
        created_at=datetime(2026, 11, 23, 12, 0, 1, 123456, tzinfo=UTC),
        correlation_id="order-9",
        causation_id="cause-1",
        headers={H_TRACEPARENT: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    await transport.publish([sent])

    [got] = await collect(transport, sub, 1)
    await transport.ack(got)

    assert got.message == sent
    assert got.subscription == sub


async def test_a_consumer_only_gets_the_types_it_subscribed_to(transport: Transport) -> None:
    sub = Subscription.of("worker", ["test.wanted"])
    await transport.subscribe(sub)
    await transport.subscribe(Subscription.of("other", ["test.unwanted"]))
    await transport.publish([message("test.unwanted"), message("test.wanted")])

    got = await collect(transport, sub, 1)
    await ack_all(transport, got)

    assert [d.message.type for d in got] == ["test.wanted"]
    await nothing_more(transport, sub, 1.0)


async def test_every_subscribed_consumer_gets_its_own_copy(transport: Transport) -> None:
    first = Subscription.of("first", ["test.happened"])
    second = Subscription.of("second", ["test.happened"])
    await transport.subscribe(first)
    if not transport.fans_out:
        # Documented: one consumer per type. A second one is refused, never silently starved.
        with pytest.raises(ValueError, match="one consumer"):
            await transport.subscribe(second)
        return
    await transport.subscribe(second)
    sent = message()
    await transport.publish([sent])

    for sub in (first, second):
        [got] = await collect(transport, sub, 1)
        await transport.ack(got)
        assert got.message.id == sent.id


async def test_retry_comes_back_later_with_the_next_attempt_without_blocking_others(
    transport: Transport,
) -> None:
    sub = Subscription.of("worker", ["test.happened"])
    await transport.subscribe(sub)
    failing = message(key="order-a")
    await transport.publish([failing])
    [first] = await collect(transport, sub, 1)

    retried_at = time.monotonic()
    await transport.retry(first, delay=2.0)
    behind = message(key="order-b")
    await transport.publish([behind])

    [overtaking] = await collect(transport, sub, 1, within=1.5)
    assert overtaking.message.id == behind.id, "a retry delay held back another message"
    await transport.ack(overtaking)

    [again] = await collect(transport, sub, 1, within=10.0)
    waited = time.monotonic() - retried_at
    await transport.ack(again)
    assert again.message == failing
    assert again.attempt == 2
    assert 1.9 <= waited <= 7.0, f"redelivered after {waited:.2f}s for a 2s delay"


async def test_a_message_published_with_its_attempts_counts_on_from_them(
    transport: Transport,
) -> None:
    """A message whose first attempts were made by the worker that wrote it is published
    with the attempt it is at; a retry counts on from there."""
    sub = Subscription.of("worker", ["test.happened"])
    await transport.subscribe(sub)
    fresh, carried = message(key="order-a"), message(key="order-b")
    await transport.publish([fresh, carried], [1, 3])

    got = {d.message.id: d for d in await collect(transport, sub, 2)}
    assert (got[fresh.id].attempt, got[carried.id].attempt) == (1, 3)
    await transport.ack(got[fresh.id])
    await transport.retry(got[carried.id], delay=0.5)
    [again] = await collect(transport, sub, 1, within=10.0)
    await transport.ack(again)
    assert (again.message.id, again.attempt) == (carried.id, 4)


async def test_a_dead_lettered_message_is_not_delivered_again(transport: Transport) -> None:
    sub = Subscription.of("worker", ["test.happened"])
    await transport.subscribe(sub)
    await transport.publish([message()])
    [got] = await collect(transport, sub, 1)

    await transport.dead_letter(got, "handler failed 3 times")

    await nothing_more(transport, sub, 3.5)


async def test_a_dead_letter_waits_in_the_brokers_dead_letter_queue_with_its_reason(
    transport: Transport, dead_letter_queue: ReadDeadLetters
) -> None:
    sub = Subscription.of("worker", ["test.happened"])
    await transport.subscribe(sub)
    sent = message()
    await transport.publish([sent], [3])
    [got] = await collect(transport, sub, 1)

    await transport.dead_letter(got, "handler failed 3 times")

    parked = await dead_letter_queue("worker", 1)
    if parked is None:
        assert transport.name == "local"  # its dead-letter store is the only one
    else:
        assert parked == [(sent.id, 3, "handler failed 3 times")]


async def test_a_copied_dead_letter_joins_the_others_and_is_not_delivered(
    transport: Transport, dead_letter_queue: ReadDeadLetters
) -> None:
    """A message that reached its consumer without the transport (delivered by its writer)
    and was dead-lettered there: its copy waits beside the broker's own dead letters."""
    sub = Subscription.of("worker", ["test.happened"])
    await transport.subscribe(sub)
    copied = message()

    await transport.copy_to_dead_letters(copied, 1, "worker", "PermanentError: bad card")

    parked = await dead_letter_queue("worker", 1)
    if parked is None:
        assert transport.name == "local"
    else:
        assert parked == [(copied.id, 1, "PermanentError: bad card")]
    await nothing_more(transport, sub, 1.0)


async def test_an_unacknowledged_delivery_is_redelivered_after_a_crash(
    open_transport: OpenTransport,
) -> None:
    sub = Subscription.of("worker", ["test.happened"])
    sent = message()
    async with open_transport(redelivery_after=1.0) as crashed:
        await crashed.subscribe(sub)
        await crashed.publish([sent])
        [got] = await collect(crashed, sub, 1)
        assert got.message.id == sent.id
        # Leaving without an ack: the process "died" holding the message.

    async with open_transport(redelivery_after=1.0) as restarted:
        await restarted.subscribe(sub)
        [again] = await collect(restarted, sub, 1, within=15.0)
        await restarted.ack(again)
        assert again.message.id == sent.id
        await nothing_more(restarted, sub, 2.0)


async def test_an_acknowledged_delivery_is_gone_for_the_next_process(
    open_transport: OpenTransport,
) -> None:
    sub = Subscription.of("worker", ["test.happened"])
    async with open_transport(redelivery_after=1.0) as first:
        await first.subscribe(sub)
        await first.publish([message()])
        [got] = await collect(first, sub, 1)
        await first.ack(got)

    async with open_transport(redelivery_after=1.0) as second:
        await second.subscribe(sub)
        await nothing_more(second, sub, 2.5)


async def test_competing_processes_of_one_consumer_share_the_messages(
    open_transport: OpenTransport,
) -> None:
    sub = Subscription.of("worker", ["test.happened"])
    sent = [message(key=f"order-{i}") for i in range(40)]
    async with open_transport(redelivery_after=5.0) as a, open_transport(redelivery_after=5.0) as b:
        await a.subscribe(sub)
        await b.subscribe(sub)
        await a.publish(sent)

        async def drain(transport: Transport) -> list[str]:
            ids: list[str] = []
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < 1.5:
                batch = await transport.receive(sub, 5, timeout=0.3)
                for delivery in batch:
                    ids.append(delivery.message.id)
                    await transport.ack(delivery)
                if batch:
                    idle_since = time.monotonic()
                    await asyncio.sleep(0.02)
            return ids

        got_a, got_b = await asyncio.gather(drain(a), drain(b))

    assert sorted(got_a + got_b) == sorted(m.id for m in sent), "lost or duplicated"


async def test_messages_with_one_key_arrive_in_publish_order(transport: Transport) -> None:
    """Where per-key order is promised it holds; everywhere every message still arrives."""
    sub = Subscription.of("worker", ["test.happened"])
    await transport.subscribe(sub)
    sent = [message(key=f"order-{i % 3}", n=i) for i in range(30)]
    await transport.publish(sent)

    seen: dict[str, list[int]] = {}
    deadline = time.monotonic() + 15
    while sum(map(len, seen.values())) < 30 and time.monotonic() < deadline:
        for delivery in await transport.receive(sub, 10, timeout=0.5):
            seen.setdefault(delivery.message.key, []).append(delivery.message.payload["n"])
            await transport.ack(delivery)

    if transport.ordered_per_key:
        for key, numbers in seen.items():
            assert numbers == sorted(numbers), f"{key} out of order: {numbers}"
    assert sorted(n for numbers in seen.values() for n in numbers) == list(range(30))


async def test_an_unreachable_broker_is_reported_as_unavailable(
    transport_module: ModuleType,
) -> None:
    transport = transport_module.unreachable_transport()
    try:
        with pytest.raises(TransportUnavailable):
            await transport.connect()
        # A transport that connects lazily must say so on first use instead.
        with pytest.raises(TransportUnavailable):
            await transport.publish([message()])
    finally:
        await transport.close()
