"""The order API on SQLite and on the real PostgreSQL: intake, idempotency, reads."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.services.idempotency_types import Claimed, IdempotencyScope
from tests.conftest import Backend, bearer, row_counts

ORDER = {
    "items": [{"sku": "PROD-001", "quantity": 2}, {"sku": "PROD-003", "quantity": 1}],
    "paymentMethod": "pm_card_visa",
    "shippingAddress": {
        "country": "US",
        "city": "Austin",
        "line1": "Lincoln 65",
        "postalCode": "73301",
    },
}


def key() -> str:
    return str(uuid.uuid4())


async def place(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    body: Any = None,
    idem: str | None = None,
) -> httpx.Response:
    headers = {**auth, "Idempotency-Key": idem or key()}
    return await client.post("/api/orders", json=ORDER if body is None else body, headers=headers)


async def test_place_order_answers_202_with_server_side_prices(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    response = await place(client, alice)
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/api/orders/{body['orderId']}"
    assert body["status"] == "PENDING"
    assert body["totalAmount"] == 2 * 4999 + 2999
    assert body["currency"] == "USD"
    assert body["jobId"]
    assert body["items"][0] == {
        "sku": "PROD-001",
        "name": "Wireless Headphones",
        "quantity": 2,
        "unitPrice": 4999,
        "lineTotal": 9998,
    }
    assert "idempotent-replayed" not in response.headers


async def test_order_event_and_outbox_are_written_together(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend
) -> None:
    before = await row_counts(backend)
    response = await place(client, alice)
    order_id = response.json()["orderId"]
    after = await row_counts(backend)
    assert {table: after[table] - before[table] for table in after} == {
        "orders": 1,
        "order_lines": 2,
        "order_events": 1,
        "outbox_messages": 1,
        "idempotency_keys": 1,
    }
    events = (await client.get(f"/api/orders/{order_id}/events", headers=alice)).json()
    assert [(e["version"], e["type"]) for e in events] == [(1, "order.placed")]
    assert events[0]["correlationId"] == order_id
    assert events[0]["data"]["totalAmount"] == 12997


async def test_retry_replays_byte_for_byte_without_writing(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend
) -> None:
    idem = key()
    first = await place(client, alice, idem=idem)
    before = await row_counts(backend)
    again = await place(client, alice, idem=idem)
    assert again.status_code == 202
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    assert await row_counts(backend) == before


async def test_quoted_structured_field_key_is_the_same_key(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    idem = key()
    first = await place(client, alice, idem=idem)
    quoted = await place(client, alice, idem=f'"{idem}"')
    assert quoted.headers["idempotent-replayed"] == "true"
    assert quoted.content == first.content


async def test_reordered_json_body_is_the_same_request(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    idem = key()
    first = await place(client, alice, idem=idem)
    reordered = (
        '{"shippingAddress":{"postalCode":"73301","line1":"Lincoln 65","city":"Austin",'
        '"country":"US"},"paymentMethod":"pm_card_visa","items":[{"quantity":2,"sku":"PROD-001"},'
        '{"quantity":1,"sku":"PROD-003"}]}'
    )
    again = await client.post(
        "/api/orders",
        content=reordered,
        headers={**alice, "Idempotency-Key": idem, "Content-Type": "application/json"},
    )
    assert again.status_code == 202
    assert again.content == first.content


async def test_same_key_with_another_body_is_422_and_writes_nothing(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend
) -> None:
    idem = key()
    await place(client, alice, idem=idem)
    before = await row_counts(backend)
    changed = {**ORDER, "items": [{"sku": "PROD-001", "quantity": 3}]}
    response = await place(client, alice, changed, idem=idem)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/idempotency-key-reused")
    assert await row_counts(backend) == before


async def test_keys_are_scoped_per_user(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    idem = key()
    a = await place(client, alice, idem=idem)
    b = await place(client, bob, idem=idem)
    assert a.status_code == b.status_code == 202
    assert a.json()["orderId"] != b.json()["orderId"]
    assert "idempotent-replayed" not in b.headers


async def test_expired_key_starts_a_new_order(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend
) -> None:
    idem = key()
    first = await place(client, alice, idem=idem)
    backend.clock.advance(timedelta(hours=24, seconds=1))
    # Tokens follow the same clock: the morning's token has expired by now.
    second = await place(client, bearer(backend, "alice"), idem=idem)
    assert second.status_code == 202
    assert "idempotent-replayed" not in second.headers
    assert second.json()["orderId"] != first.json()["orderId"]
    counts = await row_counts(backend)
    assert counts["orders"] == 2
    assert counts["idempotency_keys"] == 1


async def test_fifty_concurrent_identical_requests_make_one_order(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend
) -> None:
    idem = key()
    responses = await asyncio.gather(*(place(client, alice, idem=idem) for _ in range(50)))
    statuses = {r.status_code for r in responses}
    assert statuses <= {202, 409}, statuses
    order_ids = {r.json()["orderId"] for r in responses if r.status_code == 202}
    assert len(order_ids) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert int(conflict.headers["retry-after"]) >= 1
        assert conflict.json()["type"].endswith("/idempotency-key-in-flight")
    assert (await row_counts(backend))["orders"] == 1
    # Once the dust settles every retry is a replay of the one order.
    settled = await place(client, alice, idem=idem)
    assert settled.status_code == 202
    assert settled.json()["orderId"] in order_ids


async def test_request_while_first_is_in_flight(
    client: httpx.AsyncClient, alice: dict[str, str], backend: Backend
) -> None:
    """PostgreSQL answers 409 + Retry-After at once; SQLite's single writer makes it wait."""
    idem = key()
    scope = IdempotencyScope("alice", "POST", "/api/orders", idem)
    holder = SqlUnitOfWork(backend.container.engine)
    async with holder as uow:
        now = backend.clock.now()
        assert isinstance(
            await uow.idempotency.claim(scope, "other", now, now + timedelta(hours=1)), Claimed
        )
        if backend.is_postgres:
            response = await place(client, alice, idem=idem)
            assert response.status_code == 409
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/problem+json"
            return
        waiting = asyncio.create_task(place(client, alice, idem=idem))
        await asyncio.sleep(0.3)
        assert not waiting.done()
    # The holder rolled back: the waiting request now owns the key and places the order.
    response = await waiting
    assert response.status_code == 202
    assert "idempotent-replayed" not in response.headers


