"""The local transport on the real PostgreSQL (SKIP LOCKED claims, LISTEN/NOTIFY wake-ups)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from orderly.adapters.db.engine import create_engine
from orderly.adapters.db.outbox_queue import OutboxQueue
from orderly.adapters.system import SystemClock
from orderly.adapters.transports.local import LocalTransport
from tests.conftest import throwaway_postgres_database
from tests.contract.transports._local import DATABASES, local_transport, migrate


@asynccontextmanager
async def namespace_scope(namespace: str) -> AsyncIterator[None]:
    async with throwaway_postgres_database("orderly_local") as url:
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


def unreachable_transport() -> LocalTransport:
    engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/orderly")
    return LocalTransport(OutboxQueue(engine, clock=SystemClock(), worker_id="unreachable"))


def database_for(namespace: str) -> str:
    return DATABASES[namespace]
