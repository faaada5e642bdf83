"""A broker (or, for the local transport, the database) goes away while orders flow.

The relay backs off and resumes, the workers reconnect, the API keeps taking orders where it
can (or answers 503 and the client retries), and afterwards every order is decided exactly
once with the stock to match. Private broker instances are used where the server is stopped
(tests/support/brokers.py); RabbitMQ is stopped with ``rabbitmqctl stop_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_DSN, throwaway_postgres_database
from tests.e2e.conftest import cli_token
from tests.e2e.test_pipeline_crashes import (
    SKUS,
    assert_every_order_decided_once,
    assert_stock_moved_exactly_once,
    on_hand,
    one_unit_of,
    start_all,
)
from tests.support.brokers import PrivateBroker, private_nats, private_redis, private_tansu
from tests.support.namespaces import delete_broker_namespace
from tests.support.pipeline import Deployment, deployment, place_orders

pytestmark = pytest.mark.timeout(300)

OUTAGE_SECONDS = 4.0
Outage = Callable[[], contextlib.AbstractAsyncContextManager[None]]


def _rabbitmqctl(*args: str) -> None:
    executable = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([executable, *args], check=True, capture_output=True, timeout=120)


@contextlib.asynccontextmanager
async def rabbitmq_outage() -> AsyncIterator[None]:
    await asyncio.to_thread(_rabbitmqctl, "stop_app")
    try:
        await asyncio.sleep(OUTAGE_SECONDS)
        yield
    finally:
        await asyncio.to_thread(_rabbitmqctl, "start_app")
        await asyncio.to_thread(_rabbitmqctl, "await_startup")


def database_outage(url: str) -> Outage:
    """No new connections to the database and every open one cut, for a while."""
    name = make_url(url).database

    @contextlib.asynccontextmanager
    async def outage() -> AsyncIterator[None]:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await asyncio.sleep(OUTAGE_SECONDS)
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()

    return outage


def broker_outage(broker: PrivateBroker) -> Outage:
    @contextlib.asynccontextmanager
    async def outage() -> AsyncIterator[None]:
        with _sync_outage(broker):
            await asyncio.sleep(OUTAGE_SECONDS)
            yield

    return outage


@contextlib.contextmanager
def _sync_outage(broker: PrivateBroker) -> Iterator[None]:
    with broker.outage():
        yield


@pytest.fixture(params=["local_postgres", "redis", "rabbitmq", "nats", "kafka"])
async def disturbed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Deployment, Outage]]:
    name: str = request.param
    broker: PrivateBroker | None = None
    if name in ("redis", "nats", "kafka"):
        (tmp_path / "broker").mkdir()
        factory = {"redis": private_redis, "nats": private_nats, "kafka": private_tansu}[name]
        broker = factory(tmp_path / "broker")
        broker.start()
    broker_url = {
        "local_postgres": "local://",
        "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    }.get(name) or (broker.url if broker else "")
    namespace = f"out{uuid.uuid4().hex[:10]}"
    overrides = {
        "ORDERLY_BROKER_URL": broker_url,
        "ORDERLY_BROKER_NAMESPACE": namespace,
        "ORDERLY_REDELIVERY_AFTER_SECONDS": "3",
        "ORDERLY_RETRY_BASE_DELAY_SECONDS": "0.2",
        "ORDERLY_RETRY_ATTEMPTS": "5",
        # A broker that loses confirmed messages in its shutdown (seen with NATS) leaves
        # orders PENDING; the relay's redrive publishes their order.placed again. A lost step
        # command is sent again by the saga, at a third of the step's timeout.
        "ORDERLY_REDRIVE_AFTER_SECONDS": "10",
        "ORDERLY_STEP_TIMEOUT_SECONDS": "60",
    }
    try:
        async with (
            throwaway_postgres_database("orderly_outage") as url,
            deployment(tmp_path, url, overrides) as made,
        ):
            if name == "local_postgres":
                yield made, database_outage(url)
            elif name == "rabbitmq":
                yield made, rabbitmq_outage
            else:
                assert broker is not None
                yield made, broker_outage(broker)
    finally:
        if broker is not None:
            broker.stop()
        else:
            await delete_broker_namespace(broker_url, namespace)


async def test_orders_placed_around_an_outage_all_end_correctly(
    disturbed: tuple[Deployment, Outage],
) -> None:
    made, outage = disturbed
    start_all(made)
    assert made.api is not None
    token = cli_token(made.api, "shopper")
    before = await on_hand(made)

    first = asyncio.create_task(place_orders(made.api.url, token, one_unit_of(SKUS, 150)))
    await asyncio.sleep(0.5)
    async with outage():
        pass
    await first
    await place_orders(made.api.url, token, one_unit_of(SKUS, 100))
    await made.wait_until_settled(250, within=180)

    await assert_every_order_decided_once(made, 250)
    await assert_stock_moved_exactly_once(made, before)
    # An outage fails no order: a message the broker lost in it is sent again (order.placed by
    # the relay's redrive, a step's command by the saga), so every order ends as its stock says.
    reasons = await made.rows(
        "SELECT failure_reason, count(*) FROM orders WHERE status = 'FAILED' GROUP BY 1"
    )
    assert {row[0] for row in reasons} <= {"OUT_OF_STOCK"}, reasons
