"""Schema migrations (Alembic) run programmatically over the async engine."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from orderly.adapters.db.schema import SchemaOutdated, check_schema, current_revision

__all__ = [
    "SchemaOutdated",
    "alembic_config",
    "check_schema",
    "current_revision",
    "head_revision",
    "upgrade",
]


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "orderly.adapters.db:migrations")
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply every migration up to ``revision``."""

    def run(sync_conn: Any) -> None:
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
