"""processOrder on the local transport, on SQLite and the real PostgreSQL.

Orders are placed through the API, the real consumer runtime processes ``order.placed``, and
the tests check the order, its events, the stock and the idempotency record.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import sqlalchemy as sa

from orderly.adapters.db.tables import idempotency_keys, outbox_messages, stock
from orderly.domain.events import ORDER_PLACED, Message
from orderly.services.consumer import ConsumerRuntime, Handler, RetryPolicy, RuntimeOptions
from orderly.services.order_processing import (
    PROCESS_ORDER,
    fail_order_on_dead_letter,
    process_order_handler,
)
from orderly.services.ports import JSON, MessageUnitOfWork, NewDeadLetter
from tests.conftest import Backend

pytestmark = pytest.mark.timeout(60)


class NoAlerts:
    def __init__(self) -> None:
        self.letters: list[int] = []

    async def dead_lettered(self, letter: NewDeadLetter, letter_id: int) -> None:
        self.letters.append(letter_id)


@asynccontextmanager
async def processing(
    backend: Backend, handler: Handler | None = None, lanes: int = 8
) -> AsyncIterator[ConsumerRuntime]:
    container = backend.container
    transport = container.transport()
    await transport.connect()
    runtime = ConsumerRuntime(
        transport,
        container.message_uow,
        [handler or process_order_handler(container.clock)],
        clock=container.clock,
        alerts=NoAlerts(),
        options=RuntimeOptions(lanes=lanes, batch=32, receive_timeout=0.2),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        yield runtime
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)
        await transport.close()


async def place(client: httpx.AsyncClient, auth: dict[str, str], items: list[JSON]) -> str:
    response = await client.post(
        "/api/orders",
        json={"items": items, "paymentMethod": "pm_card_visa"},
        headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 202, response.text
    order_id: str = response.json()["orderId"]
    return order_id


async def settled(
    client: httpx.AsyncClient, auth: dict[str, str], order_id: str, within: float = 15.0
) -> JSON:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        order: JSON = (await client.get(f"/api/orders/{order_id}", headers=auth)).json()
        if order["status"] != "PENDING":
            return order
        await asyncio.sleep(0.05)
    raise AssertionError(f"order {order_id} still PENDING after {within}s")


async def levels(backend: Backend, sku: str) -> dict[str, int]:
    async with backend.container.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(stock.c.warehouse_id, stock.c.on_hand).where(stock.c.sku == sku)
        )
        return {r.warehouse_id: r.on_hand for r in rows}


async def key_status(backend: Backend, order_id: str) -> str | None:
    async with backend.container.engine.connect() as conn:
        query = sa.select(idempotency_keys.c.resource_status).where(
            idempotency_keys.c.resource_id == order_id
        )
        status: str | None = (await conn.execute(query)).scalar_one()
        return status


async def test_an_order_in_stock_is_confirmed_and_its_stock_taken(
    backend: Backend, client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    async with processing(backend):
        order_id = await place(client, alice, [{"sku": "PROD-001", "quantity": 2}])
        order = await settled(client, alice, order_id)

    assert order["status"] == "CONFIRMED"
    assert order["failureReason"] is None
    assert await levels(backend, "PROD-001") == {"WH-AUS": 8, "WH-NYC": 5}
    assert await key_status(backend, order_id) == "CONFIRMED"
    events = (await client.get(f"/api/orders/{order_id}/events", headers=alice)).json()
    assert [e["type"] for e in events] == ["order.placed", "order.confirmed"]
    assert events[1]["data"]["allocations"] == [
        {"sku": "PROD-001", "warehouseId": "WH-AUS", "quantity": 2}
    ]


async def test_a_line_bigger_than_one_warehouse_is_split_by_priority(
    backend: Backend, client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    async with processing(backend):
        order_id = await place(client, alice, [{"sku": "PROD-001", "quantity": 12}])
        order = await settled(client, alice, order_id)

    assert order["status"] == "CONFIRMED"
    assert await levels(backend, "PROD-001") == {"WH-AUS": 0, "WH-NYC": 3}


async def test_an_order_short_of_stock_fails_and_takes_nothing(
    backend: Backend, client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    before = await levels(backend, "PROD-003")
    async with processing(backend):
        order_id = await place(
            client,
            alice,
            [{"sku": "PROD-003", "quantity": 5}, {"sku": "PROD-001", "quantity": 16}],
        )
        order = await settled(client, alice, order_id)

    assert order["status"] == "FAILED"
    assert order["failureReason"] == "OUT_OF_STOCK"
    assert await levels(backend, "PROD-003") == before, "the first line's stock went back"
    assert await levels(backend, "PROD-001") == {"WH-AUS": 10, "WH-NYC": 5}
    assert await key_status(backend, order_id) == "FAILED"


async def test_a_redelivered_or_repeated_order_placed_changes_nothing(
    backend: Backend, client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    async with processing(backend) as runtime:
        order_id = await place(client, alice, [{"sku": "PROD-005", "quantity": 3}])
        await settled(client, alice, order_id)
        async with backend.container.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(outbox_messages).where(outbox_messages.c.key == order_id)
                )
            ).one()
        original = Message(
            id=row.message_id,
            type=ORDER_PLACED,
            key=order_id,
            payload=row.payload,
            created_at=row.created_at,
            correlation_id=order_id,
        )
        transport = backend.container.transport()
        await transport.publish([original])  # the same message again: the inbox skips it
        await transport.publish([_with_new_id(original)])
        deadline = time.monotonic() + 10
        while runtime.stats.processed < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    assert runtime.stats.processed == 3
    assert runtime.stats.duplicates == 1
    assert await levels(backend, "PROD-005") == {"WH-AUS": 5, "WH-NYC": 4}
    events = (await client.get(f"/api/orders/{order_id}/events", headers=alice)).json()
    assert [e["type"] for e in events] == ["order.placed", "order.confirmed"]


def _with_new_id(message: Message) -> Message:
    """Another message about the same order (not a redelivery): the guarded transition holds."""
    return Message(
        id=str(uuid.uuid4()),
        type=message.type,
        key=message.key,
        payload=message.payload,
        created_at=message.created_at,
        correlation_id=message.correlation_id,
    )


async def test_concurrent_orders_for_scarce_stock_never_oversell(
    backend: Backend, client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    # PROD-005 has 8 + 4 units; 30 orders of one unit race for them across 16 lanes.
    async with processing(backend, lanes=16):
        order_ids = await asyncio.gather(
            *(place(client, alice, [{"sku": "PROD-005", "quantity": 1}]) for _ in range(30))
        )
        orders = [await settled(client, alice, order_id) for order_id in order_ids]

    statuses = [o["status"] for o in orders]
    assert statuses.count("CONFIRMED") == 12
    assert statuses.count("FAILED") == 18
    assert {o["failureReason"] for o in orders if o["status"] == "FAILED"} == {"OUT_OF_STOCK"}
    assert await levels(backend, "PROD-005") == {"WH-AUS": 0, "WH-NYC": 0}


def broken_processing(backend: Backend) -> Handler:
    """processOrder whose every attempt fails, with the real dead-letter path."""
    clock = backend.container.clock

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        raise RuntimeError("the stock service is on fire")

    async def on_dead_letter(uow: MessageUnitOfWork, message: Message, reason: str) -> JSON:
        return await fail_order_on_dead_letter(uow, message, reason, clock=clock)

    policy = RetryPolicy(attempts=1, base_delay=0.0)
    return Handler(PROCESS_ORDER, frozenset({ORDER_PLACED}), handle, policy, on_dead_letter)


async def test_an_order_whose_message_is_dead_lettered_fails_with_processing_error(
    backend: Backend, client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    async with processing(backend, handler=broken_processing(backend)):
        order_id = await place(client, alice, [{"sku": "PROD-003", "quantity": 1}])
        order = await settled(client, alice, order_id)

    assert order["status"] == "FAILED"
    assert order["failureReason"] == "PROCESSING_ERROR"
    assert await key_status(backend, order_id) == "FAILED"
    [letter] = await backend.container.dead_letter_desk().letters()
    assert letter.message.key == order_id
    assert letter.context["order"]["status"] == "PENDING"
    assert letter.context["orderFailed"] is True
    assert "on fire" in letter.error

    # Once the fault is fixed, replaying the letter changes nothing: the order was already
    # decided (FAILED), and processing never moves a decided order.
    outcome = await backend.container.dead_letter_desk().replay(letter.id, requested_by="ops")
    async with processing(backend):
        await _replay_finished(backend, letter.id)
    assert outcome.replay_id is not None
    assert (await settled(client, alice, order_id))["status"] == "FAILED"
    assert await levels(backend, "PROD-003") == {"WH-AUS": 20, "WH-NYC": 10}


async def _replay_finished(backend: Backend, letter_id: int, within: float = 10.0) -> None:
    desk = backend.container.dead_letter_desk()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        letter = await desk.show(letter_id)
        if letter.replays and letter.replays[-1].result != "queued":
            assert letter.replays[-1].result == "applied"
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replay was not processed")
