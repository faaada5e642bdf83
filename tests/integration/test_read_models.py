"""The read models on SQLite and the real PostgreSQL: kept live, then rebuilt, identically.

Orders, their streams and the stock ledger are written directly; the live models are driven
through the projections consumer's handler with the payloads the saga sends (late, repeated
and out of order), and a rebuild from the logs must give exactly the same rows. The audit
trail merges every table that records an order, in time order.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from orderly.adapters.db.read_models import SqlProjectionStore, SqlReadModels, SqlTrail
from orderly.adapters.db.tables import (
    dead_letter_replays,
    dead_letters,
    message_failures,
    order_events,
    orders,
    outbox_messages,
    payment_operations,
    processed_messages,
    saga_log,
    shipments,
    stock_ledger,
)
from orderly.domain.events import Message
from orderly.services.consumer import RetryPolicy
from orderly.services.ports import JSON, MessageUnitOfWork
from orderly.services.projections import (
    FULFILMENT,
    INVENTORY_LEVELS,
    ORDER_HISTORY,
    PROJECTIONS,
    STOCK_CHANGED,
    StreamEvent,
    fold_order_history,
    projections_handler,
)
from tests.conftest import Backend

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 5, 7, 10, 0, tzinfo=UTC)
HANDLER = projections_handler(RetryPolicy())

Decision = list[tuple[str, JSON]]  # the events one saga decision appends


def shipment(order_id: str, warehouse: str, sku: str, quantity: int, value: int) -> JSON:
    return {
        "id": f"{order_id}:{warehouse}",
        "warehouseId": warehouse,
        "lines": [{"sku": sku, "warehouseId": warehouse, "quantity": quantity}],
        "valueMinor": value,
    }


def confirmed(order_id: str) -> list[Decision]:
    ship = shipment(order_id, "WH-AUS", "PROD-001", 2, 9998)
    return [
        [("order.saga_started", {}), ("order.reserved", {"step": "reserve", "status": "RESERVED"})],
        [("order.payment_authorized", {"step": "authorize", "status": "PAYMENT_AUTHORIZED"})],
        [("order.fulfilling", {"step": "fulfil", "status": "FULFILLING"})],
        [("order.shipped", {"step": "fulfil", "shippedValueMinor": 9998, "shipments": [ship]})],
        [
            ("order.payment_captured", {"step": "capture", "amountMinor": 9998}),
            ("order.confirmed", {"step": "complete", "status": "CONFIRMED"}),
        ],
    ]


def out_of_stock() -> list[Decision]:
    return [
        [
            ("order.step_failed", {"step": "reserve", "reason": "OUT_OF_STOCK"}),
            ("order.failed", {"failureReason": "OUT_OF_STOCK", "detail": {}, "status": "FAILED"}),
        ]
    ]


def returned_after_capture_failed(order_id: str) -> list[Decision]:
    ships = [
        shipment(order_id, "WH-AUS", "PROD-001", 1, 4999),
        shipment(order_id, "WH-NYC", "PROD-003", 1, 2999),
    ]
    return [
        [("order.reserved", {"step": "reserve", "status": "RESERVED"})],
        [("order.payment_authorized", {"step": "authorize", "status": "PAYMENT_AUTHORIZED"})],
        [("order.fulfilling", {"step": "fulfil", "status": "FULFILLING"})],
        [("order.shipped", {"step": "fulfil", "shippedValueMinor": 7998, "shipments": ships})],
        [
            ("order.step_failed", {"step": "capture", "reason": "PAYMENT_DECLINED"}),
            ("order.compensation_started", {"step": "fulfil"}),
        ],
        [
            (
                "order.step_compensated",
                {"step": "fulfil", "cancelled": [], "returned": [s["id"] for s in ships]},
            ),
            ("order.compensation_started", {"step": "authorize"}),
        ],
        [
            ("order.step_compensated", {"step": "authorize"}),
            (
                "order.failed",
                {"failureReason": "PAYMENT_DECLINED", "detail": {}, "status": "FAILED"},
            ),
        ],
    ]


def held() -> list[Decision]:
    return [
        [("order.reserved", {"step": "reserve", "status": "RESERVED"})],
        [("order.held_for_review", {"step": "fraud", "status": "HELD_FOR_REVIEW"})],
    ]


def stuck() -> list[Decision]:
    return [
        [("order.reserved", {"step": "reserve", "status": "RESERVED"})],
        [
            ("order.step_failed", {"step": "authorize", "reason": "PAYMENT_DECLINED"}),
            ("order.compensation_started", {"step": "reserve"}),
        ],
        [
            ("order.compensation_failed", {"step": "reserve"}),
            (
                "order.needs_attention",
                {"reason": "PROCESSING_ERROR", "detail": {}, "status": "NEEDS_ATTENTION"},
            ),
        ],
    ]


@dataclass
class Story:
    """One order as written to the database, and the order.changed messages it caused."""

    order_id: str
    customer_id: str
    placed_at: datetime
    messages: list[Message]


@dataclass
class ReadModelsUow:
    read_models: SqlReadModels


async def write_order(
    engine: AsyncEngine,
    customer: str,
    placed_at: datetime,
    decisions: list[Decision],
    *,
    carry_state: bool = True,
) -> Story:
    """The order row, its stream (v1 order.placed, then each decision's events, a second
    apart) and one order.changed message per append, as intake and the saga write them;
    without ``carry_state``, as an earlier version wrote them (no order state after the
    events: the read model reads its row)."""
    order_id = str(uuid.uuid4())
    placed: JSON = {"customerId": customer, "currency": "USD", "totalAmount": 9998, "items": []}
    stream: list[JSON] = []
    messages = []
    status, reason = "PENDING", None
    for number, decision in enumerate([[("order.placed", placed)], *decisions]):
        when = placed_at + timedelta(seconds=number)
        appended = []
        for type_, data in decision:
            row = _event_row(order_id, len(stream) + 1, type_, data, when)
            stream.append(row)
            appended.append(
                {"version": row["version"], "type": type_, "data": data, "occurredAt": iso(when)}
            )
            if "status" in data:  # as the saga moves the order row
                status = data["status"]
                failed = status in ("FAILED", "NEEDS_ATTENTION")
                reason = (data.get("failureReason") or data.get("reason")) if failed else None
        payload: JSON = {
            "orderId": order_id,
            "customerId": customer,
            "placedAt": iso(placed_at),
            "events": appended,
        }
        if carry_state:
            payload |= {"status": status, "failureReason": reason}
        messages.append(
            Message(str(uuid.uuid4()), "order.changed", order_id, payload, when, order_id)
        )
    statuses = [r["data"]["status"] for r in stream if "status" in r["data"]] or ["PENDING"]
    async with engine.begin() as conn:
        await conn.execute(
            orders.insert(),
            {
                "id": order_id,
                "customer_id": customer,
                "status": statuses[-1],
                "currency": "USD",
                "total_minor": 9998,
                "payment_method": "pm_card_visa",
                "version": len(stream),
                "created_at": placed_at,
                "updated_at": stream[-1]["occurred_at"],
            },
        )
        await conn.execute(order_events.insert(), stream)
    return Story(order_id, customer, placed_at, messages)


def _event_row(order_id: str, version: int, type_: str, data: JSON, when: datetime) -> JSON:
    return {
        "order_id": order_id,
        "version": version,
        "type": type_,
        "data": data,
        "occurred_at": when,
        "correlation_id": order_id,
        "causation_id": None,
    }


def iso(value: datetime) -> str:
    return value.isoformat()


async def deliver(engine: AsyncEngine, message: Message, *, record: bool = True) -> None:
    """What the consumer runtime does with one delivery: inbox record and handler, one
    transaction; a message already recorded is skipped."""
    async with engine.begin() as conn:
        if record:
            seen = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(processed_messages)
                .where(
                    processed_messages.c.consumer == PROJECTIONS,
                    processed_messages.c.message_id == message.id,
                )
            )
            if seen:
                return
            await conn.execute(
                processed_messages.insert(),
                {"consumer": PROJECTIONS, "message_id": message.id, "processed_at": T0},
            )
        models = SqlReadModels(conn)
        await HANDLER.handle(cast(MessageUnitOfWork, ReadModelsUow(models)), message)
        await models.flush()


async def write_stock_change(
    engine: AsyncEngine, changes: Sequence[tuple[str, str, str, int, int, str | None]], at: datetime
) -> Message:
    """Ledger entries and their stock.changed outbox message, as the inventory service writes
    them."""
    ledger = [
        {
            "sku": sku,
            "warehouse_id": warehouse,
            "kind": kind,
            "on_hand_delta": on_hand,
            "reserved_delta": reserved,
            "order_id": order_id,
            "at": at,
        }
        for sku, warehouse, kind, on_hand, reserved, order_id in changes
    ]
    entries = [
        {
            "sku": sku,
            "warehouseId": warehouse,
            "kind": kind,
            "onHandDelta": on_hand,
            "reservedDelta": reserved,
            "orderId": order_id,
        }
        for sku, warehouse, kind, on_hand, reserved, order_id in changes
    ]
    message = Message(
        str(uuid.uuid4()),
        STOCK_CHANGED,
        changes[0][0],
        {"entries": entries, "at": iso(at)},
        at,
        "k",
    )
    async with engine.begin() as conn:
        await conn.execute(stock_ledger.insert(), ledger)
        await conn.execute(outbox_messages.insert(), _outbox_row(message))
    return message


def _outbox_row(message: Message) -> JSON:
    return {
        "message_id": message.id,
        "type": message.type,
        "key": message.key,
        "payload": message.payload,
        "headers": {},
        "correlation_id": message.correlation_id,
        "created_at": message.created_at,
        "available_at": message.created_at,
        "sent_at": message.created_at,
    }


async def seeded_stock_messages(engine: AsyncEngine) -> list[Message]:
    """The stock.changed messages the demo catalogue's opening stock queued."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(outbox_messages).where(outbox_messages.c.type == STOCK_CHANGED)
        )
        return [
            Message(r.message_id, r.type, r.key, r.payload, r.created_at, r.correlation_id)
            for r in rows
        ]


