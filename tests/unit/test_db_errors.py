"""Which failures count as "the database is unreachable" (retry later, drop the connection)."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from orderly.adapters.db.errors import is_connection_problem


def wrapped(error: Exception) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, error)


def test_driver_connection_errors_count_wrapped_or_bare() -> None:
    shutdown = asyncpg.exceptions.AdminShutdownError("terminating connection")
    assert is_connection_problem(shutdown)
    assert is_connection_problem(wrapped(shutdown))
    assert is_connection_problem(wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("x")))
    assert is_connection_problem(OperationalError("BEGIN", {}, Exception("database is locked")))


def test_the_asyncpg_adapters_own_errors_count_by_what_they_wrap() -> None:
    """SQLAlchemy's asyncpg adapter raises its DBAPI-style errors bare where the driver is used
    under it (a BEGIN begun by adapters/db/direct.py): judged by the driver error inside."""
    adapter: Any = AsyncAdapt_asyncpg_dbapi  # untyped
    dbapi = adapter(asyncpg)
    closed = asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"
    )
    bare = dbapi.Error(str(closed), closed)
    assert is_connection_problem(bare)
    violation = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert not is_connection_problem(dbapi.IntegrityError(str(violation), violation))


def test_a_database_refusing_connections_counts() -> None:
    refused = asyncpg.exceptions.ObjectNotInPrerequisiteStateError(
        'database "x" is not currently accepting connections'
    )
    assert is_connection_problem(wrapped(refused))


def test_an_error_of_the_handlers_own_code_does_not_count() -> None:
    assert not is_connection_problem(ConnectionError("the payment gateway is down"))
    assert not is_connection_problem(TimeoutError())
    assert not is_connection_problem(ValueError("bad data"))


def test_bare_socket_errors_count_only_where_asked() -> None:
    assert is_connection_problem(ConnectionResetError(), socket_errors=True)


def test_a_constraint_violation_does_not_count() -> None:
    violation = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert not is_connection_problem(IntegrityError("INSERT", {}, violation))
    assert not is_connection_problem(violation)
