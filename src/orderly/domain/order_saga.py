"""The order saga (DESIGN §1): reserve → fraud → authorize → fulfil → capture → complete.

Fraud runs before authorization, so a rejected order never touches the shopper's card; capture
waits for fulfilment, so nobody pays for what did not ship. The saga's milestones are order
statuses; its id and key are the order id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from orderly.domain.orders import OrderStatus
from orderly.domain.processing import FailureReason
from orderly.domain.saga import Interrupt, Retry, SagaDefinition, Step

ORDER_SAGA = "order"

# Commands (imperative) and their replies (past tense).
RESERVE_STOCK = "inventory.reserve"
STOCK_RESERVED = "inventory.reserved"
STOCK_RESERVATION_FAILED = "inventory.reservation_failed"
RELEASE_STOCK = "inventory.release"
STOCK_RELEASED = "inventory.released"
RESERVATION_EXPIRED = "inventory.reservation_expired"

CHECK_FRAUD = "fraud.check"
FRAUD_APPROVED = "fraud.approved"
FRAUD_REJECTED = "fraud.rejected"
FRAUD_REVIEW_REQUIRED = "fraud.review_required"

AUTHORIZE_PAYMENT = "payment.authorize"
PAYMENT_AUTHORIZED = "payment.authorized"
PAYMENT_DECLINED = "payment.declined"
VOID_PAYMENT = "payment.void"
PAYMENT_VOIDED = "payment.voided"
CAPTURE_PAYMENT = "payment.capture"
PAYMENT_CAPTURED = "payment.captured"
PAYMENT_CAPTURE_FAILED = "payment.capture_failed"
REFUND_PAYMENT = "payment.refund"
PAYMENT_REFUNDED = "payment.refunded"

FULFIL_ORDER = "fulfilment.request"
ORDER_SHIPPED = "fulfilment.shipped"
FULFILMENT_FAILED = "fulfilment.failed"
CANCEL_SHIPMENTS = "fulfilment.cancel"
SHIPMENTS_CANCELLED = "fulfilment.cancelled"


@dataclass(frozen=True, slots=True)
class OrderSagaConfig:
    step_timeout: timedelta = timedelta(minutes=2)
    fulfilment_timeout: timedelta = timedelta(minutes=30)
    review_timeout: timedelta = timedelta(minutes=10)
    retry: Retry = field(default_factory=Retry)
    step_resends: int = 2
    """Resends of an unanswered reserve, authorize, fulfil or capture command within its step's
    timeout (their handlers answer again when run twice: the reservation exists, the gateway
    call carries the order's key, the warehouse ships a shipment once)."""


def order_saga(config: OrderSagaConfig | None = None) -> SagaDefinition:
    c = config or OrderSagaConfig()
    return SagaDefinition(
        name=ORDER_SAGA,
        steps=(
            Step(
                name="reserve",
                command=RESERVE_STOCK,
                succeeded=frozenset({STOCK_RESERVED}),
                failed=frozenset({STOCK_RESERVATION_FAILED}),
                compensation=RELEASE_STOCK,
                compensated=frozenset({STOCK_RELEASED}),
                timeout=c.step_timeout,
                retry=c.retry,
                resends=c.step_resends,
                milestone=OrderStatus.RESERVED,
                cancellable=True,
            ),
            Step(
                name="fraud",
                command=CHECK_FRAUD,
                succeeded=frozenset({FRAUD_APPROVED}),
                failed=frozenset({FRAUD_REJECTED}),
                held=frozenset({FRAUD_REVIEW_REQUIRED}),
                timeout=c.step_timeout,
                hold_timeout=c.review_timeout,
                hold_timeout_reason=FailureReason.FRAUD_REJECTED,
                retry=c.retry,
                hold_milestone=OrderStatus.HELD_FOR_REVIEW,
                cancellable=True,
            ),
            Step(
                name="authorize",
                command=AUTHORIZE_PAYMENT,
                succeeded=frozenset({PAYMENT_AUTHORIZED}),
                failed=frozenset({PAYMENT_DECLINED}),
                compensation=VOID_PAYMENT,
                compensated=frozenset({PAYMENT_VOIDED}),
                timeout=c.step_timeout,
                retry=c.retry,
                resends=c.step_resends,
                milestone=OrderStatus.PAYMENT_AUTHORIZED,
                cancellable=True,
            ),
            Step(
                name="fulfil",
                command=FULFIL_ORDER,
                succeeded=frozenset({ORDER_SHIPPED}),
                failed=frozenset({FULFILMENT_FAILED}),
                compensation=CANCEL_SHIPMENTS,
                compensated=frozenset({SHIPMENTS_CANCELLED}),
                timeout=c.fulfilment_timeout,
                retry=c.retry,
                resends=c.step_resends,
                start_milestone=OrderStatus.FULFILLING,
                partial=True,
            ),
            Step(
                name="capture",
                command=CAPTURE_PAYMENT,
                succeeded=frozenset({PAYMENT_CAPTURED}),
                failed=frozenset({PAYMENT_CAPTURE_FAILED}),
                compensation=REFUND_PAYMENT,
                compensated=frozenset({PAYMENT_REFUNDED}),
                timeout=c.step_timeout,
                retry=c.retry,
                resends=c.step_resends,
            ),
            Step(name="complete", command=None, milestone=OrderStatus.CONFIRMED),
        ),
        interrupts=(
            Interrupt(
                type=RESERVATION_EXPIRED,
                reason=FailureReason.RESERVATION_EXPIRED,
                until_step="authorize",
            ),
        ),
    )
