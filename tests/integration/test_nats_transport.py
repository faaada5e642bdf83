"""What only the NATS JetStream transport does: consumer settings, its dead-letter stream,
undecodable messages, several types per consumer and a connection lost under its feet."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from orderly.adapters.transports.nats_jetstream import (
    H_DEAD_LETTER_CONSUMER,
    H_DEAD_LETTER_DELIVERIES,
    H_DEAD_LETTER_REASON,
    MAX_DELIVER,
    NatsJetStreamTransport,
    durable_name,
    stream_names,
)
from orderly.domain.events import Message
from orderly.services.messaging import (
    H_MESSAGE_ID,
    H_TYPE,
    Delivery,
    Subscription,
    TransportUnavailable,
)
from tests.conftest import service_missing
from tests.contract.transports.nats_jetstream import NATS_URL, namespace_scope, transport_for

pytestmark = pytest.mark.timeout(60)

TYPE = "test.happened"
SUB = Subscription.of("worker", [TYPE])


def message(type_: str = TYPE, key: str = "order-1") -> Message:
    return Message(
        id=str(uuid.uuid4()),
        type=type_,
        key=key,
        payload={"n": 1},
        created_at=datetime.now(UTC),
        correlation_id=key,
    )


async def collect(
    transport: NatsJetStreamTransport,
    sub: Subscription,
    count: int,
    within: float = 5.0,
    *,
    ack: bool = False,
) -> list[Delivery]:
    """Receive up to ``count`` deliveries; acknowledge them at once when waiting past ack_wait."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        batch = await transport.receive(sub, count - len(got), timeout=0.5)
        for delivery in batch if ack else ():
            await transport.ack(delivery)
        got += batch
    return got


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def transport(namespace: str) -> AsyncIterator[NatsJetStreamTransport]:
    async with namespace_scope(namespace), transport_for(namespace, redelivery_after=2.0) as opened:
        yield opened


@pytest.fixture
async def js() -> AsyncIterator[JetStreamContext]:
    """A plain client, to look at the server and to publish what orderly never would."""
    try:
        client: Client = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
    except (OSError, nats.errors.Error) as exc:
        service_missing("NATS JetStream", exc)
    try:
        yield client.jetstream()
    finally:
        await client.close()


async def test_each_type_has_a_durable_consumer_with_ack_wait_and_max_deliver(
    transport: NatsJetStreamTransport, js: JetStreamContext, namespace: str
) -> None:
    sub = Subscription.of("worker", ["order.placed", "order.paid"])
    await transport.subscribe(sub)

    stream, _ = stream_names(namespace)
    for type_ in sub.types:
        info = await js.consumer_info(stream, durable_name("worker", type_))
        assert info.config.filter_subject == f"{namespace}.msg.{type_}"
        assert info.config.ack_wait == pytest.approx(2.0)
        assert info.config.max_deliver == MAX_DELIVER


async def test_one_consumer_receives_every_type_it_subscribed_to(
    transport: NatsJetStreamTransport,
) -> None:
    sub = Subscription.of("worker", ["order.placed", "order.paid"])
    await transport.subscribe(sub)
    await transport.subscribe(Subscription.of("other", ["order.shipped"]))
    sent = [message("order.placed"), message("order.paid"), message("order.shipped")]
    await transport.publish(sent)

    got = await collect(transport, sub, 3, within=3.0, ack=True)

    assert sorted(d.message.type for d in got) == ["order.paid", "order.placed"]


async def test_a_dead_letter_keeps_body_and_headers_and_says_why(
    transport: NatsJetStreamTransport, js: JetStreamContext, namespace: str
) -> None:
    await transport.subscribe(SUB)
    sent = message()
    await transport.publish([sent])
    [got] = await collect(transport, SUB, 1)

    await transport.dead_letter(got, "ValueError: bad\nTraceback (most recent call last): ...")

    _, dlq = stream_names(namespace)
    parked = await js.get_last_msg(dlq, f"{namespace}.dlq.worker")
    headers = parked.headers or {}
    assert headers[H_MESSAGE_ID] == sent.id
    assert headers[H_TYPE] == TYPE
    assert headers[H_DEAD_LETTER_CONSUMER] == "worker"
    assert headers[H_DEAD_LETTER_DELIVERIES] == "1"
    assert headers[H_DEAD_LETTER_REASON].startswith("ValueError: bad Traceback")
    assert parked.data == b'{"n":1}'


async def test_an_undecodable_message_is_parked_not_returned_nor_redelivered(
    transport: NatsJetStreamTransport, js: JetStreamContext, namespace: str
) -> None:
    await transport.subscribe(SUB)
    await js.publish(f"{namespace}.msg.{TYPE}", b"not json", headers={"type": TYPE})
    good = message()
    await transport.publish([good])

    got = await collect(transport, SUB, 2, within=3.0, ack=True)
    assert [d.message.id for d in got] == [good.id]

    _, dlq = stream_names(namespace)
    parked = await js.get_last_msg(dlq, f"{namespace}.dlq.worker")
    assert parked.data == b"not json"
    assert (parked.headers or {})[H_DEAD_LETTER_REASON].startswith("undecodable")
    assert await collect(transport, SUB, 1, within=3.0) == [], "redelivered after ack_wait"


async def test_a_retry_counts_as_the_next_delivery(transport: NatsJetStreamTransport) -> None:
    await transport.subscribe(SUB)
    await transport.publish([message()])
    [first] = await collect(transport, SUB, 1)
    await transport.retry(first, delay=0)

    [second] = await collect(transport, SUB, 1)
    await transport.ack(second)
    assert (first.attempt, second.attempt) == (1, 2)


class Proxy:
    """A TCP relay to the NATS server that can be cut, as a network failure would."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.cut()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.close()


async def test_a_lost_connection_is_unavailable_then_reconnected_on_the_next_call(
    namespace: str, js: JetStreamContext
) -> None:
    upstream = int(NATS_URL.rsplit(":", 1)[1])
    async with namespace_scope(namespace), Proxy(upstream) as proxy:
        transport = NatsJetStreamTransport(
            f"nats://127.0.0.1:{proxy.port}", namespace=namespace, redelivery_after=2.0
        )
        try:
            await transport.connect()
            await transport.subscribe(SUB)
            await proxy.cut()
            await asyncio.sleep(0.2)

            started = time.monotonic()
            with pytest.raises(TransportUnavailable):
                await transport.publish([message()])
            with pytest.raises(TransportUnavailable):
                await transport.receive(SUB, 10, timeout=0.5)
            assert time.monotonic() - started < 5

            await proxy.start()
            sent = message()
            await transport.publish([sent])
            [got] = await collect(transport, SUB, 1)
            await transport.ack(got)
            assert got.message.id == sent.id
        finally:
            await transport.close()
            await transport.close()


async def test_streams_and_consumers_deleted_by_hand_are_made_again(
    transport: NatsJetStreamTransport, js: JetStreamContext, namespace: str
) -> None:
    await transport.subscribe(SUB)
    assert await transport.receive(SUB, 1, timeout=0.2) == []
    for stream in stream_names(namespace):
        await js.delete_stream(stream)

    sent = message()
    deadline = time.monotonic() + 10
    got: list[Delivery] = []
    while not got and time.monotonic() < deadline:
        with contextlib.suppress(TransportUnavailable):
            await transport.subscribe(SUB)
            await transport.publish([sent])
            got = await collect(transport, SUB, 1, within=1.0, ack=True)
    assert [d.message.id for d in got] == [sent.id]
