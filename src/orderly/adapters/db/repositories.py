"""Write-side repositories and the unit of work, bound to one connection and transaction."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderly.adapters.db.batch import CommitBatch, Insert
from orderly.adapters.db.engine import dialect_insert, writer_gate
from orderly.adapters.db.errors import is_connection_problem
from orderly.adapters.db.message_repositories import (
    SqlDeadLetters,
    SqlDeliveryAcks,
    SqlFailureLog,
    SqlInbox,
    SqlKeyStatus,
    SqlOrderStates,
    SqlStock,
)
from orderly.adapters.db.read_models import SqlReadModels
from orderly.adapters.db.saga_repositories import (
    SqlFraudReviews,
    SqlOrderStream,
    SqlPaymentRecords,
    SqlReservations,
    SqlSagaStore,
    SqlShipments,
    record_stock_changes,
)
from orderly.adapters.db.tables import (
    idempotency_keys,
    order_events,
    order_lines,
    orders,
    outbox_messages,
    products,
    stock,
    warehouses,
)
from orderly.domain.catalogue import Product, StockLevel
from orderly.domain.events import Message
from orderly.domain.money import Money
from orderly.domain.orders import PlacedOrder
from orderly.services.idempotency_types import (
    Claimed,
    ClaimResult,
    Existing,
    IdempotencyScope,
    InFlight,
    KeyRecord,
    StoredResponse,
)
from orderly.services.ports import StockChange, StorageUnavailable

# Statements are built once: constructing them per call cost more than executing them.
_SELECT_PRODUCTS = (
    sa.select(products.c.sku, products.c.name, products.c.price_minor, products.c.currency)
    .where(products.c.sku.in_(sa.bindparam("skus", expanding=True)))
    .where(products.c.active)
)
_INSERT_ORDER = orders.insert()
_INSERT_LINES = order_lines.insert()
_INSERT_EVENT = order_events.insert()
_COMPLETE_KEY = idempotency_keys.update().where(idempotency_keys.c.id == sa.bindparam("_id"))
_SELECT_KEY = sa.select(idempotency_keys).where(
    idempotency_keys.c.user_id == sa.bindparam("user_id"),
    idempotency_keys.c.method == sa.bindparam("method"),
    idempotency_keys.c.route == sa.bindparam("route"),
    idempotency_keys.c.key == sa.bindparam("key"),
)
_CLAIM_COLUMNS = ("user_id", "method", "route", "key", "fingerprint", "created_at", "expires_at")


def _claim_statement(dialect: str) -> Any:
    """INSERT the key, or take over an expired one, RETURNING its id; nothing if it is live.

    On PostgreSQL the row is only offered under a transaction-scoped advisory lock on the
    scope, so a concurrent claim of an uncommitted key returns nothing at once.
    """
    c = idempotency_keys.c
    binds = [sa.bindparam(name, type_=c[name].type) for name in _CLAIM_COLUMNS]
    if dialect == "postgresql":
        insert: Any = postgresql.insert(idempotency_keys)
        source = sa.select(*binds).where(
            sa.func.pg_try_advisory_xact_lock(sa.bindparam("lock_id", type_=sa.BigInteger))
        )
        insert = insert.from_select(list(_CLAIM_COLUMNS), source)
    else:
        insert = sqlite.insert(idempotency_keys).values(
            dict(zip(_CLAIM_COLUMNS, binds, strict=True))
        )
    excluded = insert.excluded
    reclaim_expired = {
        "fingerprint": excluded.fingerprint,
        "created_at": excluded.created_at,
        "expires_at": excluded.expires_at,
        "response_status": None,
        "response_headers": None,
        "response_body": None,
        "resource_id": None,
        "resource_status": None,
    }
    return insert.on_conflict_do_update(
        index_elements=[c.user_id, c.method, c.route, c.key],
        set_=reclaim_expired,
        where=c.expires_at <= excluded.created_at,
    ).returning(c.id)


_CLAIM = {"postgresql": _claim_statement("postgresql"), "sqlite": _claim_statement("sqlite")}


class SqlProductRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def by_skus(self, skus: Collection[str]) -> dict[str, Product]:
        rows = await self._conn.execute(_SELECT_PRODUCTS, {"skus": list(skus)})
        return {
            r.sku: Product(sku=r.sku, name=r.name, price=Money(r.price_minor, r.currency))
            for r in rows
        }

    async def exists(self, sku: str) -> bool:
        found = await self._conn.scalar(sa.select(products.c.sku).where(products.c.sku == sku))
        return found is not None


class SqlOrderRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, placed: PlacedOrder) -> None:
        order, event = placed.order, placed.event
        await self._conn.execute(
            _INSERT_ORDER,
            {
                "id": order.id,
                "customer_id": order.customer_id,
                "status": order.status.value,
                "failure_reason": None,
                "currency": order.total.currency,
                "total_minor": order.total.amount,
                "payment_method": order.payment_method,
                "shipping_address": (
                    order.shipping_address.as_dict() if order.shipping_address else None
                ),
                "version": order.version,
                "created_at": order.created_at,
                "updated_at": order.updated_at,
            },
        )
        await self._conn.execute(
            _INSERT_LINES,
            [
                {
                    "order_id": order.id,
                    "line_no": line.line_no,
                    "sku": line.sku,
                    "name": line.name,
                    "quantity": line.quantity,
                    "unit_price_minor": line.unit_price.amount,
                }
                for line in order.lines
            ],
        )
        await self._conn.execute(
            _INSERT_EVENT,
            {
                "order_id": event.order_id,
                "version": event.version,
                "type": event.type,
                "data": event.data,
                "occurred_at": event.occurred_at,
                "correlation_id": event.correlation_id,
                "causation_id": event.causation_id,
            },
        )


class SqlOutbox:
    """Buffers the transaction's messages and writes them in one statement at commit.

    A message handed off to a consumer in the same transaction is not written: it was applied
    in this transaction, and no transport is to deliver it. A message claimed by its writer
    (``claim``) is written with that claim; ``claimed_rows`` then names its queue row.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._pending: list[Message] = []
        self._handed: set[str] = set()
        self._claims: dict[str, tuple[str, datetime]] = {}
        self.unsent_types: set[str] = set()
        """Types of the unclaimed messages written (a wake-up is due after commit)."""
        self.claimed_rows: dict[str, int] = {}
        """The queue row of each message written claimed, by message id (after the flush)."""

    async def add(self, message: Message) -> None:
        self._pending.append(message)

    def added(self) -> list[Message]:
        return [m for m in self._pending if m.id not in self._handed]

    def hand_off(self, message_id: str) -> None:
        self._check_added(message_id)
        self._handed.add(message_id)
        self._claims.pop(message_id, None)

    def claim(self, message_id: str, owner: str, until: datetime) -> None:
        self._check_added(message_id)
        self._claims[message_id] = (owner, until)

    def _check_added(self, message_id: str) -> None:
        if not any(m.id == message_id for m in self._pending if m.id not in self._handed):
            raise KeyError(f"message {message_id} was not added in this transaction")

    def flush_into(self, batch: CommitBatch) -> None:
        """The buffered messages, as a write of ``batch`` (the unit of work's commit): every
        message in one insert, the claimed ones with their claim; their rows' ids come back."""
        written, claims = self.added(), self._claims
        self._pending, self._handed, self._claims = [], set(), {}
        self.claimed_rows = {}
        if not written:
            return
        self.unsent_types.update(m.type for m in written if m.id not in claims)
        rows = []
        for message in written:
            owner, until = claims.get(message.id, (None, None))
            rows.append({**self._row(message), "claimed_by": owner, "claimed_until": until})

        def claimed(returned: list[tuple[Any, ...]]) -> None:
            self.claimed_rows = {
                message_id: int(row_id) for message_id, row_id in returned if message_id in claims
            }

        write = Insert.of(outbox_messages, rows, returning=("message_id", "id") if claims else ())
        batch.add(write, rows, claimed)

    @staticmethod
    def _row(message: Message) -> dict[str, Any]:
        return {
            "message_id": message.id,
            "type": message.type,
            "key": message.key,
            "payload": message.payload,
            "headers": message.headers,
            "correlation_id": message.correlation_id,
            "causation_id": message.causation_id,
            "created_at": message.created_at,
            "available_at": message.not_before or message.created_at,
            "attempts": 0,
        }


