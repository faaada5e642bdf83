"""A bare FastAPI + asyncpg twin of orderly's ``POST /api/orders``: the intake benchmark's baseline.

It sends the statements of ``orderly.adapters.db.pg_sql`` (orderly's own SQL) in one transaction:
claim the Idempotency-Key under ``pg_try_advisory_xact_lock``, price the SKUs, insert the order
with its lines and first event, insert the outbox message, store the response on the key row,
commit.
A retry of a finished key replays the stored response (read by the claim, which writes nothing for
a live key) and rolls back, as orderly does. JWT
verification (pyjwt, HS256) matches orderly's; validation is the minimum that keeps bad input
out of the database. No SQLAlchemy, no pydantic models.

Run it: ``python -m bench.intake.bare_app --port 18432 --dsn postgresql://...`` with
``ORDERLY_JWT_SECRET`` set to the secret the tokens were signed with.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from orderly.adapters.db import pg_sql as sql

ROUTE = "/api/orders"
ROLES = ("customer", "admin")
MAX_LINES = 100
MAX_QUANTITY = 1000
MAX_KEY_LENGTH = 255
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class BareConfig:
    """What the bare app needs: where the database is and how tokens are signed."""

    dsn: str
    jwt_secret: str
    jwt_issuer: str = "orderly"
    key_ttl: timedelta = timedelta(hours=24)
    pool_size: int = 10


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """The parsed body, and its fingerprint (SHA-256 of the canonical JSON)."""

    lines: tuple[Line, ...]
    payment_method: str
    shipping_address: dict[str, Any] | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class KeyScope:
    user_id: str
    key: str

    @property
    def lock_id(self) -> int:
        """The advisory lock id orderly derives from (user, method, route, key)."""
        joined = "\x1f".join((self.user_id, "POST", ROUTE, self.key))
        return int.from_bytes(hashlib.sha256(joined.encode()).digest()[:8], "big", signed=True)


class HttpError(Exception):
    """Answered as application/problem+json."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def verify_token(config: BareConfig, authorization: str | None) -> str:
    """The user id of a valid ``Bearer`` HS256 token; the same checks as orderly's JwtTokens."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HttpError(401, "this endpoint needs an Authorization: Bearer token")
    try:
        claims = jwt.decode(
            token,
            config.jwt_secret,
            algorithms=["HS256"],
            issuer=config.jwt_issuer,
            options={"require": ["sub", "exp", "role"]},
        )
    except jwt.PyJWTError as exc:
        raise HttpError(401, f"invalid token: {exc}") from exc
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub or claims["role"] not in ROLES:
        raise HttpError(401, "invalid token: bad subject or role")
    return sub


def parse_key(header: str | None) -> str:
    """The Idempotency-Key: bare or quoted, 1-255 printable ASCII characters."""
    value = (header or "").strip(" \t")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 0 < len(value) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in value):
        raise HttpError(400, "missing or malformed Idempotency-Key")
    return value


def parse_body(raw: bytes) -> OrderRequest:
    """Parse and minimally check the body (items form or the single-item form)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "the body is not JSON") from exc
    if not isinstance(body, dict):
        raise HttpError(422, "the body must be a JSON object")
    address = body.get("shippingAddress")
    payment = body.get("paymentMethod", "pm_card_visa")
    if not isinstance(payment, str) or (address is not None and not isinstance(address, dict)):
        raise HttpError(422, "bad paymentMethod or shippingAddress")
    fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return OrderRequest(_parse_lines(body), payment, _address(address), fingerprint)


def _parse_lines(body: dict[str, Any]) -> tuple[Line, ...]:
    items = body.get("items")
    if items is None and "productId" in body:
        items = [{"sku": body["productId"], "quantity": body.get("quantity")}]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_LINES:
        raise HttpError(422, f"items must be a list of 1..{MAX_LINES} lines")
    lines = tuple(_parse_line(item) for item in items)
    if len({line.sku for line in lines}) != len(lines):
        raise HttpError(422, "each SKU may appear on one line only")
    return lines


