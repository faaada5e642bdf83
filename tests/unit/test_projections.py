"""The read models' folds: every status path, late and repeated events, fulfilment, stock."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from orderly.domain.events import Message
from orderly.services.consumer import PermanentError, RetryPolicy
from orderly.services.ports import MessageUnitOfWork
from orderly.services.projections import (
    FULFILMENT,
    INVENTORY_LEVELS,
    ORDER_HISTORY,
    PROJECTIONS,
    STOCK_CHANGED,
    StockEntry,
    StreamEvent,
    can_skip_the_row,
    events_from_payload,
    fold_fulfilment,
    fold_order_history,
    fold_stock_levels,
    has_gap,
    history_row_at,
    needs_earlier_events,
    newer_events,
    parse_time,
    projections_handler,
    snapshot_differences,
    stock_entries_from_payload,
    touches_fulfilment,
)
from orderly.services.read_model_ports import OrderAfter

T0 = datetime(2026, 5, 7, 10, 0, tzinfo=UTC)
PLACED_AT = T0
ORDER = "ord-1"
CUSTOMER = "alice"


def at(version: int) -> datetime:
    return T0 + timedelta(seconds=version)


def event(version: int, type_: str, **data: Any) -> StreamEvent:
    return StreamEvent(version, type_, data, at(version))


def placed() -> StreamEvent:
    return event(1, "order.placed", customerId=CUSTOMER, currency="USD", totalAmount=4999)


SHIPMENTS = [
    {
        "id": f"{ORDER}:WH-AUS",
        "warehouseId": "WH-AUS",
        "lines": [{"sku": "PROD-001", "warehouseId": "WH-AUS", "quantity": 1}],
        "valueMinor": 4999,
    },
    {
        "id": f"{ORDER}:WH-NYC",
        "warehouseId": "WH-NYC",
        "lines": [{"sku": "PROD-003", "warehouseId": "WH-NYC", "quantity": 2}],
        "valueMinor": 5998,
    },
]


def confirmed_stream() -> list[StreamEvent]:
    return [
        placed(),
        event(2, "order.saga_started"),
        event(3, "order.reserved", step="reserve", status="RESERVED"),
        event(4, "order.payment_authorized", step="authorize", status="PAYMENT_AUTHORIZED"),
        event(5, "order.fulfilling", step="fulfil", status="FULFILLING"),
        event(6, "order.shipped", step="fulfil", shippedValueMinor=10997, shipments=SHIPMENTS),
        event(7, "order.payment_captured", step="capture", amountMinor=10997),
        event(8, "order.confirmed", step="complete", status="CONFIRMED"),
    ]


def history(events: Sequence[StreamEvent], current: Mapping[str, Any] | None = None) -> Any:
    return fold_order_history(
        events, order_id=ORDER, customer_id=CUSTOMER, placed_at=PLACED_AT, current=current
    )


def fulfilment(events: Sequence[StreamEvent], current: Mapping[str, Any] | None = None) -> Any:
    return fold_fulfilment(events, order_id=ORDER, current=current)


# ---- order history -----------------------------------------------------------------------------


def test_a_confirmed_order() -> None:
    assert history(confirmed_stream()) == {
        "order_id": ORDER,
        "customer_id": CUSTOMER,
        "status": "CONFIRMED",
        "failure_reason": None,
        "version": 8,
        "placed_at": PLACED_AT,
        "updated_at": at(8),
    }


def test_a_placed_order_is_pending() -> None:
    row = history([placed()])
    assert (row["status"], row["version"], row["updated_at"]) == ("PENDING", 1, at(1))


def test_nothing_to_fold_is_no_row() -> None:
    assert history([]) is None
    assert fulfilment([]) is None


@pytest.mark.parametrize(
    ("tail", "status", "reason"),
    [
        ([event(2, "order.reserved", step="reserve", status="RESERVED")], "RESERVED", None),
        (
            [event(2, "order.held_for_review", step="fraud", status="HELD_FOR_REVIEW")],
            "HELD_FOR_REVIEW",
            None,
        ),
        (
            [event(2, "order.payment_authorized", step="authorize", status="PAYMENT_AUTHORIZED")],
            "PAYMENT_AUTHORIZED",
            None,
        ),
        ([event(2, "order.fulfilling", step="fulfil", status="FULFILLING")], "FULFILLING", None),
        ([event(2, "order.confirmed", step="complete", status="CONFIRMED")], "CONFIRMED", None),
        (
            [
                event(2, "order.step_failed", step="reserve", reason="OUT_OF_STOCK"),
                event(3, "order.failed", failureReason="OUT_OF_STOCK", status="FAILED"),
            ],
            "FAILED",
            "OUT_OF_STOCK",
        ),
        ([event(2, "order.cancelled", status="CANCELLED")], "CANCELLED", None),
        (
            [
                event(2, "order.compensation_failed", step="authorize"),
                event(
                    3, "order.needs_attention", reason="PROCESSING_ERROR", status="NEEDS_ATTENTION"
                ),
            ],
            "NEEDS_ATTENTION",
            "PROCESSING_ERROR",
        ),
    ],
)
def test_every_status(tail: list[StreamEvent], status: str, reason: str | None) -> None:
    row = history([placed(), *tail])
    assert (row["status"], row["failure_reason"], row["version"]) == (status, reason, len(tail) + 1)
    assert history(tail) == row  # a new row may start after order.placed


def test_a_legacy_failure_carries_its_reason() -> None:
    failed = event(2, "order.failed", status="FAILED", failureReason="OUT_OF_STOCK", sku="X")
    assert history([placed(), failed])["failure_reason"] == "OUT_OF_STOCK"


def test_a_move_after_a_failure_clears_the_reason() -> None:
    events = [
        placed(),
        event(2, "order.needs_attention", reason="PROCESSING_ERROR", status="NEEDS_ATTENTION"),
        event(3, "order.cancelled", status="CANCELLED"),
    ]
    row = history(events)
    assert (row["status"], row["failure_reason"]) == ("CANCELLED", None)


def test_events_without_a_status_only_move_the_version() -> None:
    events = [
        placed(),
        event(2, "order.reserved", step="reserve", status="RESERVED"),
        event(3, "order.step_timed_out", step="fraud"),
        event(4, "order.compensation_started", step="reserve"),
    ]
    row = history(events)
    assert (row["status"], row["version"], row["updated_at"]) == ("RESERVED", 4, at(4))


def test_shuffled_and_repeated_events_fold_like_the_stream() -> None:
    stream = confirmed_stream()
    rng = random.Random(7)
    for _ in range(20):
        jumbled = stream + rng.sample(stream, 4)
        rng.shuffle(jumbled)
        assert history(jumbled) == history(stream)
        assert fulfilment(jumbled) == fulfilment(stream)


def test_folding_in_pieces_equals_folding_at_once() -> None:
    stream = confirmed_stream()
    for cut in range(1, len(stream)):
        first = history(stream[:cut])
        assert history(stream[cut:], current=first) == history(stream)
        started = fulfilment(stream[:cut])
        assert fulfilment(stream[cut:], current=started) == fulfilment(stream)


def failed_stream() -> list[StreamEvent]:
    return [
        placed(),
        event(2, "order.saga_started"),
        event(3, "order.reserved", step="reserve", status="RESERVED"),
        event(4, "order.step_failed", step="authorize", reason="PAYMENT_DECLINED"),
        event(5, "order.failed", status="FAILED", failureReason="PAYMENT_DECLINED"),
        event(6, "order.noted"),
    ]


# The order row after each version of the streams above (what order.changed carries).
CONFIRMED_ROWS = {
    1: OrderAfter("PENDING", None),
    2: OrderAfter("PENDING", None),
    3: OrderAfter("RESERVED", None),
    4: OrderAfter("PAYMENT_AUTHORIZED", None),
    5: OrderAfter("FULFILLING", None),
    6: OrderAfter("FULFILLING", None),
    7: OrderAfter("FULFILLING", None),
    8: OrderAfter("CONFIRMED", None),
}
FAILED_ROWS = {
    1: OrderAfter("PENDING", None),
    2: OrderAfter("PENDING", None),
    3: OrderAfter("RESERVED", None),
    4: OrderAfter("RESERVED", None),
    5: OrderAfter("FAILED", "PAYMENT_DECLINED"),
    6: OrderAfter("FAILED", "PAYMENT_DECLINED"),
}


@pytest.mark.parametrize(
    ("stream", "rows"),
    [(confirmed_stream(), CONFIRMED_ROWS), (failed_stream(), FAILED_ROWS)],
    ids=["confirmed", "failed"],
)
def test_the_row_from_the_order_after_a_message_equals_the_fold_of_the_stream(
    stream: list[StreamEvent], rows: dict[int, OrderAfter]
) -> None:
    """Any message (a run of consecutive events) and the order's state after its last event
    give the row the whole stream up to that event folds to, without the earlier events."""
    for end in range(1, len(stream) + 1):
        for start in range(end):
            row = history_row_at(
                stream[start:end],
                rows[end],
                order_id=ORDER,
                customer_id=CUSTOMER,
                placed_at=PLACED_AT,
            )
            assert row == history(stream[:end]), (start, end)


def test_only_a_message_before_fulfilment_may_skip_reading_the_row() -> None:
    stream = confirmed_stream()
    reserved = stream[2:3]
    assert can_skip_the_row(OrderAfter("RESERVED", None), reserved)
    assert can_skip_the_row(OrderAfter("HELD_FOR_REVIEW", None), reserved)
    assert not can_skip_the_row(None, reserved), "an older message carries no state"
    # Later statuses may follow fulfilment events not yet folded (a message applied early).
    assert not can_skip_the_row(OrderAfter("PAYMENT_AUTHORIZED", None), stream[3:4])
    assert not can_skip_the_row(OrderAfter("CONFIRMED", None), stream[7:8])
    assert not can_skip_the_row(OrderAfter("FAILED", "OUT_OF_STOCK"), reserved)
    assert not can_skip_the_row(OrderAfter("RESERVED", None), stream[5:6]), "moves fulfilment"
    # The message that starts fulfilment: nothing before it can have moved fulfilment.
    assert can_skip_the_row(OrderAfter("FULFILLING", None), stream[3:5])
    assert not can_skip_the_row(None, stream[3:5])
    assert not can_skip_the_row(OrderAfter("FULFILLING", None), stream[5:7])


def test_the_row_from_the_order_after_nothing_is_no_row() -> None:
    after = OrderAfter("PENDING", None)
    assert history_row_at([], after, order_id=ORDER, customer_id=CUSTOMER, placed_at=T0) is None


def test_late_and_repeated_events_change_nothing() -> None:
    stream = confirmed_stream()
    done = history(stream)
    assert history(stream[2:5], current=done) == done
    assert history(stream, current=done) == done
    shipped = fulfilment(stream)
    assert fulfilment(stream[3:5], current=shipped) == shipped


def test_an_existing_row_keeps_who_and_when() -> None:
    first = history([placed()])
    later = fold_order_history(
        [event(2, "order.reserved", status="RESERVED")],
        order_id=ORDER,
        customer_id="someone-else",
        placed_at=at(99),
        current=first,
    )
    assert later is not None
    assert (later["customer_id"], later["placed_at"]) == (CUSTOMER, PLACED_AT)


def test_the_fold_does_not_touch_the_current_row() -> None:
    first = history([placed()])
    kept = dict(first)
    history([event(2, "order.reserved", status="RESERVED")], current=first)
    assert first == kept


# ---- newer events and gaps -------------------------------------------------------------------


def test_newer_events_are_unique_sorted_and_above_the_version() -> None:
    stream = confirmed_stream()
    jumbled = [stream[5], stream[2], stream[5], stream[0], stream[3]]
    assert [e.version for e in newer_events(jumbled, 2)] == [3, 4, 6]


def test_gaps() -> None:
    stream = confirmed_stream()
    assert not has_gap(0, newer_events(stream, 0))
    assert not has_gap(3, newer_events(stream[3:5], 3))
    assert has_gap(0, newer_events(stream[1:3], 0))  # no order.placed yet
    assert has_gap(2, newer_events([stream[2], stream[4]], 2))
    assert not has_gap(5, [])


def test_a_new_row_may_start_after_order_placed_but_not_later() -> None:
    stream = confirmed_stream()
    assert not needs_earlier_events(0, newer_events(stream[1:4], 0))  # versions 2-4
    assert needs_earlier_events(0, newer_events(stream[2:4], 0))  # 3-4: 2 is missing
    assert needs_earlier_events(0, newer_events([stream[1], stream[3]], 0))  # 2 and 4
    assert not needs_earlier_events(0, newer_events(stream, 0))
    assert needs_earlier_events(2, newer_events(stream[3:5], 2))
    assert not needs_earlier_events(3, newer_events(stream[3:5], 3))


@pytest.mark.parametrize("upto", range(2, 9))
def test_order_placed_folds_to_what_a_new_row_starts_from(upto: int) -> None:
    """Why a new row need not read version 1 back: the folds without it are the same."""
    stream = confirmed_stream()[:upto]
    assert history(stream[1:]) == history(stream)
    assert fulfilment(stream[1:]) == fulfilment(stream)


# ---- fulfilment -----------------------------------------------------------------------------


def test_no_fulfilment_before_it_starts() -> None:
    assert fulfilment(confirmed_stream()[:4]) is None


def test_fulfilment_starts_then_ships() -> None:
    stream = confirmed_stream()
    assert fulfilment(stream[:5]) == {
        "order_id": ORDER,
        "status": "FULFILLING",
        "shipments": [],
        "version": 5,
        "updated_at": at(5),
    }
    shipped = fulfilment(stream)
    assert shipped["status"] == "SHIPPED"
    assert shipped["version"] == 6  # capture and confirmation do not move fulfilment
    assert shipped["updated_at"] == at(6)
    assert shipped["shipments"] == [{**s, "status": "SHIPPED"} for s in SHIPMENTS]


def _capture_failed(*undo: StreamEvent) -> list[StreamEvent]:
    return [
        *confirmed_stream()[:6],
        event(7, "order.step_failed", step="capture", reason="PAYMENT_DECLINED"),
        event(8, "order.compensation_started", step="fulfil"),
        *undo,
    ]


def test_shipments_returned_after_a_failed_capture() -> None:
    returned = event(9, "order.step_compensated", step="fulfil", returned=[SHIPMENTS[0]["id"]])
    cancelled_too = event(
        9,
        "order.step_compensated",
        step="fulfil",
        cancelled=[SHIPMENTS[1]["id"]],
        returned=[SHIPMENTS[0]["id"]],
    )
    assert fulfilment(_capture_failed())["status"] == "CANCELLING"
    row = fulfilment(_capture_failed(returned))
    assert (row["status"], row["version"]) == ("RETURNED", 9)
    assert [s["status"] for s in row["shipments"]] == ["RETURNED", "SHIPPED"]
    row = fulfilment(_capture_failed(cancelled_too))
    assert [s["status"] for s in row["shipments"]] == ["RETURNED", "CANCELLED"]


def test_shipments_cancelled_before_they_left() -> None:
    events = [
        *confirmed_stream()[:5],
        event(6, "order.compensation_started", step="fulfil"),
        event(7, "order.step_compensated", step="fulfil", cancelled=["s-1"], returned=[]),
    ]
    row = fulfilment(events)
    assert row["status"] == "CANCELLED"
    assert row["shipments"] == [
        {"id": "s-1", "warehouseId": None, "lines": [], "valueMinor": None, "status": "CANCELLED"}
    ]


def test_fulfilment_fails_or_cannot_be_undone() -> None:
    failed = [*confirmed_stream()[:5], event(6, "order.step_failed", step="fulfil", reason="X")]
    assert fulfilment(failed)["status"] == "FAILED"
    timed_out = [*confirmed_stream()[:5], event(6, "order.step_timed_out", step="fulfil")]
    assert fulfilment(timed_out)["status"] == "FAILED"
    stuck = _capture_failed(event(9, "order.compensation_failed", step="fulfil"))
    assert fulfilment(stuck)["status"] == "CANCEL_FAILED"


def test_other_steps_leave_fulfilment_alone() -> None:
    events = _capture_failed(
        event(9, "order.step_compensated", step="fulfil", returned=[SHIPMENTS[0]["id"]]),
        event(10, "order.compensation_started", step="authorize"),
        event(11, "order.step_compensated", step="authorize"),
        event(12, "order.failed", failureReason="PAYMENT_DECLINED", status="FAILED"),
    )
    row = fulfilment(events)
    assert (row["status"], row["version"]) == ("RETURNED", 9)


def test_an_event_said_not_to_touch_fulfilment_never_moves_it() -> None:
    """The read model skips reading the fulfilment row for such events: that must be safe."""
    streams = [
        confirmed_stream(),
        _capture_failed(event(9, "order.step_compensated", step="fulfil", returned=["s-1"])),
        _capture_failed(event(9, "order.compensation_failed", step="fulfil")),
        [*confirmed_stream()[:5], event(6, "order.step_timed_out", step="fulfil")],
    ]
    touching = set()
    for stream in streams:
        for n, current in enumerate(stream):
            before = fulfilment(stream[:n])
            after = fulfilment([current], before)
            if not touches_fulfilment([current]):
                assert after == before, current
            else:
                touching.add(current.type)
    assert touching >= {"order.fulfilling", "order.shipped", "order.step_compensated"}
    assert not touches_fulfilment(confirmed_stream()[:4] + confirmed_stream()[6:])


# ---- stock ----------------------------------------------------------------------------------


def entry(sku: str, warehouse: str, on_hand: int, reserved: int, when: datetime) -> StockEntry:
    return StockEntry(sku, warehouse, "adjust", on_hand, reserved, None, when)


def test_stock_levels_sum_the_deltas() -> None:
    entries = [
        entry("A", "W1", 10, 0, at(1)),
        entry("A", "W1", 0, 3, at(3)),
        entry("A", "W2", 5, 0, at(2)),
        entry("A", "W1", -3, -3, at(2)),
    ]
    levels = fold_stock_levels(entries)
    assert levels == {
        ("A", "W1"): {
            "sku": "A",
            "warehouse_id": "W1",
            "on_hand": 7,
            "reserved": 0,
            "updated_at": at(3),
        },
        ("A", "W2"): {
            "sku": "A",
            "warehouse_id": "W2",
            "on_hand": 5,
            "reserved": 0,
            "updated_at": at(2),
        },
    }
    assert fold_stock_levels(entries[2:], fold_stock_levels(entries[:2])) == levels


def test_stock_entries_from_a_message() -> None:
    raw = [
        {
            "sku": "PROD-001",
            "warehouseId": "WH-AUS",
            "kind": "reserve",
            "onHandDelta": 0,
            "reservedDelta": 2,
            "orderId": ORDER,
        }
    ]
    assert stock_entries_from_payload(raw, at(1)) == [
        StockEntry("PROD-001", "WH-AUS", "reserve", 0, 2, ORDER, at(1))
    ]
    with pytest.raises(ValueError, match="reservedDelta"):
        stock_entries_from_payload([{**raw[0], "reservedDelta": "2"}], at(1))
    with pytest.raises(ValueError, match="orderId"):
        stock_entries_from_payload([{**raw[0], "orderId": 7}], at(1))


# ---- payloads -------------------------------------------------------------------------------


def test_events_from_a_message() -> None:
    raw = [
        {"version": 2, "type": "order.reserved", "data": {}, "occurredAt": "2026-05-07T10:00:02Z"}
    ]
    assert events_from_payload(raw) == [StreamEvent(2, "order.reserved", {}, at(2))]
    bad_fields: list[tuple[dict[str, Any], str]] = [
        ({"version": 0}, "count from 1"),
        ({"version": True}, "version must be an integer"),
        ({"type": ""}, "type must be"),
        ({"data": []}, "data must be an object"),
        ({"occurredAt": 1}, "timestamp"),
    ]
    for bad, why in bad_fields:
        with pytest.raises(ValueError, match=why):
            events_from_payload([{**raw[0], **bad}])


def test_times_need_an_offset() -> None:
    assert parse_time("2026-05-07T12:00:00+02:00") == T0
    with pytest.raises(ValueError, match="offset"):
        parse_time("2026-05-07T10:00:00")


# ---- the consumer ---------------------------------------------------------------------------


@dataclass
class RecordedReadModels:
    orders: list[tuple[str, str, datetime, list[Mapping[str, Any]], OrderAfter | None]] = field(
        default_factory=list
    )
    stock: list[tuple[list[Mapping[str, Any]], datetime]] = field(default_factory=list)

    async def apply_order_events(
        self,
        order_id: str,
        customer_id: str,
        placed_at: datetime,
        events: Sequence[Mapping[str, Any]],
        *,
        after: OrderAfter | None = None,
    ) -> None:
        self.orders.append((order_id, customer_id, placed_at, list(events), after))

    async def apply_stock_entries(self, entries: Sequence[Mapping[str, Any]], at: datetime) -> None:
        self.stock.append((list(entries), at))


@dataclass
class ReadModelsOnly:
    read_models: RecordedReadModels


def message(type_: str, payload: dict[str, Any]) -> Message:
    return Message("m-1", type_, ORDER, payload, T0, ORDER)


ORDER_CHANGED_PAYLOAD: dict[str, Any] = {
    "orderId": ORDER,
    "customerId": CUSTOMER,
    "placedAt": "2026-05-07T10:00:00+00:00",
    "events": [
        {"version": 2, "type": "order.reserved", "data": {}, "occurredAt": "2026-05-07T10:00:02Z"}
    ],
}
STOCK_CHANGED_PAYLOAD: dict[str, Any] = {
    "entries": [
        {
            "sku": "PROD-001",
            "warehouseId": "WH-AUS",
            "kind": "ship",
            "onHandDelta": -1,
            "reservedDelta": -1,
            "orderId": ORDER,
        }
    ],
    "at": "2026-05-07T10:00:05Z",
}


async def test_the_consumer_applies_both_messages() -> None:
    handler = projections_handler(RetryPolicy())
    assert handler.consumer == PROJECTIONS
    assert handler.types == {"order.changed", STOCK_CHANGED}
    models = RecordedReadModels()
    uow = cast(MessageUnitOfWork, ReadModelsOnly(models))
    await handler.handle(uow, message("order.changed", ORDER_CHANGED_PAYLOAD))
    carried = {**ORDER_CHANGED_PAYLOAD, "status": "FAILED", "failureReason": "OUT_OF_STOCK"}
    await handler.handle(uow, message("order.changed", carried))
    await handler.handle(uow, message(STOCK_CHANGED, STOCK_CHANGED_PAYLOAD))
    events = ORDER_CHANGED_PAYLOAD["events"]
    assert models.orders == [
        (ORDER, CUSTOMER, T0, events, None),
        (ORDER, CUSTOMER, T0, events, OrderAfter("FAILED", "OUT_OF_STOCK")),
    ]
    assert models.stock == [(STOCK_CHANGED_PAYLOAD["entries"], at(5))]


@pytest.mark.parametrize(
    ("type_", "payload"),
    [
        ("order.changed", {**ORDER_CHANGED_PAYLOAD, "orderId": None}),
        ("order.changed", {**ORDER_CHANGED_PAYLOAD, "placedAt": "yesterday"}),
        ("order.changed", {**ORDER_CHANGED_PAYLOAD, "events": [{"version": "2"}]}),
        ("order.changed", {**ORDER_CHANGED_PAYLOAD, "events": None}),
        ("order.changed", {**ORDER_CHANGED_PAYLOAD, "status": ""}),
        ("order.changed", {**ORDER_CHANGED_PAYLOAD, "status": "FAILED", "failureReason": 3}),
        (STOCK_CHANGED, {**STOCK_CHANGED_PAYLOAD, "at": None}),
        (STOCK_CHANGED, {**STOCK_CHANGED_PAYLOAD, "entries": [{"sku": "X"}]}),
        ("order.placed", {"orderId": ORDER}),
    ],
)
async def test_malformed_messages_are_permanent_failures(
    type_: str, payload: dict[str, Any]
) -> None:
    models = RecordedReadModels()
    handler = projections_handler(RetryPolicy())
    with pytest.raises(PermanentError):
        await handler.handle(
            cast(MessageUnitOfWork, ReadModelsOnly(models)), message(type_, payload)
        )
    assert models.orders == []
    assert models.stock == []


# ---- comparing snapshots --------------------------------------------------------------------


def test_snapshot_differences() -> None:
    live: dict[str, list[dict[str, Any]]] = {
        ORDER_HISTORY: [{"order_id": "a", "status": "PENDING"}, {"order_id": "b", "status": "X"}],
        INVENTORY_LEVELS: [{"sku": "S", "warehouse_id": "W", "on_hand": 1}],
        FULFILMENT: [],
    }
    assert snapshot_differences(live, live) == {
        ORDER_HISTORY: [],
        INVENTORY_LEVELS: [],
        FULFILMENT: [],
    }
    rebuilt: dict[str, list[dict[str, Any]]] = {
        ORDER_HISTORY: [{"order_id": "a", "status": "RESERVED"}, {"order_id": "c", "status": "X"}],
        INVENTORY_LEVELS: [{"sku": "S", "warehouse_id": "W", "on_hand": 1}],
        FULFILMENT: [{"order_id": "a", "status": "FULFILLING"}],
    }
    assert snapshot_differences(live, rebuilt) == {
        ORDER_HISTORY: ["a", "b", "c"],
        INVENTORY_LEVELS: [],
        FULFILMENT: ["a"],
    }
