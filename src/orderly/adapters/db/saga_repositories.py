"""Repositories of the saga and its services, on SQLAlchemy Core (SQLite and PostgreSQL).

Stock moves only through conditional updates, and every move is a ``stock_ledger`` entry plus a
``stock.changed`` outbox message (for the inventory read model) in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, fields, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection

from orderly.adapters.db import direct
from orderly.adapters.db.batch import CommitBatch, Insert, Update, write_now
from orderly.adapters.db.engine import dialect_insert, prepared
from orderly.adapters.db.tables import (
    fraud_reviews,
    order_events,
    order_lines,
    orders,
    outbox_messages,
    payment_operations,
    payments,
    reservation_lines,
    reservations,
    saga_log,
    sagas,
    shipments,
    stock,
    stock_ledger,
    warehouses,
)
from orderly.domain.events import Message
from orderly.domain.inventory import Available, LedgerKind, Pick, ReservationStatus
from orderly.domain.saga import LogEntry, SagaState, SagaStatus, StepStatus
from orderly.services.ports import Outbox
from orderly.services.projections import STOCK_CHANGED
from orderly.services.saga_ports import (
    JSON,
    FraudReview,
    NewOrderEvent,
    OrderFacts,
    OrderLineFacts,
    PaymentOperation,
    PaymentRecord,
    ReservedLine,
    Shipment,
)

_TERMINAL = [s.value for s in SagaStatus if s.terminal]
_BEFORE_AUTHORIZATION = ("PENDING", "RESERVED", "HELD_FOR_REVIEW")


def _for_update(conn: AsyncConnection, statement: Any) -> Any:
    return statement.with_for_update() if conn.dialect.name == "postgresql" else statement


class SqlSagaStore:
    """Sagas and their log, on the unit of work's connection.

    A saga this transaction loaded (``FOR UPDATE`` on PostgreSQL; SQLite has one writer) or
    inserted is kept for the rest of the transaction, and its saves and log entries are written
    once, at commit (:meth:`flush_into`): a transaction that handles several replies of one saga
    (hand-offs) reads it once and writes it once.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._held: dict[str, SagaState] = {}
        self._stored_version: dict[str, int] = {}
        """Saga id -> the version in the table, for sagas with a save not written yet."""
        self._log: list[JSON] = []

    async def load(self, saga_id: str) -> SagaState | None:
        held = self._held.get(saga_id)
        if held is not None:
            return held
        statement = prepared(
            self._conn,
            "saga.load",
            lambda: _for_update(
                self._conn, sa.select(sagas).where(sagas.c.id == sa.bindparam("_id"))
            ),
        )
        row = (await direct.execute(self._conn, statement, {"_id": saga_id})).one_or_none()
        if row is None:
            return None
        state = self._held[saga_id] = SagaState(
            id=row.id,
            definition=row.definition,
            key=row.key,
            status=SagaStatus(row.status),
            step=row.step,
            step_status=StepStatus(row.step_status),
            done=tuple(row.done),
            data=row.data,
            deadline=row.deadline_at,
            reason=row.reason,
            detail=row.detail,
            version=row.version,
            resends=row.resends,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )
        return state

    @staticmethod
    def _row(state: SagaState) -> JSON:
        return {
            "status": state.status.value,
            "step": state.step,
            "step_status": state.step_status.value,
            "done": list(state.done),
            "data": dict(state.data),
            "deadline_at": state.deadline,
            "reason": state.reason,
            "detail": dict(state.detail),
            "version": state.version,
            "resends": state.resends,
            "updated_at": state.updated_at,
        }

    async def insert(self, state: SagaState) -> bool:
        statement = prepared(
            self._conn,
            "saga.insert",
            lambda: (
                dialect_insert(self._conn, sagas).on_conflict_do_nothing().returning(sagas.c.id)
            ),
        )
        row = {
            "id": state.id,
            "definition": state.definition,
            "key": state.key,
            "created_at": state.created_at,
            **self._row(state),
        }
        inserted = (await direct.execute(self._conn, statement, row)).first() is not None
        if inserted:
            self._held[state.id] = state
        return inserted

    async def save(self, state: SagaState) -> bool:
        held = self._held.get(state.id)
        if held is not None and held.version == state.version - 1:
            # Held by this transaction: nobody else can move it, so the write can wait.
            self._stored_version.setdefault(state.id, held.version)
            self._held[state.id] = state
            return True
        return await self._update(state, state.version - 1)

    async def _update(self, state: SagaState, previous: int) -> bool:
        statement = prepared(
            self._conn,
            "saga.save",
            lambda: sagas.update().where(
                sagas.c.id == sa.bindparam("_id"), sagas.c.version == sa.bindparam("_previous")
            ),
        )
        params = {"_id": state.id, "_previous": previous, **self._row(state)}
        result = await direct.execute(self._conn, statement, params)
        return bool(result.rowcount == 1)

    async def log(self, saga_id: str, entries: Sequence[LogEntry], at: datetime) -> None:
        self._log.extend(
            {"saga_id": saga_id, "kind": e.kind, "step": e.step, "detail": dict(e.detail), "at": at}
            for e in entries
        )

    def flush_into(self, batch: CommitBatch) -> None:
        """The held sagas' saves and the log, as writes of ``batch`` (the unit of work's
        commit)."""
        stored, self._stored_version = self._stored_version, {}
        rows = [
            {"id": saga_id, "_previous": previous, **self._row(self._held[saga_id])}
            for saga_id, previous in sorted(stored.items())
        ]
        batch.add_held(sagas, "id", "version", rows, "saga")
        entries, self._log = self._log, []
        batch.add(Insert.of(saga_log, entries), entries)

    async def due(self, now: datetime, limit: int) -> list[str]:
        rows = await self._conn.execute(
            sa.select(sagas.c.id)
            .where(
                sagas.c.deadline_at.is_not(None),
                sagas.c.deadline_at <= now,
                sagas.c.status.not_in(_TERMINAL),
            )
            .order_by(sagas.c.deadline_at)
            .limit(limit)
        )
        return [r.id for r in rows]


