"""Alembic environment: always driven from orderly.adapters.db.migrate with a live connection."""

from __future__ import annotations

from alembic import context

from orderly.adapters.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `orderly migrate`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