async def test_seed_000_single_item_form(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    body = {"productId": "PROD-003", "quantity": 4, "userId": "alice"}
    response = await place(client, alice, body)
    assert response.status_code == 202
    assert response.json()["totalAmount"] == 4 * 2999
    forged = await place(client, alice, {**body, "userId": "mallory"})
    assert forged.status_code == 403


async def test_order_is_readable_by_its_owner_and_admins_only(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
) -> None:
    order_id = (await place(client, alice)).json()["orderId"]
    mine = await client.get(f"/api/orders/{order_id}", headers=alice)
    assert mine.status_code == 200
    order = mine.json()
    assert order["status"] == "PENDING"
    assert order["customerId"] == "alice"
    assert order["failureReason"] is None
    assert order["payment"] == {
        "status": "NONE",
        "gateway": None,
        "reference": None,
        "authorized": 0,
        "captured": 0,
        "refunded": 0,
        "declineCode": None,
        "message": None,
    }
    assert order["shippingAddress"]["postalCode"] == "73301"
    assert [i["sku"] for i in order["items"]] == ["PROD-001", "PROD-003"]
    assert order["createdAt"].endswith("Z")
    theirs = await client.get(f"/api/orders/{order_id}", headers=bob)
    assert theirs.status_code == 404
    assert theirs.headers["content-type"] == "application/problem+json"
    assert (await client.get(f"/api/orders/{order_id}/events", headers=bob)).status_code == 404
    assert (await client.get(f"/api/orders/{order_id}", headers=admin)).status_code == 200


async def test_listing_is_paginated_and_scoped(
    client: httpx.AsyncClient,
    backend: Backend,
    alice: dict[str, str],
    bob: dict[str, str],
    admin: dict[str, str],
) -> None:
    for _ in range(3):
        await place(client, alice)
        backend.clock.advance(timedelta(seconds=1))
    await place(client, bob)
    page1 = (await client.get("/api/orders?size=2", headers=alice)).json()
    page2 = (await client.get("/api/orders?size=2&page=2", headers=alice)).json()
    assert page1["total"] == 3
    assert len(page1["items"]) == 2
    assert len(page2["items"]) == 1
    assert page1["items"][0]["createdAt"] >= page1["items"][1]["createdAt"]
    assert {o["customerId"] for o in page1["items"] + page2["items"]} == {"alice"}
    everyone = (await client.get("/api/orders", headers=admin)).json()
    assert everyone["total"] == 4
    only_bob = (await client.get("/api/orders?customerId=bob", headers=admin)).json()
    assert only_bob["total"] == 1
    pending = (await client.get("/api/orders?status=PENDING", headers=alice)).json()
    assert pending["total"] == 3
    confirmed = (await client.get("/api/orders?status=CONFIRMED", headers=alice)).json()
    assert confirmed["total"] == 0
    snooping = await client.get("/api/orders?customerId=bob", headers=alice)
    assert snooping.status_code == 403


async def test_products_and_inventory(
    client: httpx.AsyncClient, alice: dict[str, str], admin: dict[str, str]
) -> None:
    products = (await client.get("/api/products")).json()
    by_sku = {p["sku"]: p for p in products}
    assert by_sku["PROD-001"] == {
        "sku": "PROD-001",
        "name": "Wireless Headphones",
        "price": 4999,
        "currency": "USD",
        "available": 15,
    }
    assert by_sku["PROD-002"]["available"] == 0
    assert by_sku["PROD-003"]["available"] == 30
    assert len(products) >= 5
    stock = (await client.get("/api/inventory/PROD-001", headers=alice)).json()
    assert stock["onHand"] == 15
    assert stock["available"] == 15
    assert stock["reserved"] == 0
    assert {w["warehouseId"] for w in stock["warehouses"]} == {"WH-AUS", "WH-NYC"}
    changed = await client.put(
        "/api/admin/inventory/PROD-002",
        json={"warehouseId": "WH-AUS", "onHand": 7},
        headers=admin,
    )
    assert changed.status_code == 200
    assert changed.json()["available"] == 7
    assert (await client.get("/api/inventory/NOPE", headers=alice)).status_code == 404


async def test_admin_inventory_errors(
    client: httpx.AsyncClient, alice: dict[str, str], admin: dict[str, str]
) -> None:
    url = "/api/admin/inventory/PROD-001"
    as_customer = await client.put(url, json={"warehouseId": "WH-AUS", "onHand": 1}, headers=alice)
    assert as_customer.status_code == 403
    unknown_wh = await client.put(url, json={"warehouseId": "WH-X", "onHand": 1}, headers=admin)
    assert unknown_wh.status_code == 422
    unknown_sku = await client.put(
        "/api/admin/inventory/NOPE", json={"warehouseId": "WH-AUS", "onHand": 1}, headers=admin
    )
    assert unknown_sku.status_code == 404
    negative = await client.put(url, json={"warehouseId": "WH-AUS", "onHand": -1}, headers=admin)
    assert negative.status_code == 422
    stock = (await client.get("/api/inventory/PROD-001", headers=admin)).json()
    assert stock["onHand"] == 15


async def test_health_and_dev_login(client: httpx.AsyncClient, backend: Backend) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.get("/health/ready")).json() == {"status": "ok"}
    login = await client.post("/api/auth/dev-login", json={"userId": "carol"})
    assert login.status_code == 200
    token = login.json()["token"]
    assert backend.container.tokens.verify(token) == ("carol", "customer")
    orders = await client.get("/api/orders", headers={"Authorization": f"Bearer {token}"})
    assert orders.status_code == 200


async def test_admin_token_cannot_be_minted_by_a_customer_token_swap(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    forged = bearer(backend, "alice")["Authorization"][:-4] + "AAAA"
    response = await client.get("/api/orders", headers={"Authorization": forged})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/api/orders", "/api/orders/x", "/api/inventory/PROD-001"])
async def test_reads_need_a_token(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_openapi_describes_the_order_body_the_route_parses_itself(app: Any) -> None:
    operation = app.openapi()["paths"]["/api/orders"]["post"]
    assert operation["requestBody"] == {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PlaceOrderIn"}}},
    }
    assert operation["security"] == [{"HTTPBearer": []}]
    assert [p["name"] for p in operation["parameters"]] == ["Idempotency-Key"]
    schemas = app.openapi()["components"]["schemas"]
    order = schemas["PlaceOrderIn"]
    assert order["additionalProperties"] is False
    assert set(order["properties"]) >= {"items", "paymentMethod", "shippingAddress", "productId"}
    assert {"OrderItemIn", "AddressIn"} <= set(schemas)
