"""Telling "the database is unreachable right now" apart from every other database error.

Drivers and SQLAlchemy report a lost or refused connection in many shapes: OperationalError
and InterfaceError, asyncpg's own connection and operator-intervention errors (a terminated
backend, a shutdown), a database that does not accept connections, a connection left in a
broken protocol state. All of them mean: retry later, and never reuse that connection.
"""

from __future__ import annotations

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base
from sqlalchemy.exc import DBAPIError, EmulatedDBAPIException, InterfaceError, OperationalError

_DRIVER_CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg_base.InternalClientError,
)
# EmulatedDBAPIException: what SQLAlchemy's asyncpg adapter raises itself, before SQLAlchemy
# wraps it (adapters/db/direct.py begins the adapter's transaction and sees it bare).
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg_base.InternalClientError,
    EmulatedDBAPIException,
)
_SOCKET_ERRORS = (OSError, TimeoutError)
# Class 08: connection exception; 57: operator intervention; 53300: too many connections.
_SQLSTATE_PREFIXES = ("08", "57", "53300")


def is_connection_problem(exc: BaseException, *, socket_errors: bool = False) -> bool:
    """True when ``exc`` (or what it wraps) says the database cannot be used right now.

    Only database errors count: an ``OSError`` raised by a message handler's own code is not
    the database's. ``socket_errors`` also counts bare socket errors, for code that talks to
    the driver directly and nothing else.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, (DBAPIError, *_DRIVER_ERRORS)):
        return socket_errors and isinstance(exc, _SOCKET_ERRORS)
    for cause in _causes(exc):
        if isinstance(cause, _DRIVER_CONNECTION_ERRORS + _SOCKET_ERRORS):
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_SQLSTATE_PREFIXES):
            return True
        if "not currently accepting connections" in str(cause):
            return True
    return False


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return seen
