"""The local transport on a SQLite file."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from orderly.adapters.db.engine import create_engine
from orderly.adapters.db.outbox_queue import OutboxQueue
from orderly.adapters.system import SystemClock
from orderly.adapters.transports.local import LocalTransport
from tests.contract.transports._local import DATABASES, local_transport, migrate


@asynccontextmanager
async def namespace_scope(namespace: str) -> AsyncIterator[None]:
    with tempfile.TemporaryDirectory(prefix="orderly-local-") as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'orderly.db'}"
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
    engine = create_engine("sqlite+aiosqlite:////nonexistent-directory/orderly.db")
    return LocalTransport(OutboxQueue(engine, clock=SystemClock(), worker_id="unreachable"))


def database_for(namespace: str) -> str:
    return DATABASES[namespace]
