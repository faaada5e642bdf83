"""SQLAlchemy Core statements run straight on the asyncpg driver, on PostgreSQL.

A message handler's transaction makes a dozen or more small statements. Through SQLAlchemy's
async layer each costs about 50 µs of CPU on top of the driver's 35 µs (greenlet switches,
compiled-cache lookup, parameter and result processing), which was over a third of the worker's
CPU per order (bench/README.md, "Saga"). :func:`execute` compiles a long-lived statement once
per set of parameter names, keeps its SQL, parameter order and bind processors (JSON, UTC
datetimes), and runs it on the driver connection inside the same transaction. The rows have the
attributes and ``_mapping`` the repositories read. SQLite, and anything this module does not
handle (expanding ``IN`` parameters, Python-side column defaults), go through SQLAlchemy as
before, with the same statements: both databases keep one definition of every statement.

Only statements built once (module constants, or :func:`~orderly.adapters.db.engine.prepared`)
may be passed: the compiled form is cached on the statement object.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from orderly.adapters.db.errors import is_connection_problem


class Result(Protocol):
    """What both paths return: SQLAlchemy's ``CursorResult`` or :class:`Rows`."""

    @property
    def rowcount(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def all(self) -> Sequence[Any]: ...

    def first(self) -> Any: ...

    def one_or_none(self) -> Any: ...

    def one(self) -> Any: ...

    def scalar(self) -> Any: ...


class Rows:
    """What :func:`execute` returns: the rows (if the statement returns any) and the count."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise sa.exc.MultipleResultsFound("more than one row where at most one was expected")
        return self.first()

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise sa.exc.NoResultFound(f"{len(self._rows)} rows where exactly one was expected")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


class _Compiled:
    __slots__ = ("fixed", "order", "returns_rows", "row_type", "sql")

    def __init__(self, statement: Any, conn: AsyncConnection, keys: Sequence[str]) -> None:
        many_ok = isinstance(statement, sa.sql.dml.UpdateBase) and not statement._returning
        compiled: Any = conn.dialect.statement_compiler(
            conn.dialect, statement, column_keys=list(keys), for_executemany=many_ok
        )
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise _Unsupported("Python-side column defaults")
        if any(b.expanding for b in compiled.binds.values()):
            raise _Unsupported("expanding parameters")
        processors = compiled._bind_processors
        self.sql: str = compiled.string
        self.order: list[tuple[str, Callable[[Any], Any] | None]] = [
            (name, processors.get(name)) for name in compiled.positiontup
        ]
        # Values written into the statement itself (``col == "x"``), used when not passed.
        self.fixed = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if not bind.required and bind.callable is None
        }
        self.returns_rows = bool(compiled.effective_returning) or isinstance(
            statement, sa.sql.Select
        )
        self.row_type: Any = None

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        if self.fixed:
            params = {**self.fixed, **params}
        return [
            value if process is None or value is None else process(value)
            for name, process in self.order
            for value in (params[name],)
        ]

    def rows(self, records: list[Any]) -> list[Any]:
        if not records:
            return []
        row_type: Any = self.row_type
        if row_type is None:
            row_type = self.row_type = _row_type(list(records[0].keys()))
        return [row_type._make(record.values()) for record in records]


def _row_type(names: list[str]) -> Any:
    """A tuple with the columns as attributes, and ``_mapping`` like SQLAlchemy's rows."""
    row_type: Any = namedtuple("Row", names, rename=True)  # type: ignore[misc]
    setattr(row_type, "_mapping", property(lambda row: dict(zip(names, row, strict=True))))  # noqa: B010
    return row_type


class _Unsupported(Exception):
    pass


_CACHE_ATTRIBUTE = "_orderly_direct"
_T = TypeVar("_T")


async def execute(
    conn: AsyncConnection,
    statement: Any,
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> Result:
    """Run ``statement`` with ``params`` (one mapping, or a list for an executemany) in the
    connection's transaction: on the asyncpg driver for PostgreSQL, else through SQLAlchemy."""
    sync = conn.sync_connection
    if sync is None or sync.dialect.name != "postgresql" or not sync.in_transaction():
        return await conn.execute(statement, params)
    if isinstance(params, list | tuple):
        if not params:
            return Rows([], 0)
        compiled = _compiled(conn, statement, tuple(params[0]))
        if compiled is None:
            return await conn.execute(statement, params)
        many = [compiled.arguments(p) for p in params]
        return await _guarded(sync, _execute_many(sync, compiled, many))
    one: Mapping[str, Any] = params or {}  # type: ignore[assignment]
    compiled = _compiled(conn, statement, tuple(one))
    if compiled is None:
        return await conn.execute(statement, params)
    return await _guarded(sync, _execute_one(sync, compiled, compiled.arguments(one)))


async def fetch_row(conn: AsyncConnection, sql: str, arguments: Sequence[Any]) -> Any:
    """PostgreSQL: run ``sql`` (text with ``$n`` parameters, prepared once per connection by
    the driver's statement cache) in the connection's transaction; its first row."""
    sync = conn.sync_connection
    if sync is None or sync.dialect.name != "postgresql" or not sync.in_transaction():
        raise RuntimeError("fetch_row runs on PostgreSQL, inside a transaction")
    return await _guarded(sync, _fetch_row(sync, sql, arguments))


async def _fetch_row(sync: Connection, sql: str, arguments: Sequence[Any]) -> Any:
    driver = await _driver(sync)
    return await driver.fetchrow(sql, *arguments)


async def _execute_many(sync: Connection, compiled: _Compiled, many: list[list[Any]]) -> Rows:
    driver = await _driver(sync)
    await driver.executemany(compiled.sql, many)
    return Rows([], len(many))


async def _execute_one(sync: Connection, compiled: _Compiled, arguments: list[Any]) -> Rows:
    driver = await _driver(sync)
    if compiled.returns_rows:
        records = await driver.fetch(compiled.sql, *arguments)
        return Rows(compiled.rows(records), len(records))
    status: str = await driver.execute(compiled.sql, *arguments)
    count = status.rsplit(" ", 1)[-1]
    return Rows([], int(count) if count.isdigit() else -1)


async def _guarded(sync: Connection, work: Awaitable[_T]) -> _T:
    """Run ``work``; if it is interrupted (a handler's timeout, a shutdown), drop the connection.

    A cancellation can land anywhere in the driver's exchange, even inside the BEGIN, after
    which asyncpg still counts a transaction open that SQLAlchemy's adapter does not know of:
    back in the pool, that connection's next transaction would become a savepoint inside the
    old one, and its commit would release the savepoint and keep the locks. SQLAlchemy
    invalidates a connection whose own statement is interrupted, or that is lost; this does
    the same. The server rolls the transaction back when the connection closes.
    """
    try:
        return await work
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception)
        if (interrupted or is_connection_problem(exc)) and not sync.invalidated:
            sync.invalidate(exc)
        raise


async def scalar(
    conn: AsyncConnection, statement: Any, params: Mapping[str, Any] | None = None
) -> Any:
    return (await execute(conn, statement, params)).scalar()


def _compiled(conn: AsyncConnection, statement: Any, keys: tuple[str, ...]) -> _Compiled | None:
    cache: dict[tuple[str, ...], _Compiled | None] | None = statement.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = {}
        statement.__dict__[_CACHE_ATTRIBUTE] = cache
    if keys in cache:
        return cache[keys]
    try:
        compiled: _Compiled | None = _Compiled(statement, conn, keys)
    except _Unsupported:
        compiled = None
    cache[keys] = compiled
    return compiled


async def _driver(sync: Connection) -> Any:
    """The asyncpg connection under ``sync``, with SQLAlchemy's transaction begun on it (the
    adapter begins lazily, at the first statement of each transaction)."""
    pooled: Any = sync.connection  # no I/O while the connection is valid
    adapted = pooled.dbapi_connection
    if adapted._transaction is None:
        await adapted._start_transaction()
    return pooled.driver_connection
