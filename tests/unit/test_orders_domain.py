"""Placing an order: pricing from the catalogue and the rules on lines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orderly.domain.catalogue import Product
from orderly.domain.events import ORDER_PLACED
from orderly.domain.money import CurrencyMismatch, Money
from orderly.domain.orders import (
    MAX_LINES,
    InvalidOrder,
    LineRequest,
    OrderStatus,
    UnknownProducts,
    place_order,
)

NOW = datetime(2026, 5, 7, 10, 0, tzinfo=UTC)
CATALOGUE = {
    "PROD-001": Product("PROD-001", "Wireless Headphones", Money(4999, "USD")),
    "PROD-003": Product("PROD-003", "USB-C Hub", Money(2999, "USD")),
    "EUR-1": Product("EUR-1", "Euro thing", Money(100, "EUR")),
}


def _place(*lines: LineRequest) -> object:
    return place_order(
        order_id="o-1",
        message_id="m-1",
        customer_id="alice",
        lines=lines,
        catalogue=CATALOGUE,
        payment_method="pm_card_visa",
        shipping_address=None,
        now=NOW,
    )


def test_prices_come_from_the_catalogue_and_totals_add_up() -> None:
    placed = place_order(
        order_id="o-1",
        message_id="m-1",
        customer_id="alice",
        lines=[LineRequest("PROD-001", 2), LineRequest("PROD-003", 3)],
        catalogue=CATALOGUE,
        payment_method="pm_card_visa",
        shipping_address=None,
        now=NOW,
    )
    order = placed.order
    assert order.status is OrderStatus.PENDING
    assert [line.total.amount for line in order.lines] == [9998, 8997]
    assert order.total == Money(18995, "USD")
    assert placed.event.type == ORDER_PLACED
    assert placed.event.version == 1
    assert placed.event.correlation_id == "o-1"
    assert placed.message.key == "o-1"
    assert placed.message.payload["totalAmount"] == 18995
    assert placed.message.payload["items"][0] == {
        "sku": "PROD-001",
        "name": "Wireless Headphones",
        "quantity": 2,
        "unitPrice": 4999,
    }


def test_unknown_skus_are_named_sorted() -> None:
    with pytest.raises(UnknownProducts) as caught:
        _place(LineRequest("NOPE-2", 1), LineRequest("PROD-001", 1), LineRequest("NOPE-1", 1))
    assert caught.value.skus == ["NOPE-1", "NOPE-2"]
    assert "NOPE-1, NOPE-2" in str(caught.value)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "at least one line"),
        ([LineRequest("PROD-001", 0)], "quantity"),
        ([LineRequest("PROD-001", 1001)], "quantity"),
        ([LineRequest("PROD-001", 1), LineRequest("PROD-001", 2)], "more than one line"),
        ([LineRequest(f"S{i}", 1) for i in range(MAX_LINES + 1)], "at most"),
        ([LineRequest("PROD-001", 1), LineRequest("EUR-1", 1)], "one currency"),
    ],
)
def test_invalid_orders_are_refused(lines: list[LineRequest], message: str) -> None:
    with pytest.raises(InvalidOrder, match=message):
        _place(*lines)


def test_money_refuses_mixing_currencies() -> None:
    with pytest.raises(CurrencyMismatch):
        _ = Money(1, "USD") + Money(1, "EUR")
    assert Money(250, "USD") * 4 == Money(1000, "USD")