_SELECT_ORDER = sa.select(orders).where(orders.c.id == sa.bindparam("order_id"))
_SELECT_LINES = (
    sa.select(order_lines)
    .where(order_lines.c.order_id == sa.bindparam("order_id"))
    .order_by(order_lines.c.line_no)
)


def _line_arrays() -> list[Any]:
    """The order's lines as four arrays (in line order), for a statement on ``orders``."""
    ol = order_lines.c

    def agg(column: Any) -> Any:
        return sa.func.array_agg(aggregate_order_by(column, ol.line_no))

    return [
        agg(ol.sku).label("line_skus"),
        agg(ol.name).label("line_names"),
        agg(ol.quantity).label("line_quantities"),
        agg(ol.unit_price_minor).label("line_prices"),
    ]


def _order_with_lines() -> Any:
    """PostgreSQL: the order row and its lines (as arrays, in line order) in one statement."""
    lines = sa.select(*_line_arrays()).where(order_lines.c.order_id == orders.c.id).lateral("lines")
    return (
        sa.select(orders, lines)
        .select_from(orders.outerjoin(lines, sa.true()))
        .where(orders.c.id == sa.bindparam("order_id"))
    )


_SELECT_ORDER_WITH_LINES = _order_with_lines()
_LOCK_ORDER_WITH_LINES = _SELECT_ORDER_WITH_LINES.with_for_update(of=orders)


def _lines_of(row: Any) -> list[OrderLineFacts]:
    """The lines of a row with the four arrays of :func:`_line_arrays`."""
    return [
        OrderLineFacts(*line)
        for line in zip(
            row.line_skus or (),
            row.line_names or (),
            row.line_quantities or (),
            row.line_prices or (),
            strict=True,
        )
    ]


def _order_append(moving: bool, with_facts: bool) -> Callable[[], Any]:
    """The first append of a transaction: moves the row's version (and status), which locks
    it; with ``with_facts`` (PostgreSQL) it returns the whole order with its lines, so the
    facts need no statement of their own."""

    def build() -> Any:
        values: dict[str, Any] = {
            "version": orders.c.version + sa.bindparam("_count"),
            "updated_at": sa.bindparam("_at"),
        }
        if moving:
            values["status"] = sa.bindparam("_status")
            values["failure_reason"] = sa.bindparam("_reason")
        statement = orders.update().where(orders.c.id == sa.bindparam("_id")).values(**values)
        if not with_facts:
            return statement.returning(orders.c.version, orders.c.status, orders.c.failure_reason)
        arrays = [
            sa.select(array.element)
            .where(order_lines.c.order_id == orders.c.id)
            .scalar_subquery()
            .label(array.name)
            for array in _line_arrays()
        ]
        return statement.returning(*orders.c, *arrays)

    return build


_RECENT_ORDERS = (
    sa.select(sa.func.count())
    .select_from(orders)
    .where(
        orders.c.customer_id == sa.bindparam("_customer"),
        orders.c.created_at >= sa.bindparam("_since"),
    )
)


