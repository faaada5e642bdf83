"""Table definitions. One schema for SQLite and PostgreSQL; money in integer minor units."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both dialects (SQLite hands back naive values)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json: sa.types.TypeEngine[Any] = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

products = sa.Table(
    "products",
    metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("price_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.CheckConstraint("price_minor >= 0", name="price_not_negative"),
)

warehouses = sa.Table(
    "warehouses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
)

stock = sa.Table(
    "stock",
    metadata,
    sa.Column("sku", sa.String(64), sa.ForeignKey("products.sku"), primary_key=True),
    sa.Column("warehouse_id", sa.String(64), sa.ForeignKey("warehouses.id"), primary_key=True),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False, server_default="0"),
    sa.CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
    sa.CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    sa.CheckConstraint("reserved <= on_hand", name="reserved_within_on_hand"),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("failure_reason", sa.String(64)),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("total_minor", sa.BigInteger, nullable=False),
    sa.Column("payment_method", sa.String(128), nullable=False),
    sa.Column("shipping_address", Json),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_orders_customer_created", "customer_id", "created_at"),
    sa.Index("ix_orders_status_created", "status", "created_at"),
    sa.Index("ix_orders_created", "created_at"),
)

order_lines = sa.Table(
    "order_lines",
    metadata,
    sa.Column("order_id", sa.String(36), sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price_minor", sa.BigInteger, nullable=False),
    sa.CheckConstraint("quantity > 0", name="quantity_positive"),
)

order_events = sa.Table(
    "order_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(36), sa.ForeignKey("orders.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("data", Json, nullable=False),
    sa.Column("occurred_at", UtcDateTime, nullable=False),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("causation_id", sa.String(64)),
    sa.UniqueConstraint("order_id", "version", name="uq_order_events_order_version"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("response_status", sa.Integer),
    sa.Column("response_headers", Json),
    sa.Column("response_body", sa.LargeBinary),
    sa.Column("resource_id", sa.String(64)),
    sa.Column("resource_status", sa.String(32)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "method", "route", "key", name="uq_idempotency_keys_scope"),
    sa.Index("ix_idempotency_keys_expires", "expires_at"),
    sa.Index("ix_idempotency_keys_resource", "resource_id"),
)

outbox_messages = sa.Table(
    "outbox_messages",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    # Not unique: a message replayed from the dead-letter store is queued again under its id.
    sa.Column("message_id", sa.String(36), nullable=False, index=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("headers", Json, nullable=False),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("causation_id", sa.String(64)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("available_at", UtcDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # The broker's refusals of the row (relay), apart from its delivery attempts.
    sa.Column("refusals", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claimed_until", UtcDateTime),
    sa.Column("sent_at", UtcDateTime),
)

CLAIM_ORDER = outbox_messages.c.id + sa.literal_column("0")
"""The order claims take rows in: insertion order, written ``id + 0`` so that only the index
below serves it (``adapters/db/outbox_queue.py``)."""

# The claims' index: the unsent rows by type, in claim order. A claim of one type walks it from
# its first row of that type and stops at the limit, however long the backlog of other types.
# With plain ``id`` order the planner may walk the primary key instead (through every sent row
# before the first unsent one), or every unsent row, whenever its statistics, taken at some
# earlier moment, say the unsent rows are many, or none: seen under a burst of orders, a claim
# of one message taking 1.1 ms. ``id + 0`` is an order no other index has.
sa.Index(
    "ix_outbox_messages_pending_claim",
    outbox_messages.c.type,
    CLAIM_ORDER,
    postgresql_where=sa.text("sent_at IS NULL"),
    sqlite_where=sa.text("sent_at IS NULL"),
)

processed_messages = sa.Table(
    "processed_messages",
    metadata,
    sa.Column("consumer", sa.String(64), primary_key=True),
    sa.Column("message_id", sa.String(36), primary_key=True),
    sa.Column("processed_at", UtcDateTime, nullable=False),
)

message_failures = sa.Table(
    "message_failures",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("consumer", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(36), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("permanent", sa.Boolean, nullable=False),
    sa.Column("failed_at", UtcDateTime, nullable=False),
    sa.Index("ix_message_failures_message", "consumer", "message_id"),
    sa.Index("ix_message_failures_correlation", "correlation_id"),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("consumer", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(36), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("causation_id", sa.String(64)),
    sa.Column("payload", Json, nullable=False),
    sa.Column("headers", Json, nullable=False),
    sa.Column("message_created_at", UtcDateTime, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("traceback", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_failed_at", UtcDateTime, nullable=False),
    sa.Column("last_failed_at", UtcDateTime, nullable=False),
    sa.Column("context", Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index("ix_dead_letters_status_created", "status", "created_at"),
    sa.Index("ix_dead_letters_correlation", "correlation_id"),
)

dead_letter_replays = sa.Table(
    "dead_letter_replays",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("dead_letter_id", BigId, sa.ForeignKey("dead_letters.id"), nullable=False),
    sa.Column("requested_by", sa.String(128), nullable=False),
    sa.Column("requested_at", UtcDateTime, nullable=False),
    sa.Column("result", sa.String(32), nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Index("ix_dead_letter_replays_letter", "dead_letter_id"),
)

sagas = sa.Table(
    "sagas",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("definition", sa.String(64), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("step_status", sa.String(32), nullable=False),
    sa.Column("done", Json, nullable=False),
    sa.Column("data", Json, nullable=False),
    sa.Column("deadline_at", UtcDateTime),
    sa.Column("reason", sa.String(64)),
    sa.Column("detail", Json, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("resends", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_sagas_key", "key"),
    sa.Index(
        "ix_sagas_deadline",
        "deadline_at",
        postgresql_where=sa.text("deadline_at IS NOT NULL"),
        sqlite_where=sa.text("deadline_at IS NOT NULL"),
    ),
)

saga_log = sa.Table(
    "saga_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("saga_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("step", sa.String(64)),
    sa.Column("detail", Json, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_saga_log_saga", "saga_id", "id"),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_reservations_status_expires", "status", "expires_at"),
)

reservation_lines = sa.Table(
    "reservation_lines",
    metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("warehouse_id", sa.String(64), primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.CheckConstraint("quantity > 0", name="quantity_positive"),
)

stock_ledger = sa.Table(
    "stock_ledger",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("warehouse_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("on_hand_delta", sa.Integer, nullable=False),
    sa.Column("reserved_delta", sa.Integer, nullable=False),
    sa.Column("order_id", sa.String(36)),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_stock_ledger_item", "sku", "warehouse_id"),
    sa.Index("ix_stock_ledger_order", "order_id"),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("gateway", sa.String(32), nullable=False),
    sa.Column("reference", sa.String(128)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("authorized_minor", sa.BigInteger, nullable=False),
    sa.Column("captured_minor", sa.BigInteger, nullable=False),
    sa.Column("refunded_minor", sa.BigInteger, nullable=False),
    sa.Column("decline_code", sa.String(64)),
    sa.Column("message", sa.Text),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

payment_operations = sa.Table(
    "payment_operations",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("reference", sa.String(128)),
    sa.Column("decline_code", sa.String(64)),
    sa.Column("message", sa.Text),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_payment_operations_order", "order_id", "id"),
)

shipments = sa.Table(
    "shipments",
    metadata,
    sa.Column("id", sa.String(120), primary_key=True),
    sa.Column("order_id", sa.String(36), nullable=False),
    sa.Column("warehouse_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lines", Json, nullable=False),
    sa.Column("value_minor", sa.BigInteger, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_shipments_order", "order_id"),
)

fraud_reviews = sa.Table(
    "fraud_reviews",
    metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("verdict", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("decided_by", sa.String(128)),
    sa.Column("decided_at", UtcDateTime),
    sa.Index("ix_fraud_reviews_status", "status", "created_at"),
)

# Read models: rebuilt from the order streams and the stock ledger by `orderly projections
# rebuild`; kept current asynchronously by the projections consumer.
rm_order_history = sa.Table(
    "rm_order_history",
    metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("failure_reason", sa.String(64)),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("placed_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_rm_order_history_customer", "customer_id", "placed_at"),
)

rm_inventory_levels = sa.Table(
    "rm_inventory_levels",
    metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("warehouse_id", sa.String(64), primary_key=True),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

rm_fulfilment = sa.Table(
    "rm_fulfilment",
    metadata,
    sa.Column("order_id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("shipments", Json, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)
