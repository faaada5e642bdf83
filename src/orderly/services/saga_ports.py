"""Ports of the saga and the services it drives: saga state, the order stream, stock
reservations, payments, shipments and fraud reviews. Adapters implement them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from orderly.domain.inventory import Available, Pick
from orderly.domain.saga import LogEntry, SagaState

JSON = dict[str, Any]


class SagaStore(Protocol):
    """Saga instances and their history."""

    async def load(self, saga_id: str) -> SagaState | None:
        """The saga, locked for this transaction where the database can lock rows."""
        ...

    async def insert(self, state: SagaState) -> bool:
        """Store a new saga; False if one with that id already exists."""
        ...

    async def save(self, state: SagaState) -> bool:
        """Store ``state`` if the stored version is ``state.version - 1``."""
        ...

    async def log(self, saga_id: str, entries: Sequence[LogEntry], at: datetime) -> None: ...

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Ids of unfinished sagas whose deadline has passed."""
        ...


@dataclass(frozen=True, slots=True)
class OrderLineFacts:
    sku: str
    name: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """An order as the saga's services read it."""

    id: str
    customer_id: str
    status: str
    failure_reason: str | None
    version: int
    currency: str
    total_minor: int
    payment_method: str
    shipping_address: Mapping[str, Any] | None
    lines: tuple[OrderLineFacts, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewOrderEvent:
    """An event to append to an order's stream; ``status`` also moves the order."""

    type: str
    data: Mapping[str, Any]
    status: str | None = None
    failure_reason: str | None = None


class OrderStream(Protocol):
    """Orders as the saga reads and moves them. The order row is the stream's projection."""

    async def facts(self, order_id: str, *, lock: bool = False) -> OrderFacts | None:
        """The order as it stands. ``lock``: lock its row to the commit (it is about to be
        appended to), so the first append need not move the row before the commit."""
        ...

    async def append(
        self,
        order_id: str,
        events: Sequence[NewOrderEvent],
        at: datetime,
        correlation_id: str,
        causation_id: str | None,
    ) -> list[JSON]:
        """Append events at the next versions (the order row is locked); return them as JSON."""
        ...

    async def recent_orders(self, customer_id: str, since: datetime) -> int:
        """Orders the customer placed since ``since``."""
        ...


@dataclass(frozen=True, slots=True)
class ReservedLine:
    sku: str
    warehouse_id: str
    quantity: int


class Reservations(Protocol):
    """Stock reservations per order. Every stock change is also a ledger entry."""

    async def available(self, skus: Collection[str]) -> list[Available]: ...

    async def open(self, order_id: str, expires_at: datetime, now: datetime) -> str | None:
        """Create the order's reservation header; if one exists, return its status instead."""
        ...

    async def reserve(self, order_id: str, picks: Sequence[Pick], now: datetime) -> bool:
        """Reserve every pick (conditional updates) or none: False if stock moved meanwhile."""
        ...

    async def lines(
        self, order_id: str, status: str | None = None, *, lock: bool = False
    ) -> list[ReservedLine]:
        """The order's reserved lines (of ``status``), in (sku, warehouse) order. ``lock``: lock
        the order's reservation first and hold it to the commit, so the lines read cannot change
        under this transaction (the warehouse's transactions of one order take the same lock)."""
        ...

    async def release(
        self, order_id: str, now: datetime, *, expired: bool = False
    ) -> list[ReservedLine]:
        """Release what the order still holds; leave a tombstone if it holds nothing."""
        ...

    async def ship(self, order_id: str, warehouse_id: str, now: datetime) -> list[ReservedLine]:
        """Turn the order's active reservation in ``warehouse_id`` into a shipment."""
        ...

    async def restock(self, order_id: str, lines: Sequence[ReservedLine], now: datetime) -> None:
        """Put shipped units back on hand (a shipment cancelled after it left)."""
        ...

    async def expiring(self, now: datetime, limit: int) -> list[str]:
        """Orders whose active reservation expired before payment authorization."""
        ...


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    order_id: str
    gateway: str
    reference: str | None
    status: str
    currency: str
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    decline_code: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class PaymentOperation:
    order_id: str
    kind: str
    key: str
    amount_minor: int
    ok: bool
    reference: str | None
    decline_code: str | None
    message: str | None


class PaymentRecords(Protocol):
    """What the gateway was asked, per order, and the resulting payment state."""

    async def get(self, order_id: str) -> PaymentRecord | None: ...

    async def put(self, record: PaymentRecord, now: datetime) -> None:
        """Insert or replace the order's payment record."""
        ...

    async def tombstone(self, order_id: str, currency: str, now: datetime) -> bool:
        """Mark the payment voided before it was ever authorized; False if a record exists."""
        ...

    async def record(self, operation: PaymentOperation, now: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class Shipment:
    id: str
    order_id: str
    warehouse_id: str
    status: str
    lines: tuple[ReservedLine, ...]
    value_minor: int
    created_at: datetime
    updated_at: datetime


class Shipments(Protocol):
    async def create(self, shipments: Sequence[Shipment]) -> None: ...

    async def for_order(self, order_id: str) -> list[Shipment]: ...

    async def get(self, shipment_id: str) -> Shipment | None: ...

    async def move(self, shipment_id: str, from_status: str, to_status: str, now: datetime) -> bool:
        """Move a shipment only if it is still ``from_status``."""
        ...


@dataclass(frozen=True, slots=True)
class FraudReview:
    order_id: str
    status: str
    verdict: Mapping[str, Any]
    created_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None


class FraudReviews(Protocol):
    async def open(self, review: FraudReview) -> None: ...

    async def get(self, order_id: str) -> FraudReview | None: ...

    async def decide(self, order_id: str, status: str, by: str, now: datetime) -> bool:
        """Settle a pending review; False if it was not pending."""
        ...
