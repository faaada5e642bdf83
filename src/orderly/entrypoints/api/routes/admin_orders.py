"""Admin actions on orders: settle a fraud review, refund a captured payment, read the trail."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from orderly.entrypoints.api.deps import AdminDep, ContainerDep
from orderly.entrypoints.api.problems import ProblemError, problem_responses
from orderly.entrypoints.api.routes.orders import (
    IDEMPOTENCY_KEY_PARAMETER,
    IdempotencyKeyHeader,
    OrderId,
    run_idempotent,
)
from orderly.entrypoints.api.schemas import RefundAccepted, RefundIn, ReviewAccepted, ReviewIn
from orderly.services.order_saga import (
    OrderConflict,
    OrderNotFound,
    decide_review,
    request_refund,
)
from orderly.services.ports import JSON, MessageUnitOfWork
from orderly.services.read_model_ports import TrailView

router = APIRouter(prefix="/api/admin/orders", tags=["admin"])


@router.post(
    "/{order_id}/review",
    status_code=202,
    summary="Approve or reject an order held for fraud review (idempotent)",
    response_model=ReviewAccepted,
    responses={
        202: {"description": "The saga resumes (approve) or compensates (reject)."},
        **problem_responses(400, 401, 403, 404, 409, 422, 503),
    },
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)
async def review(
    request: Request,
    order_id: OrderId,
    body: ReviewIn,
    container: ContainerDep,
    admin: AdminDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    async def action(uow: MessageUnitOfWork) -> tuple[int, JSON]:
        try:
            await decide_review(
                uow,
                order_id,
                body.decision == "approve",
                f"admin:{admin.user_id}",
                clock=container.clock,
                ids=container.ids,
            )
        except OrderNotFound as exc:
            raise ProblemError(404, "not-found", f"order {order_id} has no fraud review") from exc
        except OrderConflict as exc:
            raise ProblemError(409, "conflict", str(exc)) from exc
        return 202, {"orderId": order_id, "decision": body.decision}

    return await run_idempotent(
        request, container, admin, "/api/admin/orders/{id}/review", idempotency_key, action
    )


@router.post(
    "/{order_id}/refund",
    status_code=202,
    summary="Refund (part of) a captured order (idempotent)",
    response_model=RefundAccepted,
    responses={
        202: {"description": "The refund is sent to the gateway; `order.refunded` follows."},
        **problem_responses(400, 401, 403, 404, 409, 422, 503),
    },
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)
async def refund(
    request: Request,
    order_id: OrderId,
    body: RefundIn,
    container: ContainerDep,
    admin: AdminDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    async def action(uow: MessageUnitOfWork) -> tuple[int, JSON]:
        try:
            refund_id = await request_refund(
                uow,
                order_id,
                body.amount,
                f"admin:{admin.user_id}",
                clock=container.clock,
                ids=container.ids,
            )
        except OrderNotFound as exc:
            raise ProblemError(404, "not-found", f"order {order_id} has no payment") from exc
        except OrderConflict as exc:
            raise ProblemError(409, "conflict", str(exc)) from exc
        return 202, {"orderId": order_id, "refundId": refund_id, "amount": body.amount}

    return await run_idempotent(
        request, container, admin, "/api/admin/orders/{id}/refund", idempotency_key, action
    )


@router.get(
    "/{order_id}/trail",
    summary="Everything that happened to an order: events, saga steps, attempts, dead letters, "
    "gateway calls and shipments, oldest first",
    responses=problem_responses(401, 403, 404, 503),
)
async def trail(order_id: OrderId, container: ContainerDep, admin: AdminDep) -> JSON:
    view: TrailView = container.trail()
    found = await view.trail(order_id)
    if found is None:
        raise ProblemError(404, "not-found", f"no order {order_id}")
    return found
