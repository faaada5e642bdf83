"""The running API keeps the promises of its own OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid, with a valid bearer token (an
admin's on admin routes). No response may be a 5xx, and each must have a documented status,
content type and headers, and match the documented schema; a method the path does not support
gets 405 with an Allow header listing those it does.

Random SKUs, order ids and warehouse ids would only ever meet 404 and 422, so six generated
values in seven are steered to ones that exist (the choice depends only on the generated value,
so Hypothesis can still shrink a failure); the seventh keeps covering the "no such" answers.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from orderly.bootstrap import bootstrap
from orderly.config import Settings
from orderly.entrypoints.api.app import create_app
from tests.contract.conftest import CUSTOMER, Tokens
from tests.support.server import OrderlyServer

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
    allow_header_conformance,
]
CATALOGUE = [f"PROD-00{i}" for i in range(1, 7)]
WAREHOUSES = ["WH-AUS", "WH-NYC"]
MAX_EXAMPLES = 100
REQUEST_TIMEOUT = 10
PLACE_ORDER = ("POST", "/api/orders")

OpenApiCase = Case[Any]


def openapi_document() -> dict[str, Any]:
    """The document `orderly up` serves, built in-process (nothing connects): schemathesis
    needs it when pytest collects, before any server runs. A test below checks that the
    server serves this very document."""
    settings = Settings(_env_file=None, env="test", database_url="sqlite+aiosqlite:///:memory:")
    return create_app(bootstrap(settings)).openapi()


DOCUMENT = openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def keeps_generated(value: str) -> bool:
    return zlib.crc32(value.encode()) % 7 == 0


def steer(generated: Any, known: Sequence[str]) -> Any:
    """Usually a known value in place of a generated string."""
    if not isinstance(generated, str) or keeps_generated(generated):
        return generated
    return known[zlib.crc32(generated.encode()) % len(known)]


def with_catalogue_skus(body: Any, *, keep_unknown: bool) -> Any:
    """An order body whose lines name distinct catalogue SKUs (with ``keep_unknown``, one
    generated SKU in seven stays), and whose ``userId``, if any, is the caller."""
    if not isinstance(body, dict):
        return body

    def sku(generated: Any, line: int) -> Any:
        if not isinstance(generated, str) or (keep_unknown and keeps_generated(generated)):
            return generated
        return CATALOGUE[line % len(CATALOGUE)]

    body = dict(body)
    items = body.get("items")
    if isinstance(items, list):
        body["items"] = [
            {**item, "sku": sku(item.get("sku"), line)} if isinstance(item, dict) else item
            for line, item in enumerate(items)
        ]
    if "productId" in body:
        body["productId"] = sku(body["productId"], 0)
    if isinstance(body.get("userId"), str):
        body["userId"] = CUSTOMER
    return body


def steer_case(case: OpenApiCase, order_ids: Sequence[str]) -> None:
    path_parameters = case.path_parameters or {}
    if "sku" in path_parameters:
        path_parameters["sku"] = steer(path_parameters["sku"], CATALOGUE)
    if "order_id" in path_parameters:
        path_parameters["order_id"] = steer(path_parameters["order_id"], order_ids)
    if (case.method.upper(), case.operation.path) == PLACE_ORDER:
        case.body = with_catalogue_skus(case.body, keep_unknown=True)
    elif isinstance(case.body, dict) and "warehouseId" in case.body:
        case.body = {**case.body, "warehouseId": steer(case.body["warehouseId"], WAREHOUSES)}


def authorization(case: OpenApiCase, tokens: Tokens) -> dict[str, str]:
    token = tokens.admin if case.operation.path.startswith("/api/admin/") else tokens.customer
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def order_ids(server: OrderlyServer, tokens: Tokens) -> list[str]:
    """Orders of the contract customer, so that order reads can succeed."""
    headers = {"Authorization": f"Bearer {tokens.customer}"}
    ids = []
    with server.client() as http:
        for sku in CATALOGUE[:2]:
            response = http.post(
                "/api/orders",
                json={"items": [{"sku": sku, "quantity": 1}]},
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["orderId"])
    return ids


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@schema.parametrize()
def test_every_operation_keeps_the_documented_contract(
    case: OpenApiCase, server: OrderlyServer, tokens: Tokens, order_ids: list[str]
) -> None:
    steer_case(case, order_ids)
    case.call_and_validate(
        base_url=server.url,
        headers=authorization(case, tokens),
        checks=CHECKS,
        timeout=REQUEST_TIMEOUT,
    )


def test_the_server_serves_the_tested_document(server: OrderlyServer) -> None:
    with server.client() as http:
        served = http.get("/openapi.json").json()
    for part in ("openapi", "paths", "components"):
        assert served[part] == DOCUMENT[part], part


def test_generated_valid_orders_are_accepted(server: OrderlyServer, tokens: Tokens) -> None:
    """Every generated valid body gets through as 202, once its lines name distinct catalogue
    SKUs and it has a key of its own (generated keys repeat across examples, and a repeated
    key with another body is rightly refused)."""
    operation = schema[PLACE_ORDER[1]][PLACE_ORDER[0]]
    statuses: list[int] = []

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def place(case: OpenApiCase) -> None:
        body = with_catalogue_skus(case.body, keep_unknown=False)
        if isinstance(body.get("items"), list):
            body["items"] = body["items"][: len(CATALOGUE)]
        case.body = body
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
        response = case.call_and_validate(
            base_url=server.url,
            headers={"Authorization": f"Bearer {tokens.customer}"},
            checks=CHECKS,
            timeout=REQUEST_TIMEOUT,
        )
        statuses.append(response.status_code)

    place()
    assert statuses
    assert set(statuses) == {202}, statuses


def test_nul_characters_are_refused_before_they_reach_the_database(
    server: OrderlyServer, tokens: Tokens
) -> None:
    """PostgreSQL cannot store NUL in text: the API refuses it with 422, never a 500."""
    headers = {"Authorization": f"Bearer {tokens.customer}"}
    order = {"items": [{"sku": "PROD-001", "quantity": 1}], "paymentMethod": "pm\x00card"}
    with server.client() as http:
        responses = [
            http.post(
                "/api/orders",
                json=order,
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            ),
            http.get("/api/orders/abc%00def", headers=headers),
            http.get("/api/orders", params={"customerId": "a\x00"}, headers=headers),
            http.get("/api/inventory/PROD%00001", headers=headers),
        ]
    for response in responses:
        assert response.status_code == 422, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