class SqlOrderStream:
    """An order's facts and its event stream, on the unit of work's connection.

    Facts read once are kept for the rest of the transaction (the lines never change, and the
    status and version only change through :meth:`append`, which updates them), so the several
    handlers one transaction may run for an order read it once.

    The first append to an order in a transaction updates its row at once: that allocates the
    event versions and locks the row until the commit. Later appends in the same transaction
    number their events from the version this transaction holds and move the row at commit
    (:meth:`flush_into`), with the events: one statement for the row however many appends.
    ``facts(..., lock=True)`` (PostgreSQL) locks the row as it reads it (``FOR UPDATE``); every
    append then takes the later appends' way.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._facts: dict[str, OrderFacts] = {}
        self._events: list[JSON] = []
        self._stored: dict[str, int] = {}
        """Order id -> the version of its row in the table, for rows this transaction locked."""
        self._moved: dict[str, JSON] = {}
        """Order id -> the row's new version, status and time, not written yet."""

    async def flush(self) -> None:
        """Write the appended events now (before anything reads the stream back)."""
        await write_now(self._conn, self.flush_into)

    def flush_into(self, batch: CommitBatch) -> None:
        """The appended events and the rows they moved, as writes of ``batch`` (the unit of
        work's commit)."""
        events, self._events = self._events, []
        batch.add(Insert.of(order_events, events), events)
        moved, self._moved = self._moved, {}
        rows = [
            {"id": order_id, "_previous": self._stored[order_id], **row}
            for order_id, row in sorted(moved.items())
        ]
        for row in rows:
            self._stored[row["id"]] = row["version"]
        batch.add_held(orders, "id", "version", rows, "order")

    async def facts(self, order_id: str, *, lock: bool = False) -> OrderFacts | None:
        on_postgres = self._conn.dialect.name == "postgresql"
        lock = lock and on_postgres  # SQLite has one writer: the append moves the row
        known = self._facts.get(order_id)
        if known is not None and (not lock or order_id in self._stored):
            return known
        if on_postgres:
            statement = _LOCK_ORDER_WITH_LINES if lock else _SELECT_ORDER_WITH_LINES
            params = {"order_id": order_id}
            row = (await direct.execute(self._conn, statement, params)).one_or_none()
            if row is None:
                return None
            if lock:
                # Locked as the first append would lock it: appends number from this version
                # and the row moves at commit (:meth:`append`).
                self._stored[order_id] = row.version
            return self._keep(row, _lines_of(row))
        row = (
            await direct.execute(self._conn, _SELECT_ORDER, {"order_id": order_id})
        ).one_or_none()
        if row is None:
            return None
        found = await direct.execute(self._conn, _SELECT_LINES, {"order_id": order_id})
        lines = [OrderLineFacts(x.sku, x.name, x.quantity, x.unit_price_minor) for x in found]
        return self._keep(row, lines)

    def _keep(self, row: Any, lines: Sequence[OrderLineFacts]) -> OrderFacts:
        facts = self._facts[row.id] = OrderFacts(
            id=row.id,
            customer_id=row.customer_id,
            status=row.status,
            failure_reason=row.failure_reason,
            version=row.version,
            currency=row.currency,
            total_minor=row.total_minor,
            payment_method=row.payment_method,
            shipping_address=row.shipping_address,
            lines=tuple(lines),
            created_at=row.created_at,
        )
        return facts

    async def append(
        self,
        order_id: str,
        events: Sequence[NewOrderEvent],
        at: datetime,
        correlation_id: str,
        causation_id: str | None,
    ) -> list[JSON]:
        if not events:
            return []
        moving = [e for e in events if e.status is not None]
        known = self._facts.get(order_id)
        if known is not None and order_id in self._stored:
            # Locked by this transaction's first append: number here, move the row at commit.
            facts = replace(known, version=known.version + len(events))
            if moving:
                facts = replace(
                    facts, status=str(moving[-1].status), failure_reason=moving[-1].failure_reason
                )
            self._facts[order_id] = facts
            self._moved[order_id] = {
                "version": facts.version,
                "status": facts.status,
                "failure_reason": facts.failure_reason,
                "updated_at": at,
            }
        else:
            facts = await self._move(order_id, events, moving, at, known)
        first = facts.version - len(events) + 1
        appended: list[JSON] = []
        for offset, event in enumerate(events):
            data = dict(event.data)
            if event.status is not None:
                data["status"] = str(event.status)
            appended.append(
                {
                    "order_id": order_id,
                    "version": first + offset,
                    "type": event.type,
                    "data": data,
                    "occurred_at": at,
                    "correlation_id": correlation_id,
                    "causation_id": causation_id,
                }
            )
        self._events.extend(appended)
        return [
            {
                "version": e["version"],
                "type": e["type"],
                "data": e["data"],
                "occurredAt": at.isoformat(),
            }
            for e in appended
        ]

    async def _move(
        self,
        order_id: str,
        events: Sequence[NewOrderEvent],
        moving: Sequence[NewOrderEvent],
        at: datetime,
        known: OrderFacts | None,
    ) -> OrderFacts:
        """Move the order's row now (the transaction's first append to it): its new facts."""
        with_facts = known is None and self._conn.dialect.name == "postgresql"
        statement = prepared(
            self._conn,
            ("order.append", bool(moving), with_facts),
            _order_append(bool(moving), with_facts),
        )
        params: JSON = {"_id": order_id, "_count": len(events), "_at": at}
        if moving:
            params["_status"] = str(moving[-1].status)
            params["_reason"] = moving[-1].failure_reason
        row = (await direct.execute(self._conn, statement, params)).one_or_none()
        if row is None:
            raise LookupError(f"order {order_id} does not exist")
        self._stored[order_id] = row.version
        if with_facts:
            return self._keep(row, _lines_of(row))
        if known is None:
            known = await self.facts(order_id)
            if known is None:
                raise LookupError(f"order {order_id} does not exist")
        facts = self._facts[order_id] = replace(
            known, version=row.version, status=row.status, failure_reason=row.failure_reason
        )
        return facts

    async def recent_orders(self, customer_id: str, since: datetime) -> int:
        count = await direct.scalar(
            self._conn, _RECENT_ORDERS, {"_customer": customer_id, "_since": since}
        )
        return int(count or 0)


