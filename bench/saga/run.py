"""Saga benchmark: orders/s from POST to CONFIRMED through the order saga, per transport.

For each transport (``--transports``, default local and rabbitmq), on a throwaway PostgreSQL
database (migrated, seeded, plus the benchmark's products and stock), with ``orderly api``,
``orderly worker`` and (RabbitMQ) ``orderly relay`` as processes in their own process groups:

1. spread: ``--orders`` orders over ``--skus`` SKUs with ample stock, payment latency 0;
2. reference: ``--latency-orders`` orders the same way (the zero-latency time for that count);
3. hot: ``--hot-orders`` orders of one SKU with ``--hot-stock`` units: exactly that many must
   be CONFIRMED and every other order FAILED with OUT_OF_STOCK;
4. latency: the workers restarted with ``ORDERLY_PAYMENT_LATENCY_MS`` (default [300,800]), then
   ``--latency-orders`` orders, against ``1.5 x`` the reference time ``+ 2 s``;
and the workers' peak memory (VmHWM). Before them, ``--history-orders`` orders and an ``ANALYZE``
stand in for a database that has been running: on tables a few seconds old, PostgreSQL plans
the workers' prepared statements for near-empty tables (sequential scans) and keeps those
plans until the tables are analyzed, which autovacuum does within a minute or so of them
growing; a run of a few seconds would otherwise measure only that first minute. Each phase
starts with all earlier orders final, posts its orders from 64 aiohttp connections, and ends
when all its orders are final (or times out).
Prints a table; writes JSON and every process's log under bench/results/; exits 1 if a
correctness check failed (hot SKU, ledger, an order never final, a transport that failed).

Run from the repository root: ``.venv/bin/python -m bench.saga.run`` (``--quick``: small counts).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
import time
import traceback
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvloop
from rich.console import Console

from bench.intake import database
from bench.intake import run as intake
from bench.pipeline import brokers
from bench.pipeline.run import machine
from bench.saga import profile, report
from bench.saga.catalogue import Catalogue, bodies, prepare_database, stock_checks
from bench.saga.phases import PROBLEMS, Phase, PhaseTimeout, run_phase
from bench.saga.stack import Stack, peak_summary

# orderly ships no py.typed, so ``mypy bench`` alone sees it as untyped; ``mypy`` sees src/.
from orderly.adapters.auth import JwtTokens  # type: ignore[import-untyped, unused-ignore]
from orderly.adapters.system import SystemClock  # type: ignore[import-untyped, unused-ignore]
from orderly.bootstrap import bootstrap  # type: ignore[import-untyped, unused-ignore]
from orderly.config import Settings  # type: ignore[import-untyped, unused-ignore]

TRANSPORTS = ("local", "rabbitmq")
URLS = {"local": "local://", "rabbitmq": brokers.URLS["amqp"]}
bounded = intake._bounded
_STARTED = time.monotonic()

FULL = {
    "orders": 2000,
    "latency_orders": 1000,
    "hot_orders": 2000,
    "hot_stock": 500,
    "skus": 500,
    "warmup_orders": 20,
    "history_orders": 300,
    "phase_timeout": 600.0,
    "quiet_wait": 30.0,
}
QUICK = {
    "orders": 60,
    "latency_orders": 30,
    "hot_orders": 60,
    "hot_stock": 15,
    "skus": 20,
    "warmup_orders": 5,
    "history_orders": 20,
    "phase_timeout": 120.0,
    "quiet_wait": 5.0,
}


@dataclass(frozen=True, slots=True)
class Options:
    transports: tuple[str, ...]
    quick: bool
    orders: int
    latency_orders: int
    hot_orders: int
    hot_stock: int
    skus: int
    warmup_orders: int
    history_orders: int
    phase_timeout: float
    quiet_wait: float
    payment_latency_ms: tuple[int, int]
    connections: int
    workers: int
    relays: int
    port: int
    database_prefix: str
    keep_databases: bool
    profile_worker: bool
    markdown: bool


def _latency(text: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("takes MIN,MAX in milliseconds") from exc
    if not 0 <= low <= high <= 60_000:
        raise argparse.ArgumentTypeError("needs 0 <= MIN <= MAX <= 60000")
    return low, high


def _counts(p: argparse.ArgumentParser) -> None:
    def add(flag: str, kind: Any, help_text: str) -> None:
        key = flag.removeprefix("--").replace("-", "_")
        p.add_argument(
            flag, type=kind, help=f"{help_text} (default {FULL[key]:g}; --quick {QUICK[key]:g})"
        )

    add("--orders", bounded(10, 50_000, int), "spread phase: orders")
    add(
        "--latency-orders",
        bounded(10, 50_000, int),
        "reference and payment-latency phases: orders each",
    )
    add("--hot-orders", bounded(10, 50_000, int), "hot phase: orders of the hot SKU")
    add("--hot-stock", bounded(1, 50_000, int), "hot phase: the hot SKU's units")
    add("--skus", bounded(1, 10_000, int), "SKUs the spread phases use")
    add("--warmup-orders", bounded(1, 1000, int), "orders before the first and the latency phase")
    add(
        "--history-orders",
        bounded(0, 10_000, int),
        "orders placed, then ANALYZE, before the phases (a database that has been running)",
    )
    add("--phase-timeout", bounded(5, 900, float), "give up on a phase after this many seconds")
    add("--quiet-wait", bounded(0, 600, float), "wait up to this long for other load to stop")


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.saga.run", description=(__doc__ or "").split("\n", 1)[0]
    )
    p.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help="comma-separated, in this order (default local,rabbitmq)",
    )
    p.add_argument("--quick", action="store_true", help="small counts: a smoke test (< 2 min)")
    _counts(p)
    p.add_argument(
        "--payment-latency-ms",
        type=_latency,
        default=(300, 800),
        help="latency phase: the simulated gateway's MIN,MAX per call (default 300,800)",
    )
    p.add_argument(
        "--connections", type=bounded(1, 512, int), default=64, help="POST concurrency (64)"
    )
    p.add_argument(
        "--workers", type=bounded(1, 8, int), default=1, help="orderly worker processes (1)"
    )
    p.add_argument(
        "--relays", type=bounded(1, 8, int), default=1, help="orderly relay processes (1)"
    )
    p.add_argument(
        "--port", type=bounded(1024, 65000, int), default=18451, help="orderly api's port"
    )
    p.add_argument(
        "--database-prefix",
        default="orderly_saga",
        help="databases are <prefix>_<transport>_<random>, dropped at the end",
    )
    p.add_argument("--keep-databases", action="store_true", help="do not drop the databases")
    p.add_argument(
        "--profile-worker",
        action="store_true",
        help="run the workers under cProfile (slower); summarise where their CPU went",
    )
    p.add_argument("--markdown", action="store_true", help="print markdown tables, not rich")
    database.add_host_option(p)
    a = p.parse_args(argv)
    database.apply_host_option(p, a.pg_host)
    chosen = tuple(t.strip() for t in a.transports.split(",") if t.strip())
    if not chosen or set(chosen) - set(TRANSPORTS) or len(set(chosen)) != len(chosen):
        p.error(f"--transports takes a comma-separated subset of {','.join(TRANSPORTS)}")
    counts = QUICK if a.quick else FULL

    def value(key: str) -> Any:
        given = getattr(a, key)
        return counts[key] if given is None else given

    if value("hot_stock") > value("hot_orders"):
        p.error("--hot-stock must not exceed --hot-orders (the phase sells out)")
    return Options(
        transports=chosen,
        quick=a.quick,
        orders=int(value("orders")),
        latency_orders=int(value("latency_orders")),
        hot_orders=int(value("hot_orders")),
        hot_stock=int(value("hot_stock")),
        skus=int(value("skus")),
        warmup_orders=int(value("warmup_orders")),
        history_orders=int(value("history_orders")),
        phase_timeout=float(value("phase_timeout")),
        quiet_wait=float(value("quiet_wait")),
        payment_latency_ms=a.payment_latency_ms,
        connections=a.connections,
        workers=a.workers,
        relays=a.relays,
        port=a.port,
        database_prefix=a.database_prefix,
        keep_databases=a.keep_databases,
        profile_worker=a.profile_worker,
        markdown=a.markdown,
    )


def say(message: str) -> None:
    """A log line on stderr with the run's elapsed time."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Run:
    """What every transport of one run shares."""

    options: Options
    env: dict[str, str]
    stamp: str
    tokens: JwtTokens

    def logs(self, transport: str) -> Path:
        return intake.RESULTS / "logs" / f"saga-{self.stamp}-{transport}"

    def mint(self, phase: Phase) -> tuple[str, ...]:
        return tuple(self.tokens.issue(user, "customer") for user in phase.users())


