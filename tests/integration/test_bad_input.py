"""Bad input: the right status, a problem+json body, and the database untouched."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import Backend, row_counts

GOOD: dict[str, Any] = {"items": [{"sku": "PROD-001", "quantity": 1}]}


def body(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


CASES: list[tuple[str, bytes, int, str]] = [
    ("unknown sku", body(items=[{"sku": "NOPE-9", "quantity": 1}]), 422, "unknown-sku"),
    ("zero quantity", body(items=[{"sku": "PROD-001", "quantity": 0}]), 422, "validation"),
    ("huge quantity", body(items=[{"sku": "PROD-001", "quantity": 1001}]), 422, "validation"),
    ("float quantity", body(items=[{"sku": "PROD-001", "quantity": 14.5}]), 422, "validation"),
    ("string quantity", body(items=[{"sku": "PROD-001", "quantity": "2"}]), 422, "validation"),
    ("bool quantity", body(items=[{"sku": "PROD-001", "quantity": True}]), 422, "validation"),
    (
        "101 lines",
        body(items=[{"sku": f"S-{i}", "quantity": 1} for i in range(101)]),
        422,
        "validation",
    ),
    (
        "duplicate skus",
        body(items=[{"sku": "PROD-001", "quantity": 1}, {"sku": "PROD-001", "quantity": 2}]),
        422,
        "validation",
    ),
    ("no items", b"{}", 422, "validation"),
    ("empty items", body(items=[]), 422, "validation"),
    ("missing sku", body(items=[{"quantity": 1}]), 422, "validation"),
    ("unknown field", body(price=1), 422, "validation"),
    (
        "client-side price",
        body(items=[{"sku": "PROD-001", "quantity": 1, "unitPrice": 1}]),
        422,
        "validation",
    ),
    ("bad address", body(shippingAddress={"country": "US"}), 422, "validation"),
    ("array body", b"[]", 422, "validation"),
    ("malformed json", b'{"items": [', 400, "malformed-json"),
    ("not json at all", b"hello", 400, "malformed-json"),
    ("too large", b'{"items":[],"pad":"' + b"x" * 70_000 + b'"}', 413, "body-too-large"),
]


@pytest.mark.parametrize(("name", "raw", "status", "slug"), CASES, ids=[c[0] for c in CASES])
async def test_bad_order_bodies(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    backend: Backend,
    name: str,
    raw: bytes,
    status: int,
    slug: str,
) -> None:
    before = await row_counts(backend)
    response = await client.post(
        "/api/orders",
        content=raw,
        headers={**alice, "Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].endswith("/" + slug)
    assert problem["title"]
    assert problem["detail"]
    assert await row_counts(backend) == before


async def test_unknown_sku_is_named(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    response = await client.post(
        "/api/orders",
        json={"items": [{"sku": "PROD-001", "quantity": 1}, {"sku": "GHOST-1", "quantity": 1}]},
        headers={**alice, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 422
    assert response.json()["unknownSkus"] == ["GHOST-1"]
    assert "GHOST-1" in response.json()["detail"]


async def test_failed_validation_stores_no_key_so_the_retry_succeeds(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend
) -> None:
    idem = str(uuid.uuid4())
    headers = {**alice, "Idempotency-Key": idem}
    bad = await client.post(
        "/api/orders", json={"items": [{"sku": "GHOST", "quantity": 1}]}, headers=headers
    )
    assert bad.status_code == 422
    good = await client.post("/api/orders", json=GOOD, headers=headers)
    assert good.status_code == 202
    assert "idempotent-replayed" not in good.headers


@pytest.mark.parametrize(
    ("header", "slug"),
    [
        (None, "idempotency-key-missing"),
        ("", "idempotency-key-malformed"),
        ("x" * 256, "idempotency-key-malformed"),
        ("two words", "idempotency-key-malformed"),
        ('"unterminated', "idempotency-key-malformed"),
    ],
)
async def test_missing_or_malformed_key_is_400(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    backend: Backend,
    header: str | None,
    slug: str,
) -> None:
    before = await row_counts(backend)
    headers = dict(alice)
    if header is not None:
        headers["Idempotency-Key"] = header
    response = await client.post("/api/orders", json=GOOD, headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + slug)
    assert await row_counts(backend) == before


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-jwt", "Basic YWxpY2U6cHc=", "Bearer e30.e30.e30"],
)
async def test_no_or_bad_token_is_401(
    client: httpx.AsyncClient, backend: Backend, authorization: str | None
) -> None:
    before = await row_counts(backend)
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await client.post("/api/orders", json=GOOD, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert await row_counts(backend) == before


async def test_expired_and_foreign_tokens_are_401(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    import jwt

    expired = jwt.encode(
        {"sub": "alice", "role": "customer", "iss": "orderly", "exp": 1},
        backend.container.settings.jwt_secret,
        algorithm="HS256",
    )
    foreign = jwt.encode(
        {"sub": "alice", "role": "admin", "iss": "orderly", "exp": 4_000_000_000},
        "some-other-secret-of-sufficient-length!!",
        algorithm="HS256",
    )
    for token in (expired, foreign):
        response = await client.get("/api/orders", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