def stock_changed_payload(changes: Sequence[JSON], now: datetime) -> JSON:
    """The ``stock.changed`` message body for ledger ``changes`` (what the read model adds)."""
    entries = [
        {
            "sku": c["sku"],
            "warehouseId": c["warehouse_id"],
            "kind": c["kind"],
            "onHandDelta": c["on_hand_delta"],
            "reservedDelta": c["reserved_delta"],
            "orderId": c["order_id"],
        }
        for c in changes
    ]
    return {"entries": entries, "at": now.isoformat()}


async def record_stock_changes(
    conn: AsyncConnection,
    changes: Sequence[JSON],
    now: datetime,
    outbox: Outbox | None = None,
    ledger: list[JSON] | None = None,
) -> None:
    """Ledger entries for ``changes`` (written now, or added to ``ledger``, a unit of work's
    buffer written at commit) and one message for the inventory read model, added to
    ``outbox`` (the unit of work's, so a consumer in the same worker may take it at once) or
    else written straight to the table."""
    if not changes:
        return
    entries = [{**c, "at": now} for c in changes]
    if ledger is not None:
        ledger.extend(entries)
    else:
        await direct.execute(conn, _INSERT_LEDGER, entries)
    key = changes[0]["order_id"] or changes[0]["sku"]
    if outbox is not None:
        await outbox.add(
            Message(
                id=str(uuid.uuid4()),
                type=STOCK_CHANGED,
                key=key,
                payload=stock_changed_payload(changes, now),
                created_at=now,
                correlation_id=key,
            )
        )
        return
    await conn.execute(
        outbox_messages.insert(),
        {
            "message_id": str(uuid.uuid4()),
            "type": STOCK_CHANGED,
            "key": key,
            "payload": stock_changed_payload(changes, now),
            "headers": {},
            "correlation_id": key,
            "causation_id": None,
            "created_at": now,
            "available_at": now,
            "attempts": 0,
        },
    )


def _change(
    kind: LedgerKind, sku: str, warehouse: str, on_hand: int, reserved: int, order_id: str | None
) -> JSON:
    return {
        "sku": sku,
        "warehouse_id": warehouse,
        "kind": kind.value,
        "on_hand_delta": on_hand,
        "reserved_delta": reserved,
        "order_id": order_id,
    }


_INSERT_LEDGER = stock_ledger.insert()
_SHIP_STOCK = (
    stock.update()
    .where(stock.c.sku == sa.bindparam("_sku"), stock.c.warehouse_id == sa.bindparam("_warehouse"))
    .values(
        on_hand=stock.c.on_hand - sa.bindparam("_n"), reserved=stock.c.reserved - sa.bindparam("_n")
    )
)

_LINE_KEY = ("order_id", "sku", "warehouse_id")
LineKey = tuple[str, str, str]

_RESERVE = (
    stock.update()
    .where(
        stock.c.sku == sa.bindparam("_sku"),
        stock.c.warehouse_id == sa.bindparam("_warehouse"),
        stock.c.on_hand - stock.c.reserved >= sa.bindparam("_n"),
    )
    .values(reserved=stock.c.reserved + sa.bindparam("_n"))
)


_AVAILABLE = (
    sa.select(
        stock.c.sku,
        stock.c.warehouse_id,
        warehouses.c.priority,
        (stock.c.on_hand - stock.c.reserved).label("available"),
    )
    .join(warehouses, warehouses.c.id == stock.c.warehouse_id)
    .where(stock.c.sku.in_(sa.bindparam("_skus", expanding=True)))
)
_LINES = (
    sa.select(reservation_lines)
    .where(reservation_lines.c.order_id == sa.bindparam("_order"))
    .order_by(reservation_lines.c.sku, reservation_lines.c.warehouse_id)
)
_LINES_IN = _LINES.where(reservation_lines.c.status == sa.bindparam("_status"))


