"""Migrations: the same revisions build the same schema on SQLite and PostgreSQL."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orderly.adapters.db.migrate import SchemaOutdated, check_schema, head_revision
from orderly.adapters.db.schema import HEAD_REVISION
from orderly.adapters.db.tables import metadata
from tests.conftest import Backend


async def test_migrated_schema_matches_the_table_definitions(backend: Backend) -> None:
    def diff(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        with warnings.catch_warnings():
            # SQLite's reflection cannot read an index on an expression (the outbox's claim
            # index); it is checked below instead.
            warnings.filterwarnings("ignore", ".*expression-based index", category=Warning)
            return list(compare_metadata(context, metadata))

    async with backend.container.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        if not backend.is_postgres:
            sql = (
                await conn.execute(
                    sa.text("SELECT sql FROM sqlite_master WHERE name = :n"),
                    {"n": "ix_outbox_messages_pending_claim"},
                )
            ).scalar_one()
            assert "(type, (id + 0)) WHERE sent_at IS NULL" in sql


async def test_schema_check_accepts_head_and_refuses_anything_else(backend: Backend) -> None:
    await check_schema(backend.container.engine)
    async with backend.container.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'old'"))
    try:
        with pytest.raises(SchemaOutdated, match="orderly migrate"):
            await check_schema(backend.container.engine)
    finally:
        async with backend.container.engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE alembic_version SET version_num = :head"), {"head": head_revision()}
            )


async def test_stock_can_never_go_negative_or_over_reserve(backend: Backend) -> None:
    async with backend.container.engine.connect() as conn:
        for statement in (
            "UPDATE stock SET on_hand = -1 WHERE sku = 'PROD-001'",
            "UPDATE stock SET reserved = on_hand + 1 WHERE sku = 'PROD-001'",
        ):
            with pytest.raises(sa.exc.IntegrityError):
                await conn.execute(sa.text(statement))
            await conn.rollback()


async def test_event_versions_are_unique_per_order(backend: Backend) -> None:
    async with backend.container.engine.connect() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO orders (id, customer_id, status, currency, total_minor, "
                "payment_method, version, created_at, updated_at) VALUES "
                "('o1', 'c', 'PENDING', 'USD', 1, 'pm', 1, :t, :t)"
            ),
            {"t": backend.clock.now()},
        )
        insert = sa.text(
            "INSERT INTO order_events (order_id, version, type, data, occurred_at, "
            "correlation_id) VALUES ('o1', 1, 'x', '{}', :t, 'o1')"
        )
        await conn.execute(insert, {"t": backend.clock.now()})
        with pytest.raises(sa.exc.IntegrityError):
            await conn.execute(insert, {"t": backend.clock.now()})
        await conn.rollback()


def test_the_start_up_check_knows_the_newest_migration() -> None:
    assert head_revision() == HEAD_REVISION
