"""The order saga's meaning for orders: starting it, its events, and what people ask of it.

- ``order.placed`` starts the saga (id and key: the order id).
- Each saga decision becomes events in the order's stream (the order row is their projection),
  one ``order.changed`` message for the read models, and at the end a notification request,
  the idempotency key following the outcome, and an alert if the order needs attention.
- Customers cancel before fulfilment; admins decide fraud reviews and refund captured orders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orderly.domain.events import ORDER_PLACED, Message
from orderly.domain.order_saga import FRAUD_APPROVED, FRAUD_REJECTED, ORDER_SAGA
from orderly.domain.orders import OrderStatus
from orderly.domain.processing import FailureReason
from orderly.domain.saga import Decision, LogEntry, NotCancellable, SagaState, SagaStatus
from orderly.services.consumer import Handler, PermanentError, RetryPolicy
from orderly.services.ports import JSON, Clock, IdGenerator, MessageUnitOfWork
from orderly.services.saga import SagaRunner
from orderly.services.saga_ports import NewOrderEvent, OrderFacts

ORDER_SAGA_START = "order-saga"
ORDER_CHANGED = "order.changed"
"""One message per saga decision, carrying the events it appended (for the read models)."""
NOTIFY_OUTCOME = "notification.order_outcome"
ALERT_NEEDS_ATTENTION = "alert.needs_attention"
ADMIN_REFUND = "payment.admin_refund"
CANCELLED = "CANCELLED"

_STATUS_EVENTS = {
    OrderStatus.RESERVED: "order.reserved",
    OrderStatus.HELD_FOR_REVIEW: "order.held_for_review",
    OrderStatus.PAYMENT_AUTHORIZED: "order.payment_authorized",
    OrderStatus.FULFILLING: "order.fulfilling",
    OrderStatus.CONFIRMED: "order.confirmed",
}
_STEP_EVENTS = {"fulfil": "order.shipped", "capture": "order.payment_captured"}
_LOGGED_EVENTS = {
    "saga.started": "order.processing_started",
    "step.failed": "order.step_failed",
    "step.timed_out": "order.step_timed_out",
    "step.hold_expired": "order.review_expired",
    "compensation.requested": "order.compensation_started",
    "compensation.succeeded": "order.step_compensated",
    "compensation.failed": "order.compensation_failed",
    "compensation.timed_out": "order.compensation_failed",
    "saga.cancel_requested": "order.cancel_requested",
    "saga.interrupted": "order.interrupted",
}


class OrderNotFound(LookupError):
    pass


class OrderConflict(Exception):
    """The order's state does not allow the request (too late to cancel, nothing to refund)."""


def order_events(decision: Decision) -> list[NewOrderEvent]:
    """The order-stream events one saga decision stands for, in order."""
    events: list[NewOrderEvent] = []
    for entry in decision.log:
        event = _event_for(entry)
        if event is not None:
            events.append(event)
    state = decision.state
    if state.status is SagaStatus.COMPENSATED:
        if state.reason == CANCELLED:
            events.append(NewOrderEvent("order.cancelled", {}, OrderStatus.CANCELLED))
        else:
            reason = state.reason or FailureReason.PROCESSING_ERROR
            events.append(
                NewOrderEvent(
                    "order.failed",
                    {"failureReason": reason, "detail": dict(state.detail)},
                    OrderStatus.FAILED,
                    failure_reason=reason,
                )
            )
    elif state.status is SagaStatus.NEEDS_ATTENTION and any(
        e.kind == "saga.needs_attention" for e in decision.log
    ):
        events.append(
            NewOrderEvent(
                "order.needs_attention",
                {"reason": state.reason, "detail": dict(state.detail)},
                OrderStatus.NEEDS_ATTENTION,
                failure_reason=state.reason,
            )
        )
    return events


def _event_for(entry: LogEntry) -> NewOrderEvent | None:
    data = {"step": entry.step, **entry.detail} if entry.step else dict(entry.detail)
    if entry.kind == "milestone":
        status = OrderStatus(str(entry.detail["milestone"]))
        return NewOrderEvent(_STATUS_EVENTS[status], {"step": entry.step}, status)
    if entry.kind == "step.succeeded" and entry.step in _STEP_EVENTS:
        return NewOrderEvent(_STEP_EVENTS[entry.step], data)
    if entry.kind in _LOGGED_EVENTS:
        return NewOrderEvent(_LOGGED_EVENTS[entry.kind], data)
    return None


