"""Redis Streams transport behaviour the shared contract does not reach, on the real server."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime

import pytest
import structlog
from redis.asyncio import Redis

from orderly.adapters.transports.redis_streams import RedisStreamsTransport
from orderly.domain.events import Message
from orderly.services.messaging import Delivery, Subscription, TransportUnavailable
from tests.contract.transports.redis_streams import (
    REDIS_URL,
    closed_port,
    delete_namespace,
    transport_for,
)

pytestmark = pytest.mark.timeout(60)

SUB = Subscription.of("worker", ["test.happened"])


def message(n: int = 0, type_: str = "test.happened") -> Message:
    return Message(
        id=str(uuid.uuid4()),
        type=type_,
        key=f"order-{n}",
        payload={"n": n},
        created_at=datetime.now(UTC),
        correlation_id=f"order-{n}",
    )


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    await delete_namespace(name)


@pytest.fixture
async def redis(namespace: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def collect(
    transport: RedisStreamsTransport, sub: Subscription, count: int, within: float = 5.0
) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got += await transport.receive(sub, count - len(got), timeout=0.3)
    return got


async def fails_quickly(call: Awaitable[object]) -> None:
    started = time.monotonic()
    with pytest.raises(TransportUnavailable):
        await call
    assert time.monotonic() - started < 5.0, "took too long to report the server unavailable"


async def kill_connections(redis: Redis, namespace: str) -> int:
    """CLIENT KILL every connection of the namespace's transports (they name themselves)."""
    killed = 0
    for client in await redis.client_list():
        if namespace in client.get("name", ""):
            killed += await redis.client_kill_filter(_id=client["id"])
    return killed


class Proxy:
    """A TCP relay to Redis that can be switched off, as if the server went away."""

    def __init__(self) -> None:
        self.port = closed_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers |= {writer, upstream_writer}
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


async def test_an_undecodable_entry_goes_to_the_dead_letter_stream_and_is_not_returned(
    namespace: str, redis: Redis
) -> None:
    async with transport_for(namespace) as transport:
        await transport.subscribe(SUB)
        stream = f"{namespace}:type:test.happened"
        await redis.xadd(stream, {"body": b'{"n": 1}'})
        await redis.xadd(stream, {"headers": b"{not json", "body": b"{}"})
        await redis.xadd(stream, {"headers": b'{"message-id": "x"}', "body": b"[]"})
        good = message()
        await transport.publish([good])

        with structlog.testing.capture_logs() as logs:
            got = await collect(transport, SUB, 2, within=2.0)
        await transport.ack(got[0])

        assert [d.message for d in got] == [good]
        warnings = [e for e in logs if e["event"] == "undecodable message dead-lettered"]
        assert len(warnings) == 3
        parked = await redis.xrange(f"{namespace}:consumer:worker:dlq") or []
        reasons = [(fields or {}).get(b"reason", b"") for _, fields in parked]
        assert len(reasons) == 3
        assert all(str(reason).startswith("b'undecodable") for reason in reasons)
        assert (await redis.xpending(stream, "worker"))["pending"] == 0


async def test_a_killed_connection_is_replaced_on_the_next_call(
    namespace: str, redis: Redis
) -> None:
    async with transport_for(namespace) as transport:
        await transport.subscribe(SUB)
        await transport.publish([message(1)])
        assert await kill_connections(redis, namespace) >= 1

        sent = message(2)
        try:
            await transport.publish([sent])
        except TransportUnavailable:
            await transport.publish([sent])
        got = await collect(transport, SUB, 2)

        assert sent.id in {d.message.id for d in got}
        assert len(got) == 2


async def test_a_receive_blocked_on_a_killed_connection_raises_nothing_raw(
    namespace: str, redis: Redis
) -> None:
    async with transport_for(namespace) as transport:
        await transport.subscribe(SUB)
        blocked = asyncio.create_task(transport.receive(SUB, 10, timeout=3.0))
        await asyncio.sleep(0.3)
        await kill_connections(redis, namespace)
        with contextlib.suppress(TransportUnavailable):
            assert await blocked == []

        sent = message()
        await transport.publish([sent])
        [got] = await collect(transport, SUB, 1)
        assert got.message.id == sent.id


async def test_a_server_that_went_away_is_unavailable_quickly_and_used_again_when_back(
    namespace: str,
) -> None:
    proxy = Proxy()
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    transport = RedisStreamsTransport(url, namespace=namespace, redelivery_after=1.0)
    try:
        await transport.connect()
        await transport.subscribe(SUB)
        await proxy.stop()

        await fails_quickly(transport.publish([message()]))
        await fails_quickly(transport.receive(SUB, 10, timeout=1.0))

        await proxy.start()
        sent = message()
        await transport.publish([sent])
        [got] = await collect(transport, SUB, 1)
        assert got.message.id == sent.id
    finally:
        await transport.close()
        await proxy.stop()


