"""Commit benchmark: a handler transaction's buffered writes, in one statement or one per kind.

The worker's unit of work writes at commit what its handlers buffered: order events, the saga's
save and log, the order's read-model row and the outbox messages. On PostgreSQL they go as one
statement (``adapters/db/batch.py``); SQLite sends a statement per kind. This runs the same
transactions both ways on one fresh PostgreSQL database, in alternating rounds (so a machine
that speeds up or slows down during the run weighs on both), and reports the CPU per
transaction of this process (the worker's side: driver, socket, orderly) and of its PostgreSQL
backend. The full saga benchmark's run-to-run spread on a shared 2-core machine (±15 %) hides
a difference of this size; this isolates it.

    .venv/bin/python -m bench.saga.commit [--transactions 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import sqlalchemy as sa
import uvloop

from bench.intake import database
from bench.intake import run as intake
from bench.pipeline.run import machine
from orderly.adapters.db.repositories import (  # type: ignore[import-untyped, unused-ignore]
    SqlUnitOfWork,
)
from orderly.adapters.db.tables import orders  # type: ignore[import-untyped, unused-ignore]
from orderly.bootstrap import Container, bootstrap  # type: ignore[import-untyped, unused-ignore]
from orderly.config import Settings  # type: ignore[import-untyped, unused-ignore]
from orderly.domain.events import Message  # type: ignore[import-untyped, unused-ignore]
from orderly.domain.saga import (  # type: ignore[import-untyped, unused-ignore]
    LogEntry,
    SagaState,
    SagaStatus,
    StepStatus,
)
from orderly.services.saga_ports import NewOrderEvent  # type: ignore[import-untyped, unused-ignore]

T0 = datetime(2026, 11, 24, tzinfo=UTC)
MODES = ("one statement", "a statement per kind")


def _backend_cpu(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def _prepare(container: Container, ids: list[str]) -> None:
    row = {
        "customer_id": "bench",
        "status": "PENDING",
        "currency": "USD",
        "total_minor": 100,
        "payment_method": "pm_card_visa",
        "shipping_address": None,
        "version": 1,
        "created_at": T0,
        "updated_at": T0,
    }
    async with container.engine.begin() as conn:
        await conn.execute(orders.insert(), [{"id": i, **row} for i in ids])
    for order_id in ids:
        async with container.message_uow() as uow:
            await uow.sagas.insert(
                SagaState(
                    id=order_id,
                    definition="order",
                    key=order_id,
                    status=SagaStatus.RUNNING,
                    step=0,
                    step_status=StepStatus.REQUESTED,
                    done=(),
                    data={},
                    deadline=None,
                    reason=None,
                    detail={},
                    version=1,
                    resends=0,
                    created_at=T0,
                    updated_at=T0,
                )
            )
            await uow.commit()


async def _transaction(uow: SqlUnitOfWork, order_id: str, step: int) -> None:
    """What a saga step's transaction writes: the saga moved a step with three log entries,
    two order events (one moves the order), the history read-model row, one message."""
    saga = await uow.sagas.load(order_id)
    assert saga is not None
    moved = replace(saga, version=saga.version + 1, step=step, data={"step": step})
    await uow.sagas.save(moved)
    entries = [LogEntry("step.replied", "s"), LogEntry("step.requested", "t", {"n": step})]
    await uow.sagas.log(order_id, [*entries, LogEntry("saga.moved", None)], T0)
    events = [
        NewOrderEvent("order.step", {"step": step}),
        NewOrderEvent("order.moved", {}, status=f"S{step}"),
    ]
    appended = await uow.order_stream.append(order_id, events, T0, order_id, None)
    await uow.read_models.apply_order_events(order_id, "bench", T0, appended)
    await uow.outbox.add(
        Message(
            id=str(uuid.uuid4()),
            type="bench.next",
            key=order_id,
            payload={"orderId": order_id, "step": step},
            created_at=T0,
            correlation_id=order_id,
        )
    )
    await uow.commit()


async def _measure(
    container: Container, ids: list[str], step: int, batched: bool
) -> dict[str, float]:
    async with container.engine.connect() as conn:
        pids = [
            int(r[0])
            for r in await conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            )
        ]
    cpu, wall, pg = time.process_time(), time.monotonic(), _backend_cpu(pids)
    for order_id in ids:
        async with SqlUnitOfWork(container.engine, one_statement=batched) as uow:
            await _transaction(uow, order_id, step)
    n = len(ids)
    return {
        "client_ms": (time.process_time() - cpu) * 1000 / n,
        "postgres_ms": (_backend_cpu(pids) - pg) * 1000 / n,
        "wall_ms": (time.monotonic() - wall) * 1000 / n,
    }


async def bench(transactions: int, rounds: int) -> dict[str, Any]:
    name = f"orderly_commit_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database.admin_dsn())
    await admin.execute(f'CREATE DATABASE "{name}"')
    # One pooled connection: its backend is the one measured.
    settings = Settings(env="test", database_url=database.sqlalchemy_url(name), db_pool_size=1)
    container = bootstrap(settings)
    measured: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        await container.migrate()
        ids = [str(uuid.uuid4()) for _ in range(transactions)]
        await _prepare(container, ids)
        await admin.execute("ANALYZE")
        step = 0
        # Warm-up: every order once (its read-model row is created: later rounds update it,
        # as a saga's later steps do), and both ways prepared.
        await _measure(container, ids, step, True)
        await _measure(container, ids[: transactions // 10], step, False)
        for _ in range(rounds):
            for mode in MODES:
                step += 1
                measured[mode].append(await _measure(container, ids, step, mode == MODES[0]))
    finally:
        await container.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {
        mode: {key: statistics.median(r[key] for r in runs) for key in ("client_ms", "postgres_ms")}
        | {"rounds": runs}
        for mode, runs in measured.items()
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.saga.commit", description=(__doc__ or "").split("\n", 1)[0]
    )
    p.add_argument("--transactions", type=int, default=2000, help="per round and way (2000)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    database.add_host_option(p)
    a = p.parse_args(argv)
    database.apply_host_option(p, a.pg_host)
    if not 10 <= a.transactions <= 100_000 or not 1 <= a.rounds <= 20:
        p.error("--transactions 10..100000, --rounds 1..20")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        version = runner.run(database.server_version())
        results = runner.run(bench(a.transactions, a.rounds))
    document = {
        "started": stamp,
        "options": {"transactions": a.transactions, "rounds": a.rounds},
        "machine": machine(version),
        "commit": intake._commit(),
        "results": results,
    }
    intake.RESULTS.mkdir(parents=True, exist_ok=True)
    path = intake.RESULTS / f"commit-{stamp}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(
        f"Commit benchmark {stamp} (orderly {document['commit']}, PostgreSQL over "
        f"{database.connection_kind()}), {a.transactions} transactions x {a.rounds} rounds, "
        "median CPU ms per transaction:\n"
    )
    print("| buffered writes sent as | this process | PostgreSQL backend |")
    print("|---|---|---|")
    for mode in MODES:
        r = results[mode]
        print(f"| {mode} | {r['client_ms']:.3f} | {r['postgres_ms']:.3f} |")
    print(f"\nJSON result: {path.relative_to(intake.REPO)}")


if __name__ == "__main__":
    main()
