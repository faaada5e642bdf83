"""saga: saga state and log, reservations and the stock ledger, payments, shipments,
fraud reviews, read models

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 16:17:28.049713
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
Utc = sa.DateTime(timezone=True)

# Stock that existed before the ledger enters it as one adjustment, so the ledger reconciles.
OPENING_LEDGER = """
INSERT INTO stock_ledger (sku, warehouse_id, kind, on_hand_delta, reserved_delta, order_id, at)
SELECT sku, warehouse_id, 'adjust', on_hand, reserved, NULL, CURRENT_TIMESTAMP FROM stock
"""
OPENING_LEVELS = """
INSERT INTO rm_inventory_levels (sku, warehouse_id, on_hand, reserved, updated_at)
SELECT sku, warehouse_id, on_hand, reserved, CURRENT_TIMESTAMP FROM stock
"""


def upgrade() -> None:
    op.create_table(
        "fraud_reviews",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("verdict", Json, nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.Column("expires_at", Utc, nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decided_at", Utc, nullable=True),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_fraud_reviews")),
    )
    with op.batch_alter_table("fraud_reviews", schema=None) as batch_op:
        batch_op.create_index("ix_fraud_reviews_status", ["status", "created_at"], unique=False)

    op.create_table(
        "payment_operations",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_operations")),
    )
    with op.batch_alter_table("payment_operations", schema=None) as batch_op:
        batch_op.create_index("ix_payment_operations_order", ["order_id", "id"], unique=False)

    op.create_table(
        "payments",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("gateway", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("authorized_minor", sa.BigInteger(), nullable=False),
        sa.Column("captured_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), nullable=False),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("updated_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_payments")),
    )
    op.create_table(
        "reservation_lines",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("warehouse_id", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_reservation_lines_quantity_positive")),
        sa.PrimaryKeyConstraint(
            "order_id", "sku", "warehouse_id", name=op.f("pk_reservation_lines")
        ),
    )
    op.create_table(
        "reservations",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", Utc, nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_reservations")),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_reservations_status_expires", ["status", "expires_at"], unique=False
        )

    op.create_table(
        "rm_fulfilment",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("shipments", Json, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_rm_fulfilment")),
    )
    op.create_table(
        "rm_inventory_levels",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("warehouse_id", sa.String(length=64), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("sku", "warehouse_id", name=op.f("pk_rm_inventory_levels")),
    )
    op.create_table(
        "rm_order_history",
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("failure_reason", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("placed_at", Utc, nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_rm_order_history")),
    )
    with op.batch_alter_table("rm_order_history", schema=None) as batch_op:
        batch_op.create_index(
            "ix_rm_order_history_customer", ["customer_id", "placed_at"], unique=False
        )

    op.create_table(
        "saga_log",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("saga_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("detail", Json, nullable=False),
        sa.Column("at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saga_log")),
    )
    with op.batch_alter_table("saga_log", schema=None) as batch_op:
        batch_op.create_index("ix_saga_log_saga", ["saga_id", "id"], unique=False)

    op.create_table(
        "sagas",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("step_status", sa.String(length=32), nullable=False),
        sa.Column("done", Json, nullable=False),
        sa.Column("data", Json, nullable=False),
        sa.Column("deadline_at", Utc, nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("detail", Json, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("resends", sa.Integer(), nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sagas")),
    )
    with op.batch_alter_table("sagas", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sagas_deadline",
            ["deadline_at"],
            unique=False,
            postgresql_where=sa.text("deadline_at IS NOT NULL"),
            sqlite_where=sa.text("deadline_at IS NOT NULL"),
        )
        batch_op.create_index("ix_sagas_key", ["key"], unique=False)

    op.create_table(
        "shipments",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("warehouse_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lines", Json, nullable=False),
        sa.Column("value_minor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipments")),
    )
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.create_index("ix_shipments_order", ["order_id"], unique=False)

    op.create_table(
        "stock_ledger",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("warehouse_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("on_hand_delta", sa.Integer(), nullable=False),
        sa.Column("reserved_delta", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=True),
        sa.Column("at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_ledger")),
    )
    with op.batch_alter_table("stock_ledger", schema=None) as batch_op:
        batch_op.create_index("ix_stock_ledger_item", ["sku", "warehouse_id"], unique=False)
        batch_op.create_index("ix_stock_ledger_order", ["order_id"], unique=False)

    op.execute(OPENING_LEDGER)
    op.execute(OPENING_LEVELS)


def downgrade() -> None:
    with op.batch_alter_table("stock_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_stock_ledger_order")
        batch_op.drop_index("ix_stock_ledger_item")

    op.drop_table("stock_ledger")
    with op.batch_alter_table("shipments", schema=None) as batch_op:
        batch_op.drop_index("ix_shipments_order")

    op.drop_table("shipments")
    with op.batch_alter_table("sagas", schema=None) as batch_op:
        batch_op.drop_index("ix_sagas_key")
        batch_op.drop_index(
            "ix_sagas_deadline",
            postgresql_where=sa.text("deadline_at IS NOT NULL"),
            sqlite_where=sa.text("deadline_at IS NOT NULL"),
        )

    op.drop_table("sagas")
    with op.batch_alter_table("saga_log", schema=None) as batch_op:
        batch_op.drop_index("ix_saga_log_saga")

    op.drop_table("saga_log")
    with op.batch_alter_table("rm_order_history", schema=None) as batch_op:
        batch_op.drop_index("ix_rm_order_history_customer")

    op.drop_table("rm_order_history")
    op.drop_table("rm_inventory_levels")
    op.drop_table("rm_fulfilment")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_status_expires")

    op.drop_table("reservations")
    op.drop_table("reservation_lines")
    op.drop_table("payments")
    with op.batch_alter_table("payment_operations", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_operations_order")

    op.drop_table("payment_operations")
    with op.batch_alter_table("fraud_reviews", schema=None) as batch_op:
        batch_op.drop_index("ix_fraud_reviews_status")

    op.drop_table("fraud_reviews")
