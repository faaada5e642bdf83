"""Orders: idempotent intake and reads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, cast

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response

from orderly.bootstrap import Container
from orderly.domain.orders import LineRequest, OrderStatus, PlacedOrder, ShippingAddress
from orderly.entrypoints.api import bodies
from orderly.entrypoints.api.deps import BEARER, ContainerDep, PrincipalDep, authenticate
from orderly.entrypoints.api.problems import ProblemError, problem_responses
from orderly.entrypoints.api.schemas import (
    NO_NUL,
    CancelAccepted,
    EventOut,
    OrderAccepted,
    OrderOut,
    OrderPage,
    PlaceOrderIn,
)
from orderly.services import idempotency
from orderly.services.idempotency import ActionResult, Outcome
from orderly.services.idempotency_types import IdempotencyScope, StoredResponse
from orderly.services.order_saga import OrderConflict, OrderNotFound, cancel_order
from orderly.services.orders import PlaceOrder, handle_place_order
from orderly.services.ports import JSON, MessageUnitOfWork, UnitOfWork

router = APIRouter(prefix="/api/orders", tags=["orders"])

ORDERS_ROUTE = "/api/orders"

_KEY_DESCRIPTION = (
    "Unique key for this request (a UUID v4 is ideal), 1-255 printable ASCII characters, "
    'bare or as a quoted structured-field string ("..."). Reuse it for every retry of '
    "the same request; keys expire after 24 hours. Missing or malformed: 400."
)

# Documented by hand: the route checks the key itself (400, not FastAPI's 422), yet the
# document must say that it is required and what it looks like.
IDEMPOTENCY_KEY_PARAMETER: JSON = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": _KEY_DESCRIPTION,
    "schema": {
        "type": "string",
        "pattern": r'^(?:[!#-~]{1,255}|"(?:[ !#-\[\]-~]|\\["\\]){1,255}")$',
    },
}

OrderId = Annotated[str, Path(pattern=NO_NUL)]

IdempotencyKeyHeader = Annotated[
    str | None, Header(alias="Idempotency-Key", include_in_schema=False)
]


def _accepted_body(placed: PlacedOrder) -> bytes:
    order = placed.order
    return orjson.dumps(
        {
            "orderId": order.id,
            "jobId": placed.message.id,
            "status": order.status.value,
            "totalAmount": order.total.amount,
            "currency": order.total.currency,
            "items": [
                {
                    "sku": line.sku,
                    "name": line.name,
                    "quantity": line.quantity,
                    "unitPrice": line.unit_price.amount,
                    "lineTotal": line.total.amount,
                }
                for line in order.lines
            ],
        }
    )


def _command(body: PlaceOrderIn, customer_id: str) -> PlaceOrder:
    address = body.shipping_address
    return PlaceOrder(
        customer_id=customer_id,
        lines=tuple(LineRequest(sku, qty) for sku, qty in body.lines()),
        payment_method=body.payment_method,
        shipping_address=(
            ShippingAddress(
                country=address.country,
                city=address.city,
                line1=address.line1,
                line2=address.line2,
                postal_code=address.postal_code,
            )
            if address
            else None
        ),
    )


# The body is read by the route itself (parsed once, see bodies.py), so the document is
# told what it looks like; app.py adds the model to the document's schemas.
PLACE_ORDER_BODY: JSON = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PlaceOrderIn"}}},
}


@router.post(
    "",
    status_code=202,
    summary="Place an order (idempotent)",
    response_model=OrderAccepted,
    responses={
        202: {
            "description": "Accepted; processing continues in the background. A replay of a "
            "finished request carries `Idempotent-Replayed: true` and the first body.",
            "headers": {
                "Location": {"schema": {"type": "string"}},
                "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}},
            },
        },
        **problem_responses(400, 401, 403, 409, 413, 422, 503),
    },
    openapi_extra={
        "parameters": [IDEMPOTENCY_KEY_PARAMETER],
        "requestBody": PLACE_ORDER_BODY,
        "security": [{BEARER.scheme_name: []}],
    },
)
async def place_order(request: Request) -> Response:
    # The order of the checks is the one of a FastAPI body parameter and dependencies:
    # malformed JSON, then the token, then validation, then the key.
    raw_body = await bodies.read_body(request)
    principal = authenticate(request)
    body = bodies.validate(PlaceOrderIn, raw_body)
    key = idempotency.parse_key(request.headers.get("idempotency-key"))
    if body.user_id is not None and body.user_id != principal.user_id:
        raise ProblemError(403, "forbidden", "userId must be the id of the calling user")
    container: Container = request.app.state.container
    command = _command(body, principal.user_id)
    scope = IdempotencyScope(principal.user_id, "POST", ORDERS_ROUTE, key)
    body_fingerprint = bodies.fingerprint(raw_body)

    async def action(uow: UnitOfWork) -> ActionResult:
        placed = await handle_place_order(uow, command, clock=container.clock, ids=container.ids)
        response = StoredResponse(
            status_code=202,
            headers=(
                ("content-type", "application/json"),
                ("location", f"{ORDERS_ROUTE}/{placed.order.id}"),
            ),
            body=_accepted_body(placed),
        )
        return ActionResult(response, placed.order.id, placed.order.status.value)

    outcome = await idempotency.execute(
        container.uow,
        scope,
        body_fingerprint,
        action,
        clock=container.clock,
        ttl=container.idempotency_ttl,
    )
    return _answer(outcome)


def _answer(outcome: Outcome) -> Response:
    stored = outcome.response
    headers = dict(stored.headers)
    if outcome.replayed:
        headers["idempotent-replayed"] = "true"
    return Response(stored.body, status_code=stored.status_code, headers=headers)


SagaAction = Callable[[MessageUnitOfWork], Awaitable[tuple[int, JSON]]]


async def run_idempotent(
    request: Request,
    container: ContainerDep,
    principal: PrincipalDep,
    route: str,
    idempotency_key: str | None,
    action: SagaAction,
) -> Response:
    """Run a state-changing request at most once per Idempotency-Key, replaying it after."""
    key = idempotency.parse_key(idempotency_key)
    raw = await request.body()
    scope = IdempotencyScope(principal.user_id, "POST", route, key)
    body_fingerprint = bodies.fingerprint(bodies.parse_json(raw) if raw else None)

    async def act(uow: UnitOfWork) -> ActionResult:
        status, body = await action(cast(MessageUnitOfWork, uow))
        response = StoredResponse(
            status_code=status,
            headers=(("content-type", "application/json"),),
            body=orjson.dumps(body),
        )
        return ActionResult(response)

    outcome = await idempotency.execute(
        container.message_uow,
        scope,
        body_fingerprint,
        act,
        clock=container.clock,
        ttl=container.idempotency_ttl,
    )
    return _answer(outcome)


@router.post(
    "/{order_id}/cancel",
    status_code=202,
    summary="Cancel an order before fulfilment (idempotent)",
    response_model=CancelAccepted,
    responses={
        202: {"description": "Cancellation runs the compensations; the order ends CANCELLED."},
        **problem_responses(400, 401, 404, 409, 422, 503),
    },
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)
async def cancel(
    request: Request,
    order_id: OrderId,
    container: ContainerDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    customer = None if principal.is_admin else principal.user_id

    async def action(uow: MessageUnitOfWork) -> tuple[int, JSON]:
        try:
            outcome = await cancel_order(uow, container.saga_runner(), order_id, customer)
        except OrderNotFound as exc:
            raise ProblemError(404, "not-found", f"no order {order_id}") from exc
        except OrderConflict as exc:
            raise ProblemError(409, "conflict", str(exc)) from exc
        return 202, {"orderId": order_id, "cancellation": outcome}

    return await run_idempotent(
        request, container, principal, f"{ORDERS_ROUTE}/{{id}}/cancel", idempotency_key, action
    )


async def _visible_order(container: ContainerDep, principal: PrincipalDep, order_id: str) -> JSON:
    order = await container.views.order(order_id)
    if order is None or (not principal.is_admin and order["customerId"] != principal.user_id):
        raise ProblemError(404, "not-found", f"no order {order_id}")
    return order


@router.get(
    "/{order_id}",
    response_model=OrderOut,
    summary="An order's current state",
    responses=problem_responses(401, 404, 503),
)
async def get_order(order_id: OrderId, container: ContainerDep, principal: PrincipalDep) -> JSON:
    return await _visible_order(container, principal, order_id)


@router.get(
    "/{order_id}/events",
    response_model=list[EventOut],
    summary="An order's event history, oldest first",
    responses=problem_responses(401, 404, 503),
)
async def get_order_events(
    order_id: OrderId, container: ContainerDep, principal: PrincipalDep
) -> list[JSON]:
    await _visible_order(container, principal, order_id)
    return await container.views.events(order_id)


@router.get(
    "",
    response_model=OrderPage,
    summary="Orders, newest first (customers see their own; admins all)",
    responses=problem_responses(401, 403, 422, 503),
)
async def list_orders(
    container: ContainerDep,
    principal: PrincipalDep,
    status: OrderStatus | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    size: Annotated[int, Query(ge=1, le=100)] = 20,
    customer_id: Annotated[
        str | None, Query(alias="customerId", max_length=128, pattern=NO_NUL)
    ] = None,
) -> JSON:
    if not principal.is_admin:
        if customer_id is not None and customer_id != principal.user_id:
            raise ProblemError(403, "forbidden", "customers may only list their own orders")
        customer_id = principal.user_id
    result = await container.views.orders(
        customer_id=customer_id,
        status=status.value if status else None,
        page=page,
        size=size,
    )
    return {"items": result.items, "page": result.page, "size": result.size, "total": result.total}
