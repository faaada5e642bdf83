"""`orderly up` as one process: it migrates, seeds the demo catalogue and serves API and UI."""

from __future__ import annotations

import httpx

from tests.support.server import OrderlyServer


def test_root_serves_the_html_placeholder(http: httpx.Client) -> None:
    response = http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>orderly</h1>" in response.text
    assert 'href="/docs"' in response.text


def test_probes_answer(http: httpx.Client) -> None:
    assert http.get("/health/live").json() == {"status": "ok"}
    assert http.get("/health/ready").json() == {"status": "ok"}


def test_up_seeded_the_demo_catalogue(server: OrderlyServer, http: httpx.Client) -> None:
    response = http.get("/api/products")
    assert response.status_code == 200
    products = {p["sku"]: p for p in response.json()}
    assert sorted(products) == [f"PROD-00{i}" for i in range(1, 7)]
    assert products["PROD-001"] == {
        "sku": "PROD-001",
        "name": "Wireless Headphones",
        "price": 4999,
        "currency": "USD",
        "available": 15,
    }
    assert products["PROD-002"]["available"] == 0
    assert products["PROD-003"]["available"] == 30
    assert "seeded the demo catalogue" in server.output()


def test_openapi_document_is_served(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["info"]["title"] == "orderly"
    assert "/api/orders" in document["paths"]


def test_unsupported_method_names_every_allowed_one(http: httpx.Client) -> None:
    response = http.request("DELETE", "/api/orders")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["allow"] == "GET, POST"
