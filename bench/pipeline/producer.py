"""The message benchmark's producer: outbox rows (and their ``bench_items`` rows) in committed
transactions, with orderly's own outbox ``INSERT`` (``orderly.adapters.db.pg_sql``).

``burst`` inserts a backlog in batches as fast as it can (the throughput phase); ``steady``
inserts one message per transaction on a fixed schedule (the open-loop latency phase) and
records how late it was against that schedule, since a late producer would flatter latency.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from bench.pipeline.effects import INSERT_ITEM, MESSAGE_TYPE

# orderly ships no py.typed, so ``mypy bench`` alone sees it as untyped; ``mypy`` sees src/.
from orderly.adapters.db.pg_sql import INSERT_OUTBOX  # type: ignore[import-untyped, unused-ignore]

MAX_STEADY_MESSAGES = 100_000


@dataclass(frozen=True, slots=True)
class Produced:
    """What the producer did: messages committed, wall time, worst lag behind its schedule."""

    count: int
    elapsed_s: float
    max_lag_ms: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _rows(ids: Sequence[int], now: datetime) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The ``bench_items`` rows and the outbox rows (orderly's INSERT_OUTBOX parameters)."""
    message_ids = [str(uuid.uuid4()) for _ in ids]
    items = [(i, m, now) for i, m in zip(ids, message_ids, strict=True)]
    outbox = [
        (
            m,
            MESSAGE_TYPE,
            f"item-{i}",
            orjson.dumps({"item": i}).decode(),
            "{}",
            f"item-{i}",
            None,
            now,
        )
        for i, m in zip(ids, message_ids, strict=True)
    ]
    return items, outbox


async def insert(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    """One committed transaction: the items and their outbox messages."""
    items, outbox = _rows(ids, datetime.now(UTC))
    async with conn.transaction():
        await conn.executemany(INSERT_ITEM, items)
        await conn.executemany(INSERT_OUTBOX, outbox)


async def burst(pool: asyncpg.Pool, first_id: int, count: int, batch: int) -> Produced:
    """Insert ``count`` messages in transactions of ``batch``, one after the other."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        for start in range(first_id, first_id + count, batch):
            await insert(conn, range(start, min(start + batch, first_id + count)))
    return Produced(count, time.perf_counter() - started)


async def steady(pool: asyncpg.Pool, first_id: int, rate: float, duration_s: float) -> Produced:
    """``rate`` messages a second for ``duration_s``, each in its own transaction."""
    total = min(round(rate * duration_s), MAX_STEADY_MESSAGES)
    start = time.perf_counter() + 0.005
    worst_lag = 0.0

    async def one(item: int, scheduled: float) -> None:
        nonlocal worst_lag
        async with pool.acquire() as conn:
            # created_at is taken now: any wait for a connection is the producer's lag.
            worst_lag = max(worst_lag, time.perf_counter() - scheduled)
            await insert(conn, (item,))

    tasks: list[asyncio.Task[None]] = []
    for n in range(total):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(first_id + n, scheduled)))
    await asyncio.gather(*tasks)
    return Produced(total, time.perf_counter() - start, worst_lag * 1000)
