"""Projections: the read models as pure folds of the logs, and the consumer that keeps them.

One fold per read model, used both by the live path (the ``projections`` consumer applying
``order.changed`` and ``stock.changed`` messages) and by the rebuild from ``order_events`` and
``stock_ledger``, so the two cannot disagree about what a log means:

- order history: an order's status, failure reason and stream version;
- fulfilment: an order's fulfilment status and shipments, from ``order.fulfilling`` on;
- inventory levels: on hand and reserved per (sku, warehouse), the sums of the ledger deltas.

The order folds are version-guarded: events at or below a row's version are skipped, so a
redelivered or late message changes nothing. Stock entries are deltas; the consumer's inbox
applies each ``stock.changed`` message exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orderly.domain.events import ORDER_PLACED, Message
from orderly.domain.orders import OrderStatus
from orderly.services.consumer import Handler, PermanentError, RetryPolicy
from orderly.services.order_saga import ORDER_CHANGED
from orderly.services.ports import MessageUnitOfWork
from orderly.services.read_model_ports import OrderAfter

PROJECTIONS = "projections"
STOCK_CHANGED = "stock.changed"
"""One message per stock movement transaction, carrying its ledger entries as deltas."""

ORDER_HISTORY = "order_history"
INVENTORY_LEVELS = "inventory_levels"
FULFILMENT = "fulfilment"
READ_MODELS = (ORDER_HISTORY, INVENTORY_LEVELS, FULFILMENT)

FULFIL_STEP = "fulfil"
FAILURE_REASON_WIDTH = 64  # rm_order_history.failure_reason


class FulfilmentStatus:
    """The statuses of the fulfilment read model."""

    FULFILLING = "FULFILLING"
    SHIPPED = "SHIPPED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    RETURNED = "RETURNED"
    CANCEL_FAILED = "CANCEL_FAILED"


class ShipmentStatus:
    """A shipment as the fulfilment read model lists it."""

    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"
    RETURNED = "RETURNED"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of an order's stream, as the folds read it."""

    version: int
    type: str
    data: Mapping[str, Any]
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class StockEntry:
    """One stock ledger entry: deltas of on hand and reserved at one (sku, warehouse)."""

    sku: str
    warehouse_id: str
    kind: str
    on_hand_delta: int
    reserved_delta: int
    order_id: str | None
    at: datetime


# ---- parsing message payloads ----------------------------------------------------------------


