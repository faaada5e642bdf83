"""Repositories message handlers and the consumer runtime use, on SQLAlchemy Core.

Same SQL on SQLite and PostgreSQL. Stock moves with conditional updates (``WHERE on_hand -
reserved >= n``), never read-then-write; order transitions with optimistic versions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from orderly.adapters.db import direct
from orderly.adapters.db.batch import CommitBatch, Update
from orderly.adapters.db.tables import (
    dead_letter_replays,
    dead_letters,
    idempotency_keys,
    message_failures,
    order_events,
    order_lines,
    orders,
    outbox_messages,
    processed_messages,
    sagas,
    stock,
    warehouses,
)
from orderly.domain.events import ORDER_PLACED, Message
from orderly.domain.orders import OrderStatus
from orderly.domain.processing import Allocation, StoredLine, StoredOrder, Transition
from orderly.services.ports import DeadLetter, FailedAttempt, NewDeadLetter, Replay

_ORDER = sa.select(orders.c.id, orders.c.customer_id, orders.c.status, orders.c.version).where(
    orders.c.id == sa.bindparam("order_id")
)
_LINES = (
    sa.select(order_lines.c.sku, order_lines.c.quantity)
    .where(order_lines.c.order_id == sa.bindparam("order_id"))
    .order_by(order_lines.c.line_no)
)
_MOVE_ORDER = (
    orders.update()
    .where(orders.c.id == sa.bindparam("_id"), orders.c.version == sa.bindparam("_from"))
    .values(
        status=sa.bindparam("status"),
        failure_reason=sa.bindparam("failure_reason"),
        version=sa.bindparam("version"),
        updated_at=sa.bindparam("updated_at"),
    )
)
_AVAILABLE = (
    sa.select(stock.c.warehouse_id, (stock.c.on_hand - stock.c.reserved).label("available"))
    .join(warehouses, warehouses.c.id == stock.c.warehouse_id)
    .where(stock.c.sku == sa.bindparam("sku"), stock.c.on_hand - stock.c.reserved > 0)
    .order_by(warehouses.c.priority, stock.c.warehouse_id)
)
_TAKE = (
    stock.update()
    .where(
        stock.c.sku == sa.bindparam("_sku"),
        stock.c.warehouse_id == sa.bindparam("_warehouse"),
        stock.c.on_hand - stock.c.reserved >= sa.bindparam("_n"),
    )
    .values(on_hand=stock.c.on_hand - sa.bindparam("_n"))
)
_PUT_BACK = (
    stock.update()
    .where(stock.c.sku == sa.bindparam("_sku"), stock.c.warehouse_id == sa.bindparam("_warehouse"))
    .values(on_hand=stock.c.on_hand + sa.bindparam("_n"))
)
_ACK_ROW = (
    outbox_messages.update()
    .where(outbox_messages.c.id == sa.bindparam("_id"))
    .values(sent_at=sa.bindparam("sent_at"), claimed_by=None, claimed_until=None)
)
# Taking stock can lose a race on PostgreSQL (the row read is stale by the time it is
# updated); the loop re-reads, a few times at most.
_TAKE_ROUNDS = 5


_UNSTARTED = (
    sa.select(orders.c.id)
    .where(
        orders.c.status == "PENDING",
        orders.c.created_at < sa.bindparam("placed_before"),
        ~sa.exists().where(sagas.c.key == orders.c.id),
        sa.exists().where(
            outbox_messages.c.key == orders.c.id,
            outbox_messages.c.type == ORDER_PLACED,
            outbox_messages.c.sent_at.is_not(None),
        ),
    )
    .order_by(orders.c.created_at)
    .limit(sa.bindparam("limit"))
)
_REQUEUE_PLACED = (
    outbox_messages.update()
    .where(
        outbox_messages.c.key.in_(sa.bindparam("keys", expanding=True)),
        outbox_messages.c.type == ORDER_PLACED,
        outbox_messages.c.sent_at.is_not(None),
    )
    .values(
        sent_at=None,
        available_at=sa.bindparam("now"),
        claimed_by=None,
        claimed_until=None,
        attempts=0,
    )
)


class SqlOrderStates:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def redrive_unstarted(
        self, placed_before: datetime, now: datetime, limit: int
    ) -> list[str]:
        found = await self._conn.execute(
            _UNSTARTED, {"placed_before": placed_before, "limit": limit}
        )
        ids = [row.id for row in found]
        if ids:
            await self._conn.execute(_REQUEUE_PLACED, {"keys": ids, "now": now})
        return ids

    async def load(self, order_id: str) -> StoredOrder | None:
        row = (await self._conn.execute(_ORDER, {"order_id": order_id})).one_or_none()
        if row is None:
            return None
        lines = await self._conn.execute(_LINES, {"order_id": order_id})
        return StoredOrder(
            id=row.id,
            customer_id=row.customer_id,
            status=OrderStatus(row.status),
            version=row.version,
            lines=tuple(StoredLine(r.sku, r.quantity) for r in lines),
        )

    async def apply(self, transition: Transition) -> bool:
        event = transition.event
        moved = await self._conn.execute(
            _MOVE_ORDER,
            {
                "_id": transition.order_id,
                "_from": transition.from_version,
                "status": transition.status.value,
                "failure_reason": transition.failure_reason,
                "version": event.version,
                "updated_at": event.occurred_at,
            },
        )
        if moved.rowcount != 1:
            return False
        await self._conn.execute(
            order_events.insert(),
            {
                "order_id": event.order_id,
                "version": event.version,
                "type": event.type,
                "data": event.data,
                "occurred_at": event.occurred_at,
                "correlation_id": event.correlation_id,
                "causation_id": event.causation_id,
            },
        )
        return True


class SqlStock:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def take(self, sku: str, quantity: int) -> list[Allocation] | None:
        taken: list[Allocation] = []
        remaining = quantity
        for _ in range(_TAKE_ROUNDS):
            rows = (await self._conn.execute(_AVAILABLE, {"sku": sku})).all()
            if sum(r.available for r in rows) < remaining:
                break
            for row in rows:
                n = min(row.available, remaining)
                result = await self._conn.execute(
                    _TAKE, {"_sku": sku, "_warehouse": row.warehouse_id, "_n": n}
                )
                if result.rowcount == 1:
                    taken.append(Allocation(sku, row.warehouse_id, n))
                    remaining -= n
                if remaining == 0:
                    return taken
        for allocation in reversed(taken):
            await self.put_back(allocation)
        return None

    async def put_back(self, allocation: Allocation) -> None:
        await self._conn.execute(
            _PUT_BACK,
            {
                "_sku": allocation.sku,
                "_warehouse": allocation.warehouse_id,
                "_n": allocation.quantity,
            },
        )


class SqlKeyStatus:
    """The idempotency records' outcome, following their orders; written at commit (nothing
    in the transaction reads it back)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._statuses: dict[str, str] = {}

    async def follow(self, resource_id: str, status: str) -> None:
        self._statuses[resource_id] = str(status)

    def flush_into(self, batch: CommitBatch) -> None:
        statuses, self._statuses = self._statuses, {}
        rows = [
            {"resource_id": resource_id, "resource_status": status}
            for resource_id, status in sorted(statuses.items())
        ]
        if rows:
            batch.add(Update.keyed(idempotency_keys, "resource_id", rows), rows)


