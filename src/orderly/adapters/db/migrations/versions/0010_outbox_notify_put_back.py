"""outbox: a row put back unclaimed (a retry, a release) NOTIFYs its type too

A consumer whose claim came back empty now waits until one of its rows may come due, or until
it is woken (adapters/db/outbox_queue.py), instead of claiming four times a second. A row put
back by another process (a retry's new due time, a shutting-down worker's released claims) is
something it cannot otherwise know of, so it wakes it too: the waiter claims, finds the row
not yet due, and waits for exactly that time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The function of migration 0009: pg_notify('orderly_outbox', NEW.type).
_TRIGGER = """
CREATE TRIGGER outbox_messages_notify_put_back AFTER UPDATE OF claimed_by ON outbox_messages
FOR EACH ROW WHEN (OLD.claimed_by IS NOT NULL AND NEW.claimed_by IS NULL AND NEW.sent_at IS NULL)
EXECUTE FUNCTION orderly_outbox_notify()
"""
_DROP = "DROP TRIGGER IF EXISTS outbox_messages_notify_put_back ON outbox_messages"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_DROP)
