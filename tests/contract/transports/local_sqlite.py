"""The local transport on a SQLite file."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from orderly.adapters.transports.local import LocalTransport
from tests.contract.transports._local import (
    database_for,
    dead_letter_queue,
    registered,
    transport_for,
    transport_on,
)

__all__ = [
    "database_for",
    "dead_letter_queue",
    "namespace_scope",
    "transport_for",
    "unreachable_transport",
]


@asynccontextmanager
async def namespace_scope(namespace: str) -> AsyncIterator[None]:
    with tempfile.TemporaryDirectory(prefix="orderly-local-") as directory:
        async with registered(namespace, f"sqlite+aiosqlite:///{Path(directory) / 'o.db'}"):
            yield


def unreachable_transport() -> LocalTransport:
    return transport_on("sqlite+aiosqlite:////nonexistent-directory/orderly.db")
