"""Removing what an e2e deployment left on a shared broker, whatever the test's outcome.

Every e2e deployment runs in its own ``ORDERLY_BROKER_NAMESPACE``. Left behind, RabbitMQ's
quorum queues pile up (thousands after a few suite runs, each recovered at every broker start
and enough to stall the broker), and so do Redis streams, JetStream streams and Kafka topics.
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
            from redis.asyncio import Redis

            client = Redis.from_url(broker_url, socket_connect_timeout=2)
            try:
                keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=500)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()
        elif scheme == "nats":
            from orderly.adapters.transports.nats_jetstream import NatsJetStreamTransport

            nats = NatsJetStreamTransport(broker_url, namespace=namespace)
            try:
                await nats.delete_namespace()
            finally:
                await nats.close()
        elif scheme == "kafka":
            from orderly.adapters.transports.kafka import KafkaTransport

            kafka = KafkaTransport(broker_url, namespace=namespace)
            try:
                await kafka.delete_namespace()
            finally:
                await kafka.close()
