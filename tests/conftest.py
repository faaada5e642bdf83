"""Shared fixtures: the storage backends (SQLite and the real PostgreSQL) and an API client.

Tests that take ``backend`` run once per backend. PostgreSQL tests skip when the server is not
answering, except with ORDERLY_TEST_REQUIRE_SERVICES=1 (set by CI), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from orderly.adapters.db.tables import metadata
from orderly.bootstrap import Container, bootstrap
from orderly.config import Settings
from orderly.entrypoints.api.app import create_app
from orderly.testing import ManualClock

PG_ADMIN_DSN = os.environ.get(
    "ORDERLY_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_SERVICES = os.environ.get("ORDERLY_TEST_REQUIRE_SERVICES") == "1"


def service_missing(name: str, error: BaseException) -> None:
    message = f"{name} is not reachable: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (ORDERLY_TEST_REQUIRE_SERVICES=1: real-service tests may not skip)")
    pytest.skip(message)


@asynccontextmanager
async def throwaway_postgres_database(prefix: str) -> AsyncIterator[str]:
    """Create a uniquely named PostgreSQL database, yield its SQLAlchemy URL, drop it after."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        service_missing("PostgreSQL", exc)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    async with throwaway_postgres_database("orderly_test") as url:
        yield url


@dataclass
class Backend:
    name: str
    container: Container
    clock: ManualClock

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgres"


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(backend name, URL); the PostgreSQL database is only created when a test needs it."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("db") / "orderly.db"
        return "sqlite", f"sqlite+aiosqlite:///{path}"
    return "postgres", str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
async def backend_session(database_url: tuple[str, str]) -> AsyncIterator[Backend]:
    name, url = database_url
    clock = ManualClock(datetime.now(UTC))
    settings = Settings(env="test", database_url=url, db_pool_size=20)
    container = bootstrap(settings, clock=clock)
    await container.migrate()
    try:
        yield Backend(name, container, clock)
    finally:
        await container.close()


@pytest.fixture
async def backend(backend_session: Backend) -> Backend:
    """A backend with empty tables, the demo catalogue and the clock at real time."""
    backend_session.clock.set(datetime.now(UTC))
    async with backend_session.container.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())
    await backend_session.container.seed()
    return backend_session


@pytest.fixture
def app(backend: Backend) -> FastAPI:
    return create_app(backend.container, check_schema=False)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def bearer(backend: Backend, user: str, role: str = "customer") -> dict[str, str]:
    return {"Authorization": f"Bearer {backend.container.tokens.issue(user, role)}"}


async def place_order(
    client: httpx.AsyncClient, backend: Backend, key: str, items: list[dict[str, object]]
) -> str:
    """POST an order for alice (``pm_card_visa``) under idempotency key ``key``; its id."""
    placed = await client.post(
        "/api/orders",
        json={"items": items, "paymentMethod": "pm_card_visa"},
        headers={**bearer(backend, "alice"), "Idempotency-Key": key},
    )
    assert placed.status_code == 202, placed.text
    return str(placed.json()["orderId"])


@pytest.fixture
def alice(backend: Backend) -> dict[str, str]:
    return bearer(backend, "alice")


@pytest.fixture
def bob(backend: Backend) -> dict[str, str]:
    return bearer(backend, "bob")


@pytest.fixture
def admin(backend: Backend) -> dict[str, str]:
    return bearer(backend, "ops", "admin")


COUNTED_TABLES = ("orders", "order_lines", "order_events", "outbox_messages", "idempotency_keys")


async def row_counts(backend: Backend) -> dict[str, int]:
    async with backend.container.engine.connect() as conn:
        return {
            t: int((await conn.execute(sa.text(f"SELECT count(*) FROM {t}"))).scalar_one())  # noqa: S608
            for t in COUNTED_TABLES
        }
