"""The message benchmark's consumer process: orderly's consumer runtime with a trivial handler.

``orderly worker`` only knows the process-order handler, so this builds what it builds (the
container from ORDERLY_* settings, the transport ORDERLY_BROKER_URL names, a ``ConsumerRuntime``
with ``worker_lanes`` and ``worker_batch``) around one benchmark handler instead: for each
``bench.ping`` message, the inbox row (the runtime's) plus one ``UPDATE`` of the message's
``bench_items`` row, committed together.

The only addition is timing: the unit of work records, per transaction, the connection checkout,
the whole transaction and its commit; written to ``--stats-file`` at exit with the runtime's
counters. Logs ``bench worker ready`` once subscribed.

Run by ``bench.pipeline.run`` as ``python -m bench.pipeline.worker --stats-file PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Self

import orjson
import sqlalchemy as sa
import structlog
import uvloop
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bench.pipeline.effects import CONSUMER, MARK_DONE, MESSAGE_TYPE

# orderly ships no py.typed, so ``mypy bench`` alone sees it as untyped; ``mypy`` sees src/.
from orderly.adapters.db import direct  # type: ignore[import-untyped, unused-ignore]
from orderly.adapters.db.repositories import (  # type: ignore[import-untyped, unused-ignore]
    SqlUnitOfWork,
)
from orderly.bootstrap import (  # type: ignore[import-untyped, unused-ignore]
    Container,
    bootstrap,
    configure_logging,
)
from orderly.config import Settings  # type: ignore[import-untyped, unused-ignore]
from orderly.domain.events import Message  # type: ignore[import-untyped, unused-ignore]
from orderly.entrypoints.worker import (  # type: ignore[import-untyped, unused-ignore]
    connect,
    stop_on_signals,
)
from orderly.services.consumer import (  # type: ignore[import-untyped, unused-ignore]
    ConsumerRuntime,
    Handler,
    PermanentError,
    RetryPolicy,
    RuntimeOptions,
)
from orderly.services.ports import MessageUnitOfWork  # type: ignore[import-untyped, unused-ignore]

log = structlog.get_logger("bench.pipeline.worker")
READY = "bench worker ready"
_MARK_DONE = sa.text(MARK_DONE)

Timing = tuple[float, float, float, float]
"""(wall clock at commit end, checkout s, transaction s, commit s) of one transaction."""


class BenchItems:
    """The handler's effect: mark one ``bench_items`` row done, the way orderly's own
    repositories run their statements in a handler's transaction (``adapters/db/direct.py``:
    straight on the driver on PostgreSQL, through SQLAlchemy on SQLite)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def mark_done(self, item: int) -> None:
        result = await direct.execute(self._conn, _MARK_DONE, {"id": item})
        if result.rowcount != 1:
            raise PermanentError(f"bench item {item} does not exist")


class TimedUnitOfWork(SqlUnitOfWork):  # type: ignore[misc, unused-ignore]
    """orderly's message unit of work, plus ``items`` and timings of each transaction."""

    items: BenchItems

    def __init__(self, engine: AsyncEngine, timings: list[Timing]) -> None:
        super().__init__(engine)
        self._timings = timings
        self._entered = 0.0
        self._checkout = 0.0

    async def __aenter__(self) -> Self:
        self._entered = time.perf_counter()
        await super().__aenter__()
        self._checkout = time.perf_counter() - self._entered
        assert self._conn is not None
        self.items = BenchItems(self._conn)
        return self

    async def commit(self) -> None:
        started = time.perf_counter()
        await super().commit()
        ended = time.perf_counter()
        self._timings.append((time.time(), self._checkout, ended - self._entered, ended - started))


async def _handle(uow: MessageUnitOfWork, message: Message) -> None:
    if not isinstance(uow, TimedUnitOfWork):
        raise PermanentError("the benchmark handler needs the benchmark's unit of work")
    item = message.payload.get("item")
    if not isinstance(item, int):
        raise PermanentError(f"{message.type} without an item")
    await uow.items.mark_done(item)


def bench_handler(settings: Settings) -> Handler:
    policy = RetryPolicy(
        attempts=settings.retry_attempts,
        base_delay=settings.retry_base_delay_seconds,
        timeout=settings.handler_timeout_seconds,
    )
    return Handler(CONSUMER, frozenset({MESSAGE_TYPE}), _handle, policy)


def runtime(container: Container, transport: Any, timings: list[Timing]) -> ConsumerRuntime:
    """What ``Container.consumer_runtime`` builds, with the benchmark handler and unit of work."""
    settings = container.settings
    options = RuntimeOptions(lanes=settings.worker_lanes, batch=settings.worker_batch)
    return ConsumerRuntime(
        transport,
        lambda: TimedUnitOfWork(container.engine, timings),
        [bench_handler(settings)],
        clock=container.clock,
        alerts=container.alerts(),
        options=options,
    )


async def consume(container: Container) -> dict[str, Any]:
    """Consume until SIGTERM; the runtime's counters and the transactions' timings."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    transport = container.transport()
    timings: list[Timing] = []
    consumer = runtime(container, transport, timings)
    try:
        if await connect(transport, stop, [bench_handler(container.settings).subscription]):
            log.info(READY, transport=transport.name, worker_id=container.worker_id)
            await consumer.run(stop)
    finally:
        await transport.close()
    return {"stats": asdict(consumer.stats), "timings": timings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline.worker")
    parser.add_argument("--stats-file", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        container = bootstrap(settings)
        try:
            document = runner.run(consume(container))
        finally:
            runner.run(container.close())
    args.stats_file.write_bytes(orjson.dumps(document))


if __name__ == "__main__":
    main()
