"""messaging: inbox, attempt log, dead letters and replays; outbox wake-ups

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
Utc = sa.DateTime(timezone=True)

NOTIFY_FUNCTION = """
CREATE FUNCTION orderly_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderly_outbox', '');
    RETURN NULL;
END;
$$
"""
NOTIFY_TRIGGER = """
CREATE TRIGGER outbox_messages_notify AFTER INSERT ON outbox_messages
FOR EACH STATEMENT EXECUTE FUNCTION orderly_outbox_notify()
"""


def upgrade() -> None:
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_constraint("uq_outbox_messages_message_id", type_="unique")
        batch_op.create_index("ix_outbox_messages_message_id", ["message_id"], unique=False)

    op.create_table(
        "processed_messages",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("processed_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id", name=op.f("pk_processed_messages")),
    )
    op.create_table(
        "message_failures",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("correlation_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("permanent", sa.Boolean(), nullable=False),
        sa.Column("failed_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_failures")),
    )
    op.create_index("ix_message_failures_message", "message_failures", ["consumer", "message_id"])
    op.create_index("ix_message_failures_correlation", "message_failures", ["correlation_id"])
    op.create_table(
        "dead_letters",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("correlation_id", sa.String(length=64), nullable=False),
        sa.Column("causation_id", sa.String(length=64), nullable=True),
        sa.Column("payload", Json, nullable=False),
        sa.Column("headers", Json, nullable=False),
        sa.Column("message_created_at", Utc, nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", Utc, nullable=False),
        sa.Column("last_failed_at", Utc, nullable=False),
        sa.Column("context", Json, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index("ix_dead_letters_status_created", "dead_letters", ["status", "created_at"])
    op.create_index("ix_dead_letters_correlation", "dead_letters", ["correlation_id"])
    op.create_table(
        "dead_letter_replays",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("dead_letter_id", BigId, nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("requested_at", Utc, nullable=False),
        sa.Column("result", sa.String(length=32), nullable=False),
        sa.Column("finished_at", Utc, nullable=True),
        sa.ForeignKeyConstraint(
            ["dead_letter_id"],
            ["dead_letters.id"],
            name=op.f("fk_dead_letter_replays_dead_letter_id_dead_letters"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letter_replays")),
    )
    op.create_index("ix_dead_letter_replays_letter", "dead_letter_replays", ["dead_letter_id"])
    if op.get_bind().dialect.name == "postgresql":
        # Wake the local transport and the relay the moment a message is committed.
        op.execute(NOTIFY_FUNCTION)
        op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS outbox_messages_notify ON outbox_messages")
        op.execute("DROP FUNCTION IF EXISTS orderly_outbox_notify()")
    op.drop_index("ix_dead_letter_replays_letter", table_name="dead_letter_replays")
    op.drop_table("dead_letter_replays")
    op.drop_index("ix_dead_letters_correlation", table_name="dead_letters")
    op.drop_index("ix_dead_letters_status_created", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("ix_message_failures_correlation", table_name="message_failures")
    op.drop_index("ix_message_failures_message", table_name="message_failures")
    op.drop_table("message_failures")
    op.drop_table("processed_messages")
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_messages_message_id")
        batch_op.create_unique_constraint("uq_outbox_messages_message_id", ["message_id"])