def parse_time(value: Any) -> datetime:
    """An ISO 8601 timestamp with an offset (``Z`` accepted), as UTC; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"a timestamp must be an ISO 8601 string, not {value!r}")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without an offset: {value!r}")
    return moment.astimezone(UTC)


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _integer(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    return value


def event_from_payload(raw: Mapping[str, Any]) -> StreamEvent:
    """An event as ``order.changed`` carries it: ``{version, type, data, occurredAt}``."""
    version = _integer(raw, "version")
    if version < 1:
        raise ValueError(f"event versions count from 1, not {version}")
    data = raw.get("data", {})
    if not isinstance(data, Mapping):
        raise ValueError(f"event data must be an object, not {data!r}")
    return StreamEvent(version, _text(raw, "type"), data, parse_time(raw.get("occurredAt")))


def objects(payload: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    """``payload[name]``, which must be a list of objects."""
    value = payload.get(name)
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError(f"{name} must be a list of objects, not {value!r}")
    return value


def events_from_payload(raw: Sequence[Mapping[str, Any]]) -> list[StreamEvent]:
    return [event_from_payload(event) for event in raw]


def order_after_from_payload(payload: Mapping[str, Any]) -> OrderAfter | None:
    """The order's state after the message's events, or None from a message without it (one
    written before it was carried)."""
    status = payload.get("status")
    if status is None:
        return None
    reason = payload.get("failureReason")
    if not isinstance(status, str) or not status or not (reason is None or isinstance(reason, str)):
        raise ValueError("status must be a non-empty string, failureReason a string or null")
    return OrderAfter(status, reason)


def stock_entries_from_payload(raw: Sequence[Mapping[str, Any]], at: datetime) -> list[StockEntry]:
    """Entries as ``stock.changed`` carries them, all made at ``at``."""
    entries = []
    for entry in raw:
        order_id = entry.get("orderId")
        if order_id is not None and not isinstance(order_id, str):
            raise ValueError(f"orderId must be a string or null, not {order_id!r}")
        entries.append(
            StockEntry(
                sku=_text(entry, "sku"),
                warehouse_id=_text(entry, "warehouseId"),
                kind=_text(entry, "kind"),
                on_hand_delta=_integer(entry, "onHandDelta"),
                reserved_delta=_integer(entry, "reservedDelta"),
                order_id=order_id,
                at=at,
            )
        )
    return entries


# ---- the order folds -------------------------------------------------------------------------


def newer_events(events: Iterable[StreamEvent], after_version: int) -> list[StreamEvent]:
    """The events above ``after_version``, one per version, in version order."""
    by_version = {e.version: e for e in events if e.version > after_version}
    return [by_version[v] for v in sorted(by_version)]


def has_gap(after_version: int, events: Sequence[StreamEvent]) -> bool:
    """Whether ``events`` (from :func:`newer_events`) do not continue the stream right after
    ``after_version``: some earlier message has not been applied yet."""
    return any(e.version != after_version + 1 + i for i, e in enumerate(events))


def needs_earlier_events(after_version: int, events: Sequence[StreamEvent]) -> bool:
    """Whether folding ``events`` (from :func:`newer_events`) onto an order's row at
    ``after_version`` (0: no row yet) needs events the stream has and they lack.

    Like :func:`has_gap`, except that a new row may start at version 2: version 1 of every
    order is its ``order.placed`` (``domain/orders.py``), which folds to exactly what a new
    row starts from (PENDING, no reason, no fulfilment), and the later events set the version
    and time. The saga's first transaction, which appends versions 2 and up before any row
    exists, so need not read the stream back.
    """
    if after_version == 0 and events and events[0].version == 2:
        after_version = 1
    return has_gap(after_version, events)


def _status_of(event: StreamEvent) -> str | None:
    status = event.data.get("status")
    if isinstance(status, str) and status:
        return status
    if event.type == ORDER_PLACED:
        return OrderStatus.PENDING.value
    return None


def _failure_reason(status: str, data: Mapping[str, Any]) -> str | None:
    # As on the order row: only a failed or stuck order has a reason; any other move clears it.
    if status not in (OrderStatus.FAILED, OrderStatus.NEEDS_ATTENTION):
        return None
    reason = data.get("failureReason") or data.get("reason")
    return str(reason)[:FAILURE_REASON_WIDTH] if reason else None


def fold_order_history(
    events: Iterable[StreamEvent],
    *,
    order_id: str,
    customer_id: str,
    placed_at: datetime,
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The ``rm_order_history`` row after ``events``, starting from ``current``.

    Events at or below the current version are skipped. None only when there is neither a
    row nor an event.
    """
    row = dict(current) if current is not None else None
    for event in newer_events(events, row["version"] if row else 0):
        if row is None:
            row = {
                "order_id": order_id,
                "customer_id": customer_id,
                "status": OrderStatus.PENDING.value,
                "failure_reason": None,
                "version": 0,
                "placed_at": placed_at,
                "updated_at": event.occurred_at,
            }
        status = _status_of(event)
        if status is not None:
            row["status"] = status
            row["failure_reason"] = _failure_reason(status, event.data)
        row["version"] = event.version
        row["updated_at"] = event.occurred_at
    return row


BEFORE_FULFILMENT = frozenset(
    {OrderStatus.PENDING.value, OrderStatus.RESERVED.value, OrderStatus.HELD_FOR_REVIEW.value}
)
"""Statuses an order has only before its payment is authorized, so before anything of its
stream moves the fulfilment model (the order's status never goes back)."""


def starts_fulfilment(events: Iterable[StreamEvent]) -> bool:
    """Whether ``events`` hold the order's move to FULFILLING: the fulfil step's start, before
    which nothing of the stream moves the fulfilment model."""
    return any(
        e.type == "order.fulfilling" or e.data.get("status") == OrderStatus.FULFILLING
        for e in events
    )


def can_skip_the_row(after: OrderAfter | None, events: Sequence[StreamEvent]) -> bool:
    """Whether the history row may be written from ``after`` (:func:`history_row_at`), and the
    fulfilment row folded from ``events`` alone, without reading either.

    The history row's version is also what tells the fulfilment model whether earlier events
    are missing (a message applied before an earlier one: the gap is read from the stream). A
    row moved past events nobody folded would hide them from it, so only a message that no
    fulfilment event can precede skips it: one of an order still before payment authorization,
    or the one that starts fulfilment.
    """
    if after is None:
        return False
    if starts_fulfilment(events):
        return True
    return after.status in BEFORE_FULFILMENT and not touches_fulfilment(events)


