"""outbox: the NOTIFY trigger fires per row, only for a row inserted unsent and unclaimed

The trigger was per statement, over a transition table of the inserted rows: PostgreSQL kept a
copy of every row inserted and ran the PL/pgSQL function once per statement, which then found
nothing to notify for most of them (a worker's commit writes its messages claimed by itself).
That was 20-40 µs of every commit statement that inserts into the outbox (auto_explain,
bench/README.md, "Saga"). Now the trigger's ``WHEN`` picks the rows (checked without calling
the function, and without a transition table), and a burst of same-type rows still makes one
notification per type and transaction, since PostgreSQL folds duplicate notifications.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PER_ROW_FUNCTION = """
CREATE OR REPLACE FUNCTION orderly_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderly_outbox', NEW.type);
    RETURN NULL;
END;
$$
"""
_PER_ROW_TRIGGER = """
CREATE TRIGGER outbox_messages_notify AFTER INSERT ON outbox_messages
FOR EACH ROW WHEN (NEW.sent_at IS NULL AND NEW.claimed_by IS NULL)
EXECUTE FUNCTION orderly_outbox_notify()
"""
# As migration 0006 left them.
_PER_STATEMENT_FUNCTION = """
CREATE OR REPLACE FUNCTION orderly_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderly_outbox', t.type)
    FROM (SELECT DISTINCT type FROM inserted WHERE sent_at IS NULL AND claimed_by IS NULL) AS t;
    RETURN NULL;
END;
$$
"""
_PER_STATEMENT_TRIGGER = """
CREATE TRIGGER outbox_messages_notify AFTER INSERT ON outbox_messages
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION orderly_outbox_notify()
"""
_DROP = "DROP TRIGGER IF EXISTS outbox_messages_notify ON outbox_messages"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_DROP)
        op.execute(_PER_ROW_FUNCTION)
        op.execute(_PER_ROW_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_DROP)
        op.execute(_PER_STATEMENT_FUNCTION)
        op.execute(_PER_STATEMENT_TRIGGER)
