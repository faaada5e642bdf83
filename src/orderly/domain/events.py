"""Events: immutable facts appended to an order's stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of an order's event stream; ``version`` counts from 1 per order."""

    order_id: str
    version: int
    type: str
    data: dict[str, Any]
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A message leaving a transaction through the outbox."""

    id: str
    type: str
    key: str
    payload: dict[str, Any]
    created_at: datetime
    correlation_id: str
    causation_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    not_before: datetime | None = None
    """Deliver no earlier than this (a simulated warehouse's delay); None is at once."""


ORDER_PLACED = "order.placed"
ORDER_CONFIRMED = "order.confirmed"
ORDER_FAILED = "order.failed"
