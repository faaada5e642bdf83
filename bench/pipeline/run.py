"""Pipeline benchmark: messages/s per transport and orders/s to CONFIRMED, in one run.

1. Messages (``--transports``, default all five): on a fresh PostgreSQL database per transport,
   the benchmark worker and (for a broker) ``orderly relay`` as processes; messages/s from the
   first outbox insert to the last committed effect, then end-to-end latency at a fixed rate.
2. Orders (``--order-variants``, default intake, local, amqp): ``orderly api`` alone, then with
   ``orderly worker`` (+ ``orderly relay`` on RabbitMQ); orders/s to CONFIRMED against the
   intake-only orders/s of the same run, and POST-to-CONFIRMED latency.
A transport that fails is reported with its error and the run goes on. Prints markdown tables;
writes JSON (and every process's log) under bench/results/; drops its databases at the end.

Run from the repository root: ``.venv/bin/python -m bench.pipeline.run`` (``make bench-pipeline``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from typing import Any

import orjson
import uvloop

from bench.intake import database
from bench.intake import run as intake
from bench.pipeline import messages, orders, report
from bench.pipeline.brokers import TRANSPORTS
from bench.pipeline.messages import Context, MessageOptions
from bench.pipeline.orders import LINE_ORDERS, RELAYS, VARIANTS, Load, OrderOptions

bounded = intake._bounded
BROKER_PACKAGES = ("faststream", "aio-pika", "redis", "nats-py", "aiokafka")
_STARTED = time.monotonic()


@dataclass(frozen=True, slots=True)
class Options:
    transports: tuple[str, ...]
    order_variants: tuple[str, ...]
    messages: MessageOptions
    orders: OrderOptions
    users: int
    line_order: str
    database_prefix: str
    keep_databases: bool
    quiet_wait: float


def _choices(
    parser: argparse.ArgumentParser, text: str, allowed: tuple[str, ...], flag: str
) -> tuple[str, ...]:
    chosen = tuple(t.strip() for t in text.split(",") if t.strip())
    if set(chosen) - set(allowed) or len(set(chosen)) != len(chosen):
        parser.error(f"{flag} takes a comma-separated subset of {','.join(allowed)} (or none)")
    return chosen


def _message_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help="message benchmark transports, in this order (default all; empty for none)",
    )
    p.add_argument(
        "--messages",
        type=bounded(100, 200_000, int),
        default=20_000,
        help="messages in the throughput phase (default 20000)",
    )
    p.add_argument(
        "--batch",
        type=bounded(1, 5000, int),
        default=100,
        help="messages per producer transaction (default 100)",
    )
    p.add_argument(
        "--warmup-messages",
        type=bounded(1, 20_000, int),
        default=1000,
        help="warm-up messages, drained before measuring (default 1000)",
    )
    p.add_argument(
        "--message-rate",
        type=bounded(1, 5000, float),
        default=200.0,
        help="latency phase: messages/s offered (default 200)",
    )
    p.add_argument(
        "--message-duration",
        type=bounded(1, 60, float),
        default=10.0,
        help="latency phase: seconds (default 10)",
    )
    p.add_argument(
        "--drain-timeout",
        type=bounded(5, 900, float),
        default=180.0,
        help="give up waiting for a phase's effects after this long (default 180 s)",
    )


def _order_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--order-variants",
        default=",".join(VARIANTS),
        help="orders benchmark: intake (api alone), local, amqp (default all; empty for none)",
    )
    p.add_argument(
        "--duration",
        type=bounded(1, 60, float),
        default=10.0,
        help="orders closed loop, seconds (default 10)",
    )
    p.add_argument(
        "--warmup",
        type=bounded(0, 30, float),
        default=2.0,
        help="orders closed-loop warm-up, seconds (default 2)",
    )
    p.add_argument(
        "--connections",
        type=bounded(1, 512, int),
        default=64,
        help="orders closed-loop concurrency (default 64)",
    )
    p.add_argument(
        "--order-rate",
        type=bounded(0, 2000, float),
        default=100.0,
        help="orders open loop, orders/s; 0 skips it (default 100)",
    )
    p.add_argument(
        "--order-open-duration",
        type=bounded(1, 60, float),
        default=10.0,
        help="orders open loop, seconds (default 10)",
    )
    p.add_argument(
        "--users",
        type=bounded(1, 16, int),
        default=2,
        help="distinct users placing orders (default 2)",
    )
    p.add_argument(
        "--line-order",
        choices=LINE_ORDERS,
        default="sorted",
        help="each order's lines in SKU order, or as bench.intake makes them (random: "
        "processOrder then deadlocks on stock rows; default sorted)",
    )
    p.add_argument(
        "--skus",
        type=bounded(6, 10_000, int),
        default=6,
        help="SKUs orders are spread over: the 6 of the demo catalogue, plus benchmark "
        "products up to this many (default 6: seed 000's catalogue)",
    )
    p.add_argument(
        "--orders-relay",
        choices=RELAYS,
        default="bench",
        help="orders on amqp: bench.pipeline.relay (orderly relay minus its stranded "
        "deliveries) or orderly relay as shipped (strands 128 orders; default bench)",
    )
    p.add_argument(
        "--port",
        type=bounded(1024, 65000, int),
        default=18441,
        help="orderly api's port (default 18441)",
    )


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline.run", description=(__doc__ or "").split("\n", 1)[0]
    )
    _message_arguments(p)
    _order_arguments(p)
    p.add_argument(
        "--database-prefix",
        default="orderly_pipe",
        help="databases <prefix>_msg_<transport>, <prefix>_orders_<variant> are dropped "
        "and created (default orderly_pipe)",
    )
    p.add_argument(
        "--keep-databases", action="store_true", help="leave the databases for inspection"
    )
    p.add_argument(
        "--quiet-wait",
        type=bounded(0, 600, float),
        default=30.0,
        help="wait up to this long for other CPU load to stop before each part (default 30 s)",
    )
    database.add_host_option(p)
    a = p.parse_args(argv)
    database.apply_host_option(p, a.pg_host)
    return Options(
        transports=_choices(p, a.transports, TRANSPORTS, "--transports"),
        order_variants=_choices(p, a.order_variants, VARIANTS, "--order-variants"),
        messages=MessageOptions(
            a.messages,
            a.batch,
            a.warmup_messages,
            a.message_rate,
            a.message_duration,
            a.drain_timeout,
        ),
        orders=OrderOptions(
            a.duration,
            a.warmup,
            a.connections,
            a.order_rate,
            a.order_open_duration,
            256,
            a.port,
            a.drain_timeout,
            a.orders_relay,
            a.skus,
        ),
        users=a.users,
        line_order=a.line_order,
        database_prefix=a.database_prefix,
        keep_databases=a.keep_databases,
        quiet_wait=a.quiet_wait,
    )


def say(message: str) -> None:
    """A log line on stderr with the run's elapsed time."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


