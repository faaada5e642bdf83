"""Ports: what the services need from the outside world. Adapters implement them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from orderly.domain.catalogue import Product, StockLevel
from orderly.domain.events import Message
from orderly.domain.orders import PlacedOrder
from orderly.domain.processing import Allocation, StoredOrder, Transition
from orderly.services.idempotency_types import (
    ClaimResult,
    IdempotencyScope,
    StoredResponse,
)
from orderly.services.read_model_ports import ReadModels
from orderly.services.saga_ports import (
    FraudReviews,
    OrderStream,
    PaymentRecords,
    Reservations,
    SagaStore,
    Shipments,
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


class HandOffOutbox(Outbox, Protocol):
    """A message handler's outbox: what this transaction added may be handed straight to a
    consumer running in the same transaction, instead of waiting for delivery.

    A handed-off message is not written to the outbox at all: it exists only inside the
    transaction that created and applied it, so there is no copy for any transport to deliver
    and none for an inbox to recognise. What it did is recorded where every effect is (the
    order's events, the saga log, the stock ledger).
    """

    def added(self) -> Sequence[Message]:
        """Messages added in this transaction and not handed off, in the order added."""
        ...

    def hand_off(self, message_id: str) -> None:
        """Take a message added in this transaction out of what is written: it was applied."""
        ...

    def claim(self, message_id: str, owner: str, until: datetime) -> None:
        """Write a message added in this transaction already claimed by ``owner`` (a worker
        on the local transport) until ``until``: that worker delivers it after the commit."""
        ...

    @property
    def claimed_rows(self) -> Mapping[str, int]:
        """After the commit: the queue row of each claimed message, by message id."""
        ...


class IdempotencyStore(Protocol):
    """Idempotency-key records, scoped to (user, method, route, key)."""

    async def claim(
        self, scope: IdempotencyScope, fingerprint: str, now: datetime, expires_at: datetime
    ) -> ClaimResult:
        """Insert the key if absent (or expired) and report what was found otherwise.

        Runs inside the unit of work, so a rollback releases the claim. A live key is only
        read (``Existing``): the retry of a finished request writes nothing.
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


class OrderStateRepository(Protocol):
    """Orders as message handlers read and move them."""

    async def load(self, order_id: str) -> StoredOrder | None: ...

    async def apply(self, transition: Transition) -> bool:
        """Move the order and append the event, only if it is still at ``from_version``."""
        ...

    async def redrive_unstarted(
        self, placed_before: datetime, now: datetime, limit: int
    ) -> list[str]:
        """Orders still PENDING, placed before ``placed_before``, whose ``order.placed`` was
        published and whose saga never started: queue that message again (due ``now``) and
        return their ids. The inbox skips it where it was applied after all."""
        ...


class StockRepository(Protocol):
    """Conditional stock movements: on_hand never drops below reserved or zero."""

    async def take(self, sku: str, quantity: int) -> list[Allocation] | None:
        """Take ``quantity`` units by warehouse priority, all or nothing; None if short."""
        ...

    async def put_back(self, allocation: Allocation) -> None: ...


class KeyStatusRepository(Protocol):
    async def follow(self, resource_id: str, status: str) -> None:
        """Record the resource's new status on the idempotency key that created it."""
        ...


class Inbox(Protocol):
    """Which consumer has already applied which message."""

    async def record(self, consumer: str, message_id: str, now: datetime) -> bool:
        """Mark the message processed for ``consumer``; False if it already was."""
        ...


class DeliveryAcks(Protocol):
    """Acknowledgement inside the handler's transaction (the local transport's outbox rows)."""

    async def acknowledge(self, handle: object, now: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    consumer: str
    message_id: str
    type: str
    correlation_id: str
    attempt: int
    error: str
    permanent: bool
    failed_at: datetime


class FailureLog(Protocol):
    """Every failed attempt of every message, for dead letters and an order's trail."""

    async def record(self, failure: FailedAttempt) -> None: ...

    async def history(self, consumer: str, message_id: str) -> list[FailedAttempt]: ...


@dataclass(frozen=True, slots=True)
class NewDeadLetter:
    consumer: str
    message: Message
    error: str
    traceback: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    context: JSON


@dataclass(frozen=True, slots=True)
class Replay:
    id: int
    dead_letter_id: int
    requested_by: str
    requested_at: datetime
    result: str
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    consumer: str
    message: Message
    error: str
    traceback: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    context: JSON
    status: str
    created_at: datetime
    replays: tuple[Replay, ...] = ()


class DeadLetterStore(Protocol):
    """Messages that ran out of attempts, with their context, and their replays."""

    async def add(self, letter: NewDeadLetter, now: datetime) -> int: ...

    async def get(self, letter_id: int) -> DeadLetter | None: ...

    async def list(
        self, *, status: str | None, consumer: str | None, limit: int, after_id: int
    ) -> list[DeadLetter]: ...

    async def start_replay(self, letter_id: int, requested_by: str, now: datetime) -> int:
        """Record a replay (result ``queued``) and mark the letter replayed; the replay's id."""
        ...

    async def finish_replay(self, replay_id: int, result: str, now: datetime) -> None: ...


class MessageUnitOfWork(UnitOfWork, Protocol):
    """The unit of work message handlers and the consumer runtime use."""

    @property
    def order_states(self) -> OrderStateRepository: ...

    @property
    def stock(self) -> StockRepository: ...

    @property
    def key_status(self) -> KeyStatusRepository: ...

    @property
    def inbox(self) -> Inbox: ...

    @property
    def acks(self) -> DeliveryAcks: ...

    @property
    def failures(self) -> FailureLog: ...

    @property
    def dead_letters(self) -> DeadLetterStore: ...

    @property
    def sagas(self) -> SagaStore: ...

    @property
    def order_stream(self) -> OrderStream: ...

    @property
    def reservations(self) -> Reservations: ...

    @property
    def payments(self) -> PaymentRecords: ...

    @property
    def shipments(self) -> Shipments: ...

    @property
    def fraud_reviews(self) -> FraudReviews: ...

    @property
    def read_models(self) -> ReadModels: ...

    @property
    def outbox(self) -> HandOffOutbox: ...


MessageUnitOfWorkFactory = Callable[[], MessageUnitOfWork]


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """An outbox row claimed for delivery: its row id, the message, its failed deliveries so
    far (``attempts``) and the broker's refusals of it (``refusals``, relay)."""

    id: int
    message: Message
    attempts: int
    refusals: int = 0


class OutboxQueue(Protocol):
    """The outbox table seen as a queue (claims are leases)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def claim(
        self, types: Collection[str] | None, limit: int, lease: float
    ) -> list[QueuedMessage]: ...

    async def mark_sent(self, ids: Sequence[int]) -> None: ...

    async def release(self, ids: Sequence[int]) -> None: ...

    async def reschedule(self, row_id: int, delay: float) -> None: ...

    async def refuse(self, row_id: int, delay: float) -> None: ...

    def waiter(self) -> asyncio.Event: ...

    def forget(self, event: asyncio.Event) -> None: ...

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until a wake-up (a new message may be there), at most timeout."""
        ...

    async def quiet_for(self, types: Collection[str] | None) -> float:
        """Seconds a claim of ``types`` that came back empty may wait for a wake-up before
        claiming again (until a row may come due)."""
        ...


class Alerts(Protocol):
    """Tells a human that something needs them (a dead letter, a stuck order)."""

    async def dead_lettered(self, letter: NewDeadLetter, letter_id: int) -> None: ...

    async def needs_attention(self, order_id: str, why: str, detail: dict[str, Any]) -> None:
        """A saga could not undo its steps: a human must look at the order."""
        ...


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
