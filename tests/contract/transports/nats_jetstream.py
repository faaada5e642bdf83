"""The NATS JetStream transport on the real server (127.0.0.1:4222 unless told otherwise)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import nats
from nats.errors import TimeoutError as NatsTimeoutError

from orderly.adapters.transports.codec import decode
from orderly.adapters.transports.nats_jetstream import (
    H_DEAD_LETTER_REASON,
    NatsJetStreamTransport,
    stream_names,
)
from orderly.services.messaging import TransportUnavailable
from tests.conftest import service_missing
from tests.support.server import free_port

NATS_URL = os.environ.get("ORDERLY_TEST_NATS_URL", "nats://127.0.0.1:4222")


@contextlib.asynccontextmanager
async def transport_for(
    namespace: str, redelivery_after: float = 30.0
) -> AsyncIterator[NatsJetStreamTransport]:
    transport = NatsJetStreamTransport(
        NATS_URL, namespace=namespace, redelivery_after=redelivery_after
    )
    try:
        await transport.connect()
    except TransportUnavailable as exc:
        service_missing("NATS JetStream", exc)
    try:
        yield transport
    finally:
        await transport.close()


@contextlib.asynccontextmanager
async def namespace_scope(namespace: str) -> AsyncIterator[None]:
    """Around the whole test: afterwards, delete the namespace's streams (and consumers)."""
    try:
        yield
    finally:
        cleaner = NatsJetStreamTransport(NATS_URL, namespace=namespace)
        try:
            with contextlib.suppress(TransportUnavailable):
                await cleaner.delete_namespace()
        finally:
            await cleaner.close()


def unreachable_transport() -> NatsJetStreamTransport:
    return NatsJetStreamTransport(f"nats://127.0.0.1:{free_port()}", namespace="unreachable")


async def dead_letter_queue(
    namespace: str, consumer: str, expected: int
) -> list[tuple[str, int, str]]:
    """(message id, attempt, reason) of what waits in the dead-letter stream for ``consumer``."""
    client = await nats.connect(NATS_URL)
    found: list[tuple[str, int, str]] = []
    try:
        js = client.jetstream()
        _, stream = stream_names(namespace)
        reader = await js.pull_subscribe(f"{namespace}.dlq.{consumer}", stream=stream)
        while True:
            try:
                batch = await reader.fetch(16, timeout=1)
            except NatsTimeoutError:
                break
            for msg in batch:
                headers = dict(msg.headers or {})
                message, attempt = decode(msg.data, headers)
                found.append((message.id, attempt, headers[H_DEAD_LETTER_REASON]))
                await msg.ack()
        await reader.unsubscribe()
    finally:
        await client.close()
    return found
