"""Messages/s from outbox insert to committed consumer effect, on one transport.

On a fresh database (``orderly migrate`` + ``orderly seed`` + the ``bench_items`` table), with the
benchmark worker (``python -m bench.pipeline.worker``) and, for a broker, ``orderly relay`` each
in its own process group, and the producer in this process:

1. warm-up: ``warmup`` messages, drained (connections, prepared statements, consumer groups);
2. throughput: ``messages`` inserted in transactions of ``batch``, as fast as the producer can;
   messages/s = messages / (last effect's ``done_at`` - first message's ``created_at``);
3. latency: ``rate`` messages/s for ``duration`` s, one per transaction on a fixed schedule;
   end-to-end latency = ``done_at`` - ``created_at`` of each message (the effect's database
   clock just before its commit), with the relay's publish and the consumer's start on the way.

``VACUUM (ANALYZE)`` runs before each measured phase (autovacuum would, less predictably).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.intake import database
from bench.intake.latency import summarize
from bench.intake.loadgen import gc_paused
from bench.pipeline import brokers, procs
from bench.pipeline.effects import (
    CONSUMER,
    CREATE_ITEMS,
    DONE_BETWEEN,
    INBOX_ROWS,
    OUTCOME,
    TIMELINE,
)
from bench.pipeline.producer import Produced, burst, steady
from bench.pipeline.worker import READY

BACKGROUND_STARTED = "background processing started"
PROCESS_ORDER = "order-saga"
VACUUM = "VACUUM (ANALYZE) outbox_messages, bench_items, processed_messages"
PROGRESS_EVERY_S = 3.0


@dataclass(frozen=True, slots=True)
class MessageOptions:
    messages: int
    batch: int
    warmup: int
    rate: float
    duration: float
    drain_timeout: float


@dataclass(frozen=True, slots=True)
class Context:
    """What every part of one run shares."""

    env: dict[str, str]
    stamp: str
    repo: Path
    logs: Path
    database_prefix: str
    say: Callable[[str], None]

    def log_path(self, name: str) -> Path:
        return self.logs / f"pipeline-{self.stamp}-{name}.log"


@dataclass(slots=True)
class Running:
    """The processes of one benchmark, by role, and the broker whose CPU to count; ``servers``
    are counted too but stopped by their owner (``bench.intake.servers``)."""

    children: dict[str, procs.Proc]
    broker: str | None
    servers: dict[str, int] = field(default_factory=dict)

    def cpu(self) -> procs.CpuSample:
        pids = {**self.servers, **{n: p.pid for n, p in self.children.items()}}
        return procs.cpu_sample(pids, self.broker)

    def stop_all(self) -> dict[str, int]:
        """Stop in reverse start order (the relay before the worker; the API last)."""
        return {name: procs.stop(self.children[name]) for name in reversed(list(self.children))}


async def prepare_database(name: str, env: dict[str, str]) -> None:
    await database.recreate(name, env)
    conn = await asyncpg.connect(database.dsn(name))
    try:
        await conn.execute(CREATE_ITEMS)
    finally:
        await conn.close()


def orderly_env(ctx: Context, name: str, url: str, namespace: str) -> dict[str, str]:
    return {
        **ctx.env,
        "ORDERLY_DATABASE_URL": database.sqlalchemy_url(name),
        "ORDERLY_BROKER_URL": url,
        "ORDERLY_BROKER_NAMESPACE": namespace,
    }


ORDERLY_RELAY = (database.ORDERLY, "relay")


async def start_relay(
    running: Running,
    ctx: Context,
    env: dict[str, str],
    tag: str,
    argv: tuple[str, ...] = ORDERLY_RELAY,
) -> None:
    relay = procs.start("relay", argv, env, ctx.log_path(f"{tag}-relay"), ctx.repo)
    running.children["relay"] = relay
    await procs.wait_for_line(relay, BACKGROUND_STARTED)


async def wait_done(
    pool: asyncpg.Pool, ids: range, timeout_s: float, say: Callable[[str], None]
) -> bool:
    """Poll until every message in ``ids`` has its effect; False on timeout."""
    deadline = time.monotonic() + timeout_s
    next_report = time.monotonic() + PROGRESS_EVERY_S
    while True:
        done = int(await pool.fetchval(DONE_BETWEEN, ids.start, ids.stop))
        if done >= len(ids):
            return True
        now = time.monotonic()
        if now > deadline:
            say(f"  gave up waiting: {done}/{len(ids)} done after {timeout_s:.0f} s")
            return False
        if now >= next_report:
            say(f"  {done}/{len(ids)} done")
            next_report = now + PROGRESS_EVERY_S
        await asyncio.sleep(0.1)


def _latency(values: Sequence[float | None]) -> dict[str, Any]:
    return asdict(summarize([v for v in values if v is not None]))


async def outcome(pool: asyncpg.Pool, ids: range) -> dict[str, Any]:
    """Counts, the window from first insert to last effect, and the per-message timeline."""
    row = await pool.fetchrow(OUTCOME, ids.start, ids.stop)
    timeline = await pool.fetch(TIMELINE, ids.start, ids.stop, CONSUMER)
    done = int(row["done"])
    result: dict[str, Any] = {
        "items": int(row["items"]),
        "done": done,
        "max_applied": int(row["max_applied"]),
        "latency_ms": {
            "published": _latency([r["sent"] for r in timeline]),
            "consumer_started": _latency([r["started"] for r in timeline]),
            "effect": _latency([r["done"] for r in timeline]),
        },
    }
    if done:
        window = (row["last_done"] - row["first_created"]).total_seconds()
        consuming = (row["last_done"] - row["first_done"]).total_seconds()
        result["first_insert_to_last_effect_s"] = window
        result["throughput"] = done / window if window > 0 else 0.0
        result["consume_rate"] = done / consuming if consuming > 0 else 0.0
    return result


async def measure(
    pool: asyncpg.Pool,
    running: Running,
    ids: range,
    produce: Callable[[], Awaitable[Produced]],
    options: MessageOptions,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Produce, wait for every effect, read the outcome; CPU over the whole interval."""
    wall_start, before = time.time(), running.cpu()
    with gc_paused():
        produced = await produce()
    say(f"  produced {produced.count} in {produced.elapsed_s:.1f} s ({produced.rate:.0f}/s)")
    drained = await wait_done(pool, ids, options.drain_timeout, say)
    after, wall_end = running.cpu(), time.time()
    result = await outcome(pool, ids)
    cores = procs.cpu_cores(before, after)
    return {
        **result,
        "drained": drained,
        "produced": {**asdict(produced), "rate": produced.rate},
        "cpu_cores": cores,
        "cpu_ms_per_message": {
            k: v * (after.at - before.at) * 1000 / max(result["done"], 1) for k, v in cores.items()
        },
        "wall": [wall_start, wall_end],
    }


