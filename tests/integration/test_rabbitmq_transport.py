"""What the RabbitMQ transport promises beyond the common contract, on the real server.

Queue arguments are checked by declaring the queue again: RabbitMQ refuses a declaration whose
arguments differ from the existing queue's, so an accepted one proves they are equal.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelPreconditionFailed

from orderly.adapters.transports.rabbitmq import RabbitMqTransport, retry_ttl_ms
from orderly.domain.events import Message
from orderly.services.messaging import (
    H_MESSAGE_ID,
    Delivery,
    PublishRejected,
    Subscription,
    TransportUnavailable,
)
from tests.contract.transports.rabbitmq import RABBITMQ_URL, namespace_scope, transport_for

pytestmark = pytest.mark.timeout(60)

WORKER = Subscription.of("worker", ["test.happened"])
OpenTransport = Callable[..., AbstractAsyncContextManager[RabbitMqTransport]]


def message(key: str = "order-1") -> Message:
    return Message(
        id=str(uuid.uuid4()),
        type="test.happened",
        key=key,
        payload={"n": 1},
        created_at=datetime.now(UTC),
        correlation_id=key,
    )


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def open_transport(namespace: str) -> AsyncIterator[OpenTransport]:
    async with namespace_scope(namespace):

        def opener(**options: Any) -> AbstractAsyncContextManager[RabbitMqTransport]:
            return transport_for(namespace, **options)

        yield opener


@pytest.fixture
async def transport(open_transport: OpenTransport) -> AsyncIterator[RabbitMqTransport]:
    async with open_transport() as opened:
        await opened.subscribe(WORKER)
        yield opened


@pytest.fixture
async def connection() -> AsyncIterator[AbstractConnection]:
    opened = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with opened:
        yield opened


@pytest.fixture
async def channel(connection: AbstractConnection) -> AbstractChannel:
    return await connection.channel()


async def one(transport: RabbitMqTransport, within: float = 10.0) -> Delivery:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if got := await transport.receive(WORKER, 1, timeout=0.5):
            return got[0]
    raise AssertionError("no delivery")


async def same_arguments(
    connection: AbstractConnection, queue: str, arguments: dict[str, Any]
) -> bool:
    """Whether ``queue`` exists with exactly these arguments (RabbitMQ checks equivalence)."""
    async with await connection.channel() as probe:
        await probe.declare_queue(queue, passive=True)
        try:
            await probe.declare_queue(queue, durable=True, arguments=arguments)
        except ChannelPreconditionFailed:
            return False
    return True


async def dead_letters(
    channel: AbstractChannel, queue: str, within: float = 5.0
) -> list[AbstractIncomingMessage]:
    """Messages waiting in ``queue``, taken off it (polls until one arrives or time is up)."""
    dlq = await channel.declare_queue(queue, passive=True)
    got: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + within
    while not got and time.monotonic() < deadline:
        while (found := await dlq.get(no_ack=True, fail=False)) is not None:
            got.append(found)
        await asyncio.sleep(0.1)
    return got


def test_retry_delays_round_up_to_a_coarse_series() -> None:
    assert [retry_ttl_ms(d) for d in (0, -1, 0.001, 0.26, 2.0, 2.1, 4.9, 7, 9, 300)] == [
        0, 0, 100, 300, 2000, 2500, 5000, 8000, 10000, 300000,
    ]  # fmt: skip
    for delay in (0.1, 0.37, 1.3, 2.26, 5.5, 61.0, 1234.5):
        assert delay * 1000 <= retry_ttl_ms(delay) <= delay * 1000 * 4 / 3


async def test_queues_are_quorum_with_a_delivery_limit_and_a_dead_letter_queue(
    transport: RabbitMqTransport, connection: AbstractConnection, namespace: str
) -> None:
    main, dlq = f"{namespace}.worker", f"{namespace}.worker.dlq"
    expected = {
        "x-queue-type": "quorum",
        "x-delivery-limit": 20,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert await same_arguments(connection, main, expected)
    assert not await same_arguments(connection, main, {**expected, "x-queue-type": "classic"})
    assert await same_arguments(connection, dlq, {"x-queue-type": "quorum"})


async def test_a_retry_waits_in_a_ttl_queue_that_dead_letters_back(
    transport: RabbitMqTransport, connection: AbstractConnection, namespace: str
) -> None:
    await transport.publish([message()])
    first = await one(transport)

    retried_at = time.monotonic()
    await transport.retry(first, delay=0.26)
    again = await one(transport)

    assert time.monotonic() - retried_at >= 0.3
    assert (again.message, again.attempt) == (first.message, 2)
    await transport.ack(again)
    assert await same_arguments(
        connection,
        f"{namespace}.worker.retry.300ms",
        {
            "x-queue-type": "quorum",
            "x-message-ttl": 300,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{namespace}.worker",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


async def test_a_dead_letter_waits_in_the_broker_dlq_with_its_reason(
    transport: RabbitMqTransport, channel: AbstractChannel, namespace: str
) -> None:
    sent = message()
    await transport.publish([sent])
    got = await one(transport)

    await transport.dead_letter(got, "handler failed 3 times")

    [parked] = await dead_letters(channel, f"{namespace}.worker.dlq")
    assert parked.headers[H_MESSAGE_ID] == sent.id
    assert parked.headers["dead-letter-reason"] == "handler failed 3 times"
    assert await transport.receive(WORKER, 10, timeout=0.5) == []


async def test_an_undecodable_message_goes_to_the_dlq_and_the_next_one_still_arrives(
    transport: RabbitMqTransport, channel: AbstractChannel, namespace: str
) -> None:
    exchange = await channel.get_exchange(namespace)
    await exchange.publish(aio_pika.Message(b"not json"), routing_key="test.happened")
    sent = message()
    await transport.publish([sent])

    got = await one(transport)
    await transport.ack(got)

    assert got.message == sent
    [parked] = await dead_letters(channel, f"{namespace}.worker.dlq")
    assert parked.body == b"not json"
    assert parked.headers["x-first-death-reason"] == "rejected"


async def test_a_message_whose_processes_keep_dying_is_dead_lettered(
    open_transport: OpenTransport, channel: AbstractChannel, namespace: str
) -> None:
    sent = message()
    for crash in range(3):
        async with open_transport(delivery_limit=1) as doomed:
            await doomed.subscribe(WORKER)
            if crash == 0:
                await doomed.publish([sent])
            if crash < 2:
                assert (await one(doomed)).message.id == sent.id
            else:
                assert await doomed.receive(WORKER, 1, timeout=1.0) == []

    [parked] = await dead_letters(channel, f"{namespace}.worker.dlq")
    assert parked.headers[H_MESSAGE_ID] == sent.id
    assert parked.headers["x-first-death-reason"] == "delivery_limit"


async def test_publishing_a_type_nobody_subscribed_to_is_rejected(
    transport: RabbitMqTransport,
) -> None:
    lost = replace(message(), type="test.unheard")
    kept = message()

    with pytest.raises(PublishRejected) as rejected:
        await transport.publish([kept, lost])

    assert rejected.value.message_ids == (lost.id,)
    assert (await one(transport)).message.id == kept.id


class CuttableProxy:
    """A TCP proxy to RabbitMQ that a test cuts and restores, like a network outage."""

    def __init__(self) -> None:
        target = urlsplit(RABBITMQ_URL)
        self._target = (target.hostname or "127.0.0.1", target.port or 5672)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        parts = urlsplit(RABBITMQ_URL)
        return parts._replace(
            netloc=f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"
        ).geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def test_a_lost_connection_is_unavailable_then_recovers_by_itself(
    open_transport: OpenTransport,
) -> None:
    proxy = CuttableProxy()
    await proxy.start()
    try:
        async with open_transport(url=proxy.url) as transport:
            await transport.subscribe(WORKER)
            await transport.publish([message()])
            held = await one(transport)

            await proxy.cut()
            await _until_unavailable(transport)
            with pytest.raises(TransportUnavailable):
                await transport.receive(WORKER, 10, timeout=0.2)

            await proxy.start()
            await _until_published(transport, message())
            with pytest.raises(TransportUnavailable):
                await transport.ack(held)  # its channel died: RabbitMQ hands it out again
            assert held.message.id in await _ids_received(transport, within=3.0)
    finally:
        await proxy.cut()


async def _until_unavailable(transport: RabbitMqTransport) -> None:
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            await transport.publish([message()])
        except TransportUnavailable:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("publishing still succeeds with the connection cut")


async def _until_published(transport: RabbitMqTransport, sent: Message) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            await transport.publish([sent])
            return
        except TransportUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _ids_received(transport: RabbitMqTransport, within: float) -> set[str]:
    ids: set[str] = set()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for delivery in await transport.receive(WORKER, 10, timeout=0.3):
            ids.add(delivery.message.id)
            await transport.ack(delivery)
    return ids
