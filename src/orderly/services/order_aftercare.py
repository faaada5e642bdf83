"""Around the order saga: notifying customers, alerting operators, admin refunds and the
reservation-expiry sweeper."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import structlog

from orderly.domain.events import Message
from orderly.domain.notifications import NotifiedLine, OrderOutcome, compose_notification
from orderly.domain.order_saga import RESERVATION_EXPIRED
from orderly.domain.processing import FailureReason
from orderly.services.consumer import Handler, PermanentError, RetryPolicy
from orderly.services.notifications import NotificationRejected, Notifier
from orderly.services.order_saga import (
    ADMIN_REFUND,
    ALERT_NEEDS_ATTENTION,
    NOTIFY_OUTCOME,
    append_order_events,
)
from orderly.services.order_steps import payment_key
from orderly.services.payments import PaymentError, PaymentGateway, PaymentResult
from orderly.services.ports import Alerts, Clock, IdGenerator, MessageUnitOfWork
from orderly.services.saga_ports import NewOrderEvent, PaymentOperation

log = structlog.get_logger("orderly.aftercare")

NOTIFIER = "notifier"
ALERTER = "alerter"
REFUNDS = "refunds"


def outcome_from(payload: dict[str, Any]) -> OrderOutcome:
    try:
        return OrderOutcome(
            order_id=str(payload["orderId"]),
            customer_id=str(payload["customerId"]),
            status=str(payload["status"]),
            failure_reason=payload.get("failureReason"),
            currency=str(payload["currency"]),
            total_minor=int(payload["totalMinor"]),
            lines=tuple(
                NotifiedLine(
                    sku=str(x["sku"]),
                    name=str(x["name"]),
                    quantity=int(x["quantity"]),
                    unit_price_minor=int(x["unitPriceMinor"]),
                )
                for x in payload.get("lines", [])
            ),
            transaction_id=payload.get("transactionId"),
            captured_minor=payload.get("capturedMinor"),
            decline_message=payload.get("declineMessage"),
            out_of_stock_skus=tuple(str(s) for s in payload.get("outOfStockSkus") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(f"bad outcome payload: {exc}") from exc


def notification_handler(notifier: Notifier, policy: RetryPolicy) -> Handler:
    """Sends the customer the message for a terminal outcome (at least once; the mail's
    Message-ID is stable, so a repeat is recognisable)."""

    async def prepare(message: Message) -> None:
        notification = compose_notification(outcome_from(message.payload))
        try:
            await notifier.send(notification)
        except NotificationRejected as exc:
            raise PermanentError(str(exc)) from exc

    async def apply(uow: MessageUnitOfWork, message: Message, prepared: Any) -> None:
        return None

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        return None

    return Handler(
        consumer=NOTIFIER,
        types=frozenset({NOTIFY_OUTCOME}),
        handle=handle,
        policy=policy,
        prepare=prepare,
        apply=apply,
    )


def alert_handler(alerts: Alerts, policy: RetryPolicy) -> Handler:
    async def prepare(message: Message) -> None:
        payload = message.payload
        detail = payload.get("detail")
        await alerts.needs_attention(
            str(payload.get("orderId")),
            str(payload.get("why")),
            detail if isinstance(detail, dict) else {},
        )

    async def noop(uow: MessageUnitOfWork, message: Message, *_: Any) -> None:
        return None

    return Handler(
        consumer=ALERTER,
        types=frozenset({ALERT_NEEDS_ATTENTION}),
        handle=noop,
        policy=policy,
        prepare=prepare,
        apply=noop,
    )


def refund_handler(
    gateway: PaymentGateway, policy: RetryPolicy, *, clock: Clock, ids: IdGenerator
) -> Handler:
    """An admin's refund of a captured order: gateway first, then the record and an event."""

    async def prepare(message: Message) -> PaymentResult:
        payload = message.payload
        try:
            return await gateway.refund(
                key=payment_key(str(payload["orderId"]), f"refund-{payload['refundId']}"),
                reference=str(payload["reference"]),
                amount_minor=int(payload["amountMinor"]),
            )
        except PaymentError as exc:
            raise PermanentError(str(exc)) from exc
        except (KeyError, ValueError) as exc:
            raise PermanentError(f"bad refund request: {exc}") from exc

    async def apply(uow: MessageUnitOfWork, message: Message, result: PaymentResult) -> None:
        payload = message.payload
        order_id = str(payload["orderId"])
        now = clock.now()
        await uow.payments.record(
            PaymentOperation(
                order_id=order_id,
                kind="refund",
                key=payment_key(order_id, f"refund-{payload['refundId']}"),
                amount_minor=result.amount_minor,
                ok=result.ok,
                reference=result.reference,
                decline_code=result.decline_code,
                message=result.message,
            ),
            now,
        )
        record = await uow.payments.get(order_id)
        if not result.ok or record is None:
            raise PermanentError(f"refund refused: {result.message}")
        refunded = record.refunded_minor + result.amount_minor
        status = "REFUNDED" if refunded >= record.captured_minor else "PARTIALLY_REFUNDED"
        await uow.payments.put(replace(record, status=status, refunded_minor=refunded), now)
        event = NewOrderEvent(
            "order.refunded",
            {
                "refundId": payload["refundId"],
                "amountMinor": result.amount_minor,
                "refundedMinor": refunded,
                "requestedBy": payload.get("requestedBy"),
                "reference": result.reference,
            },
        )
        await append_order_events(uow, order_id, [event], cause=message, ids=ids, clock=clock)

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        raise PermanentError("refunds are applied through prepare/apply")

    return Handler(
        consumer=REFUNDS,
        types=frozenset({ADMIN_REFUND}),
        handle=handle,
        policy=policy,
        prepare=prepare,
        apply=apply,
    )


