"""What the shared transport contract does not reach on Kafka (Tansu): offsets committed out
of order, undecodable records, a process killed without leaving its group, a lost broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

from orderly.adapters.transports.kafka import H_DEAD_LETTER_REASON, H_SOURCE, KafkaTransport
from orderly.domain.events import Message
from orderly.services.messaging import Delivery, Subscription, TransportUnavailable
from tests.contract.transports.kafka import namespace_scope, transport_for
from tests.support.server import free_port
from tests.support.tansu import TansuBroker, TansuUnavailable

pytestmark = pytest.mark.timeout(90)

SUB = Subscription.of("worker", ["test.happened"])


def message(key: str = "order-1", n: int = 0) -> Message:
    return Message(
        id=str(uuid.uuid4()),
        type="test.happened",
        key=key,
        payload={"n": n},
        created_at=datetime.now(UTC),
        correlation_id=key,
    )


async def collect(transport: KafkaTransport, count: int, within: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got += await transport.receive(SUB, count - len(got), timeout=0.5)
    return got


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = f"k{uuid.uuid4().hex[:12]}"
    async with namespace_scope(name):
        yield name


async def test_the_commit_waits_for_every_earlier_record(namespace: str) -> None:
    sent = [message(n=i) for i in range(3)]  # one key: one partition, in this order
    async with transport_for(namespace, redelivery_after=5.0) as first:
        await first.subscribe(SUB)
        await first.publish(sent)
        got = await collect(first, 3)
        assert [d.message.payload["n"] for d in got] == [0, 1, 2]
        await first.ack(got[2])
        await first.ack(got[0])

    async with transport_for(namespace, redelivery_after=5.0) as second:
        await second.subscribe(SUB)
        again = await collect(second, 2)
        assert [d.message.payload["n"] for d in again] == [1, 2]
        for delivery in again:
            await second.ack(delivery)

    async with transport_for(namespace, redelivery_after=5.0) as third:
        await third.subscribe(SUB)
        assert await third.receive(SUB, 10, timeout=1.5) == []


async def test_an_unsettled_delivery_is_handed_out_again_after_the_lease(namespace: str) -> None:
    async with transport_for(namespace, redelivery_after=1.0) as transport:
        await transport.subscribe(SUB)
        await transport.publish([message()])
        [first] = await collect(transport, 1)
        started = time.monotonic()
        [again] = await collect(transport, 1, within=5.0)
        assert again.message == first.message
        assert time.monotonic() - started >= 0.9
        await transport.ack(again)
        assert await transport.receive(SUB, 10, timeout=1.5) == []


async def test_an_undecodable_record_is_dead_lettered_and_skipped(namespace: str) -> None:
    async with transport_for(namespace, redelivery_after=5.0) as transport:
        await transport.subscribe(SUB)
        url = transport.topic("test.happened")
        producer = AIOKafkaProducer(bootstrap_servers=_servers(transport))
        await producer.start()
        try:
            await producer.send_and_wait(url, b"not json", key=b"order-1", headers=[("x", b"1")])
        finally:
            await producer.stop()
        good = message()
        await transport.publish([good])

        [delivery] = await collect(transport, 1)
        await transport.ack(delivery)
        assert delivery.message == good
        assert await transport.receive(SUB, 10, timeout=1.0) == []

        [letter] = await _read_all(transport, transport.dead_letter_topic("worker"), 1)
        headers = dict(letter.headers)
        assert letter.value == b"not json"
        assert headers["x"] == b"1"
        assert b"not an orderly message" in headers[H_DEAD_LETTER_REASON]
        assert headers[H_SOURCE].startswith(url.encode())


async def test_a_dead_letter_carries_the_message_and_the_reason(namespace: str) -> None:
    async with transport_for(namespace, redelivery_after=5.0) as transport:
        await transport.subscribe(SUB)
        sent = message()
        await transport.publish([sent])
        [delivery] = await collect(transport, 1)
        await transport.dead_letter(delivery, "boom")

        [letter] = await _read_all(transport, transport.dead_letter_topic("worker"), 1)
        headers = dict(letter.headers)
        assert headers[H_DEAD_LETTER_REASON] == b"boom"
        assert headers["message-id"] == sent.id.encode()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from orderly.adapters.transports.kafka import KafkaTransport
    from orderly.services.messaging import Subscription

    async def main() -> None:
        transport = KafkaTransport(sys.argv[1], namespace=sys.argv[2], redelivery_after=2.0)
        sub = Subscription.of("worker", ["test.happened"])
        await transport.subscribe(sub)
        held = []
        while len(held) < int(sys.argv[3]):
            held += await transport.receive(sub, 10, timeout=0.5)
        print("held", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_killed_member_leaves_its_records_to_the_next_one(
    namespace: str, tmp_path: Path
) -> None:
    sent = [message(key=f"order-{i}") for i in range(6)]
    async with transport_for(namespace, redelivery_after=2.0) as publisher:
        await publisher.publish(sent)
        url = f"kafka://{_servers(publisher)}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, namespace, str(len(sent))],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout=30)
        assert line.strip() == b"held"
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)

    async with transport_for(namespace, redelivery_after=2.0) as survivor:
        await survivor.subscribe(SUB)
        got = await collect(survivor, len(sent), within=20.0)
        for delivery in got:
            await survivor.ack(delivery)
    assert sorted(d.message.id for d in got) == sorted(m.id for m in sent)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    broker = TansuBroker(free_port(), tmp_path / "tansu.log")
    try:
        broker.start()
    except TansuUnavailable as exc:
        pytest.skip(f"cannot start a private tansu: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


async def test_a_lost_broker_is_reported_and_the_transport_recovers(
    private_broker: TansuBroker,
) -> None:
    transport = KafkaTransport(private_broker.url, namespace="lost", redelivery_after=2.0)
    try:
        await transport.connect()
        await transport.subscribe(SUB)
        await transport.publish([message()])
        [delivery] = await collect(transport, 1)
        await transport.ack(delivery)

        private_broker.stop()
        for call in (transport.receive(SUB, 10, timeout=0.5), transport.publish([message()])):
            started = time.monotonic()
            with pytest.raises(TransportUnavailable):
                await call
            assert time.monotonic() - started < 16

        private_broker.start()  # empty: Tansu keeps everything in memory
        sent = message()
        await transport.publish([sent])
        got = await _read_all(transport, transport.topic("test.happened"), 1)
        assert [dict(r.headers)["message-id"] for r in got] == [sent.id.encode()]
    finally:
        await transport.close()


async def test_connecting_to_a_closed_port_fails_fast() -> None:
    transport = KafkaTransport(f"kafka://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(TransportUnavailable):
        await transport.connect()
    assert time.monotonic() - started <= 5.5
    await transport.close()
    await transport.close()


def _servers(transport: KafkaTransport) -> str:
    return transport.bootstrap_servers


async def _read_all(transport: KafkaTransport, topic: str, count: int) -> list[Any]:
    """Read ``count`` records of ``topic`` from the beginning, outside any group."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=_servers(transport), auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 10
        while len(records) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            records += [r for batch in batches.values() for r in batch]
    finally:
        await consumer.stop()
    return records
