"""Shared by the two local-transport modules: a migrated database per test namespace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from orderly.adapters.db.engine import create_engine, dispose_engine
from orderly.adapters.db.migrate import upgrade
from orderly.adapters.db.outbox_queue import OutboxQueue
from orderly.adapters.system import SystemClock
from orderly.adapters.transports.local import LocalTransport

DATABASES: dict[str, str] = {}


async def migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await dispose_engine(engine)


@asynccontextmanager
async def local_transport(url: str, redelivery_after: float) -> AsyncIterator[LocalTransport]:
    """A transport on its own engine, as a separate process would have."""
    engine = create_engine(url, pool_size=5)
    queue = OutboxQueue(engine, clock=SystemClock(), worker_id=f"w-{uuid.uuid4().hex[:8]}")
    transport = LocalTransport(queue, lease=redelivery_after)
    try:
        await transport.connect()
        yield transport
    finally:
        await transport.close()
        await dispose_engine(engine)


@asynccontextmanager
async def registered(namespace: str, url: str) -> AsyncIterator[None]:
    """Migrate ``url`` and make it the database of ``namespace`` for the test."""
    await migrate(url)
    DATABASES[namespace] = url
    try:
        yield
    finally:
        del DATABASES[namespace]


def transport_for(
    namespace: str, redelivery_after: float = 30.0
) -> AbstractAsyncContextManager[LocalTransport]:
    return local_transport(DATABASES[namespace], redelivery_after)


def database_for(namespace: str) -> str:
    return DATABASES[namespace]


def transport_on(url: str) -> LocalTransport:
    engine = create_engine(url)
    return LocalTransport(OutboxQueue(engine, clock=SystemClock(), worker_id="unreachable"))


async def dead_letter_queue(namespace: str, consumer: str, expected: int) -> None:
    """None: the local transport has no dead-letter queue beside the dead-letter store."""
