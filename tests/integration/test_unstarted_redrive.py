"""The redrive of an order whose ``order.placed`` a broker confirmed and then lost, on SQLite
and the real PostgreSQL: such an order is still PENDING with no saga long after its message
was published; the redrive queues that message again, and nothing else."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from orderly.adapters.db.tables import orders, outbox_messages, sagas
from orderly.domain.events import ORDER_PLACED
from tests.conftest import Backend
from tests.integration.test_order_api import place

AFTER = timedelta(seconds=60)


async def placed_order(client: httpx.AsyncClient, auth: dict[str, str]) -> str:
    response = await place(client, auth)
    assert response.status_code == 202, response.text
    return str(response.json()["orderId"])


async def placed_row(backend: Backend, order_id: str) -> Any:
    o = outbox_messages.c
    async with backend.container.engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(o.sent_at, o.available_at, o.claimed_by, o.attempts).where(
                    o.key == order_id, o.type == ORDER_PLACED
                )
            )
        ).one()


async def mark_published(backend: Backend, order_id: str) -> None:
    o = outbox_messages.c
    async with backend.container.engine.begin() as conn:
        await conn.execute(
            outbox_messages.update()
            .where(o.key == order_id, o.type == ORDER_PLACED)
            .values(sent_at=backend.clock.now(), attempts=1)
        )


async def test_an_order_whose_saga_never_started_is_published_again(
    backend: Backend, client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    redrive = backend.container.unstarted_order_redrive()
    lost, unsent, started, moved = [await placed_order(client, alice) for _ in range(4)]
    for order_id in (lost, started, moved):
        await mark_published(backend, order_id)
    now = backend.clock.now()
    async with backend.container.engine.begin() as conn:
        await conn.execute(
            sagas.insert().values(
                id=started,
                definition="order",
                key=started,
                status="RUNNING",
                step=0,
                step_status="REQUESTED",
                done=[],
                data={},
                detail={},
                version=1,
                resends=0,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(orders.update().where(orders.c.id == moved).values(status="CANCELLED"))

    assert await redrive.sweep() == 0, "too recent: the broker may still deliver it"
    backend.clock.advance(AFTER + timedelta(seconds=1))
    assert await redrive.sweep() == 1
    row = await placed_row(backend, lost)
    assert (row.sent_at, row.available_at, row.claimed_by, row.attempts) == (
        None,
        backend.clock.now(),
        None,
        0,
    )
    for untouched in (started, moved):
        assert (await placed_row(backend, untouched)).sent_at is not None
    assert (await placed_row(backend, unsent)).sent_at is None
    assert await redrive.sweep() == 0, "queued once: the relay publishes it"
