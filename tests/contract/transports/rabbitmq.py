"""The RabbitMQ transport on the real server (``ORDERLY_TEST_RABBITMQ_URL``, default loopback).

Queues outlive one transport (a "crashed" process's messages must wait for the next one), so
they are deleted when the whole test's namespace scope ends, with the namespace's exchange.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika

from orderly.adapters.transports.codec import decode
from orderly.adapters.transports.rabbitmq import H_DEAD_LETTER_REASON, RabbitMqTransport
from orderly.services.messaging import TransportUnavailable
from tests.conftest import service_missing

RABBITMQ_URL = os.environ.get("ORDERLY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")

_queues: dict[str, set[str]] = {}


@asynccontextmanager
async def namespace_scope(namespace: str) -> AsyncIterator[None]:
    _queues[namespace] = set()
    try:
        yield
    finally:
        await delete_namespace(namespace, _queues.pop(namespace))


@asynccontextmanager
async def transport_for(
    namespace: str, redelivery_after: float = 30.0, *, url: str = RABBITMQ_URL, **options: int
) -> AsyncIterator[RabbitMqTransport]:
    transport = RabbitMqTransport(
        url, namespace=namespace, redelivery_after=redelivery_after, **options
    )
    try:
        await transport.connect()
    except TransportUnavailable as exc:
        service_missing("RabbitMQ", exc)
    try:
        yield transport
    finally:
        _queues.setdefault(namespace, set()).update(transport.declared_queues)
        await transport.close()


def unreachable_transport() -> RabbitMqTransport:
    return RabbitMqTransport(f"amqp://guest:guest@127.0.0.1:{closed_port()}/", namespace="t")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def delete_namespace(namespace: str, queues: set[str]) -> None:
    """Delete the namespace's queues and exchange (what the transports declared)."""
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        for queue in sorted(queues):
            await channel.queue_delete(queue)
        await channel.exchange_delete(namespace)


async def dead_letter_queue(
    namespace: str, consumer: str, expected: int
) -> list[tuple[str, int, str]]:
    """(message id, attempt, reason) of what waits in ``consumer``'s dead-letter queue."""
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    found: list[tuple[str, int, str]] = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{namespace}.{consumer}.dlq", passive=True)
        while (raw := await queue.get(no_ack=True, fail=False)) is not None:
            headers = {k: v for k, v in raw.headers.items() if isinstance(v, str)}
            message, attempt = decode(raw.body, headers)
            found.append((message.id, attempt, headers[H_DEAD_LETTER_REASON]))
    return found