def _record_processed(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(processed_messages)
        .on_conflict_do_nothing()
        .returning(processed_messages.c.message_id)
    )


_RECORD_PROCESSED = {name: _record_processed(name) for name in ("postgresql", "sqlite")}
# PostgreSQL: the acknowledgement rides on the inbox insert (a data-modifying CTE runs whether
# or not the main statement reads it): one round trip instead of two in every transaction.
# Bound by names that are no column of either table, so neither statement takes the other's
# parameters as values to set.
_ACK_AND_RECORD = (
    postgresql.insert(processed_messages)
    .values(
        consumer=sa.bindparam("_consumer"),
        message_id=sa.bindparam("_message"),
        processed_at=sa.bindparam("_at"),
    )
    .on_conflict_do_nothing()
    .returning(processed_messages.c.message_id)
    .add_cte(
        outbox_messages.update()
        .where(outbox_messages.c.id == sa.bindparam("_id"))
        .values(sent_at=sa.bindparam("_sent_at"), claimed_by=None, claimed_until=None)
        .cte("ack")
    )
)


class SqlDeliveryAcks:
    """Acknowledges a local-transport delivery: its outbox row is marked sent.

    On PostgreSQL the statement waits for the unit of work's next inbox insert and goes with it
    (:class:`SqlInbox`), or for the commit (:meth:`flush`); SQLite runs it at once.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._pending: tuple[int, datetime] | None = None

    async def acknowledge(self, handle: object, now: datetime) -> None:
        if not isinstance(handle, int):
            raise TypeError(f"not an outbox row id: {handle!r}")
        if self._conn.dialect.name != "postgresql":
            await direct.execute(self._conn, _ACK_ROW, {"_id": handle, "sent_at": now})
            return
        await self.flush()
        self._pending = (handle, now)

    def take(self) -> tuple[int, datetime] | None:
        """The waiting acknowledgement (row id, time), which the caller now sends."""
        pending, self._pending = self._pending, None
        return pending

    async def flush(self) -> None:
        """Run an acknowledgement no inbox insert took (called before the commit)."""
        pending = self.take()
        if pending is not None:
            await direct.execute(self._conn, _ACK_ROW, {"_id": pending[0], "sent_at": pending[1]})


class SqlInbox:
    def __init__(self, conn: AsyncConnection, acks: SqlDeliveryAcks | None = None) -> None:
        self._conn = conn
        self._acks = acks

    async def record(self, consumer: str, message_id: str, now: datetime) -> bool:
        ack = self._acks.take() if self._acks is not None else None
        if ack is None:
            statement = _RECORD_PROCESSED[self._conn.dialect.name]
            params = {"consumer": consumer, "message_id": message_id, "processed_at": now}
        else:
            statement = _ACK_AND_RECORD
            params = {
                "_consumer": consumer,
                "_message": message_id,
                "_at": now,
                "_id": ack[0],
                "_sent_at": ack[1],
            }
        return (await direct.execute(self._conn, statement, params)).first() is not None


class SqlFailureLog:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def record(self, failure: FailedAttempt) -> None:
        await self._conn.execute(
            message_failures.insert(),
            {
                "consumer": failure.consumer,
                "message_id": failure.message_id,
                "type": failure.type,
                "correlation_id": failure.correlation_id,
                "attempt": failure.attempt,
                "error": failure.error[:4000],
                "permanent": failure.permanent,
                "failed_at": failure.failed_at,
            },
        )

    async def history(self, consumer: str, message_id: str) -> list[FailedAttempt]:
        c = message_failures.c
        rows = await self._conn.execute(
            sa.select(message_failures)
            .where(c.consumer == consumer, c.message_id == message_id)
            .order_by(c.id)
        )
        return [
            FailedAttempt(
                consumer=r.consumer,
                message_id=r.message_id,
                type=r.type,
                correlation_id=r.correlation_id,
                attempt=r.attempt,
                error=r.error,
                permanent=r.permanent,
                failed_at=r.failed_at,
            )
            for r in rows
        ]


def _message_of(row: Any) -> Message:
    return Message(
        id=row.message_id,
        type=row.type,
        key=row.key,
        payload=row.payload,
        created_at=row.message_created_at,
        correlation_id=row.correlation_id,
        causation_id=row.causation_id,
        headers=dict(row.headers),
    )


class SqlDeadLetters:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, letter: NewDeadLetter, now: datetime) -> int:
        message = letter.message
        result = await self._conn.execute(
            dead_letters.insert().returning(dead_letters.c.id),
            {
                "consumer": letter.consumer,
                "message_id": message.id,
                "type": message.type,
                "key": message.key,
                "correlation_id": message.correlation_id,
                "causation_id": message.causation_id,
                "payload": message.payload,
                "headers": message.headers,
                "message_created_at": message.created_at,
                "error": letter.error[:4000],
                "traceback": letter.traceback[-20000:],
                "attempts": letter.attempts,
                "first_failed_at": letter.first_failed_at,
                "last_failed_at": letter.last_failed_at,
                "context": letter.context,
                "status": "parked",
                "created_at": now,
            },
        )
        return int(result.scalar_one())

    async def get(self, letter_id: int) -> DeadLetter | None:
        row = (
            await self._conn.execute(sa.select(dead_letters).where(dead_letters.c.id == letter_id))
        ).one_or_none()
        if row is None:
            return None
        r = dead_letter_replays.c
        replays = await self._conn.execute(
            sa.select(dead_letter_replays).where(r.dead_letter_id == letter_id).order_by(r.id)
        )
        return self._letter(row, tuple(_replay_of(x) for x in replays))

    async def list(
        self, *, status: str | None, consumer: str | None, limit: int, after_id: int
    ) -> list[DeadLetter]:
        c = dead_letters.c
        query = sa.select(dead_letters).where(c.id > after_id).order_by(c.id).limit(limit)
        if status is not None:
            query = query.where(c.status == status)
        if consumer is not None:
            query = query.where(c.consumer == consumer)
        return [self._letter(row, ()) for row in await self._conn.execute(query)]

    async def start_replay(self, letter_id: int, requested_by: str, now: datetime) -> int:
        await self._conn.execute(
            dead_letters.update().where(dead_letters.c.id == letter_id).values(status="replayed")
        )
        result = await self._conn.execute(
            dead_letter_replays.insert().returning(dead_letter_replays.c.id),
            {
                "dead_letter_id": letter_id,
                "requested_by": requested_by,
                "requested_at": now,
                "result": "queued",
                "finished_at": None,
            },
        )
        return int(result.scalar_one())

    async def finish_replay(self, replay_id: int, result: str, now: datetime) -> None:
        await self._conn.execute(
            dead_letter_replays.update()
            .where(dead_letter_replays.c.id == replay_id)
            .values(result=result, finished_at=now)
        )

    @staticmethod
    def _letter(row: Any, replays: tuple[Replay, ...]) -> DeadLetter:
        return DeadLetter(
            id=row.id,
            consumer=row.consumer,
            message=_message_of(row),
            error=row.error,
            traceback=row.traceback,
            attempts=row.attempts,
            first_failed_at=row.first_failed_at,
            last_failed_at=row.last_failed_at,
            context=row.context,
            status=row.status,
            created_at=row.created_at,
            replays=replays,
        )


def _replay_of(row: Any) -> Replay:
    return Replay(
        id=row.id,
        dead_letter_id=row.dead_letter_id,
        requested_by=row.requested_by,
        requested_at=row.requested_at,
        result=row.result,
        finished_at=row.finished_at,
    )
