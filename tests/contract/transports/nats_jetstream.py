"""The NATS JetStream transport on the real server (127.0.0.1:4222 unless told otherwise)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from orderly.adapters.transports.nats_jetstream import NatsJetStreamTransport
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
