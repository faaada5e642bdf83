"""The intake's database layer alone, without HTTP: CPU per order in this process.

Places orders through orderly's own services (``idempotency.execute`` around
``handle_place_order``, on the container's unit of work) and through the bare app's asyncpg
transaction (``bench.intake.bare_app.intake``), on one fresh database, ``--concurrency`` at a
time. The difference is what orderly's unit of work, repositories and domain objects cost per
order; the rest of ``bench.intake.run``'s gap lies in the HTTP layer, the pool and the process.

Run from the repository root: ``.venv/bin/python -m bench.intake.dblayer``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
import uvloop

from bench.intake import bare_app, database, run
from bench.intake.loadgen import order_bodies

# orderly ships no py.typed, so ``mypy bench`` alone sees it as untyped; ``mypy`` sees src/.
from orderly.bootstrap import Container, bootstrap  # type: ignore[import-untyped, unused-ignore]
from orderly.config import Settings  # type: ignore[import-untyped, unused-ignore]
from orderly.domain.orders import (  # type: ignore[import-untyped, unused-ignore]
    LineRequest,
    PlacedOrder,
    ShippingAddress,
)
from orderly.services import idempotency  # type: ignore[import-untyped, unused-ignore]
from orderly.services.idempotency import (  # type: ignore[import-untyped, unused-ignore]
    ActionResult,
)
from orderly.services.idempotency_types import (  # type: ignore[import-untyped, unused-ignore]
    IdempotencyScope,
    StoredResponse,
)
from orderly.services.orders import (  # type: ignore[import-untyped, unused-ignore]
    PlaceOrder,
    handle_place_order,
)
from orderly.services.ports import UnitOfWork  # type: ignore[import-untyped, unused-ignore]

ROUTE = "/api/orders"
USER = "dblayer-user"
PlaceOne = Callable[[dict[str, Any]], Awaitable[None]]


def _command(body: dict[str, Any]) -> PlaceOrder:
    address = body["shippingAddress"]
    return PlaceOrder(
        customer_id=USER,
        lines=tuple(LineRequest(item["sku"], item["quantity"]) for item in body["items"]),
        payment_method=body["paymentMethod"],
        shipping_address=ShippingAddress(
            address["country"], address["city"], address["line1"], address["postalCode"]
        ),
    )


def _stored(placed: PlacedOrder) -> StoredResponse:
    order = placed.order
    body = {
        "orderId": order.id,
        "jobId": placed.message.id,
        "status": order.status.value,
        "totalAmount": order.total.amount,
        "currency": order.total.currency,
        "items": [
            {"sku": line.sku, "name": line.name, "quantity": line.quantity} for line in order.lines
        ],
    }
    headers = (("content-type", "application/json"), ("location", f"{ROUTE}/{order.id}"))
    return StoredResponse(202, headers, orjson.dumps(body))


def orderly_placer(container: Container) -> PlaceOne:
    """One order through orderly's idempotency component and order service."""

    async def place(body: dict[str, Any]) -> None:
        command = _command(body)

        async def action(uow: UnitOfWork) -> ActionResult:
            placed = await handle_place_order(
                uow, command, clock=container.clock, ids=container.ids
            )
            return ActionResult(_stored(placed), placed.order.id, placed.order.status.value)

        scope = IdempotencyScope(USER, "POST", ROUTE, str(uuid.uuid4()))
        await idempotency.execute(
            container.uow,
            scope,
            idempotency.fingerprint(body),
            action,
            clock=container.clock,
            ttl=timedelta(hours=24),
        )

    return place


def bare_placer(pool: Any, config: bare_app.BareConfig) -> PlaceOne:
    """One order through the bare app's transaction (same SQL, raw asyncpg)."""

    async def place(body: dict[str, Any]) -> None:
        order = bare_app.parse_body(orjson.dumps(body))
        async with pool.acquire() as conn:
            await bare_app.intake(conn, config, bare_app.KeyScope(USER, str(uuid.uuid4())), order)

    return place


async def measure(place: PlaceOne, count: int, concurrency: int) -> tuple[float, float]:
    """Place ``count`` orders once to warm up, then again measured: (CPU ms/order, orders/s)."""
    bodies = [orjson.loads(b) for b in order_bodies(64)]

    async def worker(first: int) -> None:
        for n in range(first, count, concurrency):
            await place(bodies[n % len(bodies)])

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu * 1000 / count, count / wall


async def compare(name: str, count: int, concurrency: int) -> dict[str, tuple[float, float]]:
    await database.recreate(name, run.base_env())
    container = bootstrap(Settings(database_url=database.sqlalchemy_url(name)))
    try:
        orderly = await measure(orderly_placer(container), count, concurrency)
    finally:
        await container.close()
    config = bare_app.BareConfig(dsn=database.dsn(name), jwt_secret=secrets.token_urlsafe(36))
    pool = await bare_app.create_pool(config)
    try:
        bare = await measure(bare_placer(pool, config), count, concurrency)
    finally:
        await pool.close()
    return {"orderly services + unit of work": orderly, "bare asyncpg": bare}


def main() -> None:
    """Print CPU per order of both database layers, on uvloop."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--orders", type=int, default=1500, help="orders per layer (default 1500)")
    parser.add_argument("--concurrency", type=int, default=8, help="in flight (default 8)")
    parser.add_argument("--database", default="orderly_bench_dblayer", help="dropped, recreated")
    args = parser.parse_args()
    if not 1 <= args.orders <= 20_000 or not 1 <= args.concurrency <= 64:
        parser.error("--orders must be 1..20000 and --concurrency 1..64")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(compare(args.database, args.orders, args.concurrency))
    print("| database layer | CPU ms per order (this process) | orders/s |\n|---|---|---|")
    for label, (cpu_ms, rate) in results.items():
        print(f"| {label} | {cpu_ms:.2f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
