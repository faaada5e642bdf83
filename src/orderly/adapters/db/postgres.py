"""PostgreSQL fast path: the unit of work on the asyncpg driver's prepared statements.

The intake transaction runs on every order, and building and compiling SQLAlchemy statements
cost more CPU than PostgreSQL spent executing them (bench/README.md). This unit of work borrows
a connection from the same SQLAlchemy pool, runs its own transaction on the driver, and writes an
order with its lines and first event in one statement. Behaviour is the one of
``SqlUnitOfWork``; the integration tests run the API against both.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from orderly.adapters.db.errors import is_connection_problem
from orderly.adapters.db.pg_sql import (
    CLAIM_KEY,
    COMPLETE_KEY,
    INSERT_LEDGER,
    INSERT_ORDER,
    INSERT_OUTBOX,
    PRODUCT_EXISTS,
    PURGE_KEYS,
    SELECT_KEY,
    SELECT_PRODUCTS,
    SET_ON_HAND,
    STOCK_LEVELS,
    STOCK_ON_HAND_FOR_UPDATE,
    WAREHOUSE_EXISTS,
)
from orderly.adapters.db.repositories import advisory_lock_id, live_key
from orderly.adapters.db.saga_repositories import stock_changed_payload
from orderly.domain.catalogue import Product, StockLevel
from orderly.domain.events import Message
from orderly.domain.money import Money
from orderly.domain.orders import PlacedOrder
from orderly.services.idempotency_types import (
    Claimed,
    ClaimResult,
    IdempotencyScope,
    StoredResponse,
)
from orderly.services.ports import StockChange, StorageUnavailable
from orderly.services.projections import STOCK_CHANGED


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _rowcount(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class PgProducts:
    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db

    async def by_skus(self, skus: Collection[str]) -> dict[str, Product]:
        rows = await self._db.fetch(SELECT_PRODUCTS, list(skus))
        return {
            r["sku"]: Product(r["sku"], r["name"], Money(r["price_minor"], r["currency"]))
            for r in rows
        }

    async def exists(self, sku: str) -> bool:
        return await self._db.fetchval(PRODUCT_EXISTS, sku) is not None


class PgOrders:
    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db

    async def add(self, placed: PlacedOrder) -> None:
        order, event = placed.order, placed.event
        lines = order.lines
        address = order.shipping_address.as_dict() if order.shipping_address else None
        await self._db.execute(
            INSERT_ORDER,
            order.id,
            order.customer_id,
            order.status.value,
            order.total.currency,
            order.total.amount,
            order.payment_method,
            None if address is None else _json(address),
            order.version,
            order.created_at,
            order.updated_at,
            [line.line_no for line in lines],
            [line.sku for line in lines],
            [line.name for line in lines],
            [line.quantity for line in lines],
            [line.unit_price.amount for line in lines],
            event.version,
            event.type,
            _json(event.data),
            event.occurred_at,
            event.correlation_id,
            event.causation_id,
        )


class PgOutbox:
    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db

    async def add(self, message: Message) -> None:
        await self._db.execute(
            INSERT_OUTBOX,
            message.id,
            message.type,
            message.key,
            _json(message.payload),
            _json(message.headers),
            message.correlation_id,
            message.causation_id,
            message.created_at,
        )


class PgIdempotencyStore:
    """The same claim as ``SqlIdempotencyStore`` (advisory lock, expired take-over), in one
    statement that only reads a live key: a retry of a finished request writes nothing."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db
        self._claimed_id: int | None = None

    async def claim(
        self, scope: IdempotencyScope, fingerprint: str, now: datetime, expires_at: datetime
    ) -> ClaimResult:
        scope_args = (scope.user_id, scope.method, scope.route, scope.key)
        row = await self._db.fetchrow(
            CLAIM_KEY, *scope_args, fingerprint, now, expires_at, advisory_lock_id(scope)
        )
        assert row is not None  # the statement always answers one row
        if row["claimed_id"] is not None:
            self._claimed_id = row["claimed_id"]
            return Claimed()
        if row["expires_at"] is None or row["expires_at"] <= now:
            # Not visible when the statement began, or being taken over: another transaction
            # holds the key, or committed it since; a fresh read tells which.
            row = await self._db.fetchrow(SELECT_KEY, *scope_args)
        return live_key(row, now)

    async def complete(
        self,
        scope: IdempotencyScope,
        response: StoredResponse,
        resource_id: str | None,
        resource_status: str | None,
    ) -> None:
        if self._claimed_id is None:
            raise RuntimeError("complete() without a successful claim()")
        await self._db.execute(
            COMPLETE_KEY,
            self._claimed_id,
            response.status_code,
            _json([list(h) for h in response.headers]),
            response.body,
            resource_id,
            resource_status,
        )

    async def purge_expired(self, now: datetime, limit: int) -> int:
        return _rowcount(await self._db.execute(PURGE_KEYS, now, limit))


