"""Customer notifications: what each terminal outcome tells the customer, and money formatting."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from orderly.domain.notifications import (
    ORDER_CANCELLED,
    ORDER_CONFIRMED,
    ORDER_FAILED,
    OUT_OF_STOCK,
    PAYMENT_DECLINED,
    NotifiedLine,
    OrderOutcome,
    UnknownOutcome,
    compose_notification,
    format_money,
)

HEADPHONES = NotifiedLine("PROD-001", "Wireless Headphones", 2, 4999)
HUB = NotifiedLine("PROD-003", "USB-C Hub", 1, 2999)
KEYBOARD = NotifiedLine("PROD-002", "Mechanical Keyboard", 1, 8999)

BASE = OrderOutcome(
    order_id="ORD-A1B2C3D4",
    customer_id="CUST-001",
    status="FAILED",
    failure_reason=None,
    currency="USD",
    total_minor=2 * 4999 + 2999,
    lines=(HEADPHONES, HUB),
)
CONFIRMED = replace(
    BASE,
    status="CONFIRMED",
    transaction_id="txn_9f8e7d",
    captured_minor=12997,
    delivery_estimate=date(2026, 5, 14),
)

NO_PAYMENT = "No payment was taken"


def failed(reason: str, **changes: object) -> OrderOutcome:
    return replace(BASE, failure_reason=reason, **changes)  # type: ignore[arg-type]


def assert_plain_text(text: str) -> None:
    assert "<" not in text
    assert ">" not in text
    assert text.endswith("\n")


# -- confirmation --------------------------------------------------------------------------------


def test_a_confirmation_carries_reference_items_total_and_delivery_estimate() -> None:
    note = compose_notification(CONFIRMED)

    assert note.kind == ORDER_CONFIRMED
    assert (note.order_id, note.customer_id) == ("ORD-A1B2C3D4", "CUST-001")
    assert "ORD-A1B2C3D4" in note.subject
    assert "confirmed" in note.subject
    assert "txn_9f8e7d" in note.body
    assert "Wireless Headphones (PROD-001) \N{MULTIPLICATION SIGN} 2: 99.98 USD" in note.body
    assert "USB-C Hub (PROD-003) \N{MULTIPLICATION SIGN} 1: 29.99 USD" in note.body
    assert "Total charged: 129.97 USD" in note.body
    assert "Order total" not in note.body
    assert "Estimated delivery: Thursday 14 May 2026" in note.body
    assert NO_PAYMENT not in note.body
    assert_plain_text(note.body)


def test_a_partial_capture_shows_what_was_charged_beside_the_order_total() -> None:
    note = compose_notification(replace(CONFIRMED, captured_minor=9998))

    assert "Order total: 129.97 USD" in note.body
    assert "Total charged: 99.98 USD" in note.body


def test_a_confirmation_without_capture_amount_or_estimate_charges_the_total() -> None:
    note = compose_notification(
        replace(CONFIRMED, captured_minor=None, delivery_estimate=None, transaction_id=None)
    )

    assert "Total charged: 129.97 USD" in note.body
    assert "Estimated delivery" not in note.body
    assert "ships" in note.body
    assert "transaction ID" not in note.body


# -- payment declined ----------------------------------------------------------------------------


def test_a_declined_payment_gives_the_reason_and_asks_for_another_payment_method() -> None:
    note = compose_notification(failed("PAYMENT_DECLINED", decline_message="Insufficient funds"))

    assert note.kind == PAYMENT_DECLINED
    assert "ORD-A1B2C3D4" in note.subject
    assert "declined" in note.subject.lower()
    assert "Reason: Insufficient funds." in note.body
    assert "another payment method" in note.body
    assert NO_PAYMENT in note.body
    assert "Wireless Headphones (PROD-001) \N{MULTIPLICATION SIGN} 2" in note.body
    assert "Order total: 129.97 USD" in note.body
    assert_plain_text(note.body)


def test_a_declined_payment_without_a_reason_still_says_it_was_declined() -> None:
    note = compose_notification(failed("PAYMENT_DECLINED"))

    assert "declined by your bank" in note.body
    assert "Reason:" not in note.body
    assert "another payment method" in note.body


# -- out of stock --------------------------------------------------------------------------------


def test_out_of_stock_names_the_missing_items_and_says_no_payment_was_taken() -> None:
    outcome = failed(
        "OUT_OF_STOCK",
        lines=(HEADPHONES, KEYBOARD),
        total_minor=2 * 4999 + 8999,
        out_of_stock_skus=("PROD-002", "PROD-404"),
    )
    note = compose_notification(outcome)

    assert note.kind == OUT_OF_STOCK
    assert "out of stock" in note.subject
    assert "Mechanical Keyboard (PROD-002)" in note.body
    assert "PROD-404" in note.body
    assert "Wireless Headphones" not in note.body
    assert NO_PAYMENT in note.body
    assert "not been charged" in note.body
    assert_plain_text(note.body)


def test_out_of_stock_without_skus_says_so_in_general_terms() -> None:
    note = compose_notification(failed("OUT_OF_STOCK"))

    assert "One or more items in your order are out of stock." in note.body
    assert NO_PAYMENT in note.body


# -- other failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "explains"),
    [
        ("FRAUD_REJECTED", "unable to verify"),
        ("RESERVATION_EXPIRED", "released"),
        ("PROCESSING_ERROR", "technical problem"),
        ("SOMETHING_NEW", "could not be completed"),
    ],
)
def test_other_failures_are_a_polite_notice_that_no_payment_was_taken(
    reason: str, explains: str
) -> None:
    note = compose_notification(failed(reason))

    assert note.kind == ORDER_FAILED
    assert "ORD-A1B2C3D4" in note.subject
    assert explains in note.body
    assert NO_PAYMENT in note.body
    assert "sorry" in note.body.lower()
    assert "USB-C Hub (PROD-003) \N{MULTIPLICATION SIGN} 1: 29.99 USD" in note.body
    assert reason not in note.body  # internal codes are not shown to the customer
    assert "fraud" not in note.body.lower()
    assert_plain_text(note.body)


def test_a_failure_without_a_reason_is_a_generic_failure_notice() -> None:
    note = compose_notification(BASE)

    assert note.kind == ORDER_FAILED
    assert NO_PAYMENT in note.body


def test_a_failure_after_capture_promises_the_refund_instead_of_no_payment() -> None:
    note = compose_notification(
        failed("PROCESSING_ERROR", transaction_id="txn_1", captured_minor=12997)
    )

    assert NO_PAYMENT not in note.body
    assert "payment of 129.97 USD (transaction ID txn_1) is being refunded" in note.body


# -- cancellation --------------------------------------------------------------------------------


def test_a_cancellation_confirms_it() -> None:
    note = compose_notification(replace(BASE, status="CANCELLED"))

    assert note.kind == ORDER_CANCELLED
    assert "cancelled" in note.subject
    assert "order ORD-A1B2C3D4 has been cancelled" in note.body
    assert NO_PAYMENT in note.body
    assert "Wireless Headphones (PROD-001) \N{MULTIPLICATION SIGN} 2: 99.98 USD" in note.body
    assert_plain_text(note.body)


def test_a_cancellation_after_capture_mentions_the_refund() -> None:
    note = compose_notification(
        replace(BASE, status="CANCELLED", transaction_id="txn_2", captured_minor=12997)
    )

    assert "is being refunded" in note.body
    assert "txn_2" in note.body


def test_an_order_without_lines_has_no_empty_items_section() -> None:
    note = compose_notification(replace(BASE, status="CANCELLED", lines=(), total_minor=0))

    assert "Items:" not in note.body
    assert "\n\n\n" not in note.body


@pytest.mark.parametrize("status", ["PENDING", "NEEDS_ATTENTION", "confirmed", ""])
def test_a_non_terminal_status_is_refused(status: str) -> None:
    with pytest.raises(UnknownOutcome, match="no customer notification"):
        compose_notification(replace(BASE, status=status))


def test_composing_is_deterministic() -> None:
    assert compose_notification(CONFIRMED) == compose_notification(CONFIRMED)


def test_a_yen_order_shows_whole_yen() -> None:
    outcome = replace(
        CONFIRMED,
        currency="JPY",
        lines=(NotifiedLine("J-1", "Tea set", 3, 1500),),
        total_minor=4500,
        captured_minor=4500,
    )
    note = compose_notification(outcome)

    assert "Tea set (J-1) \N{MULTIPLICATION SIGN} 3: 4500 JPY" in note.body
    assert "Total charged: 4500 JPY" in note.body


# -- format_money --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "expected"),
    [
        (4999, "USD", "49.99 USD"),
        (5, "EUR", "0.05 EUR"),
        (100, "GBP", "1.00 GBP"),
        (123456789, "USD", "1234567.89 USD"),
        (0, "USD", "0.00 USD"),
        (-4999, "USD", "-49.99 USD"),
        (-5, "EUR", "-0.05 EUR"),
        (4999, "usd", "49.99 USD"),
        (500, "JPY", "500 JPY"),
        (0, "JPY", "0 JPY"),
        (-500, "JPY", "-500 JPY"),
        (15000, "KRW", "15000 KRW"),
        (250000, "VND", "250000 VND"),
        (9990, "CLP", "9990 CLP"),
        (1234, "KWD", "1.234 KWD"),
        (-5, "BHD", "-0.005 BHD"),
    ],
)
def test_format_money(minor: int, currency: str, expected: str) -> None:
    assert format_money(minor, currency) == expected
