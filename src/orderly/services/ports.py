"""Ports: what the services need from the outside world. Adapters implement them."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from orderly.domain.catalogue import Product, StockLevel
from orderly.domain.events import Message
from orderly.domain.orders import PlacedOrder
from orderly.services.idempotency_types import (
    ClaimResult,
    IdempotencyScope,
    StoredResponse,
)

JSON = dict[str, Any]


class Clock(Protocol):
    """The current time, always timezone-aware UTC."""

    def now(self) -> datetime: ...


class IdGenerator(Protocol):
    """Fresh unique ids for orders and messages."""

    def new_id(self) -> str: ...


class ProductRepository(Protocol):
    """The priced catalogue."""

    async def by_skus(self, skus: Collection[str]) -> dict[str, Product]:
        """Active products among ``skus``, keyed by SKU; absent SKUs are simply missing."""
        ...

    async def exists(self, sku: str) -> bool: ...


class OrderRepository(Protocol):
    """Writes orders, their lines and their event stream."""

    async def add(self, placed: PlacedOrder) -> None:
        """Insert a new order with its lines and first event."""
        ...


class Outbox(Protocol):
    """The only way a message leaves a transaction."""

    async def add(self, message: Message) -> None: ...


class IdempotencyStore(Protocol):
    """Idempotency-key records, scoped to (user, method, route, key)."""

    async def claim(
        self, scope: IdempotencyScope, fingerprint: str, now: datetime, expires_at: datetime
    ) -> ClaimResult:
        """Insert the key if absent (or expired) and report what was found otherwise.

        Runs inside the unit of work, so a rollback releases the claim.
        """
        ...

    async def complete(
        self,
        scope: IdempotencyScope,
        response: StoredResponse,
        resource_id: str | None,
        resource_status: str | None,
    ) -> None:
        """Store the response the claimed request produced."""
        ...

    async def purge_expired(self, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` expired keys; return how many went."""
        ...


@dataclass(frozen=True, slots=True)
class StockChange:
    sku: str
    warehouse_id: str
    on_hand: int


class InventoryRepository(Protocol):
    """Stock per (sku, warehouse)."""

    async def levels(self, sku: str) -> list[StockLevel]: ...

    async def warehouse_exists(self, warehouse_id: str) -> bool: ...

    async def set_on_hand(self, change: StockChange) -> StockLevel | None:
        """Set on_hand, creating the row if absent; None if on_hand would drop below reserved."""
        ...


class UnitOfWork(Protocol):
    """One database transaction and the repositories bound to it."""

    @property
    def products(self) -> ProductRepository: ...

    @property
    def orders(self) -> OrderRepository: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    @property
    def inventory(self) -> InventoryRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back whatever was not committed."""
        ...

    async def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[JSON]
    page: int
    size: int
    total: int


class OrderViews(Protocol):
    """Read side: orders as the API shows them (plain JSON-ready dicts)."""

    async def order(self, order_id: str) -> JSON | None: ...

    async def orders(
        self, *, customer_id: str | None, status: str | None, page: int, size: int
    ) -> Page: ...

    async def events(self, order_id: str) -> list[JSON]: ...

    async def products(self) -> list[JSON]: ...

    async def inventory(self, sku: str) -> JSON | None: ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...


class Tokens(Protocol):
    """Issues and verifies bearer tokens."""

    def issue(self, user_id: str, role: str) -> str: ...

    def verify(self, token: str) -> tuple[str, str]:
        """Return (user id, role) or raise ``InvalidToken``."""
        ...


class InvalidToken(Exception):
    """A bearer token that is missing, expired, forged or malformed."""


class StorageUnavailable(Exception):
    """The database could not be reached or is too busy; the request may be retried."""
