"""An unreachable database answers 503 problem+json with Retry-After, never a 500."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from orderly.bootstrap import bootstrap
from orderly.config import Settings
from orderly.entrypoints.api.app import create_app

UNREACHABLE = [
    "postgresql+asyncpg://postgres@127.0.0.1:1/nothing",
    "sqlite+aiosqlite:////nonexistent-dir/orderly.db",
]


@pytest.fixture(params=UNREACHABLE, ids=["postgres-down", "sqlite-unopenable"])
async def dead_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    container = bootstrap(Settings(env="test", database_url=request.param))
    app = create_app(container, check_schema=False)
    token = container.tokens.issue("alice", "customer")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client, token
    await container.close()


async def test_every_database_route_answers_503(
    dead_client: tuple[httpx.AsyncClient, str],
) -> None:
    client, token = dead_client
    auth = {"Authorization": f"Bearer {token}"}
    responses = [
        await client.get("/health/ready"),
        await client.get("/api/orders", headers=auth),
        await client.get("/api/products"),
        await client.post(
            "/api/orders",
            json={"items": [{"sku": "PROD-001", "quantity": 1}]},
            headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
        ),
    ]
    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert responses[-1].headers["retry-after"] == "1"
    assert (await client.get("/health/live")).status_code == 200
