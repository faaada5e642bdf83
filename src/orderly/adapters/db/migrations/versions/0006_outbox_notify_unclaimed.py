"""outbox: no NOTIFY for a row written already claimed (PostgreSQL)

A worker's handler transaction may write a message already claimed by that worker, which
delivers it itself after the commit (the local transport's write lease). Waking the
message's consumers would only make them claim nothing, so the trigger now notifies the
types of the rows inserted unsent and unclaimed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION orderly_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderly_outbox', t.type)
    FROM (SELECT DISTINCT type FROM inserted WHERE sent_at IS NULL {claimed}) AS t;
    RETURN NULL;
END;
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION.format(claimed="AND claimed_by IS NULL"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION.format(claimed=""))
