"""One phase: post N orders, wait until every one of them is final, read what happened.

The orders of a phase are told apart by their customers: each phase has its own users
(``saga-<phase>-u<n>``), ``ORDERS_PER_USER`` orders each, so orderly's fraud velocity rule
(hold for review above 5 orders per customer per hour, left at its default) never fires.

Time: from the first POST (this process's wall clock, just before the first request) to the
``updated_at`` of the phase's last order to reach a final state (the worker's wall clock, just
before its commit; same machine, same clock). The database is polled every ``POLL_S`` for the
count of final orders; the phase gives up after its timeout.

Where the time goes, per phase: each saga step's time from ``step.requested`` to its reply
being applied (``saga_log``, the orchestrator's clock), the order's wait from intake to
``saga.started``, the messages the phase wrote to the outbox per order (``outbox_messages``)
and the inbox rows per consumer (``processed_messages``): both count deliveries only, since a
message handed off inside a transaction is written to neither.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.intake.latency import summarize
from bench.intake.loadgen import Orders, Target, client_session, closed_loop, gc_paused
from bench.pipeline import procs
from bench.saga.stack import Stack, cpu_by_role

ORDERS_PER_USER = 4
POLL_S = 0.1
PROGRESS_EVERY_S = 5.0
STATS_SETTLE_S = 1.5
FINAL = ("CONFIRMED", "FAILED", "CANCELLED", "NEEDS_ATTENTION")

COUNTS = """
SELECT count(*) AS orders,
       count(*) FILTER (WHERE status = ANY($2::varchar[])) AS final,
       count(*) FILTER (WHERE status = 'CONFIRMED') AS confirmed
FROM orders WHERE customer_id LIKE $1
"""
BY_STATUS = """
SELECT status, coalesce(failure_reason, '') AS reason, count(*) AS n
FROM orders WHERE customer_id LIKE $1 GROUP BY 1, 2 ORDER BY 1, 2
"""
WINDOW = """
SELECT min(created_at) AS first_created, max(created_at) AS last_created,
       max(updated_at) FILTER (WHERE status = ANY($2::varchar[])) AS last_final,
       max(updated_at) FILTER (WHERE status = 'CONFIRMED') AS last_confirmed
FROM orders WHERE customer_id LIKE $1
"""
CONFIRM_SECONDS = """
SELECT extract(epoch FROM updated_at - created_at)::float8 AS s FROM orders
WHERE customer_id LIKE $1 AND status = 'CONFIRMED'
"""
STEP_LOG = """
SELECT l.saga_id, l.kind, l.step, l.at FROM saga_log l JOIN orders o ON o.id = l.saga_id
WHERE o.customer_id LIKE $1 AND l.kind IN ('step.requested', 'step.succeeded', 'step.failed')
ORDER BY l.id
"""
START_SECONDS = """
SELECT avg(extract(epoch FROM l.at - o.created_at))::float8 AS mean_s,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM l.at - o.created_at))::float8
           AS p50_s,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM l.at - o.created_at))::float8
           AS p99_s
FROM orders o JOIN saga_log l ON l.saga_id = o.id AND l.kind = 'saga.started'
WHERE o.customer_id LIKE $1
"""
MESSAGES = """
SELECT type, count(*) AS n FROM outbox_messages WHERE created_at >= $1 AND created_at <= $2
GROUP BY type ORDER BY n DESC
"""
INBOX = """
SELECT consumer, count(*) AS n FROM processed_messages
WHERE processed_at >= $1 AND processed_at <= $2 GROUP BY consumer ORDER BY n DESC
"""
DB_STATS = """
SELECT xact_commit + xact_rollback AS transactions, tup_inserted AS rows_inserted,
       tup_updated AS rows_updated, tup_deleted AS rows_deleted, tup_fetched AS rows_fetched
FROM pg_stat_database WHERE datname = current_database()
"""
BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
PROBLEMS = """
SELECT (SELECT count(*) FROM message_failures WHERE failed_at >= $1 AND failed_at <= $2)
           AS failed_attempts,
       (SELECT count(*) FROM dead_letters WHERE created_at >= $1 AND created_at <= $2)
           AS dead_letters
