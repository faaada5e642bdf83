"""What the customer is told when an order reaches a terminal outcome (seed 003's notifier).

One plain-text message per outcome: a confirmation with the payment reference, the items, the
total charged and the delivery estimate; a declined payment with the bank's reason and a prompt to
try another payment method; an out-of-stock notice naming the items; a polite failure notice for
the other failures; a cancellation. Every failure says whether money was taken: a failure before
capture never charges, and a captured payment is refunded by the saga's compensation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from orderly.domain.orders import OrderStatus
from orderly.domain.processing import FailureReason

ORDER_CONFIRMED = "order_confirmed"
PAYMENT_DECLINED = "payment_declined"
OUT_OF_STOCK = "out_of_stock"
ORDER_FAILED = "order_failed"
ORDER_CANCELLED = "order_cancelled"

# ISO 4217 minor-unit exponents that are not 2.
ZERO_DECIMAL_CURRENCIES = frozenset(
    {
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW",
        "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
    }
)  # fmt: skip
THREE_DECIMAL_CURRENCIES = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

_SIGN_OFF = "Thank you for shopping with us."


class UnknownOutcome(ValueError):
    """The outcome's status is not a terminal one a customer is told about."""


@dataclass(frozen=True, slots=True)
class NotifiedLine:
    sku: str
    name: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    order_id: str
    customer_id: str
    status: str
    failure_reason: str | None
    currency: str
    total_minor: int
    lines: tuple[NotifiedLine, ...]
    transaction_id: str | None = None
    captured_minor: int | None = None
    decline_message: str | None = None
    out_of_stock_skus: tuple[str, ...] = ()
    delivery_estimate: date | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    kind: str
    order_id: str
    customer_id: str
    subject: str
    body: str


def minor_unit_exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def format_money(minor: int, currency: str) -> str:
    """``4999, "USD"`` -> ``"49.99 USD"``; ``500, "JPY"`` -> ``"500 JPY"``."""
    exponent = minor_unit_exponent(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    amount = f"{whole}.{fraction:0{exponent}d}" if exponent else str(whole)
    return f"{sign}{amount} {currency.upper()}"


def format_date(day: date) -> str:
    """Locale-independent: ``Thursday 14 May 2026``."""
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]} {day.year}"


def compose_notification(outcome: OrderOutcome) -> Notification:
    """The message for a CONFIRMED, FAILED or CANCELLED order; ``UnknownOutcome`` otherwise."""
    if outcome.status == OrderStatus.CONFIRMED:
        kind, subject, paragraphs = _confirmed(outcome)
    elif outcome.status == OrderStatus.CANCELLED:
        kind, subject, paragraphs = _cancelled(outcome)
    elif outcome.status != OrderStatus.FAILED:
        raise UnknownOutcome(f"no customer notification for status {outcome.status!r}")
    elif outcome.failure_reason == FailureReason.PAYMENT_DECLINED:
        kind, subject, paragraphs = _payment_declined(outcome)
    elif outcome.failure_reason == FailureReason.OUT_OF_STOCK:
        kind, subject, paragraphs = _out_of_stock(outcome)
    else:
        kind, subject, paragraphs = _failed(outcome)
    body = "\n\n".join(["Hello,", *filter(None, paragraphs), _SIGN_OFF]) + "\n"
    return Notification(kind, outcome.order_id, outcome.customer_id, subject, body)


_Composed = tuple[str, str, list[str]]


def _confirmed(outcome: OrderOutcome) -> _Composed:
    charged = outcome.total_minor if outcome.captured_minor is None else outcome.captured_minor
    totals = [f"Total charged: {format_money(charged, outcome.currency)}"]
    if charged != outcome.total_minor:
        totals.insert(0, f"Order total: {format_money(outcome.total_minor, outcome.currency)}")
    reference = [f"Order: {outcome.order_id}"]
    if outcome.transaction_id:
        reference.append(f"Payment reference (transaction ID): {outcome.transaction_id}")
    if outcome.delivery_estimate is None:
        delivery = "We will let you know as soon as your order ships."
    else:
        delivery = f"Estimated delivery: {format_date(outcome.delivery_estimate)}"
    paragraphs = [
        f"Thank you for your order. Your payment was successful and order {outcome.order_id} "
        "is confirmed.",
        "\n".join(reference),
        _items(outcome),
        "\n".join(totals),
        delivery,
    ]
    return ORDER_CONFIRMED, f"Your order {outcome.order_id} is confirmed", paragraphs


