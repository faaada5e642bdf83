"""In-memory fakes of every port, for fast tests of the layers above them.

The fakes keep the contract of the real adapters where the services rely on it: a unit of work
applies its writes only on commit, and a key claimed by an open unit of work is "in flight" for
every other one.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from orderly.domain.catalogue import Product, StockLevel
from orderly.domain.events import Event, Message
from orderly.domain.money import Money
from orderly.domain.notifications import Notification
from orderly.domain.orders import Order, PlacedOrder
from orderly.services.idempotency_types import (
    Claimed,
    ClaimResult,
    Existing,
    IdempotencyScope,
    InFlight,
    KeyRecord,
    StoredResponse,
)
from orderly.services.ports import NewDeadLetter, StockChange


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, moment: datetime) -> None:
        self._now = moment


class SequentialIds:
    """Predictable ids: ``prefix-1``, ``prefix-2``, ..."""

    def __init__(self, prefix: str = "id") -> None:
        self._counter = itertools.count(1)
        self._prefix = prefix

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


@dataclass
class InMemoryState:
    products: dict[str, Product] = field(default_factory=dict)
    warehouses: set[str] = field(default_factory=set)
    stock: dict[tuple[str, str], StockLevel] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    outbox: list[Message] = field(default_factory=list)
    keys: dict[IdempotencyScope, KeyRecord] = field(default_factory=dict)


class InMemoryDatabase:
    """Committed state plus the set of keys held by open units of work."""

    def __init__(self) -> None:
        self.state = InMemoryState()
        self.held: set[IdempotencyScope] = set()
        self.commits = 0

    def add_product(self, sku: str, name: str, price: int, currency: str = "USD") -> None:
        self.state.products[sku] = Product(sku, name, Money(price, currency))


class FakeProducts:
    def __init__(self, state: InMemoryState) -> None:
        self._state = state

    async def by_skus(self, skus: Collection[str]) -> dict[str, Product]:
        return {s: self._state.products[s] for s in skus if s in self._state.products}

    async def exists(self, sku: str) -> bool:
        return sku in self._state.products


class FakeOrders:
    def __init__(self, state: InMemoryState) -> None:
        self._state = state

    async def add(self, placed: PlacedOrder) -> None:
        if placed.order.id in self._state.orders:
            raise KeyError(f"duplicate order {placed.order.id}")
        self._state.orders[placed.order.id] = placed.order
        self._state.events.append(placed.event)


class FakeOutbox:
    def __init__(self, state: InMemoryState) -> None:
        self._state = state

    async def add(self, message: Message) -> None:
        self._state.outbox.append(message)


class FakeIdempotencyStore:
    def __init__(self, state: InMemoryState, db: InMemoryDatabase) -> None:
        self._state = state
        self._db = db
        self.claimed: IdempotencyScope | None = None

    async def claim(
        self, scope: IdempotencyScope, fingerprint: str, now: datetime, expires_at: datetime
    ) -> ClaimResult:
        if scope in self._db.held:
            return InFlight()
        existing = self._db.state.keys.get(scope)
        if existing is not None and existing.expires_at > now:
            return Existing(existing)
        self._state.keys[scope] = KeyRecord(fingerprint, None, expires_at)
        self._db.held.add(scope)
        self.claimed = scope
        return Claimed()

    async def complete(
        self,
        scope: IdempotencyScope,
        response: StoredResponse,
        resource_id: str | None,
        resource_status: str | None,
    ) -> None:
        record = self._state.keys[scope]
        self._state.keys[scope] = KeyRecord(
            record.fingerprint, response, record.expires_at, resource_id, resource_status
        )

    async def purge_expired(self, now: datetime, limit: int) -> int:
        doomed = [s for s, r in self._state.keys.items() if r.expires_at <= now][:limit]
        for scope in doomed:
            del self._state.keys[scope]
        return len(doomed)


class FakeInventory:
    def __init__(self, state: InMemoryState) -> None:
        self._state = state

    async def levels(self, sku: str) -> list[StockLevel]:
        return [level for (s, _), level in sorted(self._state.stock.items()) if s == sku]

    async def warehouse_exists(self, warehouse_id: str) -> bool:
        return warehouse_id in self._state.warehouses

    async def set_on_hand(self, change: StockChange) -> StockLevel | None:
        key = (change.sku, change.warehouse_id)
        current = self._state.stock.get(key)
        reserved = current.reserved if current else 0
        if change.on_hand < reserved:
            return None
        level = StockLevel(change.sku, change.warehouse_id, change.on_hand, reserved)
        self._state.stock[key] = level
        return level


class FakeUnitOfWork:
    """Works on a private copy of the state; commit publishes it."""

    def __init__(self, db: InMemoryDatabase) -> None:
        self._db = db

    async def __aenter__(self) -> Self:
        self._state = copy.deepcopy(self._db.state)
        self.products = FakeProducts(self._state)
        self.orders = FakeOrders(self._state)
        self.outbox = FakeOutbox(self._state)
        self.idempotency = FakeIdempotencyStore(self._state, self._db)
        self.inventory = FakeInventory(self._state)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.idempotency.claimed is not None:
            self._db.held.discard(self.idempotency.claimed)

    async def commit(self) -> None:
        self._db.state = self._state
        self._db.commits += 1
        if self.idempotency.claimed is not None:
            self._db.held.discard(self.idempotency.claimed)
            self.idempotency.claimed = None


class RecordingNotifier:
    """A notifier that keeps what it was asked to send (for tests of the notification path)."""

    name = "recording"

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)

    async def close(self) -> None:
        return None


class RecordingAlerts:
    """Alerts that keep every dead letter and every order that needs attention."""

    def __init__(self) -> None:
        self.dead_letters: list[int] = []
        self.attention: list[tuple[str, str]] = []

    async def dead_lettered(self, letter: NewDeadLetter, letter_id: int) -> None:
        self.dead_letters.append(letter_id)

    async def needs_attention(self, order_id: str, why: str, detail: dict[str, Any]) -> None:
        self.attention.append((order_id, why))