def advisory_lock_id(scope: IdempotencyScope) -> int:
    digest = hashlib.sha256(
        "\x1f".join((scope.user_id, scope.method, scope.route, scope.key)).encode()
    ).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def key_record(row: Mapping[Any, Any]) -> KeyRecord:
    """A stored key row (either driver's) as the services see it."""
    response = None
    if row["response_status"] is not None:
        response = StoredResponse(
            status_code=row["response_status"],
            headers=tuple((k, v) for k, v in row["response_headers"]),
            body=row["response_body"],
        )
    return KeyRecord(
        fingerprint=row["fingerprint"],
        response=response,
        expires_at=row["expires_at"],
        resource_id=row["resource_id"],
        resource_status=row["resource_status"],
    )


def live_key(row: Mapping[Any, Any] | None, now: datetime) -> ClaimResult:
    """What a claim that got no row reports: the live key, or in flight (none yet visible,
    or an expired one that another transaction is taking over)."""
    if row is None or row["expires_at"] <= now:
        return InFlight()
    return Existing(key_record(row))


class SqlIdempotencyStore:
    """Claims keys inside the caller's transaction.

    PostgreSQL: the insert only happens under ``pg_try_advisory_xact_lock`` on the scope, so a
    concurrent request for an uncommitted key sees "in flight" at once instead of blocking on the
    unique index. SQLite has one writer at a time (BEGIN IMMEDIATE), so a second request waits
    for the first to commit and then finds its stored response.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._claimed_id: int | None = None

    async def claim(
        self, scope: IdempotencyScope, fingerprint: str, now: datetime, expires_at: datetime
    ) -> ClaimResult:
        scope_params = {
            "user_id": scope.user_id,
            "method": scope.method,
            "route": scope.route,
            "key": scope.key,
        }
        params = {
            **scope_params,
            "fingerprint": fingerprint,
            "created_at": now,
            "expires_at": expires_at,
            "lock_id": advisory_lock_id(scope),
        }
        # A live key is only read: a retry of a finished request writes nothing.
        found = await self._find(scope_params)
        if found is not None and found["expires_at"] > now:
            return Existing(key_record(found))
        dialect = self._conn.dialect.name
        claimed = (await self._conn.execute(_CLAIM[dialect], params)).scalar_one_or_none()
        if claimed is not None:
            self._claimed_id = claimed
            return Claimed()
        return live_key(await self._find(scope_params), now)

    async def _find(self, scope_params: dict[str, str]) -> Mapping[Any, Any] | None:
        row = (await self._conn.execute(_SELECT_KEY, scope_params)).one_or_none()
        return None if row is None else row._mapping

    async def complete(
        self,
        scope: IdempotencyScope,
        response: StoredResponse,
        resource_id: str | None,
        resource_status: str | None,
    ) -> None:
        if self._claimed_id is None:
            raise RuntimeError("complete() without a successful claim()")
        await self._conn.execute(
            _COMPLETE_KEY,
            {
                "_id": self._claimed_id,
                "response_status": response.status_code,
                "response_headers": [list(h) for h in response.headers],
                "response_body": response.body,
                "resource_id": resource_id,
                "resource_status": resource_status,
            },
        )

    async def purge_expired(self, now: datetime, limit: int) -> int:
        c = idempotency_keys.c
        doomed = sa.select(c.id).where(c.expires_at <= now).limit(limit).scalar_subquery()
        result = await self._conn.execute(idempotency_keys.delete().where(c.id.in_(doomed)))
        return int(result.rowcount)


class SqlInventoryRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def levels(self, sku: str) -> list[StockLevel]:
        rows = await self._conn.execute(
            sa.select(stock).where(stock.c.sku == sku).order_by(stock.c.warehouse_id)
        )
        return [StockLevel(r.sku, r.warehouse_id, r.on_hand, r.reserved) for r in rows]

    async def warehouse_exists(self, warehouse_id: str) -> bool:
        found = await self._conn.scalar(
            sa.select(warehouses.c.id).where(warehouses.c.id == warehouse_id)
        )
        return found is not None

    async def set_on_hand(self, change: StockChange) -> StockLevel | None:
        """Set on_hand (never below reserved), recording the difference in the ledger."""
        current = sa.select(stock.c.on_hand).where(
            stock.c.sku == change.sku, stock.c.warehouse_id == change.warehouse_id
        )
        if self._conn.dialect.name == "postgresql":
            current = current.with_for_update()
        before = await self._conn.scalar(current)
        insert = dialect_insert(self._conn, stock).values(
            sku=change.sku, warehouse_id=change.warehouse_id, on_hand=change.on_hand, reserved=0
        )
        statement = insert.on_conflict_do_update(
            index_elements=[stock.c.sku, stock.c.warehouse_id],
            set_={"on_hand": insert.excluded.on_hand},
            where=stock.c.reserved <= insert.excluded.on_hand,
        ).returning(stock.c.sku, stock.c.warehouse_id, stock.c.on_hand, stock.c.reserved)
        row = (await self._conn.execute(statement)).one_or_none()
        if row is None:
            return None
        delta = row.on_hand - (before or 0)
        if delta:
            await record_stock_changes(
                self._conn,
                [
                    {
                        "sku": row.sku,
                        "warehouse_id": row.warehouse_id,
                        "kind": "adjust",
                        "on_hand_delta": delta,
                        "reserved_delta": 0,
                        "order_id": None,
                    }
                ],
                datetime.now(UTC),
            )
        return StockLevel(row.sku, row.warehouse_id, row.on_hand, row.reserved)


class SqlUnitOfWork:
    """One connection, one transaction; rolled back on exit unless committed.

    ``on_outbox_commit`` is called after a commit that added outbox messages: the in-process
    wake-up of the local transport on SQLite (PostgreSQL has LISTEN/NOTIFY).
    """

    products: SqlProductRepository
    orders: SqlOrderRepository
    outbox: SqlOutbox
    idempotency: SqlIdempotencyStore
    inventory: SqlInventoryRepository
    order_states: SqlOrderStates
    stock: SqlStock
    key_status: SqlKeyStatus
    inbox: SqlInbox
    acks: SqlDeliveryAcks
    failures: SqlFailureLog
    dead_letters: SqlDeadLetters
    sagas: SqlSagaStore
    order_stream: SqlOrderStream
    reservations: SqlReservations
    payments: SqlPaymentRecords
    shipments: SqlShipments
    fraud_reviews: SqlFraudReviews
    read_models: SqlReadModels

    def __init__(
        self,
        engine: AsyncEngine,
        on_outbox_commit: Callable[[Collection[str]], None] | None = None,
        *,
        one_statement: bool = True,
    ) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._gate: asyncio.Lock | None = None
        self._on_outbox_commit = on_outbox_commit
        # False: the commit's writes go as a statement each on PostgreSQL too (benchmarks).
        self._one_statement = one_statement

    async def __aenter__(self) -> Self:
        gate = self._gate = writer_gate(self._engine)
        if gate is not None:
            await gate.acquire()
        try:
            conn = await self._open()
        except BaseException:
            if gate is not None:
                gate.release()
            raise
        self._conn = conn
        self.products = SqlProductRepository(conn)
        self.orders = SqlOrderRepository(conn)
        self.outbox = SqlOutbox(conn)
        self.idempotency = SqlIdempotencyStore(conn)
        self.inventory = SqlInventoryRepository(conn)
        self.order_states = SqlOrderStates(conn)
        self.stock = SqlStock(conn)
        self.key_status = SqlKeyStatus(conn)
        self.acks = SqlDeliveryAcks(conn)
        self.inbox = SqlInbox(conn, self.acks)
        self.failures = SqlFailureLog(conn)
        self.dead_letters = SqlDeadLetters(conn)
        self.sagas = SqlSagaStore(conn)
        self.order_stream = SqlOrderStream(conn)
        self.payments = SqlPaymentRecords(conn)
        self.shipments = SqlShipments(conn)
        self.reservations = SqlReservations(conn, self.outbox, self.shipments.forget_read)
        self.fraud_reviews = SqlFraudReviews(conn)
        self.read_models = SqlReadModels(conn, before_stream_read=self.order_stream.flush)
        return self

    async def _open(self) -> AsyncConnection:
        try:
            conn = await self._engine.connect()
        except Exception as exc:
            # Connecting only fails because the database cannot be reached or refuses us.
            raise StorageUnavailable(str(exc)) from exc
        try:
            await conn.begin()
        except BaseException as exc:
            broken = is_connection_problem(exc)
            if broken:
                await conn.invalidate()
            await conn.close()
            if broken:
                raise StorageUnavailable(str(exc)) from exc
            raise
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gate, self._gate = self._gate, None
        try:
            await self._close(exc)
        finally:
            if gate is not None:
                gate.release()

    async def _close(self, exc: BaseException | None) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        broken = exc is not None and is_connection_problem(exc)
        try:
            if conn.in_transaction() and not broken:
                await conn.rollback()
        except Exception:
            # A connection that cannot even roll back must never serve another request.
            broken = True
        finally:
            if broken:
                await conn.invalidate()
            await conn.close()
        if broken and exc is not None:
            raise StorageUnavailable(str(exc)) from exc

    async def _flush(self, conn: AsyncConnection) -> None:
        """What the repositories buffered: the writes nothing orders (events, sagas and their
        log, stock ledger, payment operations, order read-model rows, outbox) in one batch (on
        PostgreSQL one statement: adapters/db/batch.py), then the stock rows and inventory
        levels, each in key order and last, so the rows every order of a SKU wants are held
        the shortest."""
        batch = CommitBatch(one_statement=self._one_statement)
        self.order_stream.flush_into(batch)
        self.sagas.flush_into(batch)
        self.reservations.flush_into(batch)
        self.payments.flush_into(batch)
        self.shipments.flush_into(batch)
        self.key_status.flush_into(batch)
        self.read_models.flush_into(batch)
        self.outbox.flush_into(batch)
        await batch.execute(conn)
        await self.reservations.flush_stock()
        await self.read_models.flush_levels()

    async def commit(self) -> None:
        if self._conn is None:
            raise RuntimeError("commit() outside the unit of work")
        try:
            await self._flush(self._conn)
            await self.acks.flush()
            await self._conn.commit()
        except Exception as exc:
            if is_connection_problem(exc):
                raise StorageUnavailable(str(exc)) from exc
            raise
        if self._on_outbox_commit is not None and self.outbox.unsent_types:
            types, self.outbox.unsent_types = self.outbox.unsent_types, set()
            self._on_outbox_commit(types)
