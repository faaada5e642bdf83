"""outbox: one index for the claims, in an order only it serves

The claims took unsent rows ``ORDER BY id`` through a partial index on ``(type, id)``, beside
one on ``available_at``. Which index PostgreSQL used depended on statistics taken at some
earlier moment: with few unsent rows then, it walked every unsent row (the whole backlog of
other types) and sorted; with many, the primary key through every sent row. Under a burst of
orders a claim of one message took over a millisecond. The claims now order by ``id + 0``,
which only this index serves, so a claim of one type stops at its limit.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNSENT = sa.text("sent_at IS NULL")


def upgrade() -> None:
    op.drop_index("ix_outbox_messages_pending_type", table_name="outbox_messages")
    op.drop_index("ix_outbox_messages_pending", table_name="outbox_messages")
    op.create_index(
        "ix_outbox_messages_pending_claim",
        "outbox_messages",
        ["type", sa.text("(id + 0)")],
        postgresql_where=_UNSENT,
        sqlite_where=_UNSENT,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_messages_pending_claim", table_name="outbox_messages")
    op.create_index(
        "ix_outbox_messages_pending",
        "outbox_messages",
        ["available_at"],
        postgresql_where=_UNSENT,
        sqlite_where=_UNSENT,
    )
    op.create_index(
        "ix_outbox_messages_pending_type",
        "outbox_messages",
        ["type", "id"],
        postgresql_where=_UNSENT,
        sqlite_where=_UNSENT,
    )
