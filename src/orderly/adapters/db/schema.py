"""The schema check every process runs at start-up, without loading Alembic.

``HEAD_REVISION`` must name the newest migration; a unit test compares it with Alembic's head,
so adding a migration without updating it fails the suite.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

HEAD_REVISION = "0010"


class SchemaOutdated(RuntimeError):
    """The database schema is not at the revision this code needs."""


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(sync_conn: Any) -> str | None:
        if not sa.inspect(sync_conn).has_table("alembic_version"):
            return None
        value = sync_conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        return None if value is None else str(value)

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def check_schema(engine: AsyncEngine) -> None:
    """Refuse to run on a schema older (or newer) than this code's head revision."""
    current = await current_revision(engine)
    if current != HEAD_REVISION:
        raise SchemaOutdated(
            f"the database schema is at revision {current or 'none'}, this orderly needs "
            f"{HEAD_REVISION}: run `orderly migrate`"
        )
