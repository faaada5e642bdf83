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
    # Not RFC 8259 JSON in UTF-8 (the standard library's parser took some of these).
    ("NaN quantity", b'{"items":[{"sku":"PROD-001","quantity":NaN}]}', 400, "malformed-json"),
    (
        "infinite quantity",
        b'{"items":[{"sku":"PROD-001","quantity":1e400}]}',
        400,
        "malformed-json",
    ),
    ("byte order mark", b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), 400, "malformed-json"),
    ("UTF-16", json.dumps(GOOD).encode("utf-16"), 400, "malformed-json"),
    ("invalid UTF-8", body(paymentMethod="x")[:-3] + b'\xff"}', 400, "malformed-json"),
    ("lone surrogate", body()[:-1] + b',"paymentMethod":"\\ud800"}', 400, "malformed-json"),
    ("deep arrays", b"[" * 5000 + b"]" * 5000, 400, "malformed-json"),
    ("deep objects", b'{"a":' * 3000 + b"1" + b"}" * 3000, 400, "malformed-json"),
    ("deep items", b'{"items":' + b"[" * 900 + b"]" * 900 + b"}", 422, "validation"),
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


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/jsonx"])
async def test_a_body_not_declared_json_is_422(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend, content_type: str | None
) -> None:
    """As a FastAPI body parameter answers: only application/json or application/*+json
    bodies are parsed; any other body is not an order."""
    before = await row_counts(backend)
    headers = {**alice, "Idempotency-Key": str(uuid.uuid4())}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/api/orders", content=body(), headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body"]
    assert await row_counts(backend) == before


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "APPLICATION/JSON", "application/ld+json"]
)
async def test_json_content_types_are_parsed(
    client: httpx.AsyncClient, alice: dict[str, str], content_type: str
) -> None:
    response = await client.post(
        "/api/orders",
        content=body(),
        headers={**alice, "Idempotency-Key": str(uuid.uuid4()), "Content-Type": content_type},
    )
    assert response.status_code == 202, response.text


async def test_empty_body_is_422_missing(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    response = await client.post(
        "/api/orders",
        content=b"",
        headers={**alice, "Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body"], "msg": "Field required", "type": "missing"}
    ]


async def test_checks_run_in_order_json_token_body_key(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    """Malformed JSON is answered before the token is looked at; an invalid body before the
    Idempotency-Key; a userId of another user after both."""

    async def post(raw: bytes, headers: dict[str, str]) -> str:
        response = await client.post(
            "/api/orders", content=raw, headers={**headers, "Content-Type": "application/json"}
        )
        slug: str = response.json()["type"].rsplit("/", 1)[-1]
        return slug

    assert await post(b"{", {}) == "malformed-json"
    assert await post(b"{}", {}) == "unauthorized"
    assert await post(b"{}", alice) == "validation"
    assert await post(body(), alice) == "idempotency-key-missing"
    other = body(userId="mallory")
    assert await post(other, {**alice, "Idempotency-Key": str(uuid.uuid4())}) == "forbidden"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b'{"reason": ', "the request body is not valid JSON"),
        (b"[" * 300 + b"]" * 300, "the request body is nested too deeply"),
    ],
)
async def test_cancel_with_a_bad_body_is_400(
    client: httpx.AsyncClient, alice: dict[str, str], raw: bytes, detail: str
) -> None:
    response = await client.post(
        "/api/orders/some-order/cancel",
        content=raw,
        headers={**alice, "Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/malformed-json")
    assert response.json()["detail"] == detail