async def phases(
    pool: asyncpg.Pool, running: Running, options: MessageOptions, ctx: Context, tag: str
) -> dict[str, Any]:
    """Warm-up, throughput, latency; ids never overlap, so each phase is read on its own."""
    warm = range(1, 1 + options.warmup)
    ctx.say(f"{tag}: warm-up, {len(warm)} messages")
    await burst(pool, warm.start, len(warm), options.batch)
    if not await wait_done(pool, warm, options.drain_timeout, ctx.say):
        raise RuntimeError("the warm-up messages were not all consumed")
    await pool.execute(VACUUM)
    bulk = range(warm.stop, warm.stop + options.messages)
    ctx.say(f"{tag}: throughput, {len(bulk)} messages in transactions of {options.batch}")
    throughput = await measure(
        pool,
        running,
        bulk,
        lambda: burst(pool, bulk.start, len(bulk), options.batch),
        options,
        ctx.say,
    )
    ctx.say(f"{tag}: {throughput.get('throughput', 0):.0f} messages/s")
    await pool.execute(VACUUM)
    count = round(options.rate * options.duration)
    steady_ids = range(bulk.stop, bulk.stop + count)
    ctx.say(f"{tag}: latency, {options.rate:g} messages/s for {options.duration:g} s")
    latency = await measure(
        pool,
        running,
        steady_ids,
        lambda: steady(pool, steady_ids.start, options.rate, options.duration),
        options,
        ctx.say,
    )
    effect = latency["latency_ms"]["effect"]
    ctx.say(f"{tag}: p50 {effect['p50_ms']:.1f} ms, p99 {effect['p99_ms']:.1f} ms")
    total = len(warm) + len(bulk) + len(steady_ids)
    return {"throughput": throughput, "latency": latency, "messages_total": total}


def worker_timings(stats_file: Path, windows: dict[str, list[float]]) -> dict[str, Any]:
    """The worker's counters, and its transactions' timings within each phase's window."""
    try:
        document = orjson.loads(stats_file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        return {"error": f"no worker statistics: {exc}"}
    timings: list[list[float]] = document["timings"]
    by_phase: dict[str, Any] = {}
    for phase, (start, end) in windows.items():
        inside = [t for t in timings if start <= t[0] <= end]
        by_phase[phase] = {
            name: asdict(summarize([t[i] for t in inside]))
            for i, name in ((1, "checkout_ms"), (2, "transaction_ms"), (3, "commit_ms"))
        }
    return {"stats": document["stats"], "transactions": by_phase}


async def clean_namespace(
    transport: str, url: str, namespace: str, consumers: list[str], ctx: Context
) -> None:
    try:
        await brokers.delete_namespace(transport, url, namespace, consumers)
    except Exception as exc:
        ctx.say(f"warning: could not delete namespace {namespace} on {transport}: {exc!r}")


async def bench_messages(transport: str, options: MessageOptions, ctx: Context) -> dict[str, Any]:
    """The whole message benchmark on ``transport``; cleans up its processes and namespace."""
    tag = f"messages-{transport}"
    name = f"{ctx.database_prefix}_msg_{transport}"
    url = brokers.broker_url(transport)
    namespace = brokers.new_namespace(transport)
    ctx.say(f"{tag}: database {name}, broker {url.split('@')[-1]}, namespace {namespace}")
    await prepare_database(name, ctx.env)
    env = orderly_env(ctx, name, url, namespace)
    stats_file = ctx.logs / f"pipeline-{ctx.stamp}-{tag}-worker.json"
    broker = transport if brokers.needs_relay(transport) else None
    running = Running({}, broker)
    argv = (sys.executable, "-m", "bench.pipeline.worker", "--stats-file", str(stats_file))
    pool = await asyncpg.create_pool(database.dsn(name), min_size=2, max_size=8)
    try:
        worker = procs.start("worker", argv, env, ctx.log_path(f"{tag}-worker"), ctx.repo)
        running.children["worker"] = worker
        await procs.wait_for_line(worker, READY)
        if brokers.needs_relay(transport):
            await start_relay(running, ctx, env, tag)
        result = await phases(pool, running, options, ctx, tag)
        result["inbox_rows"] = int(await pool.fetchval(INBOX_ROWS, CONSUMER))
    finally:
        await pool.close()
        exits = running.stop_all()
        # orderly relay declares the process-order consumer's queue too.
        await clean_namespace(transport, url, namespace, [CONSUMER, PROCESS_ORDER], ctx)
    windows = {phase: result[phase]["wall"] for phase in ("throughput", "latency")}
    return {**result, "exit_codes": exits, "worker": worker_timings(stats_file, windows)}
