"""The writes a unit of work buffers until commit, sent to PostgreSQL as one statement.

A message handler's transaction ends with half a dozen writes that nothing in it reads back:
the order's new events, the saga's save and its log, the order's read-model rows and the outbox
messages. Each was a statement of its own, and every statement is a round trip: its CPU on
both sides (the driver, the socket, PostgreSQL's per-statement work) was most of what an order
costs (bench/README.md, "Saga"). :class:`CommitBatch` sends them as one statement, each write
a data-modifying CTE whose rows come from array parameters::

    WITH w0 AS (INSERT INTO order_events (order_id, ...)
                SELECT * FROM unnest($1::VARCHAR(36)[], ...)),
         w1 AS (UPDATE sagas AS t SET ... FROM unnest(...) AS u(...)
                WHERE t.id = u._key AND t.version = u._previous RETURNING t.id)
    SELECT (SELECT array_agg(id ORDER BY id) FROM w1)

The SQL is written from the tables' metadata (identifiers quoted by the dialect); every value
is a parameter.

The parameters are one array per column, so a statement's text depends only on which kinds of
write it carries, not on how many rows: PostgreSQL prepares each shape once per connection.
The sub-statements run with one snapshot and in no set order, so only writes that do not depend
on each other go here, and no write whose row locks must be taken in a set order (stock rows
and inventory levels stay statements of their own, applied in key order).

On SQLite (a local call costs no round trip), and when asked (``one_statement=False``, the
commit benchmark's comparison), each write is a statement of its own instead: one mechanism
either way, so the repositories only say what they write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orderly.adapters.db import direct
from orderly.adapters.db.engine import dialect_insert

Rows = Sequence[Mapping[str, Any]]
Returned = list[tuple[Any, ...]]


@dataclass(frozen=True)
class Insert:
    """``INSERT INTO table (columns)`` the rows; with ``guard``, an existing row (same
    ``conflict`` key) is overwritten only where its ``guard`` column is lower than the new
    row's (the read models' versions)."""

    table: sa.Table
    columns: tuple[str, ...]
    conflict: tuple[str, ...] = ()
    guard: str | None = None
    returning: tuple[str, ...] = ()
    per_row: ClassVar[int] = 0  # the rows always go as arrays

    @classmethod
    def of(cls, table: sa.Table, rows: Rows, **options: Any) -> Insert:
        """The insert of ``rows`` (the columns of the first; all rows have the same)."""
        return cls(table, tuple(rows[0]) if rows else (), **options)

    def parameters(self) -> tuple[str, ...]:
        return self.columns

    def sql(self, name: str, values: list[list[str]], quote: Callable[[str], str]) -> list[str]:
        """The CTE: ``values`` holds one list, the array parameters."""
        [arrays_given] = values
        table = quote(self.table.name)
        columns = ", ".join(quote(c) for c in self.columns)
        arrays = ", ".join(arrays_given)
        text = f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays})"  # noqa: S608
        if self.conflict:
            keys = ", ".join(quote(c) for c in self.conflict)
            sets = ", ".join(
                f"{quote(c)} = excluded.{quote(c)}" for c in self.columns if c not in self.conflict
            )
            text += f" ON CONFLICT ({keys}) DO UPDATE SET {sets}"
            if self.guard is not None:
                text += f" WHERE {table}.{quote(self.guard)} < excluded.{quote(self.guard)}"
        if self.returning:
            text += " RETURNING " + ", ".join(quote(c) for c in self.returning)
        return [f"{name} AS ({text})"]


PER_ROW_LIMIT = 8
"""Up to this many rows, an :class:`Update` is an ``UPDATE`` per row."""


@dataclass(frozen=True)
class Update:
    """``UPDATE table SET columns`` of the row whose ``key`` columns are the row's.

    With a ``version`` column (:meth:`versioned`), only while that column is still the row's
    ``_previous``; it returns the keys it updated (a key missing from them was moved by
    someone else). Without one (:meth:`keyed`) it returns nothing.

    A few rows (the usual case: one) are each updated by their key with plain parameters
    (``per_row``); a join with ``unnest`` would be planned for the 100 rows PostgreSQL assumes
    an array parameter holds, which on a table of any size is a sequential scan. The rows must
    have distinct keys: one statement cannot update a row twice.
    """

    table: sa.Table
    key: tuple[str, ...]
    version: str | None
    columns: tuple[str, ...]
    per_row: int
    """Rows updated each by its own ``UPDATE``; 0: all of them through ``unnest``."""

    @classmethod
    def versioned(cls, table: sa.Table, key: str, version: str, rows: Rows) -> Update:
        """The update of ``rows``: each has ``key``, ``_previous`` and the columns to set."""
        columns = tuple(c for c in rows[0] if c not in (key, "_previous"))
        return cls(table, (key,), version, columns, _per_row(rows))

    @classmethod
    def keyed(cls, table: sa.Table, key: str | tuple[str, ...], rows: Rows) -> Update:
        """The update of ``rows``: each has the ``key`` column(s) and the columns to set."""
        keys = (key,) if isinstance(key, str) else key
        columns = tuple(c for c in rows[0] if c not in keys)
        return cls(table, keys, None, columns, _per_row(rows))

    @property
    def returning(self) -> tuple[str, ...]:
        return self.key if self.version is not None else ()

    def _guards(self) -> tuple[str, ...]:
        return (*self.key, "_previous") if self.version is not None else self.key

    def parameters(self) -> tuple[str, ...]:
        return (*self._guards(), *self.columns)

    def sql(self, name: str, values: list[list[str]], quote: Callable[[str], str]) -> list[str]:
        """The CTEs: ``values`` holds a list of parameters per row (``per_row``), else one
        list of array parameters."""
        table = quote(self.table.name)
        guards = len(self._guards())
        returning = ", ".join(quote(k) for k in self.returning)
        if self.per_row:
            ctes = []
            for number, given in enumerate(values):
                sets = ", ".join(
                    f"{quote(c)} = {value}"
                    for c, value in zip(self.columns, given[guards:], strict=True)
                )
                where = " AND ".join(
                    f"{quote(k)} = {value}" for k, value in zip(self.key, given, strict=False)
                )
                if self.version is not None:
                    where += f" AND {quote(self.version)} = {given[len(self.key)]}"
                text = f"UPDATE {table} SET {sets} WHERE {where}"  # noqa: S608
                if returning:
                    text += f" RETURNING {returning}"
                ctes.append(f"{name}r{number} AS ({text})")
            return ctes
        [arrays] = values
        keys = [f"_k{i}" for i in range(len(self.key))]
        given_names = ", ".join(quote(f"new_{c}") for c in self.columns)
        sets = ", ".join(f"{quote(c)} = u.{quote('new_' + c)}" for c in self.columns)
        where = " AND ".join(f"t.{quote(k)} = u.{u}" for k, u in zip(self.key, keys, strict=True))
        names = ", ".join(keys)
        if self.version is not None:
            where += f" AND t.{quote(self.version)} = u._previous"
            names += ", _previous"
        text = (
            f"UPDATE {table} AS t SET {sets} "  # noqa: S608
            f"FROM unnest({', '.join(arrays)}) AS u({names}, {given_names}) WHERE {where}"
        )
        if returning:
            text += " RETURNING " + ", ".join(f"t.{quote(k)}" for k in self.returning)
        return [f"{name} AS ({text})"]


def _per_row(rows: Rows) -> int:
    return len(rows) if len(rows) <= PER_ROW_LIMIT else 0


Write = Insert | Update

_STATEMENTS: dict[tuple[Write, str], Any] = {}


def _statement(conn: AsyncConnection, write: Write) -> Any:
    """The write as a SQLAlchemy statement for one row (or an executemany), built once."""
    key = (write, conn.dialect.name)
    known = _STATEMENTS.get(key)
    if known is not None:
        return known
    table = write.table
    statement: Any
    if isinstance(write, Insert):
        statement = dialect_insert(conn, table)
        if write.conflict:
            statement = statement.on_conflict_do_update(
                index_elements=[table.c[c] for c in write.conflict],
                set_={c: statement.excluded[c] for c in write.columns if c not in write.conflict},
                where=(
                    table.c[write.guard] < statement.excluded[write.guard]
                    if write.guard is not None
                    else None
                ),
            )
        if write.returning:
            statement = statement.returning(*(table.c[c] for c in write.returning))
    else:
        condition = sa.and_(
            *(table.c[k] == sa.bindparam(f"_key{i}") for i, k in enumerate(write.key))
        )
        if write.version is not None:
            condition = condition & (table.c[write.version] == sa.bindparam("_previous"))
        statement = table.update().where(condition)
    _STATEMENTS[key] = statement
    return statement


async def _each(conn: AsyncConnection, write: Write, rows: Rows) -> Returned:
    """``write`` as statements of its own; the rows its RETURNING gives back."""
    statement = _statement(conn, write)
    if isinstance(write, Update):
        moved: Returned = []
        for row in rows:
            params = {f"_key{i}": row[k] for i, k in enumerate(write.key)}
            if write.version is not None:
                params["_previous"] = row["_previous"]
            params.update((c, row[c]) for c in write.columns)
            if (await direct.execute(conn, statement, params)).rowcount == 1:
                moved.append(tuple(row[k] for k in write.key))
        return moved if write.returning else []
    if write.returning:
        return [tuple((await direct.execute(conn, statement, row)).one()) for row in rows]
    await direct.execute(conn, statement, list(rows))
    return []


@dataclass(frozen=True)
class _Shape:
    sql: str
    # Per parameter: the write it belongs to, the row (None: an array of every row's values),
    # the row key and the bind processor.
    parameters: tuple[tuple[int, int | None, str, Callable[[Any], Any] | None], ...]


_SHAPES: dict[tuple[Write, ...], _Shape] = {}


def _shape(conn: AsyncConnection, writes: tuple[Write, ...]) -> _Shape:
    known = _SHAPES.get(writes)
    if known is not None:
        return known
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    ctes: list[str] = []
    outputs: list[str] = []
    parameters: list[tuple[int, int | None, str, Callable[[Any], Any] | None]] = []
    for index, write in enumerate(writes):
        groups: list[list[str]] = []
        for row in range(write.per_row) if write.per_row else [None]:
            placeholders = []
            for parameter in write.parameters():
                column = write.table.c.get(parameter)
                if column is None:  # "_previous", the version a versioned Update expects
                    column = write.table.c[write.version]  # type: ignore[union-attr,index]
                parameters.append(
                    (index, row, parameter, column.type._cached_bind_processor(dialect))
                )
                kind = column.type.compile(dialect=dialect)
                placeholders.append(
                    f"${len(parameters)}::{kind}" + ("" if row is not None else "[]")
                )
            groups.append(placeholders)
        written = write.sql(f"w{index}", groups, quote)
        ctes.extend(written)
        if write.returning:
            names = (
                [f"w{index}r{row}" for row in range(write.per_row)]
                if write.per_row
                else [f"w{index}"]
            )
            source = (
                names[0]
                if len(names) == 1
                else "(" + " UNION ALL ".join(f"SELECT * FROM {n}" for n in names) + ") AS u"  # noqa: S608
            )
            order = quote(write.returning[0])
            outputs.extend(
                f"(SELECT array_agg({quote(c)} ORDER BY {order}) FROM {source})"  # noqa: S608
                for c in write.returning
            )
    select = "SELECT " + (", ".join(outputs) if outputs else "1")
    shape = _SHAPES[writes] = _Shape("WITH " + ", ".join(ctes) + " " + select, tuple(parameters))
    return shape


class CommitBatch:
    """Writes gathered by the repositories, then :meth:`execute`d: as one statement on
    PostgreSQL (unless ``one_statement`` is False), else a statement each. Each write's
    ``on_returned`` gets the rows its RETURNING gave back."""

    def __init__(self, *, one_statement: bool = True) -> None:
        self._one_statement = one_statement
        self._writes: list[tuple[Write, Rows, Callable[[Returned], None] | None]] = []

    def add(
        self, write: Write, rows: Rows, on_returned: Callable[[Returned], None] | None = None
    ) -> None:
        if rows:
            self._writes.append((write, rows, on_returned))

    def add_held(self, table: sa.Table, key: str, version: str, rows: Rows, what: str) -> None:
        """Versioned updates of rows this transaction holds (locked, or read ``FOR UPDATE``):
        nobody else can move them, so one that moved anyway fails the commit."""
        if not rows:
            return
        expected = {row[key] for row in rows}

        def check(updated: Returned) -> None:
            moved = expected - {k for (k,) in updated}
            if moved:
                raise RuntimeError(f"{what} {min(moved)} moved under a transaction that held it")

        self.add(Update.versioned(table, key, version, rows), rows, check)

    def __bool__(self) -> bool:
        return bool(self._writes)

    async def execute(self, conn: AsyncConnection) -> None:
        writes, self._writes = self._writes, []
        if not writes:
            return
        if not self._one_statement or conn.dialect.name != "postgresql":
            for write, rows, on_returned in writes:
                returned = await _each(conn, write, rows)
                if on_returned is not None:
                    on_returned(returned)
            return
        shape = _shape(conn, tuple(w for w, _, _ in writes))
        arguments = [
            _values(writes[index][1], row, name, process)
            for index, row, name, process in shape.parameters
        ]
        record = await direct.fetch_row(conn, shape.sql, arguments)
        column = 0
        for write, _, on_returned in writes:
            if not write.returning:
                if on_returned is not None:
                    on_returned([])
                continue
            arrays = [record[column + i] or [] for i in range(len(write.returning))]
            column += len(write.returning)
            if on_returned is not None:
                on_returned(list(zip(*arrays, strict=True)))


async def write_now(conn: AsyncConnection, fill: Callable[[CommitBatch], None]) -> None:
    """What ``fill`` adds to a batch, written at once (a flush before the commit)."""
    batch = CommitBatch()
    fill(batch)
    await batch.execute(conn)


def _values(rows: Rows, row: int | None, name: str, process: Callable[[Any], Any] | None) -> Any:
    """A parameter's value: ``name`` of one row, or of every row as an array."""
    if row is not None:
        value = rows[row][name]
        return value if process is None or value is None else process(value)
    return [
        value if process is None or value is None else process(value)
        for given in rows
        for value in (given[name],)
    ]
