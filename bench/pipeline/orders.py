"""Orders/s from ``POST /api/orders`` to ``CONFIRMED`` (since issue 4: through the whole order
saga, reservation, fraud check, payment, fulfilment, capture), against intake alone. The fraud
rule's velocity check is set out of reach (its default would hold the load generator's few
users' orders for review); ``bench.saga`` measures the saga with realistic customers.

Each variant gets a fresh database (``orderly migrate`` + ``orderly seed``, then every stock row
raised so that every order can be confirmed) and real processes in their own process groups:

- ``intake``: ``orderly api`` alone; orders are accepted and stay PENDING (the reference);
- ``local``: ``orderly api`` + ``orderly worker`` on the local transport (the outbox is the queue);
- ``amqp``: ``orderly api`` + ``orderly worker`` + ``orderly relay`` on RabbitMQ.

The load is ``bench.intake``'s: ``connections`` clients posting orders back to back (after a
warm-up, whose orders are drained first), then, for the flows, an open loop at ``rate``
orders/s. Orders/s to CONFIRMED = CONFIRMED orders of the phase / (their last ``updated_at`` -
the phase's first ``created_at``); latency = ``updated_at - created_at`` of each CONFIRMED order
(the API's clock at intake, the worker's at confirmation, both before their commits).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from bench.intake import database, servers
from bench.intake.latency import summarize
from bench.intake.loadgen import (
    ADDRESS,
    SKUS,
    Orders,
    Target,
    client_session,
    closed_loop,
    gc_paused,
    open_loop,
    order_bodies,
)
from bench.pipeline import brokers, procs
from bench.pipeline.messages import (
    BACKGROUND_STARTED,
    ORDERLY_RELAY,
    PROCESS_ORDER,
    Context,
    Running,
    clean_namespace,
    orderly_env,
    start_relay,
)

VARIANTS = ("intake", "local", "amqp")
LINE_ORDERS = ("sorted", "random")
RELAYS = ("bench", "orderly")
BENCH_SKU_PREFIX = "BENCH-"
STOCK = 100_000_000
MAX_REQUESTS_PER_PHASE = 200_000
PROGRESS_EVERY_S = 3.0

# Not final yet: PENDING, or a step of the order saga under way.
PENDING = (
    "SELECT count(*) FROM orders "
    "WHERE status NOT IN ('CONFIRMED', 'FAILED', 'CANCELLED', 'NEEDS_ATTENTION')"
)
OUTCOME = """
SELECT count(*) AS orders,
       count(*) FILTER (WHERE status = 'CONFIRMED') AS confirmed,
       count(*) FILTER (WHERE status = 'FAILED') AS failed,
       count(*) FILTER (
           WHERE status NOT IN ('CONFIRMED', 'FAILED', 'CANCELLED', 'NEEDS_ATTENTION')
       ) AS pending,
       min(created_at) AS first_created,
       max(created_at) AS last_created,
       max(updated_at) FILTER (WHERE status = 'CONFIRMED') AS last_confirmed
FROM orders WHERE created_at >= $1 AND created_at <= $2
"""
CONFIRM_SECONDS = """
SELECT extract(epoch FROM updated_at - created_at)::float8 FROM orders
WHERE status = 'CONFIRMED' AND created_at >= $1 AND created_at <= $2
"""
PROBLEMS = """
SELECT (SELECT count(*) FROM message_failures) AS failed_attempts,
       (SELECT count(*) FROM dead_letters) AS dead_letters,
       (SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()) AS deadlocks
"""


@dataclass(frozen=True, slots=True)
class OrderOptions:
    duration: float
    warmup: float
    connections: int
    rate: float
    open_duration: float
    open_connections: int
    port: int
    drain_timeout: float
    relay: str
    skus: int


def relay_command(relay: str) -> tuple[str, ...]:
    """``orderly relay``, or ``bench.pipeline.relay`` (the same without stranded deliveries)."""
    if relay == "orderly":
        return ORDERLY_RELAY
    return (sys.executable, "-m", "bench.pipeline.relay")


@dataclass(frozen=True, slots=True)
class Load:
    """What every variant posts: the users' tokens and the request bodies."""

    tokens: tuple[str, ...]
    bodies: list[bytes]


def catalogue(skus: int) -> list[str]:
    """The demo catalogue's SKUs, then ``BENCH-00001`` ... up to ``skus`` in all."""
    extra = [f"{BENCH_SKU_PREFIX}{n:05d}" for n in range(1, skus - len(SKUS) + 1)]
    return [*SKUS, *extra]