def level(snapshot: dict[str, list[JSON]], sku: str, warehouse: str) -> JSON:
    rows = snapshot[INVENTORY_LEVELS]
    return next(r for r in rows if (r["sku"], r["warehouse_id"]) == (sku, warehouse))


def by_order(snapshot: dict[str, list[JSON]], model: str) -> dict[str, JSON]:
    return {r["order_id"]: r for r in snapshot[model]}


@pytest.mark.parametrize("carry_state", [True, False], ids=["state carried", "state read"])
async def test_live_read_models_equal_the_rebuilt_ones(backend: Backend, carry_state: bool) -> None:
    engine = backend.container.engine
    store = SqlProjectionStore(engine)
    rng = random.Random(2026)

    async def write(customer: str, minutes: int, decisions: list[Decision]) -> Story:
        placed_at = T0 + timedelta(minutes=minutes)
        return await write_order(engine, customer, placed_at, decisions, carry_state=carry_state)

    ok = await write("alice", 0, confirmed("x"))
    short = await write("bob", 1, out_of_stock())
    returned = await write("alice", 2, returned_after_capture_failed("y"))
    waiting = await write("carol", 3, held())
    attention = await write("carol", 4, stuck())
    silent = await write("dave", 5, [])

    # A late message first: the row jumps to its version, the missing events read from the
    # stream, and then the earlier messages change nothing.
    await deliver(engine, ok.messages[4])  # order.shipped (v6)
    early = (await store.snapshot())[ORDER_HISTORY]
    assert [(r["order_id"], r["status"], r["version"]) for r in early] == [
        (ok.order_id, "FULFILLING", 6)
    ]
    assert by_order(await store.snapshot(), FULFILMENT)[ok.order_id]["status"] == "SHIPPED"

    # Everything else, shuffled, each message delivered twice, some a third time unrecorded
    # (as a message with a new id carrying the same events would be). One order's
    # order.placed message never comes: its later messages bring v1 from the stream.
    stories = (ok, short, returned, waiting, attention, silent)
    messages = [m for s in stories for m in s.messages if m is not ok.messages[0]]
    rng.shuffle(messages)
    for message in messages + messages[::-1]:
        await deliver(engine, message)
    for message in rng.sample(messages, 6):
        await deliver(engine, message, record=False)

    # Stock: the opening stock of the seeded catalogue, then moves, applied in any order;
    # one move's message has not reached the consumer yet.
    moves = [
        await write_stock_change(
            engine,
            [
                ("PROD-001", "WH-AUS", "reserve", 0, 2, ok.order_id),
                ("PROD-003", "WH-NYC", "reserve", 0, 1, returned.order_id),
            ],
            T0 + timedelta(seconds=1),
        ),
        await write_stock_change(
            engine,
            [("PROD-001", "WH-AUS", "ship", -2, -2, ok.order_id)],
            T0 + timedelta(seconds=4),
        ),
        await write_stock_change(
            engine, [("PROD-004", "WH-NYC", "restock", 5, 0, None)], T0 + timedelta(seconds=2)
        ),
    ]
    in_flight = await write_stock_change(
        engine, [("PROD-001", "WH-NYC", "reserve", 0, 1, waiting.order_id)], T0
    )
    stock_messages = [*await seeded_stock_messages(engine), *moves]
    stock_messages.remove(in_flight)
    rng.shuffle(stock_messages)
    for message in stock_messages + stock_messages:
        await deliver(engine, message)

    live = await store.snapshot()
    phases: list[tuple[str, int, int]] = []
    counts = await store.rebuild(lambda *step: phases.append(step))
    rebuilt = await store.snapshot()
    assert rebuilt == live
    assert counts == {ORDER_HISTORY: 6, INVENTORY_LEVELS: 10, FULFILMENT: 2}
    assert phases[0] == ("order streams", 0, 6)
    assert phases[-1][1] == phases[-1][2] > 0

    histories = by_order(rebuilt, ORDER_HISTORY)
    expected = {
        ok.order_id: ("CONFIRMED", None, 8),
        short.order_id: ("FAILED", "OUT_OF_STOCK", 3),
        returned.order_id: ("FAILED", "PAYMENT_DECLINED", 11),
        waiting.order_id: ("HELD_FOR_REVIEW", None, 3),
        attention.order_id: ("NEEDS_ATTENTION", "PROCESSING_ERROR", 6),
        silent.order_id: ("PENDING", None, 1),
    }
    assert {
        k: (r["status"], r["failure_reason"], r["version"]) for k, r in histories.items()
    } == expected
    assert histories[ok.order_id]["placed_at"] == "2026-05-07T10:00:00Z"
    assert histories[ok.order_id]["updated_at"] == "2026-05-07T10:00:05Z"
    fulfilments = by_order(rebuilt, FULFILMENT)
    assert fulfilments[ok.order_id]["status"] == "SHIPPED"
    assert fulfilments[returned.order_id]["status"] == "RETURNED"
    assert [s["status"] for s in fulfilments[returned.order_id]["shipments"]] == [
        "RETURNED",
        "RETURNED",
    ]
    assert level(rebuilt, "PROD-001", "WH-AUS") | {"updated_at": None} == {
        "sku": "PROD-001",
        "warehouse_id": "WH-AUS",
        "on_hand": 8,
        "reserved": 0,
        "updated_at": None,
    }
    assert level(rebuilt, "PROD-003", "WH-NYC")["reserved"] == 1
    assert level(rebuilt, "PROD-004", "WH-NYC")["on_hand"] == 30
    assert level(rebuilt, "PROD-001", "WH-NYC")["reserved"] == 0  # its message is in flight

    # The message arrives: live and rebuilt still agree, and count it once.
    await deliver(engine, in_flight)
    live = await store.snapshot()
    await store.rebuild()
    assert await store.snapshot() == live
    assert level(live, "PROD-001", "WH-NYC")["reserved"] == 1


