"""Deciding an order's outcome once its stock is known (seed 000's one-step worker).

Pure functions: given the order as stored and what the stock allowed, produce the transition
and the event that records it. Transitions are guarded: only a PENDING order moves, so a
duplicate or late message decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from orderly.domain.events import ORDER_CONFIRMED, ORDER_FAILED, Event
from orderly.domain.orders import OrderStatus


class FailureReason(StrEnum):
    OUT_OF_STOCK = "OUT_OF_STOCK"
    FRAUD_REJECTED = "FRAUD_REJECTED"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    RESERVATION_EXPIRED = "RESERVATION_EXPIRED"
    PROCESSING_ERROR = "PROCESSING_ERROR"


@dataclass(frozen=True, slots=True)
class StoredLine:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """The part of a stored order that processing reads."""

    id: str
    customer_id: str
    status: OrderStatus
    version: int
    lines: tuple[StoredLine, ...]


@dataclass(frozen=True, slots=True)
class Allocation:
    """Units of one SKU taken from one warehouse."""

    sku: str
    warehouse_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Transition:
    """A guarded move of an order from ``from_version`` to a new status, with its event."""

    order_id: str
    from_version: int
    status: OrderStatus
    failure_reason: FailureReason | None
    event: Event


def _transition(
    order: StoredOrder,
    status: OrderStatus,
    reason: FailureReason | None,
    event_type: str,
    data: dict[str, Any],
    now: datetime,
    causation_id: str | None,
) -> Transition:
    event = Event(
        order_id=order.id,
        version=order.version + 1,
        type=event_type,
        data={"status": status.value, **data},
        occurred_at=now,
        correlation_id=order.id,
        causation_id=causation_id,
    )
    return Transition(order.id, order.version, status, reason, event)


def confirm(
    order: StoredOrder, allocations: list[Allocation], now: datetime, causation_id: str | None
) -> Transition:
    data = {
        "allocations": [
            {"sku": a.sku, "warehouseId": a.warehouse_id, "quantity": a.quantity}
            for a in allocations
        ]
    }
    return _transition(order, OrderStatus.CONFIRMED, None, ORDER_CONFIRMED, data, now, causation_id)


def fail(
    order: StoredOrder,
    reason: FailureReason,
    now: datetime,
    causation_id: str | None,
    **details: Any,
) -> Transition:
    data = {"failureReason": reason.value, **details}
    return _transition(order, OrderStatus.FAILED, reason, ORDER_FAILED, data, now, causation_id)


def is_open(order: StoredOrder) -> bool:
    """Whether processing may still decide this order."""
    return order.status is OrderStatus.PENDING