def process_env(run: Run, transport: str, name: str, namespace: str) -> dict[str, str]:
    return {
        **run.env,
        "ORDERLY_DATABASE_URL": database.sqlalchemy_url(name),
        "ORDERLY_BROKER_URL": URLS[transport],
        "ORDERLY_BROKER_NAMESPACE": namespace,
        "ORDERLY_LOG_LEVEL": "warning",
        "ORDERLY_ACCESS_LOG": "false",
    }


def phases(options: Options, catalogue: Catalogue) -> dict[str, Phase]:
    timeout, conns = options.phase_timeout, options.connections
    spread = catalogue.spread
    return {
        "history": Phase("history", options.history_orders, spread, timeout, conns),
        "warmup": Phase("warmup", options.warmup_orders, spread, timeout, conns),
        "spread": Phase("spread", options.orders, spread, timeout, conns),
        "reference": Phase("reference", options.latency_orders, spread, timeout, conns),
        "hot": Phase("hot", options.hot_orders, catalogue.hot, timeout, conns),
        "rewarm": Phase("rewarm", options.warmup_orders, spread, timeout, conns),
        "latency": Phase("latency", options.latency_orders, spread, timeout, conns),
    }


async def consumer_names() -> list[str]:
    """Every consumer orderly's workers declare (their RabbitMQ queues are deleted at the end)."""
    container = bootstrap(Settings(database_url="sqlite+aiosqlite://", broker_url="local://"))
    try:
        return [h.consumer for h in container.handlers()]
    finally:
        await container.close()