def _parse_line(item: Any) -> Line:
    sku = item.get("sku") if isinstance(item, dict) else None
    quantity = item.get("quantity") if isinstance(item, dict) else None
    if not isinstance(sku, str) or not 0 < len(sku) <= 64:
        raise HttpError(422, "each line needs a sku")
    if type(quantity) is not int or not 1 <= quantity <= MAX_QUANTITY:
        raise HttpError(422, f"quantity must be an integer 1..{MAX_QUANTITY}")
    return Line(sku, quantity)


def _address(address: dict[str, Any] | None) -> dict[str, Any] | None:
    if address is None:
        return None
    fields = ("country", "city", "line1", "postalCode")
    if not all(isinstance(address.get(f), str) and address[f] for f in fields):
        raise HttpError(422, "shippingAddress needs country, city, line1 and postalCode")
    return {
        "country": address["country"],
        "city": address["city"],
        "line1": address["line1"],
        "line2": address.get("line2"),
        "postalCode": address["postalCode"],
    }


async def _keep_session(_connection: Any) -> None:
    """Pool reset hook: every request ends its transaction, so there is nothing to reset."""


async def create_pool(config: BareConfig) -> Any:
    """The asyncpg pool: pool_size to 2 x pool_size connections, as orderly's engine."""
    return await asyncpg.create_pool(
        config.dsn,
        min_size=config.pool_size,
        max_size=2 * config.pool_size,
        reset=_keep_session,
    )


def create_app(config: BareConfig) -> FastAPI:
    """The bare app: the intake route and a readiness probe around one asyncpg pool."""
    pools: list[Any] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pools.append(await create_pool(config))
        try:
            yield
        finally:
            await pools.pop().close()

    app = FastAPI(title="orderly-bare", lifespan=lifespan, openapi_url=None)

    @app.post(ROUTE)
    async def place_order(request: Request) -> Response:
        user_id = verify_token(config, request.headers.get("authorization"))
        scope = KeyScope(user_id, parse_key(request.headers.get("idempotency-key")))
        order = parse_body(await request.body())
        async with pools[0].acquire() as conn:
            return await intake(conn, config, scope, order)

    @app.get("/health/ready")
    async def ready() -> Response:
        await pools[0].fetchval("SELECT 1")
        return Response(b'{"status":"ok"}', media_type="application/json")

    app.add_exception_handler(HttpError, _problem)
    return app


async def _problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    body = {"type": "about:blank", "status": exc.status, "detail": exc.detail}
    return Response(
        orjson.dumps(body), status_code=exc.status, media_type=PROBLEM_JSON, headers=exc.headers
    )


async def intake(conn: Any, config: BareConfig, scope: KeyScope, order: OrderRequest) -> Response:
    """Claim, place and store in one transaction; or replay a finished key and roll back."""
    transaction = conn.transaction()
    await transaction.start()
    committed = False
    try:
        now = datetime.now(UTC)
        claim = await conn.fetchrow(
            sql.CLAIM_KEY,
            *(scope.user_id, "POST", ROUTE, scope.key, order.fingerprint),
            *(now, now + config.key_ttl, scope.lock_id),
        )
        if claim["claimed_id"] is None:
            return await _replay(conn, scope, order, claim, now)
        response = await _place(conn, scope.user_id, order, claim["claimed_id"])
        await transaction.commit()
        committed = True
        return response
    finally:
        if not committed:
            await transaction.rollback()


async def _replay(
    conn: Any, scope: KeyScope, order: OrderRequest, row: Any, now: datetime
) -> Response:
    """The claim read the live key; or, if it saw none, a fresh read (as orderly does)."""
    if row["expires_at"] is None or row["expires_at"] <= now:
        row = await conn.fetchrow(sql.SELECT_KEY, scope.user_id, "POST", ROUTE, scope.key)
    if row is None or row["expires_at"] <= now or row["response_status"] is None:
        raise HttpError(409, "this Idempotency-Key is still in flight", {"Retry-After": "1"})
    if row["fingerprint"] != order.fingerprint:
        raise HttpError(422, "this Idempotency-Key was already used with a different body")
    headers = {k: v for k, v in orjson.loads(row["response_headers"])}
    headers["idempotent-replayed"] = "true"
    return Response(row["response_body"], status_code=row["response_status"], headers=headers)