async def append_order_events(
    uow: MessageUnitOfWork,
    order_id: str,
    events: list[NewOrderEvent],
    *,
    cause: Message | None,
    ids: IdGenerator,
    clock: Clock,
) -> OrderFacts:
    """Append to the order's stream and announce it (``order.changed``) to the read models."""
    now = clock.now()
    correlation = cause.correlation_id if cause else order_id
    appended = await uow.order_stream.append(
        order_id, events, now, correlation, cause.id if cause else None
    )
    facts = await uow.order_stream.facts(order_id)
    if facts is None:
        raise PermanentError(f"order {order_id} vanished")
    await uow.outbox.add(
        Message(
            id=ids.new_id(),
            type=ORDER_CHANGED,
            key=order_id,
            payload={
                "orderId": facts.id,
                "customerId": facts.customer_id,
                "placedAt": facts.created_at.isoformat(),
                "events": appended,
                # The order right after these events (what its history row is at their last
                # version): the read model need not read its row to know it.
                "status": str(facts.status),
                "failureReason": facts.failure_reason,
            },
            created_at=now,
            correlation_id=correlation,
            causation_id=cause.id if cause else None,
        )
    )
    return facts


@dataclass
class OrderSagaHooks:
    """Turns saga decisions into order events, notifications, key updates and alerts."""

    clock: Clock
    ids: IdGenerator

    async def after(
        self, uow: MessageUnitOfWork, decision: Decision, cause: Message | None
    ) -> None:
        state = decision.state
        events = order_events(decision)
        if not events:
            return
        now = self.clock.now()
        correlation = cause.correlation_id if cause else state.key
        facts = await append_order_events(
            uow, state.key, events, cause=cause, ids=self.ids, clock=self.clock
        )
        if any(e.kind == "step.hold_expired" for e in decision.log):
            await uow.fraud_reviews.decide(state.key, "EXPIRED", "system", now)
        if not state.status.terminal:
            return
        await uow.key_status.follow(state.key, facts.status)
        if state.status is SagaStatus.NEEDS_ATTENTION:
            why = str(state.detail.get("attention", "compensation failed"))
            await self._send(
                uow,
                ALERT_NEEDS_ATTENTION,
                state.key,
                {"orderId": state.key, "why": why, "detail": _plain(state.detail)},
                correlation,
                cause,
            )
            return
        await self._send(
            uow, NOTIFY_OUTCOME, state.key, outcome_payload(facts, state), correlation, cause
        )

    async def _send(
        self,
        uow: MessageUnitOfWork,
        type_: str,
        key: str,
        payload: JSON,
        correlation: str,
        cause: Message | None,
    ) -> None:
        await uow.outbox.add(
            Message(
                id=self.ids.new_id(),
                type=type_,
                key=key,
                payload=payload,
                created_at=self.clock.now(),
                correlation_id=correlation,
                causation_id=cause.id if cause else None,
            )
        )


def _plain(data: Mapping[str, Any]) -> JSON:
    return {k: v for k, v in data.items() if isinstance(v, str | int | float | bool | None)}


def outcome_payload(facts: OrderFacts, state: SagaState) -> JSON:
    """What the notifier needs to tell the customer how the order ended."""
    capture = state.data.get("capture")
    captured = capture if isinstance(capture, dict) else {}
    detail = state.detail
    skus = detail.get("skus")
    return {
        "orderId": facts.id,
        "customerId": facts.customer_id,
        "status": facts.status,
        "failureReason": facts.failure_reason,
        "currency": facts.currency,
        "totalMinor": facts.total_minor,
        "lines": [
            {
                "sku": line.sku,
                "name": line.name,
                "quantity": line.quantity,
                "unitPriceMinor": line.unit_price_minor,
            }
            for line in facts.lines
        ],
        "transactionId": captured.get("transactionId"),
        "capturedMinor": captured.get("amountMinor"),
        "declineMessage": detail.get("message"),
        "outOfStockSkus": skus if isinstance(skus, list) else [],
    }


