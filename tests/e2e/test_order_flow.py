"""The README's "Try it" flow against a real `orderly up`, with a token from `orderly token`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import cli_token
from tests.support.server import OrderlyServer

README_ORDER: dict[str, Any] = {
    "items": [{"sku": "PROD-001", "quantity": 2}],
    "paymentMethod": "pm_card_visa",
    "shippingAddress": {
        "country": "US",
        "city": "Austin",
        "line1": "Lincoln 65",
        "postalCode": "73301",
    },
}


@dataclass(frozen=True)
class Placed:
    key: str
    headers: dict[str, str]
    response: httpx.Response

    @property
    def order_id(self) -> str:
        order_id: str = self.response.json()["orderId"]
        return order_id


def post_order(http: httpx.Client, token: str, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    return http.post("/api/orders", json=README_ORDER, headers=headers)


@pytest.fixture(scope="module")
def placed(server: OrderlyServer, alice_token: str) -> Placed:
    key = str(uuid.uuid4())
    with server.client() as http:
        response = post_order(http, alice_token, key)
    return Placed(key, {"Authorization": f"Bearer {alice_token}"}, response)


def test_order_is_accepted_with_location(placed: Placed) -> None:
    response = placed.response
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/api/orders/{body['orderId']}"
    assert body["status"] == "PENDING"
    assert (body["totalAmount"], body["currency"]) == (9998, "USD")
    assert body["items"] == [
        {
            "sku": "PROD-001",
            "name": "Wireless Headphones",
            "quantity": 2,
            "unitPrice": 4999,
            "lineTotal": 9998,
        }
    ]
    assert "idempotent-replayed" not in response.headers


def test_retry_replays_byte_for_byte_and_books_once(
    placed: Placed, http: httpx.Client, alice_token: str
) -> None:
    retry = post_order(http, alice_token, placed.key)
    assert retry.status_code == 202
    assert retry.content == placed.response.content
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["location"] == placed.response.headers["location"]

    mine = http.get("/api/orders", headers=placed.headers).json()
    assert mine["total"] == 1
    assert [o["orderId"] for o in mine["items"]] == [placed.order_id]


def test_same_key_with_another_body_is_refused(
    placed: Placed, http: httpx.Client, alice_token: str
) -> None:
    headers = {**placed.headers, "Idempotency-Key": placed.key}
    other = {**README_ORDER, "items": [{"sku": "PROD-003", "quantity": 1}]}
    response = http.post("/api/orders", json=other, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/idempotency-key-reused")


def test_order_and_its_events_can_be_read(placed: Placed, http: httpx.Client) -> None:
    order = http.get(placed.response.headers["location"], headers=placed.headers)
    assert order.status_code == 200
    body = order.json()
    assert body["orderId"] == placed.order_id
    assert body["customerId"] == "alice"
    assert body["totalAmount"] == 9998
    assert [(line["sku"], line["quantity"]) for line in body["items"]] == [("PROD-001", 2)]

    events = http.get(f"/api/orders/{placed.order_id}/events", headers=placed.headers)
    assert events.status_code == 200
    first = events.json()[0]
    assert (first["version"], first["type"]) == (1, "order.placed")
    assert first["correlationId"] == placed.order_id


def test_another_customer_cannot_see_the_order(
    server: OrderlyServer, placed: Placed, http: httpx.Client
) -> None:
    bob = {"Authorization": f"Bearer {cli_token(server, 'bob')}"}
    response = http.get(f"/api/orders/{placed.order_id}", headers=bob)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_requests_without_a_token_are_refused(http: httpx.Client) -> None:
    response = http.post(
        "/api/orders", json=README_ORDER, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
