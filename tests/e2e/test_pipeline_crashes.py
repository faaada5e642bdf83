"""Crash and contention tests with real processes, on every transport.

Each test runs an orderly deployment as separate processes (``orderly api``, workers and, for
broker transports, ``orderly relay``), disturbs it (kill -9 a worker or the relay mid-flow, or
sell one scarce SKU to many buyers) and then checks the invariants that matter to a shop:
every order ends CONFIRMED or FAILED, no unit is sold twice or lost, and every order was
decided exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import throwaway_postgres_database
from tests.e2e.conftest import cli_token
from tests.support.namespaces import delete_broker_namespace
from tests.support.pipeline import Deployment, deployment, place_orders

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Setup:
    name: str
    broker_url: str
    postgres: bool


def broker_setups() -> list[Setup]:
    return [
        Setup("local_sqlite", "local://", postgres=False),
        Setup("local_postgres", "local://", postgres=True),
        Setup("redis", "redis://127.0.0.1:6379/0", postgres=True),
        Setup("rabbitmq", "amqp://guest:guest@127.0.0.1:5672/", postgres=True),
        Setup("nats", "nats://127.0.0.1:4222", postgres=True),
        Setup("kafka", "kafka", postgres=True),
    ]


def on(*names: str) -> pytest.MarkDecorator:
    """Run the test on these setups. Every transport gets the hot-SKU test; the kill tests
    run where they exercise something different (a relay only exists on brokers), which keeps
    the e2e suite inside CI's time budget."""
    chosen = [s for s in broker_setups() if s.name in names]
    return pytest.mark.parametrize("running", chosen, ids=[s.name for s in chosen], indirect=True)


ALL = ("local_sqlite", "local_postgres", "redis", "rabbitmq", "nats", "kafka")


@pytest.fixture
async def running(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Deployment]:
    """A deployment on one transport: api, two workers, and the relay where one is needed."""
    setup: Setup = request.param
    broker_url = setup.broker_url
    if broker_url == "kafka":
        from tests.support.tansu import ensure_tansu

        broker_url = ensure_tansu()
    namespace = f"e2e{uuid.uuid4().hex[:10]}"
    overrides = {
        "ORDERLY_BROKER_URL": broker_url,
        "ORDERLY_BROKER_NAMESPACE": namespace,
        "ORDERLY_REDELIVERY_AFTER_SECONDS": "3",
        "ORDERLY_RETRY_BASE_DELAY_SECONDS": "0.2",
        "ORDERLY_RETRY_ATTEMPTS": "5",
    }
    try:
        if setup.postgres:
            async with (
                throwaway_postgres_database("orderly_e2e") as url,
                deployment(tmp_path, url, overrides) as made,
            ):
                yield made
        else:
            url = f"sqlite+aiosqlite:///{tmp_path / 'orderly.db'}"
            async with deployment(tmp_path, url, overrides) as made:
                yield made
    finally:
        await delete_broker_namespace(broker_url, namespace)


def start_all(made: Deployment, workers: int = 2) -> None:
    made.start_api()
    for _ in range(workers):
        made.start("worker")
    if not made.env["ORDERLY_BROKER_URL"].startswith("local"):
        made.start("relay")


async def assert_every_order_decided_once(made: Deployment, orders: int) -> None:
    assert await made.pending_orders() == 0
    statuses = await made.rows("SELECT status, count(*) FROM orders GROUP BY status")
    assert {row[0] for row in statuses} <= {"CONFIRMED", "FAILED"}
    decided = await made.rows(
        "SELECT order_id, count(*) FROM order_events "
        "WHERE type IN ('order.confirmed', 'order.failed') GROUP BY order_id"
    )
    assert len(decided) == orders
    assert {row[1] for row in decided} == {1}, "an order was decided twice"
    processed = await made.scalar(
        "SELECT count(*) FROM processed_messages WHERE consumer = 'order-saga'"
    )
    assert processed == orders


async def assert_stock_moved_exactly_once(made: Deployment, before: dict[str, int]) -> None:
    """Units left = units before - units of CONFIRMED orders, per SKU."""
    sold = dict(
        await made.rows(
            "SELECT l.sku, sum(l.quantity) FROM order_lines l JOIN orders o ON o.id = l.order_id "
            "WHERE o.status = 'CONFIRMED' GROUP BY l.sku"
        )
    )
    after = await on_hand(made)
    for sku, units in before.items():
        assert after[sku] == units - int(sold.get(sku, 0)), f"{sku}: stock and sales disagree"


async def on_hand(made: Deployment) -> dict[str, int]:
    return {
        row[0]: int(row[1])
        for row in await made.rows("SELECT sku, sum(on_hand) FROM stock GROUP BY sku")
    }


def one_unit_of(skus: list[str], count: int) -> list[dict[str, object]]:
    return [
        {"items": [{"sku": skus[i % len(skus)], "quantity": 1}], "paymentMethod": "pm_card_visa"}
        for i in range(count)
    ]


@on(*ALL)
async def test_a_hot_sku_across_two_workers_sells_exactly_its_stock(running: Deployment) -> None:
    made = running
    await made.set_stock("PROD-006", {"WH-AUS": 40})
    start_all(made)
    assert made.api is not None
    token = cli_token(made.api, "shopper")

    await place_orders(made.api.url, token, one_unit_of(["PROD-006"], 400))
    await made.wait_until_settled(400)

    assert await made.scalar("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'") == 40
    assert (await on_hand(made))["PROD-006"] == 0
    failed = await made.rows("SELECT DISTINCT failure_reason FROM orders WHERE status = 'FAILED'")
    assert [row[0] for row in failed] == ["OUT_OF_STOCK"]
    await assert_every_order_decided_once(made, 400)


SKUS = ["PROD-001", "PROD-003", "PROD-005", "PROD-006"]


@on("local_sqlite", "local_postgres", "rabbitmq")
async def test_a_worker_killed_mid_flow_loses_and_doubles_nothing(running: Deployment) -> None:
    made = running
    start_all(made)
    assert made.api is not None
    token = cli_token(made.api, "shopper")
    before = await on_hand(made)

    placing = asyncio.create_task(place_orders(made.api.url, token, one_unit_of(SKUS, 150)))
    await asyncio.sleep(1.0)
    victim = made.processes[0]
    assert victim.name == "worker"
    victim.kill()  # SIGKILL: no cleanup, whatever it held is in flight
    made.start("worker")
    await placing
    await made.wait_until_settled(150)

    await assert_every_order_decided_once(made, 150)
    await assert_stock_moved_exactly_once(made, before)


@on("redis", "rabbitmq", "nats", "kafka")
async def test_a_relay_killed_repeatedly_loses_and_doubles_nothing(running: Deployment) -> None:
    made = running
    start_all(made)
    assert made.api is not None
    token = cli_token(made.api, "shopper")
    before = await on_hand(made)

    placing = asyncio.create_task(place_orders(made.api.url, token, one_unit_of(SKUS, 150)))
    for _ in range(3):
        await asyncio.sleep(0.4)
        relay = next(p for p in reversed(made.processes) if p.name == "relay")
        relay.kill()  # possibly between publishing a batch and marking it sent
        made.start("relay")
    await placing
    await made.wait_until_settled(150)

    await assert_every_order_decided_once(made, 150)
    await assert_stock_moved_exactly_once(made, before)
