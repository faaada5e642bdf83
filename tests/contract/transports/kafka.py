"""The Kafka transport on a real Kafka-compatible broker (Tansu, started here when needed)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

from orderly.adapters.transports.kafka import KafkaTransport
from orderly.services.messaging import TransportUnavailable
from tests.conftest import service_missing
from tests.support.server import free_port
from tests.support.tansu import TansuUnavailable, ensure_tansu


@functools.cache
def broker_url() -> str:
    """Once per test session: the broker's URL (a broker is started if none answers)."""
    return ensure_tansu()


def _url() -> str:
    try:
        return broker_url()
    except TansuUnavailable as exc:
        service_missing("Kafka (Tansu)", exc)
        raise


@contextlib.asynccontextmanager
async def transport_for(
    namespace: str, redelivery_after: float = 30.0
) -> AsyncIterator[KafkaTransport]:
    transport = KafkaTransport(_url(), namespace=namespace, redelivery_after=redelivery_after)
    try:
        await transport.connect()
    except TransportUnavailable as exc:
        service_missing("Kafka (Tansu)", exc)
    try:
        yield transport
    finally:
        await transport.close()


@contextlib.asynccontextmanager
async def namespace_scope(namespace: str) -> AsyncIterator[None]:
    """Around the whole test: afterwards, drop the namespace's topics and consumer groups."""
    try:
        yield
    finally:
        cleaner = KafkaTransport(_url(), namespace=namespace)
        try:
            await cleaner.delete_namespace()
        finally:
            await cleaner.close()


def unreachable_transport() -> KafkaTransport:
    return KafkaTransport(f"kafka://127.0.0.1:{free_port()}", namespace="unreachable")
