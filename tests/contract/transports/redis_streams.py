"""The Redis Streams transport on the real Redis server (``ORDERLY_TEST_REDIS_URL``)."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from orderly.adapters.transports.codec import decode
from orderly.adapters.transports.redis_streams import RedisStreamsTransport
from orderly.services.messaging import TransportUnavailable
from tests.conftest import service_missing

REDIS_URL = os.environ.get("ORDERLY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def namespace_scope(namespace: str) -> AsyncIterator[None]:
    """Delete every key of the namespace once the test is over (transports come and go)."""
    try:
        yield
    finally:
        await delete_namespace(namespace)


@asynccontextmanager
async def transport_for(
    namespace: str, redelivery_after: float = 30.0
) -> AsyncIterator[RedisStreamsTransport]:
    transport = RedisStreamsTransport(
        REDIS_URL, namespace=namespace, redelivery_after=redelivery_after
    )
    try:
        await transport.connect()
    except TransportUnavailable as exc:
        service_missing("Redis", exc)
    try:
        yield transport
    finally:
        await transport.close()


def unreachable_transport() -> RedisStreamsTransport:
    return RedisStreamsTransport(f"redis://127.0.0.1:{closed_port()}/0")


def closed_port() -> int:
    """A loopback port nobody listens on (just released by the kernel)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def delete_namespace(namespace: str) -> None:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=500)]
        if keys:
            await client.delete(*keys)
    except (RedisError, OSError):
        return
    finally:
        await client.aclose()


async def dead_letter_queue(
    namespace: str, consumer: str, expected: int
) -> list[tuple[str, int, str]]:
    """(message id, attempt, reason) of what waits in ``consumer``'s dead-letter stream."""
    redis = Redis.from_url(REDIS_URL)
    try:
        entries = await redis.xrange(f"{namespace}:consumer:{consumer}:dlq")
    finally:
        await redis.aclose()
    found = []
    for _, fields in entries or []:
        raw = {bytes(k): bytes(v) for k, v in (fields or {}).items()}  # type: ignore[arg-type]
        message, attempt = decode(raw[b"body"], orjson.loads(raw[b"headers"]))
        found.append((message.id, attempt, raw[b"reason"].decode()))
    return found