class PgInventory:
    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db

    async def levels(self, sku: str) -> list[StockLevel]:
        rows = await self._db.fetch(STOCK_LEVELS, sku)
        return [StockLevel(r["sku"], r["warehouse_id"], r["on_hand"], r["reserved"]) for r in rows]

    async def warehouse_exists(self, warehouse_id: str) -> bool:
        return await self._db.fetchval(WAREHOUSE_EXISTS, warehouse_id) is not None

    async def set_on_hand(self, change: StockChange) -> StockLevel | None:
        """Set on_hand (never below reserved); the difference is a ledger adjustment."""
        before = await self._db.fetchval(STOCK_ON_HAND_FOR_UPDATE, change.sku, change.warehouse_id)
        row = await self._db.fetchrow(SET_ON_HAND, change.sku, change.warehouse_id, change.on_hand)
        if row is None:
            return None
        delta = row["on_hand"] - (before or 0)
        if delta:
            now = datetime.now(UTC)
            adjustment = {
                "sku": change.sku,
                "warehouse_id": change.warehouse_id,
                "kind": "adjust",
                "on_hand_delta": delta,
                "reserved_delta": 0,
                "order_id": None,
            }
            await self._db.execute(
                INSERT_LEDGER, change.sku, change.warehouse_id, "adjust", delta, 0, None, now
            )
            payload = orjson.dumps(stock_changed_payload([adjustment], now)).decode()
            await self._db.execute(
                INSERT_OUTBOX,
                str(uuid.uuid4()),
                STOCK_CHANGED,
                change.sku,
                payload,
                "{}",
                change.sku,
                None,
                now,
            )
        return StockLevel(row["sku"], row["warehouse_id"], row["on_hand"], row["reserved"])


class PgUnitOfWork:
    """A pooled connection and a driver-level transaction; rolled back unless committed."""

    products: PgProducts
    orders: PgOrders
    outbox: PgOutbox
    idempotency: PgIdempotencyStore
    inventory: PgInventory

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: PoolProxiedConnection | None = None
        self._transaction: Any = None

    async def __aenter__(self) -> Self:
        try:
            # The pool's connection itself: no SQLAlchemy Connection around it, whose
            # creation, raw-connection lookup and close were a greenlet hop each.
            conn = await self._engine.raw_connection()
        except Exception as exc:
            # Connecting only fails because the database cannot be reached or refuses us.
            raise StorageUnavailable(str(exc)) from exc
        try:
            db: asyncpg.Connection = conn.driver_connection
            transaction = db.transaction()
            await transaction.start()
        except BaseException as exc:
            await self._release(conn, broken=True)
            if is_connection_problem(exc, socket_errors=True):
                raise StorageUnavailable(str(exc)) from exc
            raise
        self._conn, self._transaction = conn, transaction
        self.products = PgProducts(db)
        self.orders = PgOrders(db)
        self.outbox = PgOutbox(db)
        self.idempotency = PgIdempotencyStore(db)
        self.inventory = PgInventory(db)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, transaction = self._conn, self._transaction
        self._conn = self._transaction = None
        if conn is None:
            return
        lost = exc is not None and is_connection_problem(exc, socket_errors=True)
        # Interrupted (cancelled) mid-exchange, the driver's transaction state is unknown: a
        # connection whose BEGIN was cut short still counts a transaction open, and would
        # turn the next one into a savepoint that commits nothing. Such a connection, and
        # one that cannot even roll back, must never serve another request.
        broken = lost or (exc is not None and not isinstance(exc, Exception))
        try:
            if transaction is not None and not broken:
                await transaction.rollback()
        except Exception:
            broken = True
        except BaseException:
            broken = True
            raise
        finally:
            await self._release(conn, broken=broken)
        if lost and exc is not None:
            raise StorageUnavailable(str(exc)) from exc

    async def commit(self) -> None:
        if self._transaction is None:
            raise RuntimeError("commit() outside the unit of work")
        try:
            await self._transaction.commit()
        except Exception as exc:
            if is_connection_problem(exc, socket_errors=True):
                raise StorageUnavailable(str(exc)) from exc
            raise
        self._transaction = None

    @staticmethod
    async def _release(conn: PoolProxiedConnection, *, broken: bool) -> None:
        # Returning a connection may touch the driver (a reset, or closing a broken one).
        if broken:
            await greenlet_spawn(conn.invalidate)
        await greenlet_spawn(conn.close)