def _payment_declined(outcome: OrderOutcome) -> _Composed:
    reason = (outcome.decline_message or "").strip().rstrip(".")
    declined = (
        f"Your payment was declined. Reason: {reason}."
        if reason
        else "Your payment was declined by your bank or card issuer."
    )
    paragraphs = [
        f"Unfortunately we could not complete order {outcome.order_id}. {declined}",
        f"{_money_taken(outcome)} The items we held for you have been released.",
        _items(outcome),
        f"Order total: {format_money(outcome.total_minor, outcome.currency)}",
        "Please try again with another payment method, or contact your card issuer.",
    ]
    return PAYMENT_DECLINED, f"Payment declined for order {outcome.order_id}", paragraphs


def _out_of_stock(outcome: OrderOutcome) -> _Composed:
    names = {line.sku: line.name for line in outcome.lines}
    if outcome.out_of_stock_skus:
        missing = "\n".join(
            f"  - {names[sku]} ({sku})" if sku in names else f"  - {sku}"
            for sku in outcome.out_of_stock_skus
        )
        unavailable = f"These items are out of stock:\n{missing}"
    else:
        unavailable = "One or more items in your order are out of stock."
    paragraphs = [
        f"Unfortunately we could not complete order {outcome.order_id}: we do not have enough "
        "stock to fulfil it, so the order could not be placed.",
        unavailable,
        _money_taken(outcome),
        "You are welcome to place a new order for the items that are available.",
    ]
    return OUT_OF_STOCK, f"Order {outcome.order_id}: items out of stock", paragraphs


_FAILURE_EXPLANATIONS: dict[str, str] = {
    FailureReason.FRAUD_REJECTED: "we were unable to verify it, so it could not be accepted.",
    FailureReason.RESERVATION_EXPIRED: "the items we held for you were released before the "
    "order could be completed.",
    FailureReason.PROCESSING_ERROR: "a technical problem on our side stopped it from being "
    "completed.",
}


def _failed(outcome: OrderOutcome) -> _Composed:
    explanation = _FAILURE_EXPLANATIONS.get(
        outcome.failure_reason or "", "it could not be completed."
    )
    if outcome.failure_reason == FailureReason.FRAUD_REJECTED:
        next_step = "If you believe this is a mistake, please contact our customer support."
    else:
        next_step = "We are sorry for the inconvenience. You are welcome to place the order again."
    paragraphs = [
        f"We are sorry: we could not complete order {outcome.order_id} because {explanation}",
        _money_taken(outcome),
        _items(outcome),
        next_step,
    ]
    return ORDER_FAILED, f"We could not complete your order {outcome.order_id}", paragraphs


def _cancelled(outcome: OrderOutcome) -> _Composed:
    paragraphs = [
        f"This confirms that order {outcome.order_id} has been cancelled.",
        _items(outcome),
        _money_taken(outcome),
    ]
    return ORDER_CANCELLED, f"Your order {outcome.order_id} has been cancelled", paragraphs


def _money_taken(outcome: OrderOutcome) -> str:
    """Whether the customer was charged: only a capture charges, and a capture is refunded."""
    if not outcome.captured_minor:
        return "No payment was taken: you have not been charged for this order."
    refund = format_money(outcome.captured_minor, outcome.currency)
    reference = f" (transaction ID {outcome.transaction_id})" if outcome.transaction_id else ""
    return f"The payment of {refund}{reference} is being refunded to your original payment method."


def _items(outcome: OrderOutcome) -> str:
    if not outcome.lines:
        return ""
    rows = [
        f"  {line.name} ({line.sku}) \N{MULTIPLICATION SIGN} {line.quantity}: "
        f"{format_money(line.unit_price_minor * line.quantity, outcome.currency)}"
        for line in outcome.lines
    ]
    return "\n".join(["Items:", *rows])