async def run_phases(
    run: Run, stack: Stack, pool: asyncpg.Pool, catalogue: Catalogue, result: dict[str, Any]
) -> None:
    options = run.options
    plan = phases(options, catalogue)
    prof = stack.logs / "profile.prof" if options.profile_worker else None
    tag = stack.transport

    async def phase(name: str) -> None:
        spec = plan[name]
        try:
            result["phases"][name] = await run_phase(
                pool, stack, spec, run.mint(spec), bodies(spec.skus, spec.orders), say
            )
        except PhaseTimeout as exc:
            result["phases"][name] = exc.args[1]
            raise

    say(f"{tag}: starting orderly api, {options.workers} worker(s)")
    await stack.start_api()
    await stack.start("worker", options.workers, {}, prof)
    if tag == "rabbitmq":
        await stack.start("relay", options.relays, {})
    if options.history_orders:
        await phase("history")
        say(f"{tag}: ANALYZE")
        await pool.execute("ANALYZE")
    for name in ("warmup", "spread", "reference", "hot"):
        await phase(name)
    low, high = options.payment_latency_ms
    say(f"{tag}: restarting the worker(s) with payment latency {low}-{high} ms")
    latency_env = {"ORDERLY_PAYMENT_LATENCY_MS": f"[{low},{high}]"}
    await stack.restart_workers(options.workers, latency_env, prof)
    for name in ("rewarm", "latency"):
        await phase(name)


async def whole_run_problems(pool: asyncpg.Pool) -> dict[str, int]:
    far = datetime.now(UTC) + timedelta(days=1)
    row = await pool.fetchrow(PROBLEMS, far - timedelta(days=365), far)
    return {k: int(row[k]) for k in ("failed_attempts", "dead_letters")}


