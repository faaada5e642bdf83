"""Code that runs on the pool's asyncpg connection outside SQLAlchemy, on the real PostgreSQL:
the request path's unit of work (``adapters/db/postgres.py``) and the worker's statements
(``adapters/db/direct.py``). Each must leave the connection clean however it ends, and report
a lost connection as the database being unavailable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from orderly.adapters.db import direct
from orderly.adapters.db.engine import create_engine, dispose_engine
from orderly.adapters.db.errors import is_connection_problem
from orderly.adapters.db.outbox_queue import OutboxQueue
from orderly.adapters.db.postgres import PgUnitOfWork
from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.tables import outbox_messages
from orderly.domain.events import Message
from orderly.services.ports import StorageUnavailable
from tests.conftest import Backend, service_missing

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def message() -> Message:
    return Message(
        id=str(uuid.uuid4()),
        type="test.message",
        key="k",
        payload={},
        created_at=datetime.now(UTC),
        correlation_id="k",
    )


async def stored(backend: Backend, ids: list[str]) -> set[str]:
    async with backend.container.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(outbox_messages.c.message_id).where(outbox_messages.c.message_id.in_(ids))
        )
        return {r.message_id for r in rows}


async def test_a_cancelled_request_leaves_no_transaction_open(backend: Backend) -> None:
    """Cancelled at any point (even inside its BEGIN), the unit of work must not hand the
    connection back with a transaction open: the next request's transaction would then be a
    savepoint inside it, and its commit would keep nothing."""
    engine = create_engine(backend.container.engine.url.render_as_string(False), pool_size=1)
    cancelled: list[str] = []
    committed: list[str] = []
    try:
        for turns in range(10):  # cancelled after 0, 1, ... turns of the event loop
            first = message()

            async def place(m: Message = first) -> None:
                async with PgUnitOfWork(engine) as uow:
                    await uow.outbox.add(m)
                    await asyncio.sleep(1)  # the request is still working when cancelled
                    await uow.commit()

            task = asyncio.create_task(place())
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            cancelled.append(first.id)
            second = message()
            async with PgUnitOfWork(engine) as uow:  # the pool's only connection, or a new one
                await uow.outbox.add(second)
                await uow.commit()
            committed.append(second.id)
            assert await stored(backend, committed) == set(committed), turns
            async with engine.begin() as conn:  # and SQLAlchemy's transactions on it too
                third = message()
                await conn.execute(
                    outbox_messages.insert().values(
                        message_id=third.id,
                        type=third.type,
                        key=third.key,
                        payload={},
                        headers={},
                        correlation_id=third.key,
                        created_at=third.created_at,
                        available_at=third.created_at,
                        attempts=0,
                    )
                )
            committed.append(third.id)
            assert await stored(backend, committed) == set(committed), turns
    finally:
        await dispose_engine(engine)
    assert await stored(backend, cancelled) == set()


async def test_a_connection_lost_at_the_begin_is_reported_as_unavailable(backend: Backend) -> None:
    """The backend is terminated while the connection sits in the pool (a database restart):
    the BEGIN that direct.py sends first fails, and that failure must read as "database
    unavailable" (retry later), never as a bug that stops a worker's consumer."""
    engine = create_engine(backend.container.engine.url.render_as_string(False), pool_size=1)
    queue = OutboxQueue(engine, clock=backend.clock, worker_id="t")
    try:
        for attempt in ("statement", "claim"):
            async with engine.connect() as conn:
                pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            async with backend.container.engine.connect() as admin:
                await admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await asyncio.sleep(0.1)
            if attempt == "statement":
                with pytest.raises(Exception, match=r"(?i)closed|terminat") as caught:
                    async with engine.begin() as conn:
                        await direct.execute(conn, sa.select(outbox_messages.c.id).limit(1))
                assert is_connection_problem(caught.value), repr(caught.value)
            else:
                with pytest.raises(StorageUnavailable):
                    await queue.claim({"test.message"}, 10, lease=30)
            # The pool then hands out a working connection.
            assert await queue.claim({"test.message"}, 10, lease=30) == []
    finally:
        await dispose_engine(engine)


PG_SOCKET_DIRECTORY = os.environ.get("ORDERLY_TEST_PG_SOCKET", "/var/run/postgresql")


async def test_a_unix_socket_url_serves_requests_the_worker_and_listen(backend: Backend) -> None:
    """``?host=<socket directory>`` (how a database on the same machine is best reached:
    bench/README.md, "Saga") works for every kind of connection orderly makes: the request
    path's unit of work, the worker's, and the LISTEN connection that wakes the consumers."""
    if not Path(PG_SOCKET_DIRECTORY, ".s.PGSQL.5432").exists():
        service_missing("PostgreSQL's Unix socket", FileNotFoundError(PG_SOCKET_DIRECTORY))
    url = backend.container.engine.url.set(
        host=None, port=None, query={"host": PG_SOCKET_DIRECTORY}
    )
    engine = create_engine(url.render_as_string(hide_password=False), pool_size=2)
    queue = OutboxQueue(engine, clock=backend.clock, worker_id="t")
    await queue.start()
    try:
        placed, handled = message(), message()
        woken = queue.waiter({placed.type})
        async with PgUnitOfWork(engine) as request:
            await request.outbox.add(placed)
            await request.commit()
        # Only NOTIFY can wake this waiter: the commit came through no in-process signal.
        await asyncio.wait_for(woken.wait(), timeout=2)
        async with SqlUnitOfWork(engine) as uow:
            await uow.outbox.add(handled)
            await uow.commit()
        async with engine.connect() as conn:
            # A socket client has no address; a TCP one has 127.0.0.1.
            address = await conn.scalar(
                sa.text("SELECT client_addr FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            )
        assert address is None
        assert await stored(backend, [placed.id, handled.id]) == {placed.id, handled.id}
    finally:
        await queue.stop()
        await dispose_engine(engine)