async def test_a_late_message_alone_folds_the_whole_stream(backend: Backend) -> None:
    engine = backend.container.engine
    story = await write_order(engine, "alice", T0, returned_after_capture_failed("z"))
    await deliver(engine, story.messages[5])  # v6-v7: capture failed, compensation started
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(order_events).where(order_events.c.order_id == story.order_id)
        )
        stream = [r for r in rows if r.version <= 7]
    expected = fold_order_history(
        [StreamEvent(r.version, r.type, r.data, r.occurred_at) for r in stream],
        order_id=story.order_id,
        customer_id="alice",
        placed_at=T0,
    )
    assert expected is not None
    history = by_order(await SqlProjectionStore(engine).snapshot(), ORDER_HISTORY)
    assert history[story.order_id]["status"] == expected["status"] == "FULFILLING"
    assert history[story.order_id]["version"] == 7


async def test_a_rebuild_waits_for_a_live_apply_and_counts_it_once(backend: Backend) -> None:
    engine = backend.container.engine
    store = SqlProjectionStore(engine)
    change = [("PROD-005", "WH-NYC", "reserve", 0, 2, None)]
    message = await write_stock_change(engine, change, T0)
    async with engine.connect() as consumer:
        await consumer.begin()
        await consumer.execute(
            processed_messages.insert(),
            {"consumer": PROJECTIONS, "message_id": message.id, "processed_at": T0},
        )
        models = SqlReadModels(consumer)
        await models.apply_stock_entries(message.payload["entries"], T0)
        await models.flush()
        rebuild = asyncio.create_task(store.rebuild())
        await asyncio.sleep(0.5)
        assert not rebuild.done()  # the consumer's transaction holds the read models
        await consumer.commit()
    await rebuild
    assert level(await store.snapshot(), "PROD-005", "WH-NYC")["reserved"] == 2
    assert level(await store.snapshot(), "PROD-005", "WH-NYC")["on_hand"] == 0


