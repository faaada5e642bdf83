"""Orders: placing one from requested lines and a price list, and its lifecycle states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from orderly.domain.catalogue import Product
from orderly.domain.events import ORDER_PLACED, Event, Message
from orderly.domain.money import Money

MAX_LINES = 100
MAX_QUANTITY = 1000


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    RESERVED = "RESERVED"
    HELD_FOR_REVIEW = "HELD_FOR_REVIEW"
    PAYMENT_AUTHORIZED = "PAYMENT_AUTHORIZED"
    FULFILLING = "FULFILLING"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"


class InvalidOrder(ValueError):
    """The requested order breaks a rule of the domain."""


class UnknownProducts(InvalidOrder):
    """One or more requested SKUs are not in the catalogue."""

    def __init__(self, skus: Sequence[str]) -> None:
        self.skus = sorted(skus)
        super().__init__("unknown SKU: " + ", ".join(self.skus))


@dataclass(frozen=True, slots=True)
class LineRequest:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class ShippingAddress:
    country: str
    city: str
    line1: str
    postal_code: str
    line2: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "country": self.country,
            "city": self.city,
            "line1": self.line1,
            "line2": self.line2,
            "postalCode": self.postal_code,
        }


@dataclass(frozen=True, slots=True)
class OrderLine:
    line_no: int
    sku: str
    name: str
    quantity: int
    unit_price: Money

    @property
    def total(self) -> Money:
        return self.unit_price * self.quantity


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    customer_id: str
    status: OrderStatus
    lines: tuple[OrderLine, ...]
    total: Money
    payment_method: str
    shipping_address: ShippingAddress | None
    created_at: datetime
    updated_at: datetime
    version: int = 1
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """What placing an order produces: the order, its first event and the message to send."""

    order: Order
    event: Event
    message: Message


def check_lines(lines: Sequence[LineRequest]) -> None:
    if not lines:
        raise InvalidOrder("an order needs at least one line")
    if len(lines) > MAX_LINES:
        raise InvalidOrder(f"an order has at most {MAX_LINES} lines")
    seen: set[str] = set()
    for line in lines:
        if not 1 <= line.quantity <= MAX_QUANTITY:
            raise InvalidOrder(f"quantity of {line.sku} must be 1..{MAX_QUANTITY}")
        if line.sku in seen:
            raise InvalidOrder(f"SKU {line.sku} appears on more than one line")
        seen.add(line.sku)


def place_order(
    *,
    order_id: str,
    message_id: str,
    customer_id: str,
    lines: Sequence[LineRequest],
    catalogue: Mapping[str, Product],
    payment_method: str,
    shipping_address: ShippingAddress | None,
    now: datetime,
) -> PlacedOrder:
    """Price the requested lines from the catalogue and open the order in PENDING."""
    check_lines(lines)
    unknown = [line.sku for line in lines if line.sku not in catalogue]
    if unknown:
        raise UnknownProducts(unknown)
    currencies = {catalogue[line.sku].price.currency for line in lines}
    if len(currencies) != 1:
        raise InvalidOrder("all products of one order must be priced in one currency")
    currency = currencies.pop()
    order_lines = tuple(
        OrderLine(
            line_no=i,
            sku=line.sku,
            name=catalogue[line.sku].name,
            quantity=line.quantity,
            unit_price=catalogue[line.sku].price,
        )
        for i, line in enumerate(lines, start=1)
    )
    total = Money.zero(currency)
    for order_line in order_lines:
        total = total + order_line.total
    order = Order(
        id=order_id,
        customer_id=customer_id,
        status=OrderStatus.PENDING,
        lines=order_lines,
        total=total,
        payment_method=payment_method,
        shipping_address=shipping_address,
        created_at=now,
        updated_at=now,
    )
    data = order_placed_data(order)
    event = Event(
        order_id=order_id,
        version=1,
        type=ORDER_PLACED,
        data=data,
        occurred_at=now,
        correlation_id=order_id,
    )
    message = Message(
        id=message_id,
        type=ORDER_PLACED,
        key=order_id,
        payload={"orderId": order_id, **data},
        created_at=now,
        correlation_id=order_id,
    )
    return PlacedOrder(order=order, event=event, message=message)


def order_placed_data(order: Order) -> dict[str, Any]:
    return {
        "customerId": order.customer_id,
        "currency": order.total.currency,
        "totalAmount": order.total.amount,
        "paymentMethod": order.payment_method,
        "shippingAddress": order.shipping_address.as_dict() if order.shipping_address else None,
        "items": [
            {
                "sku": line.sku,
                "name": line.name,
                "quantity": line.quantity,
                "unitPrice": line.unit_price.amount,
            }
            for line in order.lines
        ],
    }
