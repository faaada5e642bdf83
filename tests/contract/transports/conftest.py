"""One transport contract, run against every transport on its real server.

Each transport has a module here named after it that provides:

- ``transport_for(namespace, redelivery_after)``: an async context manager yielding a connected
  transport whose queues/streams/topics are private to ``namespace`` (so tests never see each
  other's messages) and whose unacknowledged deliveries come back after about
  ``redelivery_after`` seconds (lease, visibility timeout, ack wait; a transport that redelivers
  as soon as the consumer's connection closes may ignore it). Leaving the context closes the
  transport without acknowledging anything: that is how the suite simulates a crashed process.
  It cleans up what ``namespace`` left on the server.
- ``unreachable_transport()``: a transport pointed at a closed port on 127.0.0.1.
- ``dead_letter_queue(namespace, consumer, expected)``: (message id, attempt, reason) of each
  message in the consumer's dead-letter queue on the broker (reading until ``expected`` came
  where the broker cannot say what it holds), or None for a transport without one.
- optionally ``namespace_scope(namespace)``: an async context manager entered around the whole
  test, for what must outlive one transport (the local transport's database);
- optionally ``database_for(namespace)``: the database URL the consumer runtime must use with
  this transport (the local transport's queue is that database); others get a SQLite file.

A transport whose server does not answer skips, except under ORDERLY_TEST_REQUIRE_SERVICES=1
(set by CI), where it fails.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orderly.adapters.db.engine import create_engine, dispose_engine
from orderly.adapters.db.migrate import upgrade
from orderly.adapters.db.seed import seed_demo_catalogue
from orderly.services.messaging import Transport

TRANSPORTS = [
    "local_sqlite",
    "local_postgres",
    "redis_streams",
    "rabbitmq",
    "nats_jetstream",
    "kafka",
]

OpenTransport = Callable[..., AbstractAsyncContextManager[Transport]]


@pytest.fixture(params=TRANSPORTS)
def transport_module(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(f"tests.contract.transports.{request.param}")


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def namespace_scope(transport_module: ModuleType, namespace: str) -> AsyncIterator[None]:
    scope = getattr(transport_module, "namespace_scope", None)
    if scope is None:
        yield
        return
    async with scope(namespace):
        yield


@pytest.fixture
def open_transport(
    transport_module: ModuleType, namespace: str, namespace_scope: None
) -> OpenTransport:
    """Open (another) transport on this test's namespace: ``async with open_transport():``."""

    def opener(**options: Any) -> AbstractAsyncContextManager[Transport]:
        return transport_module.transport_for(namespace, **options)  # type: ignore[no-any-return]

    return opener


@pytest.fixture
async def runtime_database(
    transport_module: ModuleType,
    namespace: str,
    namespace_scope: None,
    tmp_path: Path,
) -> str:
    """A migrated, seeded database for the consumer runtime's units of work."""
    database_for = getattr(transport_module, "database_for", None)
    url = (
        database_for(namespace)
        if database_for is not None
        else f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
    )
    engine = create_engine(url)
    try:
        await upgrade(engine)
        await seed_demo_catalogue(engine)
    finally:
        await dispose_engine(engine)
    return url


ReadDeadLetters = Callable[[str, int], Awaitable[list[tuple[str, int, str]] | None]]


@pytest.fixture
def dead_letter_queue(transport_module: ModuleType, namespace: str) -> ReadDeadLetters:
    """Reads a consumer's dead-letter queue on the broker (None: the transport has none)."""

    async def read(consumer: str, expected: int) -> list[tuple[str, int, str]] | None:
        found: list[tuple[str, int, str]] | None = await transport_module.dead_letter_queue(
            namespace, consumer, expected
        )
        return found

    return read


@pytest.fixture
async def transport(open_transport: OpenTransport) -> AsyncIterator[Transport]:
    async with open_transport(redelivery_after=2.0) as opened:
        yield opened