async def bench_transport(run: Run, transport: str, result: dict[str, Any]) -> None:
    """One transport start to finish, into ``result`` (kept when interrupted); its processes,
    namespace and database are cleaned up whatever happens."""
    options = run.options
    name = f"{options.database_prefix}_{transport}_{secrets.token_hex(3)}"
    namespace = f"saga-{transport}-{secrets.token_hex(4)}"
    catalogue = Catalogue(options.skus, options.hot_stock)
    result.update({"database": name, "namespace": namespace, "phases": {}})
    say(f"{transport}: database {name}, namespace {namespace}")
    stack = Stack(
        transport,
        process_env(run, transport, name, namespace),
        run.logs(transport),
        intake.REPO,
        options.port,
    )
    try:
        await prepare_database(name, run.env, catalogue)
        pool = await asyncpg.create_pool(database.dsn(name), min_size=1, max_size=2)
        try:
            try:
                await run_phases(run, stack, pool, catalogue, result)
            finally:
                stack.stop_all()
            result["stock"] = await stock_checks(pool, catalogue)
            result["problems"] = await whole_run_problems(pool)
        finally:
            await pool.close()
    except Exception as exc:
        say(f"{transport}: FAILED: {type(exc).__name__}: {exc}")
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    except asyncio.CancelledError:
        say(f"{transport}: interrupted; cleaning up")
        result["error"] = "interrupted"
        raise
    finally:
        stack.stop_all()
        if transport == "rabbitmq":
            await _delete_namespace(namespace)
        if not options.keep_databases:
            await _drop(name)
        summarize(run, stack, result)


def summarize(run: Run, stack: Stack, result: dict[str, Any]) -> None:
    result["memory"] = peak_summary(stack)
    result["exit_codes"] = stack.exits
    result["hot_checks"] = report.hot_checks(result, run.options.hot_stock)
    result["consistency"] = report.consistency(result)
    if run.options.profile_worker:
        result["profile"] = profile.summarize_all(sorted(stack.logs.glob("*.prof")))
    result["logs"] = str(stack.logs.relative_to(intake.REPO))


async def _delete_namespace(namespace: str) -> None:
    try:
        consumers = await consumer_names()
        await brokers.delete_namespace("amqp", URLS["rabbitmq"], namespace, consumers)
    except Exception as exc:
        say(f"warning: could not delete the RabbitMQ namespace {namespace}: {exc!r}")


async def _drop(name: str) -> None:
    try:
        await database._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:
        say(f"warning: could not drop {name}: {exc!r}")


async def cancelled_by_signals(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``; SIGTERM or SIGINT cancels it, so its clean-up stops its processes and
    drops its database (also when the shell that started us ignores SIGINT, as ``&`` does)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await work
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def write(document: dict[str, Any], path: Path) -> None:
    document["verdicts"] = report.verdicts(document)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; print the tables; write the JSON result; exit 1 on a broken check."""
    options = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    env = intake.base_env()
    tokens = JwtTokens(env["ORDERLY_JWT_SECRET"], "orderly", timedelta(hours=12), SystemClock())
    run = Run(options, env, stamp, tokens)
    background: dict[str, float] = {}
    results: dict[str, Any] = {}
    path = intake.RESULTS / f"saga-{stamp}.json"
    interrupted = False
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        document: dict[str, Any] = {
            "started": stamp,
            "options": asdict(options),
            "machine": machine(runner.run(database.server_version())),
            "commit": intake._commit(),
            "background_cores_before": background,
            "transports": results,
        }
        try:
            for transport in options.transports:
                background[transport] = intake.wait_for_quiet(options.quiet_wait)
                results[transport] = {}
                runner.run(
                    cancelled_by_signals(bench_transport(run, transport, results[transport]))
                )
                write(document, path)
        except (KeyboardInterrupt, asyncio.CancelledError):
            interrupted = True
            document["interrupted"] = True
    write(document, path)
    if options.markdown:
        print(report.markdown(document))
    else:
        report.print_rich(document, Console(width=160))
    print(
        f"\nJSON result: {path.relative_to(intake.REPO)}; logs: bench/results/logs/saga-{stamp}-*"
    )
    if interrupted:
        sys.exit(130)
    if report.correctness_failed(document):
        print("a correctness check failed (see the targets table)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
