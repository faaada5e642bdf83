"""Expired idempotency keys are purged; live ones stay."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx

from orderly.services import idempotency
from tests.conftest import Backend, bearer, row_counts


async def test_purge_deletes_expired_keys_only(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend
) -> None:
    order = {"items": [{"sku": "PROD-003", "quantity": 1}]}
    for _ in range(3):
        await client.post(
            "/api/orders", json=order, headers={**alice, "Idempotency-Key": str(uuid.uuid4())}
        )
    backend.clock.advance(timedelta(hours=20))
    # Tokens follow the same clock: sign in again after the jump.
    alice = bearer(backend, "alice")
    fresh = str(uuid.uuid4())
    await client.post("/api/orders", json=order, headers={**alice, "Idempotency-Key": fresh})
    backend.clock.advance(timedelta(hours=5))
    container = backend.container
    purged = await idempotency.purge_expired(container.uow, container.clock, batch=2)
    assert purged == 3
    counts = await row_counts(backend)
    assert counts["idempotency_keys"] == 1
    assert counts["orders"] == 4
    replay = await client.post(
        "/api/orders", json=order, headers={**alice, "Idempotency-Key": fresh}
    )
    assert replay.headers["idempotent-replayed"] == "true"
