"""The order saga survives kill -9 of any of its processes, mid-flow, with real processes.

Every consumer (the saga orchestrator and the inventory, fraud, payment, fulfilment and warehouse
services) runs in ``orderly worker``; so "kill the orchestrator and each service between steps"
means: run two workers and kill -9 one, then the other, then the relay (and once the API), at
staggered moments while a mix of orders flows, restarting each. Payment latency and the
warehouse delay stretch every order over several steps, so the kills land between them.

Afterwards every order must have ended the way its kind dictates (normal cards CONFIRMED,
declined cards FAILED with PAYMENT_DECLINED, an out-of-stock SKU FAILED with OUT_OF_STOCK,
multi-warehouse orders CONFIRMED and shipped from both warehouses), and the books must balance:
stock, the stock ledger, reservations, captures, event streams and saga rows
(``tests/support/saga_e2e.py`` lists every check).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.conftest import throwaway_postgres_database
from tests.support.pipeline import Deployment, deployment
from tests.support.saga_e2e import (
    PLENTY,
    RABBITMQ_URL,
    Crashes,
    Kill,
    delete_rabbitmq_namespace,
    diagnostics,
    log_excerpt,
    order_mix,
    place_through_restarts,
    require_rabbitmq,
    saga_violations,
    set_opening_stock,
    stock_levels,
    wait_until_terminal,
)

SETTLE_WITHIN_SECONDS = 120.0
SAGA_SETTINGS = {
    "ORDERLY_PAYMENT_LATENCY_MS": "[5,30]",
    "ORDERLY_WAREHOUSE_DELAY_SECONDS": "0.2",
    # A killed worker's (local transport) or relay's claims come back after 3 s.
    "ORDERLY_REDELIVERY_AFTER_SECONDS": "3",
    "ORDERLY_RETRY_BASE_DELAY_SECONDS": "0.2",
    "ORDERLY_RETRY_ATTEMPTS": "5",
}


async def run_with_crashes(
    made: Deployment, *, orders: int, relay: bool, schedule: list[Kill]
) -> None:
    await set_opening_stock(made, PLENTY)
    initial = await stock_levels(made)
    crashes = Crashes(made)
    await crashes.start(workers=2, relay=relay)
    mix = order_mix(orders)

    placing = asyncio.create_task(place_through_restarts(crashes.api_url, mix))
    try:
        await crashes.run(schedule, within=SETTLE_WITHIN_SECONDS)
        order_ids = await placing
    finally:
        placing.cancel()
        await crashes.restarted()  # no replacement may start after the deployment is stopped
    assert len(set(order_ids)) == len(order_ids), "two requests got the same order"
    await wait_until_terminal(made, len(mix), SETTLE_WITHIN_SECONDS, notes=crashes.done)

    assert crashes.died_on_their_own() == [], "a process died without being killed"
    kinds = {order_id: order.kind for order_id, order in zip(order_ids, mix, strict=True)}
    violations = await saga_violations(made, kinds, initial)
    if violations:
        named = [word for line in violations for word in line.split() if word in kinds]
        raise AssertionError(
            f"{len(violations)} saga invariants broken:\n"
            + "\n".join(violations[:40])
            + "\n\nkills:\n"
            + "\n".join(crashes.done)
            + "\n\n"
            + await diagnostics(made, named)
            + "\n\n"
            + log_excerpt(made, named[:3])
        )


def every_process_three_times(orders: int) -> list[Kill]:
    """Worker 0, worker 1, the relay, three rounds at staggered points of the flow; the API
    once while orders are still being placed."""
    schedule = [Kill("api", placed=orders // 3)]
    for round_, start in enumerate((0.05, 0.3, 0.55)):
        gap = 0.06 + 0.02 * round_
        schedule += [
            Kill("worker0", settled=int(orders * start)),
            Kill("worker1", settled=int(orders * (start + gap))),
            Kill("relay", settled=int(orders * (start + 1.5 * gap))),
        ]
    return schedule


@pytest.mark.timeout(300)
async def test_postgres_and_rabbitmq_saga_survives_kill_9_of_every_process(
    tmp_path: Path,
) -> None:
    await require_rabbitmq()
    namespace = f"saga{uuid.uuid4().hex[:10]}"
    overrides = {
        **SAGA_SETTINGS,
        "ORDERLY_BROKER_URL": RABBITMQ_URL,
        "ORDERLY_BROKER_NAMESPACE": namespace,
    }
    try:
        async with (
            throwaway_postgres_database("orderly_saga") as url,
            deployment(tmp_path, url, overrides) as made,
        ):
            await run_with_crashes(
                made, orders=200, relay=True, schedule=every_process_three_times(200)
            )
    finally:
        await delete_rabbitmq_namespace(namespace)


@pytest.mark.timeout(180)
async def test_sqlite_local_transport_saga_survives_kill_9_of_a_worker(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'orderly.db'}"
    overrides = {**SAGA_SETTINGS, "ORDERLY_BROKER_URL": "local://"}
    async with deployment(tmp_path, url, overrides) as made:
        schedule = [Kill("worker0", settled=10), Kill("worker1", settled=35)]
        await run_with_crashes(made, orders=100, relay=False, schedule=schedule)
