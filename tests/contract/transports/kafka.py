"""The Kafka transport on a real Kafka-compatible broker (Tansu, started here when needed)."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from orderly.adapters.transports.codec import decode
from orderly.adapters.transports.kafka import H_DEAD_LETTER_REASON, KafkaTransport
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


async def dead_letter_queue(
    namespace: str, consumer: str, expected: int
) -> list[tuple[str, int, str]]:
    """(message id, attempt, reason) of the records in ``consumer``'s dead-letter topic: read
    until ``expected`` came (or 10 s passed), then half a second more for any extra."""
    transport = KafkaTransport(_url(), namespace=namespace)
    reader = AIOKafkaConsumer(
        transport.dead_letter_topic(consumer),
        bootstrap_servers=transport.bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await reader.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 10
        while len(records) < expected and time.monotonic() < deadline:
            batches = await reader.getmany(timeout_ms=500)
            records += [r for batch in batches.values() for r in batch]
        batches = await reader.getmany(timeout_ms=500)
        records += [r for batch in batches.values() for r in batch]
    finally:
        await reader.stop()
        await transport.close()
    found = []
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        message, attempt = decode(record.value, headers)
        found.append((message.id, attempt, headers[H_DEAD_LETTER_REASON]))
    return found