async def test_queries(backend: Backend) -> None:
    engine = backend.container.engine
    store = SqlProjectionStore(engine)
    first = await write_order(engine, "erin", T0, confirmed("q"))
    second = await write_order(engine, "erin", T0 + timedelta(hours=1), held())
    await write_order(engine, "frank", T0, held())
    later = datetime(2099, 1, 1, tzinfo=UTC)  # after the seeding, whenever the tests run
    await write_stock_change(engine, [("PROD-006", "WH-AUS", "reserve", 0, 3, None)], later)
    await store.rebuild()

    history = await store.customer_history("erin", limit=10, offset=0)
    assert [h["orderId"] for h in history] == [second.order_id, first.order_id]
    assert history[0] == {
        "orderId": second.order_id,
        "customerId": "erin",
        "status": "HELD_FOR_REVIEW",
        "failureReason": None,
        "version": 3,
        "placedAt": "2026-05-07T11:00:00Z",
        "updatedAt": "2026-05-07T11:00:02Z",
    }
    assert await store.customer_history("erin", limit=1, offset=1) == history[1:]
    assert await store.customer_history("nobody", limit=10, offset=0) == []

    # No stock message has reached the consumer yet, so the rebuilt levels hold none of them.
    assert await store.inventory_levels("PROD-006") == []
    for message in await seeded_stock_messages(engine):
        await deliver(engine, message)
    await store.rebuild()
    assert await store.inventory_levels("PROD-006") == [
        {
            "sku": "PROD-006",
            "warehouseId": "WH-AUS",
            "onHand": 50,
            "reserved": 3,
            "available": 47,
            "updatedAt": "2099-01-01T00:00:00Z",
        }
    ]
    everything = await store.inventory_levels(None)
    assert len(everything) == 10
    assert everything == sorted(everything, key=lambda r: (r["sku"], r["warehouseId"]))

    shipped = await store.fulfilment(first.order_id)
    assert shipped is not None
    assert (shipped["status"], shipped["version"]) == ("SHIPPED", 6)
    assert shipped["shipments"][0]["id"] == "q:WH-AUS"
    assert await store.fulfilment(second.order_id) is None