"""


@dataclass(frozen=True, slots=True)
class Phase:
    """``orders`` orders over ``skus`` (taken in turn), posted by ``connections`` clients."""

    name: str
    orders: int
    skus: tuple[str, ...]
    timeout_s: float
    connections: int

    @property
    def customers(self) -> str:
        """The LIKE pattern of this phase's customer ids."""
        return f"saga-{self.name}-u%"

    def users(self) -> list[str]:
        count = max(1, math.ceil(self.orders / ORDERS_PER_USER))
        return [f"saga-{self.name}-u{n:05d}" for n in range(count)]


class PhaseTimeout(RuntimeError):
    """Not every order of a phase reached a final state in time."""


async def wait_final(
    pool: asyncpg.Pool,
    phase: Phase,
    expected: int,
    deadline: float,
    say: Callable[[str], None],
    check: Callable[[], None] = lambda: None,
) -> bool:
    """Poll until ``expected`` orders of the phase are final; False at the deadline. ``check``
    raises when waiting is pointless (a process under test has exited)."""
    next_report = time.monotonic() + PROGRESS_EVERY_S
    while True:
        check()
        row = await pool.fetchrow(COUNTS, phase.customers, list(FINAL))
        if row["final"] >= expected:
            return True
        now = time.monotonic()
        if now > deadline:
            return False
        if now >= next_report:
            say(
                f"  {phase.name}: {row['final']}/{expected} final "
                f"({row['confirmed']} confirmed) of {row['orders']} accepted"
            )
            next_report = now + PROGRESS_EVERY_S
        await asyncio.sleep(POLL_S)


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds()


