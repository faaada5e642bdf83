"""Removing what a deployment left on a shared broker: the e2e tests' and the benchmarks'.

Every e2e deployment and benchmark run uses its own ``ORDERLY_BROKER_NAMESPACE``. Left behind,
RabbitMQ's quorum queues pile up (thousands after a few suite runs, each recovered at every
broker start and enough to stall the broker), and so do Redis streams, JetStream streams and
Kafka topics.
"""

from __future__ import annotations

import contextlib

from tests.support.saga_e2e import delete_rabbitmq_namespace


async def delete_broker_namespace(broker_url: str, namespace: str) -> None:
    """Best effort: delete ``namespace``'s queues, streams or topics on ``broker_url``'s broker."""
    scheme = broker_url.split("://", 1)[0]
    with contextlib.suppress(Exception):
        if scheme == "amqp":
            await delete_rabbitmq_namespace(namespace)
        elif scheme == "redis":
            await delete_redis_namespace(broker_url, namespace)
        elif scheme == "nats":
            await delete_nats_namespace(broker_url, namespace)
        elif scheme == "kafka":
            await delete_kafka_namespace(broker_url, namespace)


async def delete_redis_namespace(url: str, namespace: str) -> None:
    """Every key ``<namespace>:*`` (the streams and their bookkeeping)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def delete_nats_namespace(url: str, namespace: str) -> None:
    """The namespace's JetStream streams, through the transport's own ``delete_namespace``."""
    from orderly.adapters.transports.nats_jetstream import NatsJetStreamTransport

    nats = NatsJetStreamTransport(url, namespace=namespace)
    try:
        await nats.delete_namespace()
    finally:
        await nats.close()


async def delete_kafka_namespace(url: str, namespace: str) -> None:
    """The namespace's topics, through the transport's own ``delete_namespace``."""
    from orderly.adapters.transports.kafka import KafkaTransport

    kafka = KafkaTransport(url, namespace=namespace)
    try:
        await kafka.delete_namespace()
    finally:
        await kafka.close()