class ReservationSweeper:
    """Releases reservations whose TTL passed before payment authorization, and tells the
    order's saga (which fails the order with ``RESERVATION_EXPIRED``)."""

    def __init__(self, uow: Any, *, clock: Clock, ids: IdGenerator, batch: int = 100) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids
        self._batch = batch

    async def sweep(self) -> int:
        async with self._uow() as uow:
            due = await uow.reservations.expiring(self._clock.now(), self._batch)
        expired = 0
        for order_id in due:
            async with self._uow() as uow:
                now = self._clock.now()
                released = await uow.reservations.release(order_id, now, expired=True)
                if released:
                    await uow.outbox.add(
                        Message(
                            id=self._ids.new_id(),
                            type=RESERVATION_EXPIRED,
                            key=order_id,
                            payload={
                                "sagaId": order_id,
                                "step": None,
                                "data": {
                                    "reason": FailureReason.RESERVATION_EXPIRED.value,
                                    "released": len(released),
                                },
                            },
                            created_at=now,
                            correlation_id=order_id,
                        )
                    )
                    expired += 1
                await uow.commit()
        if expired:
            log.info("reservations expired", orders=expired)
        return expired


class UnstartedOrderRedrive:
    """Publishes ``order.placed`` again for an order whose saga never started.

    The relay marks a message sent once the broker confirms it; a broker that loses a
    confirmed message (seen with NATS JetStream stopped while messages arrive) would leave
    its order PENDING for good, since no later step exists to time out. Run beside the
    relay, for the broker transports only: on the local transport a sent row was applied.
    """

    def __init__(self, uow: Any, *, clock: Clock, after: timedelta, batch: int = 100) -> None:
        self._uow = uow
        self._clock = clock
        self._after = after
        self._batch = batch

    async def sweep(self) -> int:
        async with self._uow() as uow:
            now = self._clock.now()
            ids = await uow.order_states.redrive_unstarted(now - self._after, now, self._batch)
            await uow.commit()
        if ids:
            log.warning(
                "order.placed published again: its saga never started",
                orders=len(ids),
                order_ids=ids[:10],
            )
        return len(ids)