def history_row_at(
    events: Sequence[StreamEvent],
    after: OrderAfter,
    *,
    order_id: str,
    customer_id: str,
    placed_at: datetime,
) -> dict[str, Any] | None:
    """The ``rm_order_history`` row at the last of ``events``, from the order's state there.

    It is what :func:`fold_order_history` gives from the whole stream up to that event (the
    order's status only moves with an event that carries it, and its failure reason with it),
    so it needs neither the stored row nor the earlier events: a message applied before an
    earlier one sets the row to its own version, and the earlier one then changes nothing.
    """
    if not events:
        return None
    last = max(events, key=lambda e: e.version)
    return {
        "order_id": order_id,
        "customer_id": customer_id,
        "status": after.status,
        "failure_reason": _failure_reason(after.status, {"failureReason": after.failure_reason}),
        "version": last.version,
        "placed_at": placed_at,
        "updated_at": last.occurred_at,
    }


def _shipment(raw: Mapping[str, Any], status: str) -> dict[str, Any]:
    lines = raw.get("lines")
    return {
        "id": str(raw.get("id")),
        "warehouseId": raw.get("warehouseId"),
        "lines": list(lines) if isinstance(lines, list) else [],
        "valueMinor": raw.get("valueMinor"),
        "status": status,
    }


def _ids(data: Mapping[str, Any], name: str) -> list[str]:
    value = data.get(name)
    return [str(v) for v in value] if isinstance(value, list) else []


def _undone(row: dict[str, Any], data: Mapping[str, Any]) -> None:
    """Shipments cancelled before leaving the warehouse, or returned after."""
    outcome = {i: ShipmentStatus.CANCELLED for i in _ids(data, "cancelled")}
    outcome |= {i: ShipmentStatus.RETURNED for i in _ids(data, "returned")}
    shipments = [
        {**s, "status": outcome.pop(s["id"])} if s["id"] in outcome else s for s in row["shipments"]
    ]
    shipments += [_shipment({"id": i}, status) for i, status in sorted(outcome.items())]
    row["shipments"] = shipments
    returned = any(s["status"] == ShipmentStatus.RETURNED for s in shipments)
    row["status"] = FulfilmentStatus.RETURNED if returned else FulfilmentStatus.CANCELLED


def _fulfilment_step(
    row: dict[str, Any] | None, event: StreamEvent, order_id: str
) -> dict[str, Any] | None:
    """The row after ``event``, or None if the event means nothing to fulfilment."""
    data = event.data
    if event.type == "order.fulfilling" or data.get("status") == OrderStatus.FULFILLING:
        shipments = row["shipments"] if row else []
        return {"order_id": order_id, "status": FulfilmentStatus.FULFILLING, "shipments": shipments}
    if event.type == "order.shipped":
        raw = data.get("shipments")
        shipped = [
            _shipment(s, ShipmentStatus.SHIPPED)
            for s in (raw if isinstance(raw, list) else [])
            if isinstance(s, Mapping)
        ]
        return {"order_id": order_id, "status": FulfilmentStatus.SHIPPED, "shipments": shipped}
    if row is None or data.get("step") != FULFIL_STEP:
        return None
    moved = {**row, "shipments": [dict(s) for s in row["shipments"]]}
    if event.type in ("order.step_failed", "order.step_timed_out"):
        moved["status"] = FulfilmentStatus.FAILED
    elif event.type == "order.compensation_started":
        moved["status"] = FulfilmentStatus.CANCELLING
    elif event.type == "order.step_compensated":
        _undone(moved, data)
    elif event.type == "order.compensation_failed":
        moved["status"] = FulfilmentStatus.CANCEL_FAILED
    else:
        return None
    return moved


def touches_fulfilment(events: Iterable[StreamEvent]) -> bool:
    """Whether any of ``events`` may move the ``rm_fulfilment`` row (if not, the row need not
    be read)."""
    return any(
        e.type in ("order.fulfilling", "order.shipped")
        or e.data.get("status") == OrderStatus.FULFILLING
        or e.data.get("step") == FULFIL_STEP
        for e in events
    )