class SqlReservations:
    """Reservations and the stock rows they hold, on the unit of work's connection.

    Stock rows are the rows orders of one SKU contend for. Every transaction locks them in
    (sku, warehouse) order, so two never deadlock: :meth:`reserve` takes its picks in that
    order, and shipping, which does not change what is available (on hand and reserved fall
    together), is applied at commit (:meth:`flush_stock`), summed and in that order, holding
    the rows only for the commit.
    """

    def __init__(
        self,
        conn: AsyncConnection,
        outbox: Outbox | None = None,
        on_lock: Callable[[], None] | None = None,
    ) -> None:
        self._conn = conn
        self._outbox = outbox
        self._on_lock = on_lock
        """Told when an order's reservation is locked (the shipments' reads may be stale)."""
        self._shipped: dict[tuple[str, str], int] = {}
        self._ledger: list[JSON] = []  # stock ledger entries, written at commit
        # Reservation lines made and settled, and headers moved, written at commit (or before
        # this transaction reads lines): the header lock is held from the move to the commit.
        self._new_lines: dict[LineKey, JSON] = {}
        self._settled: dict[LineKey, str] = {}
        self._headers: dict[str, JSON] = {}
        # PostgreSQL: reservations this transaction locked (``FOR UPDATE`` on the header), with
        # the header's status, and their lines once read. Every writer of an order's lines
        # holds that lock, so until the commit only this transaction changes them: the lines
        # are read once and kept current here.
        self._locked: dict[str, str] = {}
        self._held_lines: dict[str, dict[tuple[str, str], tuple[int, str]]] = {}

    def flush_into(self, batch: CommitBatch) -> None:
        """The stock ledger entries and the reservations' writes, as writes of ``batch`` (the
        unit of work's commit, which then calls :meth:`flush_stock`)."""
        entries, self._ledger = self._ledger, []
        batch.add(Insert.of(stock_ledger, entries), entries)
        self._reservation_writes(batch)

    def _reservation_writes(self, batch: CommitBatch) -> None:
        new, self._new_lines = self._new_lines, {}
        rows = [new[key] for key in sorted(new)]
        batch.add(Insert.of(reservation_lines, rows), rows)
        settled, self._settled = self._settled, {}
        moves = [
            dict(zip(_LINE_KEY, key, strict=True), status=settled[key]) for key in sorted(settled)
        ]
        if moves:
            batch.add(Update.keyed(reservation_lines, _LINE_KEY, moves), moves)
        headers, self._headers = self._headers, {}
        header_rows = [{"order_id": order_id, **headers[order_id]} for order_id in sorted(headers)]
        if header_rows:
            batch.add(Update.keyed(reservations, "order_id", header_rows), header_rows)

    async def _before_read(self, order_id: str | None = None) -> None:
        """Write the reservations' pending writes (of ``order_id``, or of any order) before a
        statement reads them back."""
        pending = [*self._new_lines, *self._settled]
        if any(order_id is None or key[0] == order_id for key in pending) or (
            self._headers and (order_id is None or order_id in self._headers)
        ):
            await write_now(self._conn, self._reservation_writes)

    async def flush_stock(self) -> None:
        """Apply the shipped units to the stock rows, in key order (called by the unit of work
        as it commits)."""
        shipped, self._shipped = self._shipped, {}
        if shipped:
            await direct.execute(
                self._conn,
                _SHIP_STOCK,
                [
                    {"_sku": sku, "_warehouse": warehouse, "_n": shipped[(sku, warehouse)]}
                    for sku, warehouse in sorted(shipped)
                ],
            )

    async def available(self, skus: Collection[str]) -> list[Available]:
        rows = await self._conn.execute(_AVAILABLE, {"_skus": list(skus)})
        return [Available(r.sku, r.warehouse_id, r.priority, r.available) for r in rows]

    async def open(self, order_id: str, expires_at: datetime, now: datetime) -> str | None:
        statement = prepared(
            self._conn,
            "reservation.open",
            lambda: (
                dialect_insert(self._conn, reservations)
                .on_conflict_do_nothing()
                .returning(reservations.c.order_id)
            ),
        )
        row = {
            "order_id": order_id,
            "status": ReservationStatus.ACTIVE.value,
            "expires_at": expires_at,
            "created_at": now,
            "updated_at": now,
        }
        inserted = (await direct.execute(self._conn, statement, row)).first()
        if inserted is not None:
            return None
        await self._before_read(order_id)
        status = await self._conn.scalar(
            sa.select(reservations.c.status).where(reservations.c.order_id == order_id)
        )
        return str(status)

    async def reserve(self, order_id: str, picks: Sequence[Pick], now: datetime) -> bool:
        done: list[Pick] = []
        # Stock rows are always locked in (sku, warehouse) order (see :meth:`flush_stock`).
        for pick in sorted(picks, key=lambda p: (p.sku, p.warehouse_id)):
            result = await direct.execute(
                self._conn,
                _RESERVE,
                {"_sku": pick.sku, "_warehouse": pick.warehouse_id, "_n": pick.quantity},
            )
            if result.rowcount != 1:
                for undo in reversed(done):
                    await self._conn.execute(
                        stock.update()
                        .where(stock.c.sku == undo.sku, stock.c.warehouse_id == undo.warehouse_id)
                        .values(reserved=stock.c.reserved - undo.quantity)
                    )
                return False
            done.append(pick)
        held = self._held_lines.get(order_id)
        for p in picks:
            if held is not None:
                held[(p.sku, p.warehouse_id)] = (p.quantity, ReservationStatus.ACTIVE.value)
            self._new_lines[(order_id, p.sku, p.warehouse_id)] = {
                "order_id": order_id,
                "sku": p.sku,
                "warehouse_id": p.warehouse_id,
                "quantity": p.quantity,
                "status": ReservationStatus.ACTIVE.value,
            }
        await record_stock_changes(
            self._conn,
            [
                _change(LedgerKind.RESERVE, p.sku, p.warehouse_id, 0, p.quantity, order_id)
                for p in picks
            ],
            now,
            self._outbox,
            self._ledger,
        )
        return True

    async def lines(
        self, order_id: str, status: str | None = None, *, lock: bool = False
    ) -> list[ReservedLine]:
        if lock:
            await self._lock_header(order_id)
        held = self._held_lines.get(order_id)
        if held is None and order_id in self._locked:
            await self._before_read(order_id)
            rows = await direct.execute(self._conn, _LINES, {"_order": order_id})
            held = self._held_lines[order_id] = {
                (r.sku, r.warehouse_id): (r.quantity, r.status) for r in rows
            }
        if held is not None:
            return [
                ReservedLine(sku, warehouse_id, quantity)
                for (sku, warehouse_id), (quantity, line_status) in sorted(held.items())
                if status is None or line_status == status
            ]
        await self._before_read(order_id)
        if status is None:
            rows = await direct.execute(self._conn, _LINES, {"_order": order_id})
        else:
            rows = await direct.execute(
                self._conn, _LINES_IN, {"_order": order_id, "_status": status}
            )
        return [ReservedLine(r.sku, r.warehouse_id, r.quantity) for r in rows]

    async def _settle(
        self, order_id: str, lines: Sequence[ReservedLine], status: ReservationStatus
    ) -> None:
        held = self._held_lines.get(order_id)
        for line in lines:
            if held is not None:
                held[(line.sku, line.warehouse_id)] = (line.quantity, status.value)
            key = (order_id, line.sku, line.warehouse_id)
            made = self._new_lines.get(key)
            if made is not None:
                made["status"] = status.value
            else:
                self._settled[key] = status.value

    async def _lock_header(self, order_id: str) -> str | None:
        moved = self._headers.get(order_id)
        if moved is not None:  # moved by this transaction, which locked it to do so
            return str(moved["status"])
        if order_id in self._locked:
            return self._locked[order_id]
        statement = prepared(
            self._conn,
            "reservation.lock",
            lambda: _for_update(
                self._conn,
                sa.select(reservations.c.status).where(
                    reservations.c.order_id == sa.bindparam("_order")
                ),
            ),
        )
        found = await direct.scalar(self._conn, statement, {"_order": order_id})
        if self._on_lock is not None:
            self._on_lock()
        if found is None:  # no row, so nothing locked
            return None
        if self._conn.dialect.name == "postgresql":
            self._locked[order_id] = str(found)
        return str(found)

    async def release(
        self, order_id: str, now: datetime, *, expired: bool = False
    ) -> list[ReservedLine]:
        header = await self._lock_header(order_id)
        final = ReservationStatus.EXPIRED if expired else ReservationStatus.RELEASED
        if header is None:
            if not expired:
                # Released before it was made: a late reserve command must find this.
                await self._conn.execute(
                    dialect_insert(self._conn, reservations)
                    .values(
                        order_id=order_id,
                        status=final.value,
                        expires_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing()
                )
            return []
        held = await self.lines(order_id, ReservationStatus.ACTIVE)
        for line in sorted(held, key=lambda x: (x.sku, x.warehouse_id)):
            await self._conn.execute(
                stock.update()
                .where(stock.c.sku == line.sku, stock.c.warehouse_id == line.warehouse_id)
                .values(reserved=stock.c.reserved - line.quantity)
            )
        await self._settle(order_id, held, ReservationStatus.RELEASED)
        if header == ReservationStatus.ACTIVE:
            self._headers[order_id] = {"status": final.value, "updated_at": now}
        await record_stock_changes(
            self._conn,
            [
                _change(LedgerKind.RELEASE, x.sku, x.warehouse_id, 0, -x.quantity, order_id)
                for x in held
            ],
            now,
            self._outbox,
            self._ledger,
        )
        return held

    async def ship(self, order_id: str, warehouse_id: str, now: datetime) -> list[ReservedLine]:
        await self._lock_header(order_id)
        active = await self.lines(order_id, ReservationStatus.ACTIVE)
        held = [x for x in active if x.warehouse_id == warehouse_id]
        for line in held:
            key = (line.sku, line.warehouse_id)
            self._shipped[key] = self._shipped.get(key, 0) + line.quantity
        await self._settle(order_id, held, ReservationStatus.SHIPPED)
        if held and len(held) == len(active):  # nothing of the order left to ship
            self._headers[order_id] = {"status": ReservationStatus.SHIPPED.value, "updated_at": now}
        await record_stock_changes(
            self._conn,
            [
                _change(LedgerKind.SHIP, x.sku, x.warehouse_id, -x.quantity, -x.quantity, order_id)
                for x in held
            ],
            now,
            self._outbox,
            self._ledger,
        )
        return held

    async def restock(self, order_id: str, lines: Sequence[ReservedLine], now: datetime) -> None:
        for line in sorted(lines, key=lambda x: (x.sku, x.warehouse_id)):
            await self._conn.execute(
                stock.update()
                .where(stock.c.sku == line.sku, stock.c.warehouse_id == line.warehouse_id)
                .values(on_hand=stock.c.on_hand + line.quantity)
            )
        await record_stock_changes(
            self._conn,
            [
                _change(LedgerKind.RESTOCK, x.sku, x.warehouse_id, x.quantity, 0, order_id)
                for x in lines
            ],
            now,
            self._outbox,
            self._ledger,
        )

    async def expiring(self, now: datetime, limit: int) -> list[str]:
        await self._before_read()
        rows = await self._conn.execute(
            sa.select(reservations.c.order_id)
            .join(orders, orders.c.id == reservations.c.order_id)
            .where(
                reservations.c.status == ReservationStatus.ACTIVE.value,
                reservations.c.expires_at <= now,
                orders.c.status.in_(_BEFORE_AUTHORIZATION),
            )
            .order_by(reservations.c.expires_at)
            .limit(limit)
        )
        return [r.order_id for r in rows]


_PAYMENT = sa.select(payments).where(payments.c.order_id == sa.bindparam("_order"))
_PAYMENT_FIELDS = tuple(f.name for f in fields(PaymentRecord))


class SqlPaymentRecords:
    """Payments and the log of gateway operations. A record read or put is kept for the rest
    of the transaction; the puts and the log, which nothing else reads back in it, are written
    at commit."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._operations: list[JSON] = []
        self._records: dict[str, PaymentRecord | None] = {}
        self._put: dict[str, JSON] = {}

    def flush_into(self, batch: CommitBatch) -> None:
        operations, self._operations = self._operations, []
        batch.add(Insert.of(payment_operations, operations), operations)
        put, self._put = self._put, {}
        rows = [put[order_id] for order_id in sorted(put)]
        if rows:
            batch.add(Insert.of(payments, rows, conflict=("order_id",)), rows)

    async def get(self, order_id: str) -> PaymentRecord | None:
        if order_id in self._records:
            return self._records[order_id]
        row = (await direct.execute(self._conn, _PAYMENT, {"_order": order_id})).one_or_none()
        record = self._records[order_id] = (
            None if row is None else PaymentRecord(*(getattr(row, f) for f in _PAYMENT_FIELDS))
        )
        return record

    async def put(self, record: PaymentRecord, now: datetime) -> None:
        self._records[record.order_id] = record
        self._put[record.order_id] = {**asdict(record), "updated_at": now}

    async def tombstone(self, order_id: str, currency: str, now: datetime) -> bool:
        if self._records.get(order_id) is not None:
            return False  # a record exists (perhaps only in this transaction's puts)
        self._records.pop(order_id, None)
        inserted = (
            await self._conn.execute(
                dialect_insert(self._conn, payments)
                .values(
                    order_id=order_id,
                    gateway="none",
                    reference=None,
                    status="VOIDED",
                    currency=currency,
                    authorized_minor=0,
                    captured_minor=0,
                    refunded_minor=0,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
                .returning(payments.c.order_id)
            )
        ).first()
        return inserted is not None

    async def record(self, operation: PaymentOperation, now: datetime) -> None:
        self._operations.append(
            {
                "order_id": operation.order_id,
                "kind": operation.kind,
                "key": operation.key,
                "amount_minor": operation.amount_minor,
                "ok": operation.ok,
                "reference": operation.reference,
                "decline_code": operation.decline_code,
                "message": operation.message,
                "at": now,
            },
        )


def _shipment(row: Any) -> Shipment:
    return Shipment(
        id=row.id,
        order_id=row.order_id,
        warehouse_id=row.warehouse_id,
        status=row.status,
        lines=tuple(ReservedLine(x["sku"], x["warehouseId"], x["quantity"]) for x in row.lines),
        value_minor=row.value_minor,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


_SHIPMENTS_OF = (
    sa.select(shipments)
    .where(shipments.c.order_id == sa.bindparam("_order"))
    .order_by(shipments.c.id)
)
_SHIPMENT = sa.select(shipments).where(shipments.c.id == sa.bindparam("_id"))
_MOVE_SHIPMENT = shipments.update().where(
    shipments.c.id == sa.bindparam("_id"), shipments.c.status == sa.bindparam("_from")
)


class SqlShipments:
    """Shipments, on the unit of work's connection.

    Shipments this transaction creates are kept, moved and written at commit (one write in the
    commit's statement): nobody else can see or move them before then. An order's shipments
    listed from the table are kept until its reservation is locked (:meth:`forget_read`,
    called by :class:`SqlReservations`): that lock is what orders the warehouse's
    transactions of one order, so rows read before it may since have moved. Another
    transaction creating the same shipments (a duplicate fulfil command) fails at commit on
    their keys, so a listing that held only this transaction's own rows stays complete.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._mine: dict[str, Shipment] = {}
        self._listed: dict[str, dict[str, Shipment]] = {}
        """Order id -> its shipments: as read from the table, then this transaction's own."""
        self._read: set[str] = set()
        """Orders whose listing holds rows read from the table."""

    def flush_into(self, batch: CommitBatch) -> None:
        mine, self._mine = self._mine, {}
        rows = [_shipment_row(mine[shipment_id]) for shipment_id in sorted(mine)]
        batch.add(Insert.of(shipments, rows), rows)

    def forget_read(self) -> None:
        """Drop the listings that hold rows read from the table (a reservation was locked)."""
        for order_id in self._read:
            self._listed.pop(order_id, None)
        self._read.clear()

    async def create(self, items: Sequence[Shipment]) -> None:
        for shipment in items:
            if shipment.id in self._mine:
                raise ValueError(f"shipment {shipment.id} created twice")
            self._mine[shipment.id] = shipment
            listing = self._listed.get(shipment.order_id)
            if listing is not None:
                listing[shipment.id] = shipment

    async def for_order(self, order_id: str) -> list[Shipment]:
        listing = self._listed.get(order_id)
        if listing is None:
            rows = await direct.execute(self._conn, _SHIPMENTS_OF, {"_order": order_id})
            listing = {row.id: _shipment(row) for row in rows}
            if listing:
                self._read.add(order_id)
            listing.update((k, v) for k, v in self._mine.items() if v.order_id == order_id)
            self._listed[order_id] = listing
        return [listing[shipment_id] for shipment_id in sorted(listing)]

    async def get(self, shipment_id: str) -> Shipment | None:
        mine = self._mine.get(shipment_id)
        if mine is not None:
            return mine
        row = (await direct.execute(self._conn, _SHIPMENT, {"_id": shipment_id})).one_or_none()
        return None if row is None else _shipment(row)

    async def move(self, shipment_id: str, from_status: str, to_status: str, now: datetime) -> bool:
        mine = self._mine.get(shipment_id)
        if mine is not None:
            if mine.status != from_status:
                return False
            moved = replace(mine, status=to_status, updated_at=now)
            self._mine[shipment_id] = moved
        else:
            result = await direct.execute(
                self._conn,
                _MOVE_SHIPMENT,
                {"_id": shipment_id, "_from": from_status, "status": to_status, "updated_at": now},
            )
            if result.rowcount != 1:
                return False
            found = next((x for x in self._listed.values() if shipment_id in x), None)
            if found is None:
                return True
            moved = replace(found[shipment_id], status=to_status, updated_at=now)
        listing = self._listed.get(moved.order_id)
        if listing is not None:
            listing[shipment_id] = moved
        return True


def _shipment_row(s: Shipment) -> JSON:
    return {
        "id": s.id,
        "order_id": s.order_id,
        "warehouse_id": s.warehouse_id,
        "status": s.status,
        "lines": [
            {"sku": x.sku, "warehouseId": x.warehouse_id, "quantity": x.quantity} for x in s.lines
        ],
        "value_minor": s.value_minor,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


class SqlFraudReviews:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def open(self, review: FraudReview) -> None:
        await self._conn.execute(
            dialect_insert(self._conn, fraud_reviews)
            .values(
                order_id=review.order_id,
                status=review.status,
                verdict=dict(review.verdict),
                created_at=review.created_at,
                expires_at=review.expires_at,
            )
            .on_conflict_do_nothing()
        )

    async def get(self, order_id: str) -> FraudReview | None:
        row = (
            await self._conn.execute(
                sa.select(fraud_reviews).where(fraud_reviews.c.order_id == order_id)
            )
        ).one_or_none()
        if row is None:
            return None
        return FraudReview(
            order_id=row.order_id,
            status=row.status,
            verdict=row.verdict,
            created_at=row.created_at,
            expires_at=row.expires_at,
            decided_by=row.decided_by,
            decided_at=row.decided_at,
        )

    async def decide(self, order_id: str, status: str, by: str, now: datetime) -> bool:
        result = await self._conn.execute(
            fraud_reviews.update()
            .where(fraud_reviews.c.order_id == order_id, fraud_reviews.c.status == "PENDING")
            .values(status=status, decided_by=by, decided_at=now)
        )
        return result.rowcount == 1
