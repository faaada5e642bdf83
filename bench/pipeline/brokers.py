"""The transports the benchmark runs on: their loopback URLs, and removing what a run left.

Each run uses a fresh namespace (ORDERLY_BROKER_NAMESPACE) per transport, deleted afterwards:
Redis keys ``<ns>:*``; RabbitMQ's exchange ``<ns>`` and each consumer's queue and dead-letter
queue; NATS and Kafka through the transports' own ``delete_namespace``. Kafka is the Tansu
broker of ``tests.support.tansu`` (started if none answers, stopped when the run exits).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence

TRANSPORTS = ("local", "redis", "amqp", "nats", "kafka")
URLS = {
    "local": "local://",
    "redis": "redis://127.0.0.1:6379/0",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "nats": "nats://127.0.0.1:4222",
}


def broker_url(transport: str) -> str:
    """The loopback URL of ``transport``'s broker (Kafka: a Tansu broker, started if needed)."""
    if transport == "kafka":
        from tests.support.tansu import ensure_tansu

        return ensure_tansu()
    return URLS[transport]


def needs_relay(transport: str) -> bool:
    return transport != "local"


def new_namespace(transport: str) -> str:
    return f"bench-{transport}-{secrets.token_hex(4)}"


async def delete_namespace(
    transport: str, url: str, namespace: str, consumers: Sequence[str]
) -> None:
    """Remove the namespace's streams, queues or topics from the broker (best effort)."""
    from tests.support import namespaces

    if transport == "redis":
        await namespaces.delete_redis_namespace(url, namespace)
    elif transport == "amqp":
        await _delete_rabbitmq(url, namespace, consumers)
    elif transport == "nats":
        await namespaces.delete_nats_namespace(url, namespace)
    elif transport == "kafka":
        await namespaces.delete_kafka_namespace(url, namespace)


async def _delete_rabbitmq(url: str, namespace: str, consumers: Sequence[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(url, timeout=5)
    async with connection:
        channel = await connection.channel()
        for consumer in consumers:
            for queue in _rabbitmq_queues(f"{namespace}.{consumer}"):
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(queue)
        await channel.exchange_delete(namespace)


def _rabbitmq_queues(queue: str) -> list[str]:
    """A consumer's queue, its dead letters, and every retry queue it may have declared (the
    transport's TTL series: 1, 1.25, ... 8 times 100 ms to 100 s; deleting is idempotent)."""
    steps = (100, 125, 150, 200, 250, 300, 400, 500, 600, 800)
    retries = [f"{queue}.retry.{step * 10**k}ms" for k in range(4) for step in steps]
    return [queue, f"{queue}.dlq", *retries]
