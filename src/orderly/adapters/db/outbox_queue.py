"""The outbox table used as a queue: claims with leases, and wake-ups when rows arrive.

Claiming is one statement on both databases: ``UPDATE … WHERE id IN (SELECT … LIMIT n)
RETURNING``; PostgreSQL adds ``FOR UPDATE SKIP LOCKED`` so competing workers take different rows
without waiting, SQLite has a single writer anyway. A claim is a lease: a process that dies
holding rows loses them when ``claimed_until`` passes and another process claims them again.

Wake-ups: on PostgreSQL a trigger NOTIFYs ``orderly_outbox`` with the type of every unsent,
unclaimed message inserted, and of every row an update makes claimable (put back by a retry or a
release, sent again by a redrive, due earlier; migrations 0002, 0005, 0006, 0009, 0010), and
this module LISTENs on its own connection, waking only the consumers of that type; on SQLite,
units of work in the same process signal an ``OutboxSignal``.

Between wake-ups a claim that came back empty waits (:meth:`OutboxQueue.quiet_for`): while
NOTIFY is heard, until the next of its rows comes due (a retry's delay, a lease running out), at
most ``idle_poll`` (5 s, for a lease taken after that look by a process that then died); without
it (SQLite, or the listener lost), one poll interval (0.25 s). So an idle worker on PostgreSQL
makes a claim per consumer every few seconds, not four a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from orderly.adapters.db import direct
from orderly.adapters.db.engine import writer_gate
from orderly.adapters.db.errors import is_connection_problem
from orderly.adapters.db.tables import CLAIM_ORDER, outbox_messages
from orderly.domain.events import Message
from orderly.services.ports import Clock, QueuedMessage, StorageUnavailable

log = structlog.get_logger("orderly.outbox")

NOTIFY_CHANNEL = "orderly_outbox"

_o = outbox_messages.c
_RETURNED = (
    _o.id,
    _o.message_id,
    _o.type,
    _o.key,
    _o.payload,
    _o.headers,
    _o.correlation_id,
    _o.causation_id,
    _o.created_at,
    _o.attempts,
    _o.refusals,
)


class OutboxSignal:
    """In-process wake-ups when messages are committed: a waiter registered for some types is
    woken by messages of those types (or of unknown types); one for all types by any."""

    def __init__(self) -> None:
        self._waiters: dict[asyncio.Event, frozenset[str] | None] = {}

    def waiter(self, types: Collection[str] | None = None) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[event] = None if types is None else frozenset(types)
        return event

    def forget(self, event: asyncio.Event) -> None:
        self._waiters.pop(event, None)

    def notify(self, types: Collection[str] | None = None) -> None:
        """Wake the waiters for ``types`` (None: every waiter)."""
        for event, wanted in self._waiters.items():
            if types is None or wanted is None or not wanted.isdisjoint(types):
                event.set()


_TEXTS = postgresql.ARRAY(sa.String)


_DUE = (
    _o.sent_at.is_(None),
    _o.available_at <= sa.bindparam("now"),
    sa.or_(_o.claimed_until.is_(None), _o.claimed_until < sa.bindparam("now")),
)
"""A row a claim may take: unsent, due, and not leased (or its lease has run out)."""


def _claim_statement(dialect: str, types: str) -> Any:
    """The claim of up to ``limit`` due rows, oldest first: of one type (``"one"``: a plain
    equality, so the database walks the claim index of that type in order and stops at the
    limit, ``tables.CLAIM_ORDER``), or on SQLite of any type (``"all"``) or of several
    (``"many"``: the unsent rows of those types, sorted; PostgreSQL claims several types
    per type, :func:`_claim_per_type`)."""
    pending = sa.select(_o.id).where(*_DUE).order_by(CLAIM_ORDER).limit(sa.bindparam("limit"))
    if types == "one":
        pending = pending.where(_o.type == sa.bindparam("_type"))
    elif types == "many":
        pending = pending.where(_o.type.in_(sa.bindparam("types", expanding=True)))
    if dialect == "postgresql":
        # The ids as an array (evaluated once), so the update finds its rows by primary key:
        # `id IN (subquery)` may be planned as a hash join over a scan of the whole table.
        chosen = _o.id == sa.any_(
            sa.func.array(pending.with_for_update(skip_locked=True).scalar_subquery())
        )
    else:
        chosen = _o.id.in_(pending.scalar_subquery())
    return (
        outbox_messages.update()
        .where(chosen)
        .values(claimed_by=sa.bindparam("worker"), claimed_until=sa.bindparam("until"))
        .returning(*_RETURNED)
    )


def _claim_per_type() -> Any:
    """PostgreSQL's claim of several types: up to ``limit`` rows of each type from the claim
    index, as a claim of one type takes them, then the oldest ``limit`` of those.

    Reading every unsent row of the types and sorting them, as one query over all of them
    does, costs as much as the backlog: 50 ms for 200,000 unsent rows, which a relay meets
    after a long broker outage. This reads at most ``limit`` rows per type. A row of one
    type read but not among the oldest stays locked until the claim commits."""
    # One array parameter for the types: one statement for every set of them, run straight on
    # the driver (adapters/db/direct.py).
    wanted = (
        sa.func.unnest(sa.bindparam("types", type_=_TEXTS))
        .table_valued("type")
        .render_derived(name="wanted")
    )
    of_type = (
        sa.select(_o.id)
        .where(_o.type == wanted.c.type, *_DUE)
        .order_by(CLAIM_ORDER)
        .limit(sa.bindparam("limit"))
        .with_for_update(skip_locked=True)
        .lateral("of_type")
    )
    oldest = (
        sa.select(of_type.c.id)
        .select_from(wanted.join(of_type, sa.true()))
        .order_by(of_type.c.id)
        .limit(sa.bindparam("limit"))
    )
    return (
        outbox_messages.update()
        .where(_o.id == sa.any_(sa.func.array(oldest.scalar_subquery())))
        .values(claimed_by=sa.bindparam("worker"), claimed_until=sa.bindparam("until"))
        .returning(*_RETURNED)
    )


_CLAIM = {
    ("postgresql", "one"): _claim_statement("postgresql", "one"),
    ("postgresql", "many"): _claim_per_type(),
    **{("sqlite", types): _claim_statement("sqlite", types) for types in ("all", "one", "many")},
}
# When the next unsent row of some types may be claimed: the latest of its due time and its
# lease (greatest() skips a NULL lease), from the claim index, type by type.
_NEXT_DUE = """
SELECT min(greatest(o.available_at, o.claimed_until))
FROM unnest($1::text[]) AS wanted(type)
CROSS JOIN LATERAL (
    SELECT available_at, claimed_until FROM outbox_messages
    WHERE type = wanted.type AND sent_at IS NULL
) AS o
"""
_MIN_QUIET = 0.02
"""Seconds: the least wait for a row about to come due."""
# The types that have unsent rows: one step down the claim index per type (a loose index scan),
# for a claim of any type on PostgreSQL, which then claims them as several.
_PENDING_TYPES = """
WITH RECURSIVE pending(type) AS (
    SELECT min(type) FROM outbox_messages WHERE sent_at IS NULL
    UNION ALL
    SELECT (SELECT min(o.type) FROM outbox_messages o WHERE o.sent_at IS NULL AND o.type > p.type)
    FROM pending p WHERE p.type IS NOT NULL
)
SELECT array_agg(type) FROM pending WHERE type IS NOT NULL
"""
_MARK_SENT = {
    "postgresql": outbox_messages.update()
    .where(_o.id == sa.any_(sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger))))
    .values(sent_at=sa.bindparam("sent_at"), claimed_by=None, claimed_until=None),
    "sqlite": outbox_messages.update()
    .where(_o.id.in_(sa.bindparam("ids", expanding=True)))
    .values(sent_at=sa.bindparam("sent_at"), claimed_by=None, claimed_until=None),
}
_RELEASE = (
    outbox_messages.update()
    .where(_o.id.in_(sa.bindparam("ids", expanding=True)), _o.sent_at.is_(None))
    .values(claimed_by=None, claimed_until=None)
)


def _put_back(counted: sa.Column[int]) -> Any:
    """Unclaim a row, due again at ``available_at``, with one more of ``counted``."""
    return (
        outbox_messages.update()
        .where(_o.id == sa.bindparam("_id"))
        .values(
            {
                _o.available_at: sa.bindparam("available_at"),
                counted: counted + 1,
                _o.claimed_by: None,
                _o.claimed_until: None,
            }
        )
    )


_RESCHEDULE = _put_back(_o.attempts)
_REFUSE = _put_back(_o.refusals)
_PENDING_COUNT = sa.select(sa.func.count()).select_from(outbox_messages).where(_o.sent_at.is_(None))


class OutboxQueue:
    """Claims, settles and waits for outbox rows; one per process is plenty."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock,
        worker_id: str,
        signal: OutboxSignal | None = None,
        poll_interval: float = 0.25,
        idle_poll: float = 5.0,
        listener_check_every: float = 30.0,
        listener_check_timeout: float = 5.0,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self.worker_id = worker_id
        self._signal = signal or OutboxSignal()
        self._poll_interval = poll_interval
        self._idle_poll = idle_poll
        self._dialect = engine.dialect.name
        self._listener: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()
        self._listen_again_at = 0.0
        self._heard_before = False
        self._check_every = listener_check_every
        self._check_timeout = listener_check_timeout
        self._check_at = 0.0

    async def start(self) -> None:
        """Start listening for NOTIFY (PostgreSQL); polling covers the rest if this fails.

        Called again by :meth:`wait` once the listener is lost: one reconnect at a time (every
        waiter of the process comes through here), at most one try a second, and a listener
        that comes back wakes every waiter, since what was notified meanwhile is lost."""
        if self._dialect != "postgresql":
            return
        async with self._listen_lock:
            if self.listening:
                return
            self._listener = None
            url = make_url(self._engine.url).set(drivername="postgresql")
            try:
                listener = await asyncpg.connect(
                    url.render_as_string(hide_password=False), timeout=5
                )
                await listener.add_listener(NOTIFY_CHANNEL, self._notified)
                # Lost, it hears nothing: wake everyone, so they claim and wait() reconnects.
                listener.add_termination_listener(self._lost)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("LISTEN failed, polling only", error=str(exc))
                self._listen_again_at = asyncio.get_running_loop().time() + 1.0
                return
            self._listener = listener
            self._check_at = asyncio.get_running_loop().time() + self._check_every
            if self._heard_before:
                self._signal.notify()
            self._heard_before = True

    async def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            listener.remove_termination_listener(self._lost)
            await listener.close(timeout=2)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        # The payload is the type of a new unsent, unclaimed message or of one an update made
        # claimable (migrations 0005, 0009, 0010); empty: any.
        self._signal.notify((payload,) if payload else None)

    def _lost(self, _conn: object) -> None:
        self._signal.notify()

    @property
    def listening(self) -> bool:
        """Whether NOTIFY wakes this process (PostgreSQL, its listener connected)."""
        return self._listener is not None and not self._listener.is_closed()

    def waiter(self, types: Collection[str] | None = None) -> asyncio.Event:
        return self._signal.waiter(types)

    def forget(self, event: asyncio.Event) -> None:
        self._signal.forget(event)

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Wait for a wake-up, at most ``timeout`` (see :meth:`quiet_for`)."""
        if self._dialect == "postgresql":
            now = asyncio.get_running_loop().time()
            if not self.listening:
                if now >= self._listen_again_at:
                    await self.start()
            elif now >= self._check_at:
                await self._check_listener()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(timeout, 0.0))

    async def _check_listener(self) -> None:
        """Ask the listener for an answer, every ``listener_check_every`` seconds of waiting.

        A connection can die without either end hearing of it (a NAT or a firewall forgetting
        an idle connection, a failover): the listener would look alive and hear nothing, and
        idle consumers would claim only every ``idle_poll``. The query also keeps the
        connection from looking idle to such middleboxes. One that does not answer in
        ``listener_check_timeout`` is dropped: that wakes every waiter, and the next wait
        connects again."""
        async with self._listen_lock:
            listener, now = self._listener, asyncio.get_running_loop().time()
            if listener is None or listener.is_closed() or now < self._check_at:
                return
            self._check_at = now + self._check_every
            try:
                await listener.execute("SELECT 1", timeout=self._check_timeout)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning(
                    "the LISTEN connection did not answer: connecting again", error=str(exc)
                )
                listener.terminate()

    async def quiet_for(self, types: Collection[str] | None) -> float:
        """Seconds a claim of ``types`` (None: any) that came back empty may wait for a
        wake-up before claiming again.

        While NOTIFY is heard, new rows and rows an update made claimable wake the waiter, so
        only time can make another row claimable: the next of their unsent rows to come due, or
        to come out of its lease, at most ``idle_poll`` (a row leased after this look by a
        process that then dies). Otherwise one poll interval: SQLite hears no other process, and
        a lost listener no one."""
        if not self.listening:
            return self._poll_interval
        try:
            async with self._transaction() as conn:
                if types is None:
                    wanted = (await direct.fetch_row(conn, _PENDING_TYPES, ()))[0] or []
                else:
                    wanted = sorted(types)
                due = (await direct.fetch_row(conn, _NEXT_DUE, (wanted,)))[0] if wanted else None
        except StorageUnavailable:
            return self._poll_interval  # the next claim reports it
        if due is None:
            return self._idle_poll
        seconds: float = (due - self._clock.now()).total_seconds()
        if seconds <= 0:
            # Due, yet the claim did not take it: another transaction holds it locked (SKIP
            # LOCKED), maybe for long (a session left idle in its transaction). Poll.
            return self._poll_interval
        return min(self._idle_poll, max(_MIN_QUIET, seconds))

    async def claim(
        self, types: Collection[str] | None, limit: int, lease: float
    ) -> list[QueuedMessage]:
        now = self._clock.now()
        params: dict[str, Any] = {
            "now": now,
            "limit": limit,
            "worker": self.worker_id,
            "until": now + timedelta(seconds=lease),
        }
        kind = "all"
        if types is not None:
            wanted = sorted(types)
            if len(wanted) == 1:
                kind, params["_type"] = "one", wanted[0]
            else:
                kind, params["types"] = "many", wanted
        async with self._transaction() as conn:
            if kind == "all" and self._dialect == "postgresql":
                pending = (await direct.fetch_row(conn, _PENDING_TYPES, ()))[0]
                if not pending:
                    return []
                kind, params["types"] = "many", pending
            statement = _CLAIM[(self._dialect, kind)]
            rows = list((await direct.execute(conn, statement, params)).all())
        rows.sort(key=lambda r: r.id)
        return [
            QueuedMessage(
                id=r.id,
                message=Message(
                    id=r.message_id,
                    type=r.type,
                    key=r.key,
                    payload=r.payload,
                    created_at=r.created_at,
                    correlation_id=r.correlation_id,
                    causation_id=r.causation_id,
                    headers=dict(r.headers),
                ),
                attempts=r.attempts,
                refusals=r.refusals,
            )
            for r in rows
        ]

    async def mark_sent(self, ids: Sequence[int]) -> None:
        if ids:
            async with self._transaction() as conn:
                await direct.execute(
                    conn,
                    _MARK_SENT[self._dialect],
                    {"ids": list(ids), "sent_at": self._clock.now()},
                )

    async def release(self, ids: Sequence[int]) -> None:
        if ids:
            async with self._transaction() as conn:
                await conn.execute(_RELEASE, {"ids": list(ids)})

    async def reschedule(self, row_id: int, delay: float) -> None:
        available_at = self._clock.now() + timedelta(seconds=delay)
        async with self._transaction() as conn:
            await conn.execute(_RESCHEDULE, {"_id": row_id, "available_at": available_at})

    async def refuse(self, row_id: int, delay: float) -> None:
        """The broker refused the row: publish it again after ``delay``, one refusal more."""
        available_at = self._clock.now() + timedelta(seconds=delay)
        async with self._transaction() as conn:
            await conn.execute(_REFUSE, {"_id": row_id, "available_at": available_at})

    async def pending(self) -> int:
        async with self._transaction() as conn:
            return int((await conn.execute(_PENDING_COUNT)).scalar_one())

    async def add(self, messages: Sequence[Message], attempts: Sequence[int] | None = None) -> None:
        """Queue messages directly (outside any business transaction); ``attempts`` is the
        attempt each is first delivered as (default 1)."""
        if not messages:
            return
        made = [a - 1 for a in attempts] if attempts is not None else [0] * len(messages)
        async with self._transaction() as conn:
            await conn.execute(
                outbox_messages.insert(),
                [
                    {
                        "message_id": m.id,
                        "type": m.type,
                        "key": m.key,
                        "payload": m.payload,
                        "headers": m.headers,
                        "correlation_id": m.correlation_id,
                        "causation_id": m.causation_id,
                        "created_at": m.created_at,
                        "available_at": self._clock.now(),
                        "attempts": before,
                    }
                    for m, before in zip(messages, made, strict=True)
                ],
            )
        self._signal.notify()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._engine)


class _Transaction:
    """``engine.begin()`` that reports an unreachable database as ``StorageUnavailable``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._context: Any = None
        self._gate = writer_gate(engine)

    async def __aenter__(self) -> Any:
        if self._gate is not None:
            await self._gate.acquire()
        self._context = self._engine.begin()
        try:
            return await self._context.__aenter__()
        except BaseException as exc:
            if self._gate is not None:
                self._gate.release()
            if isinstance(exc, Exception):
                # Connecting only fails because the database cannot be reached or refuses us.
                raise StorageUnavailable(str(exc)) from exc
            raise

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._exit(*exc_info)
        finally:
            if self._gate is not None:
                self._gate.release()

    async def _exit(self, *exc_info: Any) -> None:
        try:
            await self._context.__aexit__(*exc_info)
        except Exception as exc:
            if is_connection_problem(exc):
                raise StorageUnavailable(str(exc)) from exc
            raise
        failure = exc_info[1]
        if failure is not None and is_connection_problem(failure):
            raise StorageUnavailable(str(failure)) from failure