def step_seconds(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """Per step, in the order first requested: from ``step.requested`` to the step's first
    ``step.succeeded`` or ``step.failed`` of the same saga."""
    requested: dict[tuple[str, str], datetime] = {}
    durations: dict[str, list[float]] = {}
    for row in rows:
        key = (row["saga_id"], row["step"])
        if row["kind"] == "step.requested":
            requested.setdefault(key, row["at"])
            durations.setdefault(row["step"], [])
        elif key in requested:
            durations[row["step"]].append((row["at"] - requested.pop(key)).total_seconds())
    found = []
    for step, seconds in durations.items():
        latency = summarize(seconds)
        found.append(
            {
                "step": step,
                "n": latency.count,
                "mean_s": latency.mean_ms / 1000,
                "p50_s": latency.p50_ms / 1000,
                "p99_s": latency.p99_ms / 1000,
            }
        )
    return found


async def _timing(pool: asyncpg.Pool, phase: Phase) -> dict[str, Any]:
    steps = step_seconds(await pool.fetch(STEP_LOG, phase.customers))
    start = await pool.fetchrow(START_SECONDS, phase.customers)
    return {
        "intake_to_saga_started": {k: start[k] for k in ("mean_s", "p50_s", "p99_s")},
        "steps": steps,
    }


async def _traffic(pool: asyncpg.Pool, start: datetime, end: datetime) -> dict[str, Any]:
    messages = {r["type"]: int(r["n"]) for r in await pool.fetch(MESSAGES, start, end)}
    inbox = {r["consumer"]: int(r["n"]) for r in await pool.fetch(INBOX, start, end)}
    problems = await pool.fetchrow(PROBLEMS, start, end)
    return {
        "messages_by_type": messages,
        "inbox_by_consumer": inbox,
        "failed_attempts": int(problems["failed_attempts"]),
        "dead_letters": int(problems["dead_letters"]),
    }


async def outcome(
    pool: asyncpg.Pool, phase: Phase, started: datetime, ended: datetime
) -> dict[str, Any]:
    """Orders by status and reason, the phase's window and rates, latency, where time went."""
    window = await pool.fetchrow(WINDOW, phase.customers, list(FINAL))
    by_status = [dict(r) for r in await pool.fetch(BY_STATUS, phase.customers)]
    counts = {s: sum(r["n"] for r in by_status if r["status"] == s) for s in FINAL}
    final = sum(counts.values())
    orders = sum(r["n"] for r in by_status)
    elapsed = _seconds(started, window["last_final"])
    confirmed = counts["CONFIRMED"]
    seconds = [r["s"] for r in await pool.fetch(CONFIRM_SECONDS, phase.customers)]
    traffic = await _traffic(pool, started, ended)
    return {
        "orders": orders,
        "final": final,
        "by_status": by_status,
        "confirmed": confirmed,
        "failed": counts["FAILED"],
        "first_post_to_last_final_s": elapsed,
        "first_post_to_last_confirmed_s": _seconds(started, window["last_confirmed"]),
        "first_created_to_last_final_s": _seconds(window["first_created"], window["last_final"]),
        "final_per_s": final / elapsed if elapsed else None,
        "confirmed_per_s": confirmed / elapsed if elapsed else None,
        "post_to_confirmed_ms": asdict(summarize(seconds)),
        "messages_per_order": sum(traffic["messages_by_type"].values()) / max(orders, 1),
        **traffic,
        **await _timing(pool, phase),
    }


async def db_stats(pool: asyncpg.Pool) -> dict[str, int]:
    """The database's cumulative counters (a backend reports its own at most once a second,
    or within 10 s once idle: a phase's last second may be missing)."""
    row = await pool.fetchrow(DB_STATS)
    return {k: int(v) for k, v in row.items()}


async def backend_seconds(pool: asyncpg.Pool) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to this database (ours alone,
    unlike ``postgres`` in the CPU sample, which is every PostgreSQL process on the machine)."""
    return {r["pid"]: procs._process_seconds(r["pid"]) for r in await pool.fetch(BACKENDS)}


def backend_cpu(before: dict[int, float], after: dict[int, float], wall: float) -> float:
    """Cores used by this database's backends: those alive at the end (a backend that started
    meanwhile counts in full; one that ended meanwhile is missed)."""
    used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    return used / wall if wall > 0 else 0.0


def per_order(before: dict[str, int], after: dict[str, int], orders: int) -> dict[str, float]:
    return {k: (after[k] - before[k]) / max(orders, 1) for k in after}


async def run_phase(
    pool: asyncpg.Pool,
    stack: Stack,
    phase: Phase,
    tokens: tuple[str, ...],
    bodies: list[bytes],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Post the phase's orders (closed loop, exactly ``orders`` requests), wait until all are
    final, and read the outcome. Raises ``PhaseTimeout`` (with what was seen) when late."""
    target = Target(stack.port, tokens)
    deadline = time.monotonic() + phase.timeout_s
    say(f"  {phase.name}: posting {phase.orders} orders ({phase.connections} connections)")
    async with client_session(phase.connections) as session:
        stats_before = await db_stats(pool)
        backends_before = await backend_seconds(pool)
        cpu_before = stack.cpu()
        started = datetime.now(UTC)
        with gc_paused():
            posted = await closed_loop(
                session,
                Orders(target, bodies),
                target,
                connections=phase.connections,
                duration_s=phase.timeout_s,
                max_requests=phase.orders,
            )
    done = await wait_final(pool, phase, posted.ok, deadline, say, stack.check_alive)
    cpu_after = stack.cpu()
    backends = backend_cpu(
        backends_before, await backend_seconds(pool), cpu_after.at - cpu_before.at
    )
    cpu = cpu_by_role(cpu_before, cpu_after, posted.ok, {"postgres_ours": backends})
    ended = datetime.now(UTC)
    await asyncio.sleep(STATS_SETTLE_S)
    database = per_order(stats_before, await db_stats(pool), posted.ok)
    result = {
        "phase": phase.name,
        "requested": phase.orders,
        "skus": len(phase.skus),
        "post": {**posted.as_json(), "accepted_per_s": posted.throughput},
        "all_final": done,
        **await outcome(pool, phase, started, ended),
        "cpu": cpu,
        "database_per_order": database,
        "worker_memory_kb": stack.worker_memory(),
    }
    processed = sum(result["inbox_by_consumer"].values())
    worker_ms = cpu["ms_per_order"].get("worker", 0.0) * posted.ok
    result["worker_cpu_ms_per_message"] = worker_ms / processed if processed else None
    if not done:
        raise PhaseTimeout(
            f"{phase.name}: {result['final']} of {posted.ok} orders final after "
            f"{phase.timeout_s:.0f} s; by status {result['by_status']}",
            result,
        )
    rate = result["final_per_s"] or 0.0
    say(
        f"  {phase.name}: {result['final']} final ({result['confirmed']} confirmed) in "
        f"{result['first_post_to_last_final_s']:.2f} s: {rate:.0f} orders/s"
    )
    return result
