"""PostgreSQL fast path: the unit of work on the asyncpg driver's prepared statements.

The intake transaction runs on every order, and building and compiling SQLAlchemy statements
cost more CPU than PostgreSQL spent executing them (bench/README.md). This unit of work borrows
a connection from the same SQLAlchemy pool, runs its own transaction on the driver, and writes an
order with its lines and first event in one statement. Behaviour is the one of
``SqlUnitOfWork``; the integration tests run the API against both.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import asyncpg
import orjson
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderly.adapters.db.repositories import advisory_lock_id
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

SELECT_PRODUCTS = """
SELECT sku, name, price_minor, currency FROM products
WHERE sku = ANY($1::varchar[]) AND active
"""

PRODUCT_EXISTS = "SELECT 1 FROM products WHERE sku = $1::varchar"

INSERT_ORDER = """
WITH new_order AS (
    INSERT INTO orders (id, customer_id, status, failure_reason, currency, total_minor,
                        payment_method, shipping_address, version, created_at, updated_at)
    VALUES ($1::varchar, $2::varchar, $3::varchar, NULL, $4::varchar, $5::bigint,
            $6::varchar, $7::jsonb, $8::integer, $9::timestamptz, $10::timestamptz)
), new_lines AS (
    INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price_minor)
    SELECT $1::varchar, line.* FROM unnest($11::integer[], $12::varchar[], $13::varchar[],
                                           $14::integer[], $15::bigint[]) AS line
)
INSERT INTO order_events (order_id, version, type, data, occurred_at, correlation_id,
                          causation_id)
VALUES ($1::varchar, $16::integer, $17::varchar, $18::jsonb, $19::timestamptz,
        $20::varchar, $21::varchar)
"""

INSERT_OUTBOX = """
INSERT INTO outbox_messages (message_id, type, key, payload, headers, correlation_id,
                             causation_id, created_at, available_at, attempts)
VALUES ($1::varchar, $2::varchar, $3::varchar, $4::jsonb, $5::jsonb, $6::varchar,
        $7::varchar, $8::timestamptz, $8::timestamptz, 0)
"""

CLAIM_KEY = """
INSERT INTO idempotency_keys (user_id, method, route, key, fingerprint, created_at, expires_at)
SELECT $1::varchar, $2::varchar, $3::varchar, $4::varchar, $5::varchar, $6::timestamptz,
       $7::timestamptz
WHERE pg_try_advisory_xact_lock($8::bigint)
ON CONFLICT (user_id, method, route, key) DO UPDATE
SET fingerprint = excluded.fingerprint, created_at = excluded.created_at,
    expires_at = excluded.expires_at, response_status = NULL, response_headers = NULL,
    response_body = NULL, resource_id = NULL, resource_status = NULL
WHERE idempotency_keys.expires_at <= excluded.created_at
RETURNING id
"""

SELECT_KEY = """
SELECT fingerprint, response_status, response_headers, response_body, resource_id,
       resource_status, expires_at
FROM idempotency_keys
WHERE user_id = $1::varchar AND method = $2::varchar AND route = $3::varchar
  AND key = $4::varchar
"""

COMPLETE_KEY = """
UPDATE idempotency_keys
SET response_status = $2::integer, response_headers = $3::jsonb, response_body = $4::bytea,
    resource_id = $5::varchar, resource_status = $6::varchar
WHERE id = $1::bigint
"""

PURGE_KEYS = """
DELETE FROM idempotency_keys
WHERE id IN (SELECT id FROM idempotency_keys WHERE expires_at <= $1::timestamptz LIMIT $2)
"""

STOCK_LEVELS = """
SELECT sku, warehouse_id, on_hand, reserved FROM stock WHERE sku = $1::varchar
ORDER BY warehouse_id
"""

WAREHOUSE_EXISTS = "SELECT 1 FROM warehouses WHERE id = $1::varchar"

SET_ON_HAND = """
INSERT INTO stock (sku, warehouse_id, on_hand, reserved)
VALUES ($1::varchar, $2::varchar, $3::integer, 0)
ON CONFLICT (sku, warehouse_id) DO UPDATE SET on_hand = excluded.on_hand
WHERE stock.reserved <= excluded.on_hand
RETURNING sku, warehouse_id, on_hand, reserved
"""

CONNECTION_ERRORS = (
    OperationalError,
    InterfaceError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


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
    """The same claim as ``SqlIdempotencyStore`` (advisory lock, expired take-over)."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db
        self._claimed_id: int | None = None

    async def claim(
        self, scope: IdempotencyScope, fingerprint: str, now: datetime, expires_at: datetime
    ) -> ClaimResult:
        scope_args = (scope.user_id, scope.method, scope.route, scope.key)
        claimed = await self._db.fetchval(
            CLAIM_KEY, *scope_args, fingerprint, now, expires_at, advisory_lock_id(scope)
        )
        if claimed is not None:
            self._claimed_id = claimed
            return Claimed()
        row = await self._db.fetchrow(SELECT_KEY, *scope_args)
        if row is None:
            return InFlight()
        response = None
        if row["response_status"] is not None:
            response = StoredResponse(
                status_code=row["response_status"],
                headers=tuple((k, v) for k, v in row["response_headers"]),
                body=row["response_body"],
            )
        return Existing(
            KeyRecord(
                fingerprint=row["fingerprint"],
                response=response,
                expires_at=row["expires_at"],
                resource_id=row["resource_id"],
                resource_status=row["resource_status"],
            )
        )

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
        row = await self._db.fetchrow(SET_ON_HAND, change.sku, change.warehouse_id, change.on_hand)
        if row is None:
            return None
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
        self._conn: AsyncConnection | None = None
        self._transaction: Any = None

    async def __aenter__(self) -> Self:
        try:
            conn = await self._engine.connect()
        except CONNECTION_ERRORS as exc:
            raise StorageUnavailable(str(exc)) from exc
        try:
            raw = await conn.get_raw_connection()
            db: asyncpg.Connection = raw.driver_connection
            transaction = db.transaction()
            await transaction.start()
        except BaseException as exc:
            await self._release(conn, broken=isinstance(exc, CONNECTION_ERRORS))
            if isinstance(exc, CONNECTION_ERRORS):
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
        broken = isinstance(exc, CONNECTION_ERRORS)
        try:
            if transaction is not None and not broken:
                await transaction.rollback()
        except CONNECTION_ERRORS:
            broken = True
        finally:
            await self._release(conn, broken=broken)
        if isinstance(exc, CONNECTION_ERRORS):
            raise StorageUnavailable(str(exc)) from exc

    async def commit(self) -> None:
        if self._transaction is None:
            raise RuntimeError("commit() outside the unit of work")
        try:
            await self._transaction.commit()
        except CONNECTION_ERRORS as exc:
            raise StorageUnavailable(str(exc)) from exc
        self._transaction = None

    @staticmethod
    async def _release(conn: AsyncConnection, *, broken: bool) -> None:
        if broken:
            await conn.invalidate()
        await conn.close()
