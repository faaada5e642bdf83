"""outbox: the relay counts a broker's refusals apart from delivery attempts

``attempts`` counts a message's failed deliveries: the attempt it is next delivered as. A
row that a worker delivered to itself and put back for a retry is published by the relay
with that attempt, so the relay keeps its own count of the broker's refusals.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refusals", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_column("refusals")