def bodies(count: int, line_order: str, skus: int) -> list[bytes]:
    """Order bodies: two distinct SKUs of the catalogue, quantities 1-3, an address.

    With the demo catalogue and ``random`` these are ``bench.intake``'s bodies as they are.
    processOrder takes stock line by line in the body's order, so two orders naming the same
    two SKUs in opposite orders can deadlock on the stock rows (PostgreSQL breaks the cycle
    after ``deadlock_timeout``, 1 s, and the message is retried after 2 s); ``sorted`` puts
    each body's lines in SKU order, which measures the flow without that.
    """
    if skus == len(SKUS) and line_order == "random":
        return order_bodies(count)
    rng = random.Random(7)
    names = catalogue(skus)
    found = []
    for _ in range(count):
        chosen = rng.sample(names, 2)
        if line_order == "sorted":
            chosen.sort()
        items = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in chosen]
        body = {"items": items, "paymentMethod": "pm_card_visa", "shippingAddress": ADDRESS}
        found.append(orjson.dumps(body))
    return found


ADD_PRODUCTS = """
INSERT INTO products (sku, name, price_minor, currency)
SELECT sku, 'Benchmark item ' || sku, 1999, 'USD' FROM unnest($1::varchar[]) AS sku
"""
ADD_STOCK = """
INSERT INTO stock (sku, warehouse_id, on_hand, reserved)
SELECT sku, 'WH-AUS', 0, 0 FROM unnest($1::varchar[]) AS sku
"""


async def prepare_database(name: str, env: dict[str, str], skus: int) -> None:
    """Migrated and seeded; ``skus - 6`` more products; every stock row at ``STOCK``."""
    await database.recreate(name, env)
    extra = catalogue(skus)[len(SKUS) :]
    conn = await asyncpg.connect(database.dsn(name))
    try:
        async with conn.transaction():
            await conn.execute(ADD_PRODUCTS, extra)
            await conn.execute(ADD_STOCK, extra)
            await conn.execute("UPDATE stock SET on_hand = $1", STOCK)
    finally:
        await conn.close()


async def drain(pool: asyncpg.Pool, timeout_s: float, say: Callable[[str], None]) -> bool:
    """Wait until every order is final; False on timeout."""
    deadline = time.monotonic() + timeout_s
    next_report = time.monotonic() + PROGRESS_EVERY_S
    while (pending := int(await pool.fetchval(PENDING))) > 0:
        now = time.monotonic()
        if now > deadline:
            say(f"  gave up waiting: {pending} orders still not final after {timeout_s:.0f} s")
            return False
        if now >= next_report:
            say(f"  {pending} orders not final yet")
            next_report = now + PROGRESS_EVERY_S
        await asyncio.sleep(0.1)
    return True


async def outcome(pool: asyncpg.Pool, start: datetime, end: datetime) -> dict[str, Any]:
    """The phase's orders by status, its rates, and POST-to-CONFIRMED latency."""
    row = await pool.fetchrow(OUTCOME, start, end)
    seconds = [r[0] for r in await pool.fetch(CONFIRM_SECONDS, start, end)]
    result: dict[str, Any] = {k: int(row[k]) for k in ("orders", "confirmed", "failed", "pending")}
    result["confirm_latency_ms"] = asdict(summarize(seconds))
    if row["orders"] > 1:
        intake = (row["last_created"] - row["first_created"]).total_seconds()
        result["intake_rate"] = row["orders"] / intake if intake > 0 else 0.0
    if row["confirmed"]:
        window = (row["last_confirmed"] - row["first_created"]).total_seconds()
        result["first_post_to_last_confirmed_s"] = window
        result["confirmed_rate"] = row["confirmed"] / window if window > 0 else 0.0
    return result


def _cpu(running: Running, before: procs.CpuSample, count: int) -> dict[str, Any]:
    after = running.cpu()
    cores = procs.cpu_cores(before, after)
    wall = after.at - before.at
    per_order = {k: v * wall * 1000 / max(count, 1) for k, v in cores.items()}
    return {"cpu_cores": cores, "cpu_ms_per_order": per_order}


async def closed_phase(
    pool: asyncpg.Pool,
    running: Running,
    orders: Orders,
    target: Target,
    options: OrderOptions,
    ctx: Context,
    flow: bool,
) -> dict[str, Any]:
    """Warm-up (drained), then the measured closed loop, drained; read from the database."""
    loop_args = {"connections": options.connections, "max_requests": MAX_REQUESTS_PER_PHASE}
    async with client_session(options.connections) as session:
        await closed_loop(session, orders, target, duration_s=options.warmup, **loop_args)
        if flow and not await drain(pool, options.drain_timeout, ctx.say):
            raise RuntimeError("the warm-up orders were not all processed")
        start, before = datetime.now(UTC), running.cpu()
        with gc_paused():
            closed = await closed_loop(
                session, orders, target, duration_s=options.duration, **loop_args
            )
        end = datetime.now(UTC)
    ctx.say(
        f"  accepted {closed.ok} orders ({closed.throughput:.0f}/s), {closed.error_count} errors"
    )
    drained = await drain(pool, options.drain_timeout, ctx.say) if flow else None
    result = await outcome(pool, start, end)
    counted = result["confirmed"] if flow else result["orders"]
    return {
        "load": closed.as_json(),
        **result,
        "drained": drained,
        **_cpu(running, before, counted),
    }