async def guarded(name: str, work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run one part; a failure is recorded with its error, and the run goes on."""
    try:
        return await work()
    except Exception as exc:
        say(f"{name}: FAILED: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def quiet(options: Options, background: dict[str, float], name: str) -> None:
    background[name] = intake.wait_for_quiet(options.quiet_wait)


def run_messages(
    runner: asyncio.Runner, options: Options, ctx: Context, background: dict[str, float]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for transport in options.transports:
        quiet(options, background, f"messages-{transport}")
        results[transport] = runner.run(
            guarded(transport, partial(messages.bench_messages, transport, options.messages, ctx))
        )
    return results


def run_orders(
    runner: asyncio.Runner, options: Options, ctx: Context, background: dict[str, float]
) -> dict[str, Any]:
    if not options.order_variants:
        return {}
    users = [f"bench-user-{i}" for i in range(1, options.users + 1)]
    tokens = tuple(runner.run(database.tokens(users, ctx.env)))
    load = Load(tokens, orders.bodies(256, options.line_order, options.orders.skus))
    results: dict[str, Any] = {}
    for variant in options.order_variants:
        quiet(options, background, f"orders-{variant}")
        results[variant] = runner.run(
            guarded(variant, partial(orders.bench_orders, variant, load, options.orders, ctx)),
        )
    return results


def databases(options: Options) -> list[str]:
    return [f"{options.database_prefix}_msg_{t}" for t in options.transports] + [
        f"{options.database_prefix}_orders_{v}" for v in options.order_variants
    ]


async def drop_databases(names: list[str]) -> None:
    for name in names:
        try:
            await database._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:
            say(f"warning: could not drop {name}: {exc!r}")


def machine(pg_version: str) -> dict[str, Any]:
    found = intake.machine(pg_version)
    for name in BROKER_PACKAGES:
        try:
            found["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found["packages"][name] = None
    return found


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; print the markdown tables; write the JSON result."""
    options = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    ctx = Context(
        intake.base_env(), stamp, intake.REPO, intake.RESULTS / "logs", options.database_prefix, say
    )
    background: dict[str, float] = {}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            message_results = run_messages(runner, options, ctx, background)
            order_results = run_orders(runner, options, ctx, background)
        finally:
            if not options.keep_databases:
                runner.run(drop_databases(databases(options)))
        pg_version = runner.run(database.server_version())
    document: dict[str, Any] = {
        "started": stamp,
        "options": asdict(options),
        "machine": machine(pg_version),
        "commit": intake._commit(),
        "background_cores_before": background,
        "messages": message_results,
        "orders": order_results,
    }
    document["verdicts"] = report.verdicts(document)
    intake.RESULTS.mkdir(parents=True, exist_ok=True)
    path = intake.RESULTS / f"pipeline-{stamp}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(report.markdown(document))
    logs = f"bench/results/logs/pipeline-{stamp}-*"
    print(f"\nJSON result: {path.relative_to(intake.REPO)}; logs: {logs}")


if __name__ == "__main__":
    main()