def start_handler(
    runner: SagaRunner, policy: RetryPolicy, *, clock: Clock, ids: IdGenerator
) -> Handler:
    """Consumes ``order.placed`` and starts the order's saga."""

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        order_id = message.payload.get("orderId")
        if not isinstance(order_id, str):
            raise PermanentError("order.placed without an orderId")
        # Locked: the saga's first step appends to the order in this transaction.
        facts = await uow.order_stream.facts(order_id, lock=True)
        if facts is None:
            raise PermanentError(f"order {order_id} does not exist")
        if facts.status != OrderStatus.PENDING:
            return
        await runner.start(uow, ORDER_SAGA, order_id, order_id, saga_data(facts), message)

    async def on_dead_letter(uow: MessageUnitOfWork, message: Message, reason: str) -> JSON:
        order_id = message.payload.get("orderId")
        if not isinstance(order_id, str):
            return {}
        facts = await uow.order_stream.facts(order_id)
        if facts is None or facts.status != OrderStatus.PENDING:
            return {"order": order_id}
        event = NewOrderEvent(
            "order.failed",
            {"failureReason": FailureReason.PROCESSING_ERROR, "error": reason},
            OrderStatus.FAILED,
            failure_reason=FailureReason.PROCESSING_ERROR,
        )
        await append_order_events(uow, order_id, [event], cause=message, ids=ids, clock=clock)
        await uow.key_status.follow(order_id, OrderStatus.FAILED)
        return {"order": order_id, "orderFailed": True}

    return Handler(
        consumer=ORDER_SAGA_START,
        types=frozenset({ORDER_PLACED}),
        handle=handle,
        policy=policy,
        on_dead_letter=on_dead_letter,
    )


def saga_data(facts: OrderFacts) -> JSON:
    return {
        "orderId": facts.id,
        "customerId": facts.customer_id,
        "currency": facts.currency,
        "totalMinor": facts.total_minor,
        "paymentMethod": facts.payment_method,
    }


# ---- what people ask of a running order --------------------------------------------------------


async def cancel_order(
    uow: MessageUnitOfWork, runner: SagaRunner, order_id: str, customer_id: str | None
) -> str:
    """Cancel an order before fulfilment; idempotent. Returns what happened:
    ``cancelling`` (compensation started) or ``already-cancelled``/``cancelling`` again."""
    facts = await uow.order_stream.facts(order_id)
    if facts is None or (customer_id is not None and facts.customer_id != customer_id):
        raise OrderNotFound(order_id)
    if facts.status == OrderStatus.CANCELLED:
        return "cancelled"
    state = await runner.load(uow, order_id)
    if state is None:
        if facts.status != OrderStatus.PENDING:
            raise OrderConflict(f"order is {facts.status}")
        await runner.start(uow, ORDER_SAGA, order_id, order_id, saga_data(facts), None)
        state = await runner.load(uow, order_id)
        assert state is not None
    if state.status is SagaStatus.COMPENSATING and state.reason == CANCELLED:
        return "cancelling"
    try:
        await runner.cancel(uow, order_id, CANCELLED)
    except NotCancellable as exc:
        raise OrderConflict(f"order {order_id} can no longer be cancelled: {exc}") from exc
    return "cancelling"


async def decide_review(
    uow: MessageUnitOfWork,
    order_id: str,
    approve: bool,
    admin: str,
    *,
    clock: Clock,
    ids: IdGenerator,
) -> None:
    """Settle a pending fraud review; the saga resumes or compensates."""
    review = await uow.fraud_reviews.get(order_id)
    if review is None:
        raise OrderNotFound(order_id)
    now = clock.now()
    status = "APPROVED" if approve else "REJECTED"
    if not await uow.fraud_reviews.decide(order_id, status, admin, now):
        if review.status == status:
            return
        raise OrderConflict(f"the review of order {order_id} is already {review.status}")
    data: JSON = {"reviewedBy": admin, "decision": status.lower()}
    if not approve:
        data["reason"] = FailureReason.FRAUD_REJECTED.value
    await uow.outbox.add(
        Message(
            id=ids.new_id(),
            type=FRAUD_APPROVED if approve else FRAUD_REJECTED,
            key=order_id,
            payload={"sagaId": order_id, "step": "fraud", "data": data},
            created_at=now,
            correlation_id=order_id,
        )
    )


async def request_refund(
    uow: MessageUnitOfWork,
    order_id: str,
    amount_minor: int,
    admin: str,
    *,
    clock: Clock,
    ids: IdGenerator,
) -> str:
    """Queue a refund of a captured order; returns the refund id."""
    payment = await uow.payments.get(order_id)
    if payment is None:
        raise OrderNotFound(order_id)
    refundable = payment.captured_minor - payment.refunded_minor
    if payment.status not in ("CAPTURED", "PARTIALLY_REFUNDED") or refundable <= 0:
        raise OrderConflict(f"order {order_id} has no captured payment left to refund")
    if amount_minor > refundable:
        raise OrderConflict(f"at most {refundable} can be refunded")
    refund_id = ids.new_id()
    now = clock.now()
    await uow.outbox.add(
        Message(
            id=ids.new_id(),
            type=ADMIN_REFUND,
            key=order_id,
            payload={
                "orderId": order_id,
                "refundId": refund_id,
                "amountMinor": amount_minor,
                "requestedBy": admin,
                "reference": payment.reference,
            },
            created_at=now,
            correlation_id=order_id,
        )
    )
    return refund_id