async def open_phase(
    pool: asyncpg.Pool,
    running: Running,
    orders: Orders,
    target: Target,
    options: OrderOptions,
    ctx: Context,
) -> dict[str, Any]:
    """``rate`` orders/s on a fixed schedule, drained; POST-to-CONFIRMED latency."""
    async with client_session(options.open_connections) as session:
        start, before = datetime.now(UTC), running.cpu()
        with gc_paused():
            opened, _ = await open_loop(
                session, orders, target, rate=options.rate, duration_s=options.open_duration
            )
        end = datetime.now(UTC)
    drained = await drain(pool, options.drain_timeout, ctx.say)
    result = await outcome(pool, start, end)
    cpu = _cpu(running, before, result["confirmed"])
    return {"load": opened.as_json(), **result, "drained": drained, **cpu}


async def measure(
    pool: asyncpg.Pool, running: Running, load: Load, options: OrderOptions, ctx: Context, tag: str
) -> dict[str, Any]:
    flow = tag != "orders-intake"
    target = Target(options.port, load.tokens)
    orders = Orders(target, load.bodies)
    ctx.say(f"{tag}: closed loop, {options.connections} connections, {options.duration:g} s")
    result = {"closed": await closed_phase(pool, running, orders, target, options, ctx, flow)}
    closed = result["closed"]
    if flow:
        ctx.say(f"{tag}: {closed.get('confirmed_rate', 0):.0f} orders/s to CONFIRMED")
    if flow and options.rate > 0:
        ctx.say(f"{tag}: open loop, {options.rate:g} orders/s for {options.open_duration:g} s")
        result["open"] = await open_phase(pool, running, orders, target, options, ctx)
        p = result["open"]["confirm_latency_ms"]
        ctx.say(f"{tag}: POST to CONFIRMED p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms")
    return result


async def start_worker(running: Running, ctx: Context, env: dict[str, str], tag: str) -> None:
    worker = procs.start(
        "worker", (database.ORDERLY, "worker"), env, ctx.log_path(f"{tag}-worker"), ctx.repo
    )
    running.children["worker"] = worker
    await procs.wait_for_line(worker, BACKGROUND_STARTED)


async def problems(name: str) -> dict[str, int]:
    """Failed attempts, dead letters and deadlocks over the database's life (one variant)."""
    await asyncio.sleep(1.0)  # backends flush their statistics at most once a second
    conn = await asyncpg.connect(database.dsn(name))
    try:
        row = await conn.fetchrow(PROBLEMS)
    finally:
        await conn.close()
    return {k: int(row[k]) for k in ("failed_attempts", "dead_letters", "deadlocks")}


async def bench_orders(
    variant: str, load: Load, options: OrderOptions, ctx: Context
) -> dict[str, Any]:
    """One variant, start to finish; its processes are stopped whatever happens."""
    tag = f"orders-{variant}"
    name = f"{ctx.database_prefix}_orders_{variant}"
    url = brokers.broker_url("amqp") if variant == "amqp" else "local://"
    namespace = brokers.new_namespace(variant)
    ctx.say(f"{tag}: database {name}, broker {url.split('@')[-1]}")
    await prepare_database(name, ctx.env, options.skus)
    env = {
        **orderly_env(ctx, name, url, namespace),
        # The load generator's few users place thousands of orders: the fraud rule's velocity
        # check (5 per user per hour) would hold nearly all of them for review.
        "ORDERLY_FRAUD_VELOCITY_MAX_ORDERS": "100000000",
    }
    argv = (database.ORDERLY, "api", "--port", str(options.port))
    spec = servers.ServerSpec("api", argv, env, options.port, ctx.log_path(f"{tag}-api"), ctx.repo)
    running = Running({}, "amqp" if variant == "amqp" else None)
    api = servers.start(spec)
    pool = await asyncpg.create_pool(database.dsn(name), min_size=1, max_size=2)
    try:
        running.servers["api"] = api.pid
        await servers.wait_ready(api)
        if variant != "intake":
            await start_worker(running, ctx, env, tag)
        if variant == "amqp":
            await start_relay(running, ctx, env, tag, relay_command(options.relay))
        result = await measure(pool, running, load, options, ctx, tag)
    finally:
        await pool.close()
        running.stop_all()
        servers.stop(api)
        if variant == "amqp":
            await clean_namespace("amqp", url, namespace, [PROCESS_ORDER], ctx)
    return {**result, "problems": await problems(name)}