async def _place(conn: Any, user_id: str, order: OrderRequest, key_id: int) -> Response:
    catalogue = await _prices(conn, order.lines)
    order_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    items = [_priced(i, line, catalogue[line.sku]) for i, line in enumerate(order.lines, 1)]
    currency = catalogue[order.lines[0].sku]["currency"]
    total = sum(item["unitPrice"] * item["quantity"] for item in items)
    data = _placed_data(user_id, order, currency, total, items)
    await _insert_order(conn, order_id, user_id, order, currency, total, items, data, now)
    payload = _json({"orderId": order_id, **data})
    message = (message_id, "order.placed", order_id, payload, "{}", order_id, None, now)
    await conn.execute(sql.INSERT_OUTBOX, *message)
    body = _accepted_body(order_id, message_id, currency, total, items)
    headers = {"content-type": "application/json", "location": f"{ROUTE}/{order_id}"}
    stored_headers = _json([[k, v] for k, v in headers.items()])
    await conn.execute(sql.COMPLETE_KEY, key_id, 202, stored_headers, body, order_id, "PENDING")
    return Response(body, status_code=202, headers=headers)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _prices(conn: Any, lines: tuple[Line, ...]) -> dict[str, Any]:
    skus = list({line.sku for line in lines})
    rows = await conn.fetch(sql.SELECT_PRODUCTS, skus)
    catalogue = {row["sku"]: row for row in rows}
    unknown = sorted(s for s in skus if s not in catalogue)
    if unknown:
        raise HttpError(422, "unknown SKU: " + ", ".join(unknown))
    if len({row["currency"] for row in rows}) != 1:
        raise HttpError(422, "all products of one order must be priced in one currency")
    return catalogue


def _priced(line_no: int, line: Line, product: Any) -> dict[str, Any]:
    return {
        "lineNo": line_no,
        "sku": line.sku,
        "name": product["name"],
        "quantity": line.quantity,
        "unitPrice": product["price_minor"],
    }


def _placed_data(
    user_id: str, order: OrderRequest, currency: str, total: int, items: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "customerId": user_id,
        "currency": currency,
        "totalAmount": total,
        "paymentMethod": order.payment_method,
        "shippingAddress": order.shipping_address,
        "items": [{k: v for k, v in item.items() if k != "lineNo"} for item in items],
    }


async def _insert_order(
    conn: Any,
    order_id: str,
    user_id: str,
    order: OrderRequest,
    currency: str,
    total: int,
    items: list[dict[str, Any]],
    data: dict[str, Any],
    now: datetime,
) -> None:
    """The order (PENDING, version 1), its lines and its first event: one statement."""
    address = None if order.shipping_address is None else _json(order.shipping_address)
    columns = [[item[k] for item in items] for k in ("lineNo", "sku", "name", "quantity")]
    await conn.execute(
        sql.INSERT_ORDER,
        *(order_id, user_id, "PENDING", currency, total, order.payment_method, address),
        *(1, now, now),
        *columns,
        [item["unitPrice"] for item in items],
        *(1, "order.placed", _json(data), now, order_id, None),
    )


def _accepted_body(
    order_id: str, message_id: str, currency: str, total: int, items: list[dict[str, Any]]
) -> bytes:
    return orjson.dumps(
        {
            "orderId": order_id,
            "jobId": message_id,
            "status": "PENDING",
            "totalAmount": total,
            "currency": currency,
            "items": [
                {
                    "sku": i["sku"],
                    "name": i["name"],
                    "quantity": i["quantity"],
                    "unitPrice": i["unitPrice"],
                    "lineTotal": i["unitPrice"] * i["quantity"],
                }
                for i in items
            ],
        }
    )


def main() -> None:
    """Serve the bare app on 127.0.0.1 with uvicorn (one process, as ``orderly api``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True, help="postgresql://... of the migrated database")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args()
    config = BareConfig(
        dsn=args.dsn,
        jwt_secret=os.environ["ORDERLY_JWT_SECRET"],
        jwt_issuer=os.environ.get("ORDERLY_JWT_ISSUER", "orderly"),
        pool_size=args.pool_size,
    )
    uvicorn.run(create_app(config), host="127.0.0.1", port=args.port, loop=args.loop)


if __name__ == "__main__":
    main()
