"""Engine creation with the per-dialect settings both databases need."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def dialect_insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


READ_ONLY = "orderly_read_only"

_STATEMENTS: dict[tuple[str, Hashable], Any] = {}


def prepared(conn: AsyncConnection, key: Hashable, build: Callable[[], Any]) -> Any:
    """A statement built once per dialect and ``key``, its values left to bind parameters.

    SQLAlchemy builds and hashes a statement constructed in a function anew on every call
    (a tenth of a worker's CPU); one built once is compiled once and only bound after that.
    """
    found = _STATEMENTS.get((conn.dialect.name, key))
    if found is None:
        found = _STATEMENTS[(conn.dialect.name, key)] = build()
    return found


_WRITER_GATES: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def writer_gate(engine: AsyncEngine) -> asyncio.Lock | None:
    """SQLite's one writer, as a fair in-process queue; None on PostgreSQL.

    SQLite lets one transaction write at a time. Without a gate, every concurrent writer of a
    process spins in SQLite's busy handler, which is unfair: under load (a worker's many
    consumer lanes) some waiters time out with "database is locked" while others go again and
    again. Queued on this lock, a process's writers take turns, and only one per process
    contends with other processes (the busy timeout covers that).
    """
    if engine.dialect.name != "sqlite":
        return None
    gate = _WRITER_GATES.get(engine.sync_engine)
    if gate is None:
        gate = _WRITER_GATES[engine.sync_engine] = asyncio.Lock()
    return gate


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 20, echo: bool = False) -> AsyncEngine:
    """An async engine: SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE (one writer)."""
    if is_sqlite(url):
        engine = create_async_engine(
            url,
            echo=echo,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"timeout": 30},
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        # No overflow: connections opened and closed under load cost PostgreSQL a new backend
        # and asyncpg its type introspection and prepared statements each time.
        max_overflow=0,
        pool_pre_ping=False,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        # Writers take the lock up front so two transactions never deadlock on an upgrade;
        # readers (marked by the views) begin deferred and run beside the writer under WAL.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


async def dispose_engine(engine: AsyncEngine) -> None:
    """Close every pooled connection, then let driver threads finish while the loop still runs.

    aiosqlite queues the cleanup of a connection that failed to open without awaiting it; its
    worker thread then dies with a traceback if the loop is already closed (aiosqlite#259).
    """
    await engine.dispose()
    workers = [t for t in threading.enumerate() if t.name.endswith("(_connection_worker_thread)")]
    if workers:

        def join() -> None:
            for worker in workers:
                worker.join(timeout=1.0)

        await asyncio.to_thread(join)