def fold_fulfilment(
    events: Iterable[StreamEvent],
    *,
    order_id: str,
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The ``rm_fulfilment`` row after ``events``, starting from ``current``.

    The row's version is the stream version of the last event that moved it. None while the
    order has not reached fulfilment.
    """
    row = dict(current) if current is not None else None
    for event in newer_events(events, row["version"] if row else 0):
        moved = _fulfilment_step(row, event, order_id)
        if moved is not None:
            row = {**moved, "version": event.version, "updated_at": event.occurred_at}
    return row


# ---- the stock fold --------------------------------------------------------------------------

StockKey = tuple[str, str]


def fold_stock_levels(
    entries: Iterable[StockEntry], levels: Mapping[StockKey, Mapping[str, Any]] | None = None
) -> dict[StockKey, dict[str, Any]]:
    """``rm_inventory_levels`` rows by (sku, warehouse) after adding ``entries`` to ``levels``.

    On hand and reserved are sums of the deltas; ``updated_at`` is the latest entry's time.
    Folding a batch from nothing gives the increments the live path adds.
    """
    out = {key: dict(row) for key, row in (levels or {}).items()}
    for entry in entries:
        key = (entry.sku, entry.warehouse_id)
        row = out.get(key)
        if row is None:
            out[key] = {
                "sku": entry.sku,
                "warehouse_id": entry.warehouse_id,
                "on_hand": entry.on_hand_delta,
                "reserved": entry.reserved_delta,
                "updated_at": entry.at,
            }
            continue
        row["on_hand"] += entry.on_hand_delta
        row["reserved"] += entry.reserved_delta
        row["updated_at"] = max(row["updated_at"], entry.at)
    return out


# ---- the consumer ----------------------------------------------------------------------------


async def _order_changed(uow: MessageUnitOfWork, payload: Mapping[str, Any]) -> None:
    try:
        order_id = _text(payload, "orderId")
        customer_id = _text(payload, "customerId")
        placed_at = parse_time(payload.get("placedAt"))
        raw = objects(payload, "events")
        events_from_payload(raw)
        after = order_after_from_payload(payload)
    except ValueError as exc:
        raise PermanentError(f"{ORDER_CHANGED}: {exc}") from exc
    await uow.read_models.apply_order_events(order_id, customer_id, placed_at, raw, after=after)


async def _stock_changed(uow: MessageUnitOfWork, payload: Mapping[str, Any]) -> None:
    try:
        at = parse_time(payload.get("at"))
        raw = objects(payload, "entries")
        stock_entries_from_payload(raw, at)
    except ValueError as exc:
        raise PermanentError(f"{STOCK_CHANGED}: {exc}") from exc
    await uow.read_models.apply_stock_entries(raw, at)


def projections_handler(policy: RetryPolicy) -> Handler:
    """The ``projections`` consumer: keeps the read models current from the logs' messages."""

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        if message.type == ORDER_CHANGED:
            await _order_changed(uow, message.payload)
        elif message.type == STOCK_CHANGED:
            await _stock_changed(uow, message.payload)
        else:
            raise PermanentError(f"{PROJECTIONS} does not handle {message.type}")

    return Handler(
        consumer=PROJECTIONS,
        types=frozenset({ORDER_CHANGED, STOCK_CHANGED}),
        handle=handle,
        policy=policy,
    )


# ---- comparing live and rebuilt --------------------------------------------------------------


def _row_key(model: str, row: Mapping[str, Any]) -> str:
    if model == INVENTORY_LEVELS:
        return f"{row.get('sku')}@{row.get('warehouse_id')}"
    return str(row.get("order_id"))


def snapshot_differences(
    live: Mapping[str, Sequence[Mapping[str, Any]]],
    rebuilt: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, list[str]]:
    """Per read model, the keys of rows that differ (missing, extra or changed); empty lists
    when the live models equal the rebuilt ones."""
    differences: dict[str, list[str]] = {}
    for model in READ_MODELS:
        before = {_row_key(model, r): r for r in live.get(model, ())}
        after = {_row_key(model, r): r for r in rebuilt.get(model, ())}
        differences[model] = sorted(
            key for key in before.keys() | after.keys() if before.get(key) != after.get(key)
        )
    return differences
