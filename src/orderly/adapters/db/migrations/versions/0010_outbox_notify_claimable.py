"""outbox: a row an update makes claimable NOTIFYs its type too

A consumer whose claim came back empty now waits until one of its rows may come due, or until
it is woken (adapters/db/outbox_queue.py), instead of claiming four times a second. A row that
becomes claimable by an update in another process is something it cannot otherwise know of: put
back unclaimed (a retry's new due time, a shutting-down worker's released claims), sent again (a
redrive of stranded orders), or due earlier. So that wakes it too: the waiter claims, and if the
row is not due yet, waits for exactly that time.

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
CREATE TRIGGER outbox_messages_notify_claimable
AFTER UPDATE OF claimed_by, sent_at, available_at ON outbox_messages
FOR EACH ROW WHEN (
    NEW.sent_at IS NULL AND NEW.claimed_by IS NULL
    AND (
        OLD.claimed_by IS NOT NULL
        OR OLD.sent_at IS NOT NULL
        OR NEW.available_at < OLD.available_at
    )
)
EXECUTE FUNCTION orderly_outbox_notify()
"""
_DROP = "DROP TRIGGER IF EXISTS outbox_messages_notify_claimable ON outbox_messages"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_DROP)
