"""Schema migrations (Alembic) run programmatically over the async engine."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine


class SchemaOutdated(RuntimeError):
    """The database schema is not at the revision this code needs."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "orderly.adapters.db:migrations")
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(sync_conn: Any) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply every migration up to ``revision``."""

    def run(sync_conn: Any) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def check_schema(engine: AsyncEngine) -> None:
    """Refuse to run on a schema older (or newer) than this code's head revision."""
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaOutdated(
            f"the database schema is at revision {current or 'none'}, this orderly needs "
            f"{head}: run `orderly migrate`"
        )
