"""The local transport on the real PostgreSQL (SKIP LOCKED claims, LISTEN/NOTIFY wake-ups)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from orderly.adapters.transports.local import LocalTransport
from tests.conftest import throwaway_postgres_database
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
    async with throwaway_postgres_database("orderly_local") as url, registered(namespace, url):
        yield


def unreachable_transport() -> LocalTransport:
    return transport_on("postgresql+asyncpg://postgres@127.0.0.1:1/orderly")