async def test_an_unreachable_server_fails_every_call_quickly() -> None:
    transport = RedisStreamsTransport(f"redis://127.0.0.1:{closed_port()}/0")
    await fails_quickly(transport.connect())
    await fails_quickly(transport.subscribe(SUB))
    await fails_quickly(transport.publish([message()]))
    await fails_quickly(transport.receive(SUB, 10, timeout=1.0))
    await transport.close()
    await transport.close()


async def test_due_retries_are_moved_once_between_competing_processes(namespace: str) -> None:
    sent = [message(n) for n in range(20)]
    async with transport_for(namespace) as a, transport_for(namespace) as b:
        await a.subscribe(SUB)
        await b.subscribe(SUB)
        await a.publish(sent)
        for delivery in await collect(a, SUB, 20):
            await a.retry(delivery, delay=0.3)

        async def drain(transport: RedisStreamsTransport) -> list[Delivery]:
            got: list[Delivery] = []
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                batch = await transport.receive(SUB, 10, timeout=0.2)
                await asyncio.gather(*(transport.ack(d) for d in batch))
                got += batch
            return got

        got_a, got_b = await asyncio.gather(drain(a), drain(b))

    again = got_a + got_b
    assert sorted(d.message.id for d in again) == sorted(m.id for m in sent)
    assert {d.attempt for d in again} == {2}


async def test_a_reclaimed_delivery_keeps_its_attempt(namespace: str) -> None:
    async with transport_for(namespace, redelivery_after=0.5) as crashed:
        await crashed.subscribe(SUB)
        await crashed.publish([message()])
        [first] = await collect(crashed, SUB, 1)
        await crashed.retry(first, delay=0.0)
        [second] = await collect(crashed, SUB, 1)
        assert second.attempt == 2

    async with transport_for(namespace, redelivery_after=0.5) as restarted:
        [reclaimed] = await collect(restarted, SUB, 1)
        await restarted.ack(reclaimed)
        assert reclaimed.message == first.message
        assert reclaimed.attempt == 2


async def test_a_settled_delivery_is_neither_retried_nor_dead_lettered(
    namespace: str, redis: Redis
) -> None:
    async with transport_for(namespace) as transport:
        await transport.subscribe(SUB)
        await transport.publish([message()])
        [got] = await collect(transport, SUB, 1)
        await transport.ack(got)

        await transport.retry(got, delay=0.0)
        await transport.dead_letter(got, "too late")

        assert await collect(transport, SUB, 1, within=1.5) == []
        assert await redis.zcard(f"{namespace}:consumer:worker:delayed") == 0
        assert await redis.xlen(f"{namespace}:consumer:worker:dlq") == 0


async def test_max_messages_holds_across_several_streams(namespace: str) -> None:
    types = ["test.a", "test.b", "test.c"]
    sub = Subscription.of("worker", types)
    sent = [message(n, type_) for type_ in types for n in range(10)]
    async with transport_for(namespace) as transport:
        await transport.subscribe(sub)
        await transport.publish(sent)
        got: list[Delivery] = []
        for _ in range(20):
            batch = await transport.receive(sub, 4, timeout=0.3)
            assert len(batch) <= 4
            got += batch
        await asyncio.gather(*(transport.ack(d) for d in got))

    assert sorted(d.message.id for d in got) == sorted(m.id for m in sent)


async def test_acknowledged_history_is_trimmed_and_unacknowledged_entries_are_kept(
    namespace: str, redis: Redis
) -> None:
    stream = f"{namespace}:type:test.happened"
    fast, slow = SUB, Subscription.of("slow", ["test.happened"])
    async with transport_for(namespace, redelivery_after=0.2) as transport:
        await transport.subscribe(fast)
        await transport.subscribe(slow)
        await transport.publish([message(n) for n in range(500)])

        for sub in (fast, slow):
            got = await collect(transport, sub, 500)
            await asyncio.gather(*(transport.ack(d) for d in got))
            await asyncio.sleep(0.15)
            await transport.receive(sub, 1, timeout=0.05)
            if sub is fast:
                assert await redis.xlen(stream) == 500, "trimmed what 'slow' has not read"

        assert await redis.xlen(stream) <= 100


async def test_close_forgets_the_consumer_only_when_it_holds_nothing(
    namespace: str, redis: Redis
) -> None:
    stream = f"{namespace}:type:test.happened"
    async with transport_for(namespace) as idle:
        await idle.subscribe(SUB)
        await idle.receive(SUB, 1, timeout=0.05)
    assert await redis.xinfo_consumers(stream, "worker") == []

    async with transport_for(namespace) as holding:
        await holding.publish([message()])
        assert len(await collect(holding, SUB, 1)) == 1
    [consumer] = await redis.xinfo_consumers(stream, "worker")
    assert consumer["pending"] == 1
