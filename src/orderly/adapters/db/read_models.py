"""The read models on SQLAlchemy Core (SQLite and PostgreSQL): kept live, rebuilt, queried.

Live and rebuilt rows come out of the same folds (:mod:`orderly.services.projections`):

- ``rm_order_history`` and ``rm_fulfilment`` only ever move to a higher stream version (the
  upserts are guarded), so redelivered and late ``order.changed`` messages change nothing.
  When a message arrives before an earlier one of the same order, the missing events are read
  from ``order_events`` (already committed: the stream is written before its message), so a
  row at version n is always the fold of events 1..n.
- ``rm_inventory_levels`` adds each ``stock.changed`` message's deltas once (the inbox).

A rebuild refolds everything from ``order_events`` and ``stock_ledger`` in one transaction that
first locks the read models, so the consumer waits for it. Stock messages the ``projections``
consumer has not applied yet (still in flight, or dead-lettered) are left out of the rebuilt
levels, because the consumer will add them afterwards: counting them now would count them
twice. That relies on outbox rows and inbox records being kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderly.adapters.db import direct
from orderly.adapters.db.batch import CommitBatch, Insert, write_now
from orderly.adapters.db.engine import READ_ONLY, dialect_insert, prepared
from orderly.adapters.db.errors import is_connection_problem
from orderly.adapters.db.tables import (
    dead_letter_replays,
    dead_letters,
    message_failures,
    order_events,
    orders,
    outbox_messages,
    payment_operations,
    processed_messages,
    rm_fulfilment,
    rm_inventory_levels,
    rm_order_history,
    saga_log,
    shipments,
    stock_ledger,
)
from orderly.services.ports import StorageUnavailable
from orderly.services.projections import (
    FULFILMENT,
    INVENTORY_LEVELS,
    ORDER_HISTORY,
    PROJECTIONS,
    STOCK_CHANGED,
    StockEntry,
    StockKey,
    StreamEvent,
    can_skip_the_row,
    events_from_payload,
    fold_fulfilment,
    fold_order_history,
    fold_stock_levels,
    history_row_at,
    needs_earlier_events,
    newer_events,
    objects,
    parse_time,
    stock_entries_from_payload,
    touches_fulfilment,
)
from orderly.services.read_model_ports import OrderAfter, Progress

ORDER_PAGE = 500
LEDGER_PAGE = 5000
ORDER_STREAMS = "order streams"
STOCK_LEDGER = "stock ledger"
_READ_MODEL_TABLES = (rm_order_history, rm_inventory_levels, rm_fulfilment)
_LOCK_READ_MODELS = sa.text(
    "LOCK TABLE rm_order_history, rm_inventory_levels, rm_fulfilment IN SHARE ROW EXCLUSIVE MODE"
)


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _plain(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


def _stream_event(row: Any) -> StreamEvent:
    return StreamEvent(row.version, row.type, row.data, row.occurred_at)


def _add_levels(conn: AsyncConnection) -> Any:
    def build() -> Any:
        levels = rm_inventory_levels.c
        insert = dialect_insert(conn, rm_inventory_levels)
        later = insert.excluded.updated_at > levels.updated_at
        return insert.on_conflict_do_update(
            index_elements=[levels.sku, levels.warehouse_id],
            set_={
                "on_hand": levels.on_hand + insert.excluded.on_hand,
                "reserved": levels.reserved + insert.excluded.reserved,
                "updated_at": sa.case((later, insert.excluded.updated_at), else_=levels.updated_at),
            },
        )

    return prepared(conn, "add levels", build)


_ORDER_TABLES = {table.name: table for table in (rm_order_history, rm_fulfilment)}
_ROW_OF = {
    name: sa.select(table).where(table.c.order_id == sa.bindparam("_order"))
    for name, table in _ORDER_TABLES.items()
}


class SqlReadModels:
    """The read models as the projections consumer writes them, on the unit of work's
    connection.

    The order rows are read once per transaction and written once, at commit
    (:meth:`flush`): the several ``order.changed`` messages one transaction may apply for an
    order (hand-offs) cost one read and one upsert per read model, not one each.
    ``before_stream_read`` is awaited before the order stream is read back (the unit of work
    writes buffered events first).
    """

    def __init__(
        self,
        conn: AsyncConnection,
        before_stream_read: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._conn = conn
        self._before_stream_read = before_stream_read
        self._rows: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._dirty: dict[tuple[str, str], dict[str, Any]] = {}
        self._levels: dict[tuple[str, str], dict[str, Any]] = {}

    async def apply_order_events(
        self,
        order_id: str,
        customer_id: str,
        placed_at: datetime,
        events: Sequence[Mapping[str, Any]],
        *,
        after: OrderAfter | None = None,
    ) -> None:
        parsed = events_from_payload(events)
        if (
            after is not None
            and (rm_order_history.name, order_id) not in self._rows
            and (rm_fulfilment.name, order_id) not in self._rows
            and can_skip_the_row(after, parsed)
        ):
            # The order's state after these events is the history row at their last version,
            # and nothing before them moved fulfilment: upserts that only move the rows
            # forward, without reading them.
            row = history_row_at(
                parsed, after, order_id=order_id, customer_id=customer_id, placed_at=placed_at
            )
            if row is not None:
                self._write(rm_order_history, order_id, row)
            started = fold_fulfilment(parsed, order_id=order_id)
            if started is not None:
                self._write(rm_fulfilment, order_id, started)
            return
        history = await self._row(rm_order_history, order_id)
        version = history["version"] if history else 0
        fresh = newer_events(parsed, version)
        if not fresh:
            return
        if needs_earlier_events(version, fresh):
            stored = await self._stream(order_id, version, fresh[-1].version)
            fresh = newer_events([*stored, *fresh], version)
        row = fold_order_history(
            fresh, order_id=order_id, customer_id=customer_id, placed_at=placed_at, current=history
        )
        if row is not None:
            self._write(rm_order_history, order_id, row)
        if not touches_fulfilment(fresh):
            return
        fulfilment = await self._row(rm_fulfilment, order_id)
        moved = fold_fulfilment(fresh, order_id=order_id, current=fulfilment)
        if moved is not None and (fulfilment is None or moved["version"] > fulfilment["version"]):
            self._write(rm_fulfilment, order_id, moved)

    async def apply_stock_entries(self, entries: Sequence[Mapping[str, Any]], at: datetime) -> None:
        # Summed here and added at commit (:meth:`flush_levels`): the level rows are the
        # hottest rows of the system (every order of a SKU moves one), so they are locked only
        # for the commit, and all in one key order however many stock changes the transaction
        # applied.
        self._levels = fold_stock_levels(stock_entries_from_payload(entries, at), self._levels)

    async def flush(self) -> None:
        """Write what this transaction moved now: the order rows, then the stock level
        increments (the unit of work's commit writes the rows with its other writes)."""
        await write_now(self._conn, self.flush_into)
        await self.flush_levels()

    def flush_into(self, batch: CommitBatch) -> None:
        """The order rows, as writes of ``batch`` (one per table; the caller then calls
        :meth:`flush_levels`)."""
        dirty, self._dirty = self._dirty, {}
        by_table: dict[str, list[dict[str, Any]]] = {}
        for (table_name, _), row in sorted(dirty.items(), key=lambda item: item[0]):
            by_table.setdefault(table_name, []).append(row)
        for table_name, rows in by_table.items():
            upsert = Insert.of(
                _ORDER_TABLES[table_name], rows, conflict=("order_id",), guard="version"
            )
            batch.add(upsert, rows)

    async def flush_levels(self) -> None:
        """The stock level increments, in key order (so two transactions never wait on each
        other's level rows)."""
        levels, self._levels = self._levels, {}
        rows = [levels[key] for key in sorted(levels)]
        if rows:
            await direct.execute(self._conn, _add_levels(self._conn), rows)

    def _write(self, table: sa.Table, order_id: str, row: dict[str, Any]) -> None:
        key = (table.name, order_id)
        self._rows[key] = self._dirty[key] = row

    async def _row(self, table: sa.Table, order_id: str) -> dict[str, Any] | None:
        key = (table.name, order_id)
        if key in self._rows:
            return self._rows[key]
        statement = _ROW_OF[table.name]
        found = (await direct.execute(self._conn, statement, {"_order": order_id})).first()
        row = self._rows[key] = dict(found._mapping) if found is not None else None
        return row

    async def _stream(self, order_id: str, after: int, upto: int) -> list[StreamEvent]:
        if self._before_stream_read is not None:
            await self._before_stream_read()
        rows = await self._conn.execute(
            sa.select(order_events)
            .where(
                order_events.c.order_id == order_id,
                order_events.c.version > after,
                order_events.c.version <= upto,
            )
            .order_by(order_events.c.version)
        )
        return [_stream_event(r) for r in rows]


class _OnEngine:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def _read(self, *, one_snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A read-only connection; with ``one_snapshot`` its transaction's statements all see
        the same committed state (SQLite's transactions always do)."""
        try:
            async with self._engine.connect() as conn:
                await conn.execution_options(**{READ_ONLY: True})
                if one_snapshot and conn.dialect.name == "postgresql":
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                yield conn
        except Exception as exc:
            if is_connection_problem(exc, socket_errors=True):
                raise StorageUnavailable(str(exc)) from exc
            raise


class SqlProjectionStore(_OnEngine):
    """Rebuilds and queries the read models, outside any unit of work."""

    async def rebuild(self, progress: Progress | None = None) -> dict[str, int]:
        report = progress or (lambda phase, done, total: None)
        try:
            async with self._engine.connect() as conn:
                postgres = conn.dialect.name == "postgresql"
                if postgres:
                    # One snapshot for the ledger and the inbox, taken after the lock.
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    if postgres:
                        await conn.execute(_LOCK_READ_MODELS)
                    for table in _READ_MODEL_TABLES:
                        await conn.execute(table.delete())
                    histories, fulfilments = await _rebuild_orders(conn, report)
                    levels = await _rebuild_levels(conn, report)
        except Exception as exc:
            if is_connection_problem(exc, socket_errors=True):
                raise StorageUnavailable(str(exc)) from exc
            raise
        return {ORDER_HISTORY: histories, INVENTORY_LEVELS: levels, FULFILMENT: fulfilments}

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        keys = {
            ORDER_HISTORY: (rm_order_history, [rm_order_history.c.order_id]),
            INVENTORY_LEVELS: (
                rm_inventory_levels,
                [rm_inventory_levels.c.sku, rm_inventory_levels.c.warehouse_id],
            ),
            FULFILMENT: (rm_fulfilment, [rm_fulfilment.c.order_id]),
        }
        snapshot: dict[str, list[dict[str, Any]]] = {}
        async with self._read(one_snapshot=True) as conn, conn.begin():
            for name, (table, order) in keys.items():
                rows = await conn.execute(sa.select(table).order_by(*order))
                snapshot[name] = [_plain(r._mapping) for r in rows]
        return snapshot

    async def customer_history(
        self, customer_id: str, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        history = rm_order_history.c
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(rm_order_history)
                .where(history.customer_id == customer_id)
                .order_by(history.placed_at.desc(), history.order_id)
                .limit(limit)
                .offset(offset)
            )
            return [
                {
                    "orderId": r.order_id,
                    "customerId": r.customer_id,
                    "status": r.status,
                    "failureReason": r.failure_reason,
                    "version": r.version,
                    "placedAt": iso(r.placed_at),
                    "updatedAt": iso(r.updated_at),
                }
                for r in rows
            ]

    async def inventory_levels(self, sku: str | None) -> list[dict[str, Any]]:
        levels = rm_inventory_levels.c
        query = sa.select(rm_inventory_levels).order_by(levels.sku, levels.warehouse_id)
        if sku is not None:
            query = query.where(levels.sku == sku)
        async with self._read() as conn:
            rows = await conn.execute(query)
            return [
                {
                    "sku": r.sku,
                    "warehouseId": r.warehouse_id,
                    "onHand": r.on_hand,
                    "reserved": r.reserved,
                    "available": r.on_hand - r.reserved,
                    "updatedAt": iso(r.updated_at),
                }
                for r in rows
            ]

    async def fulfilment(self, order_id: str) -> dict[str, Any] | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(rm_fulfilment).where(rm_fulfilment.c.order_id == order_id)
                )
            ).first()
        if row is None:
            return None
        return {
            "orderId": row.order_id,
            "status": row.status,
            "shipments": row.shipments,
            "version": row.version,
            "updatedAt": iso(row.updated_at),
        }


async def _rebuild_orders(conn: AsyncConnection, report: Progress) -> tuple[int, int]:
    """Fold every order's stream into its history and fulfilment rows, a page at a time."""
    streamed = order_events.c.order_id
    total = int(await conn.scalar(sa.select(sa.func.count(sa.distinct(streamed)))) or 0)
    report(ORDER_STREAMS, 0, total)
    done = histories = fulfilments = 0
    last = ""
    while True:
        ids = list(
            (
                await conn.execute(
                    sa.select(streamed)
                    .where(streamed > last)
                    .group_by(streamed)
                    .order_by(streamed)
                    .limit(ORDER_PAGE)
                )
            ).scalars()
        )
        if not ids:
            break
        history_rows, fulfilment_rows = await _fold_page(conn, ids)
        if history_rows:
            await conn.execute(rm_order_history.insert(), history_rows)
        if fulfilment_rows:
            await conn.execute(rm_fulfilment.insert(), fulfilment_rows)
        histories += len(history_rows)
        fulfilments += len(fulfilment_rows)
        done += len(ids)
        last = ids[-1]
        report(ORDER_STREAMS, done, total)
    return histories, fulfilments


async def _fold_page(
    conn: AsyncConnection, ids: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    owners = {
        r.id: r
        for r in await conn.execute(
            sa.select(orders.c.id, orders.c.customer_id, orders.c.created_at).where(
                orders.c.id.in_(ids)
            )
        )
    }
    streams: dict[str, list[StreamEvent]] = {order_id: [] for order_id in ids}
    rows = await conn.execute(
        sa.select(order_events)
        .where(order_events.c.order_id.in_(ids))
        .order_by(order_events.c.order_id, order_events.c.version)
    )
    for row in rows:
        streams[row.order_id].append(_stream_event(row))
    history_rows, fulfilment_rows = [], []
    for order_id, events in streams.items():
        owner = owners.get(order_id)
        first = events[0]
        history = fold_order_history(
            events,
            order_id=order_id,
            customer_id=owner.customer_id if owner else str(first.data.get("customerId", "")),
            placed_at=owner.created_at if owner else first.occurred_at,
        )
        if history is not None:
            history_rows.append(history)
        fulfilment = fold_fulfilment(events, order_id=order_id)
        if fulfilment is not None:
            fulfilment_rows.append(fulfilment)
    return history_rows, fulfilment_rows


_EntryKey = tuple[str, str, str, int, int, str | None, datetime]


def _entry_key(entry: StockEntry) -> _EntryKey:
    return (
        entry.sku,
        entry.warehouse_id,
        entry.kind,
        entry.on_hand_delta,
        entry.reserved_delta,
        entry.order_id,
        entry.at,
    )


async def _unapplied_entries(conn: AsyncConnection) -> Counter[_EntryKey]:
    """Ledger entries whose ``stock.changed`` message the projections consumer has not applied."""
    applied = sa.exists().where(
        processed_messages.c.consumer == PROJECTIONS,
        processed_messages.c.message_id == outbox_messages.c.message_id,
    )
    rows = await conn.execute(
        sa.select(outbox_messages.c.message_id, outbox_messages.c.payload)
        .where(outbox_messages.c.type == STOCK_CHANGED, ~applied)
        .order_by(outbox_messages.c.id)
    )
    pending: Counter[_EntryKey] = Counter()
    seen: set[str] = set()
    for row in rows:
        if row.message_id in seen:
            continue  # queued again by a dead-letter replay: one message, counted once
        seen.add(row.message_id)
        try:
            at = parse_time(row.payload.get("at"))
            entries = stock_entries_from_payload(objects(row.payload, "entries"), at)
        except (AttributeError, ValueError):
            continue  # never applicable, so never applied: its entries stay in the ledger
        pending.update(_entry_key(e) for e in entries)
    return pending


async def _rebuild_levels(conn: AsyncConnection, report: Progress) -> int:
    """Fold the ledger, less what is still to be applied, into the inventory levels."""
    pending = await _unapplied_entries(conn)
    total = int(await conn.scalar(sa.select(sa.func.count()).select_from(stock_ledger)) or 0)
    report(STOCK_LEDGER, 0, total)
    levels: dict[StockKey, dict[str, Any]] = {}
    done = last = 0
    while True:
        page = (
            await conn.execute(
                sa.select(stock_ledger)
                .where(stock_ledger.c.id > last)
                .order_by(stock_ledger.c.id)
                .limit(LEDGER_PAGE)
            )
        ).all()
        if not page:
            break
        applied = []
        for row in page:
            entry = StockEntry(
                sku=row.sku,
                warehouse_id=row.warehouse_id,
                kind=row.kind,
                on_hand_delta=row.on_hand_delta,
                reserved_delta=row.reserved_delta,
                order_id=row.order_id,
                at=row.at,
            )
            key = _entry_key(entry)
            if pending[key] > 0:
                pending[key] -= 1
                continue
            applied.append(entry)
        levels = fold_stock_levels(applied, levels)
        done += len(page)
        last = page[-1].id
        report(STOCK_LEDGER, done, total)
    if levels:
        await conn.execute(rm_inventory_levels.insert(), [levels[k] for k in sorted(levels)])
    return len(levels)


# ---- the audit trail -------------------------------------------------------------------------

_RANK = {"attempt": 0, "dead-letter": 1, "payment": 2, "shipment": 3, "saga": 4, "event": 5}


def _entry(at: datetime, source: str, what: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"at": at, "source": source, "what": what, "detail": detail}


def _event_entry(row: Any) -> dict[str, Any]:
    data = row.data if isinstance(row.data, dict) else {}
    what = row.type
    if isinstance(data.get("status"), str):
        what += f" → {data['status']}"
    reason = data.get("failureReason") or (data.get("reason") if data.get("status") else None)
    if reason:
        what += f" ({reason})"
    detail = {
        "version": row.version,
        "type": row.type,
        "data": data,
        "correlationId": row.correlation_id,
        "causationId": row.causation_id,
    }
    return _entry(row.occurred_at, "event", what, detail)


def _saga_entry(row: Any) -> dict[str, Any]:
    what = f"{row.kind} {row.step}" if row.step else row.kind
    return _entry(row.at, "saga", what, {"kind": row.kind, "step": row.step, **row.detail})


def _attempt_entry(row: Any) -> dict[str, Any]:
    what = f"{row.consumer}: {row.type} attempt {row.attempt} failed"
    if row.permanent:
        what += " (permanent)"
    detail = {
        "consumer": row.consumer,
        "messageId": row.message_id,
        "type": row.type,
        "attempt": row.attempt,
        "error": row.error,
        "permanent": row.permanent,
    }
    return _entry(row.failed_at, "attempt", what, detail)


def _letter_entry(row: Any) -> dict[str, Any]:
    what = f"{row.consumer}: {row.type} dead-lettered after {row.attempts} attempt(s)"
    detail = {
        "deadLetterId": row.id,
        "consumer": row.consumer,
        "messageId": row.message_id,
        "type": row.type,
        "attempts": row.attempts,
        "error": row.error,
        "status": row.status,
        "context": row.context,
    }
    return _entry(row.created_at, "dead-letter", what, detail)


def _replay_entry(row: Any) -> dict[str, Any]:
    what = f"dead letter {row.dead_letter_id} replayed by {row.requested_by}: {row.result}"
    detail = {
        "deadLetterId": row.dead_letter_id,
        "replayId": row.id,
        "requestedBy": row.requested_by,
        "result": row.result,
        "finishedAt": iso(row.finished_at) if row.finished_at else None,
    }
    return _entry(row.requested_at, "dead-letter", what, detail)


def _payment_entry(row: Any, currency: str) -> dict[str, Any]:
    outcome = "ok" if row.ok else f"declined ({row.decline_code or row.message or 'no reason'})"
    what = f"{row.kind} {row.amount_minor} {currency} (minor units): {outcome}"
    detail = {
        "kind": row.kind,
        "amountMinor": row.amount_minor,
        "currency": currency,
        "ok": row.ok,
        "reference": row.reference,
        "declineCode": row.decline_code,
        "message": row.message,
        "key": row.key,
    }
    return _entry(row.at, "payment", what, detail)


def _shipment_entries(row: Any) -> list[dict[str, Any]]:
    detail = {
        "shipmentId": row.id,
        "warehouseId": row.warehouse_id,
        "status": row.status,
        "lines": row.lines,
        "valueMinor": row.value_minor,
    }
    entries = [
        _entry(
            row.created_at,
            "shipment",
            f"shipment {row.id} requested from {row.warehouse_id}",
            detail,
        )
    ]
    if row.status != "REQUESTED":
        what = f"shipment {row.id} {row.status.lower()}"
        entries.append(_entry(row.updated_at, "shipment", what, detail))
    return entries


def _order(row: Any) -> dict[str, Any]:
    return {
        "orderId": row.id,
        "customerId": row.customer_id,
        "status": row.status,
        "failureReason": row.failure_reason,
        "currency": row.currency,
        "totalAmount": row.total_minor,
        "version": row.version,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
    }


class SqlTrail(_OnEngine):
    """An order's audit trail: its events, saga log, failed attempts, dead letters and their
    replays, payment operations and shipments, merged in time order."""

    async def trail(self, order_id: str) -> dict[str, Any] | None:
        async with self._read(one_snapshot=True) as conn, conn.begin():
            order = (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).first()
            if order is None:
                return None
            entries = await _trail_entries(conn, order_id, order.currency)
        ordered = sorted(
            enumerate(entries), key=lambda e: (e[1]["at"], _RANK[e[1]["source"]], e[0])
        )
        return {
            "order": _order(order),
            "entries": [{**entry, "at": iso(entry["at"])} for _, entry in ordered],
        }


async def _trail_entries(
    conn: AsyncConnection, order_id: str, currency: str
) -> list[dict[str, Any]]:
    async def rows(query: Any) -> list[Any]:
        return list((await conn.execute(query)).all())

    entries = [
        _event_entry(r)
        for r in await rows(
            sa.select(order_events)
            .where(order_events.c.order_id == order_id)
            .order_by(order_events.c.version)
        )
    ]
    entries += [
        _saga_entry(r)
        for r in await rows(
            sa.select(saga_log).where(saga_log.c.saga_id == order_id).order_by(saga_log.c.id)
        )
    ]
    entries += [
        _attempt_entry(r)
        for r in await rows(
            sa.select(message_failures)
            .where(message_failures.c.correlation_id == order_id)
            .order_by(message_failures.c.id)
        )
    ]
    letters = await rows(
        sa.select(dead_letters)
        .where(dead_letters.c.correlation_id == order_id)
        .order_by(dead_letters.c.id)
    )
    entries += [_letter_entry(r) for r in letters]
    if letters:
        entries += [
            _replay_entry(r)
            for r in await rows(
                sa.select(dead_letter_replays)
                .where(dead_letter_replays.c.dead_letter_id.in_([r.id for r in letters]))
                .order_by(dead_letter_replays.c.id)
            )
        ]
    entries += [
        _payment_entry(r, currency)
        for r in await rows(
            sa.select(payment_operations)
            .where(payment_operations.c.order_id == order_id)
            .order_by(payment_operations.c.id)
        )
    ]
    for row in await rows(
        sa.select(shipments)
        .where(shipments.c.order_id == order_id)
        .order_by(shipments.c.created_at, shipments.c.id)
    ):
        entries += _shipment_entries(row)
    return entries