async def test_the_trail_of_an_order(backend: Backend) -> None:
    engine = backend.container.engine
    story = await write_order(engine, "alice", T0, confirmed("t")[:2])
    order_id = story.order_id

    def t(seconds: float) -> datetime:
        return T0 + timedelta(seconds=seconds)

    async with engine.begin() as conn:
        await conn.execute(
            saga_log.insert(),
            [
                {
                    "saga_id": order_id,
                    "kind": "saga.started",
                    "step": None,
                    "detail": {},
                    "at": t(1),
                },
                {
                    "saga_id": order_id,
                    "kind": "step.requested",
                    "step": "reserve",
                    "detail": {},
                    "at": t(1),
                },
                {
                    "saga_id": order_id,
                    "kind": "step.succeeded",
                    "step": "authorize",
                    "detail": {"transactionId": "tx-1"},
                    "at": t(2),
                },
                {
                    "saga_id": "other",
                    "kind": "saga.started",
                    "step": None,
                    "detail": {},
                    "at": t(1),
                },
            ],
        )
        failure = {
            "consumer": "payment",
            "message_id": "m-pay",
            "type": "payment.authorize",
            "correlation_id": order_id,
            "error": "TimeoutError: the gateway did not answer\nmore",
            "permanent": False,
        }
        await conn.execute(
            message_failures.insert(),
            [
                {**failure, "attempt": 1, "failed_at": t(1.2)},
                {**failure, "attempt": 2, "failed_at": t(1.4)},
                {**failure, "attempt": 3, "failed_at": t(1.6)},
                {**failure, "correlation_id": "other", "attempt": 1, "failed_at": t(1.3)},
            ],
        )
        letter_id = (
            await conn.execute(
                dead_letters.insert().returning(dead_letters.c.id),
                {
                    "consumer": "payment",
                    "message_id": "m-pay",
                    "type": "payment.authorize",
                    "key": order_id,
                    "correlation_id": order_id,
                    "payload": {},
                    "headers": {},
                    "message_created_at": t(1),
                    "error": "TimeoutError: the gateway did not answer",
                    "traceback": "",
                    "attempts": 3,
                    "first_failed_at": t(1.2),
                    "last_failed_at": t(1.6),
                    "context": {"sagaId": order_id},
                    "status": "replayed",
                    "created_at": t(1.6),
                },
            )
        ).scalar_one()
        await conn.execute(
            dead_letter_replays.insert(),
            {
                "dead_letter_id": letter_id,
                "requested_by": "cli:ops",
                "requested_at": t(1.8),
                "result": "applied",
                "finished_at": t(1.9),
            },
        )
        await conn.execute(
            payment_operations.insert(),
            {
                "order_id": order_id,
                "kind": "authorize",
                "key": f"{order_id}:authorize",
                "amount_minor": 9998,
                "ok": True,
                "reference": "tx-1",
                "at": t(1.9),
            },
        )
        await conn.execute(
            shipments.insert(),
            {
                "id": f"{order_id}:WH-AUS",
                "order_id": order_id,
                "warehouse_id": "WH-AUS",
                "status": "SHIPPED",
                "lines": [{"sku": "PROD-001", "warehouseId": "WH-AUS", "quantity": 2}],
                "value_minor": 9998,
                "created_at": t(2.5),
                "updated_at": t(3),
            },
        )

    trail = await SqlTrail(engine).trail(order_id)
    assert trail is not None
    assert trail["order"]["orderId"] == order_id
    assert trail["order"]["status"] == "PAYMENT_AUTHORIZED"
    assert trail["order"]["version"] == 4
    timeline = [(e["at"], e["source"], e["what"]) for e in trail["entries"]]
    assert timeline == [
        ("2026-05-07T10:00:00Z", "event", "order.placed"),
        ("2026-05-07T10:00:01Z", "saga", "saga.started"),
        ("2026-05-07T10:00:01Z", "saga", "step.requested reserve"),
        ("2026-05-07T10:00:01Z", "event", "order.saga_started"),
        ("2026-05-07T10:00:01Z", "event", "order.reserved → RESERVED"),
        ("2026-05-07T10:00:01.200000Z", "attempt", "payment: payment.authorize attempt 1 failed"),
        ("2026-05-07T10:00:01.400000Z", "attempt", "payment: payment.authorize attempt 2 failed"),
        ("2026-05-07T10:00:01.600000Z", "attempt", "payment: payment.authorize attempt 3 failed"),
        (
            "2026-05-07T10:00:01.600000Z",
            "dead-letter",
            "payment: payment.authorize dead-lettered after 3 attempt(s)",
        ),
        (
            "2026-05-07T10:00:01.800000Z",
            "dead-letter",
            f"dead letter {letter_id} replayed by cli:ops: applied",
        ),
        ("2026-05-07T10:00:01.900000Z", "payment", "authorize 9998 USD (minor units): ok"),
        ("2026-05-07T10:00:02Z", "saga", "step.succeeded authorize"),
        ("2026-05-07T10:00:02Z", "event", "order.payment_authorized → PAYMENT_AUTHORIZED"),
        (
            "2026-05-07T10:00:02.500000Z",
            "shipment",
            f"shipment {order_id}:WH-AUS requested from WH-AUS",
        ),
        ("2026-05-07T10:00:03Z", "shipment", f"shipment {order_id}:WH-AUS shipped"),
    ]
    entries = trail["entries"]
    assert entries[3]["detail"]["version"] == 2
    assert entries[5]["detail"]["error"].startswith("TimeoutError")
    assert entries[8]["detail"]["context"] == {"sagaId": order_id}
    assert entries[11]["detail"] == {
        "kind": "step.succeeded",
        "step": "authorize",
        "transactionId": "tx-1",
    }
    assert await SqlTrail(engine).trail("no-such-order") is None
