"""outbox: NOTIFY carries the types of the new unsent messages (PostgreSQL)

Before, every insert into the outbox woke every waiting consumer of every process, and each
one claimed (mostly nothing). Now the trigger sends one notification per type of unsent row
inserted, so only the consumers of those types wake up; rows written already delivered (a
hand-off) wake nobody.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTIFY_TYPES_FUNCTION = """
CREATE OR REPLACE FUNCTION orderly_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderly_outbox', t.type)
    FROM (SELECT DISTINCT type FROM inserted WHERE sent_at IS NULL) AS t;
    RETURN NULL;
END;
$$
"""
NOTIFY_TYPES_TRIGGER = """
CREATE TRIGGER outbox_messages_notify AFTER INSERT ON outbox_messages
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION orderly_outbox_notify()
"""
NOTIFY_ANY_FUNCTION = """
CREATE OR REPLACE FUNCTION orderly_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderly_outbox', '');
    RETURN NULL;
END;
$$
"""
NOTIFY_ANY_TRIGGER = """
CREATE TRIGGER outbox_messages_notify AFTER INSERT ON outbox_messages
FOR EACH STATEMENT EXECUTE FUNCTION orderly_outbox_notify()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS outbox_messages_notify ON outbox_messages")
        op.execute(NOTIFY_TYPES_FUNCTION)
        op.execute(NOTIFY_TYPES_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS outbox_messages_notify ON outbox_messages")
        op.execute(NOTIFY_ANY_FUNCTION)
        op.execute(NOTIFY_ANY_TRIGGER)
