"""Order sagas under injected faults, on SQLite and the real PostgreSQL.

Each Hypothesis example empties the backend's tables, sets random stock and places a fresh
batch of orders with random cards and warehouse failures, while it breaks things: handler
transactions fail at commit (or lose the answer after committing), the payment gateway goes
away before or after doing its work, outbox rows are delivered twice, and the consumer runtime
is killed mid-flight and restarted (its leased rows come back after
``redelivery_after_seconds``). Whatever happened, once every order has settled the books must
agree: nothing oversold, nothing left reserved, money taken only for what shipped, nothing kept
from an order that did not complete.

Shrinking is off: one example takes seconds, and the failing example is printed either way.
Each example starts from an empty database, so Hypothesis's replay of a failure is faithful.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from orderly.adapters.db.read_models import SqlProjectionStore
from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.tables import outbox_messages
from orderly.adapters.payments.simulated import SimulatedGateway
from orderly.services.order_steps import warehouse_handler
from orderly.services.payments import GatewayUnavailable, PaymentResult
from orderly.services.ports import MessageUnitOfWork, StorageUnavailable
from orderly.services.projections import FULFILMENT, ORDER_HISTORY
from tests.conftest import Backend
from tests.support.saga import DelegatingGateway, OrderRow, SagaHarness, saga_harness

pytestmark = pytest.mark.timeout(300)

SKUS = ("PROD-001", "PROD-003", "PROD-005")
WAREHOUSES = ("WH-AUS", "WH-NYC")
APPROVING = "pm_card_visa"
DECLINING = ("pm_card_chargeDeclined", "pm_card_chargeDeclinedInsufficientFunds")


class InjectedFault(Exception):
    """A transient failure the test injected; the runtime retries it."""


@dataclass
class Faults:
    """A seeded coin that says when to fail, and a count of the times it did."""

    rate: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    fired: int = 0

    def fire(self) -> bool:
        if self.rate > 0 and self.rng.random() < self.rate:
            self.fired += 1
            return True
        return False


class FlakyUnitOfWork(SqlUnitOfWork):
    """The runtime's unit of work, whose commit sometimes fails, or succeeds and then reports
    the connection lost (the runtime must find the work already done)."""

    def __init__(self, harness: SagaHarness, faults: Faults) -> None:
        super().__init__(harness.container.engine, harness.container.signal.notify)
        self._faults = faults

    async def commit(self) -> None:
        if self._faults.fire():
            raise InjectedFault("the commit failed")
        await super().commit()
        if self._faults.fire():
            raise StorageUnavailable("the connection dropped after the commit (injected)")


class FlakyGateway(DelegatingGateway):
    """Sometimes unavailable before doing the work, sometimes after doing it."""

    def __init__(self, faults: Faults) -> None:
        super().__init__(SimulatedGateway())
        self.faults = faults

    async def _flaky(self, call: Callable[[], Any]) -> PaymentResult:
        if self.faults.fire():
            raise GatewayUnavailable("the gateway is unreachable (injected)")
        result: PaymentResult = await call()
        if self.faults.fire():
            raise GatewayUnavailable("the gateway's answer was lost (injected)")
        return result

    async def authorize(
        self,
        *,
        key: str,
        order_id: str,
        amount_minor: int,
        currency: str,
        payment_method: str,
        customer_id: str,
    ) -> PaymentResult:
        return await self._flaky(
            lambda: self.inner.authorize(
                key=key,
                order_id=order_id,
                amount_minor=amount_minor,
                currency=currency,
                payment_method=payment_method,
                customer_id=customer_id,
            )
        )

    async def capture(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        return await self._flaky(
            lambda: self.inner.capture(key=key, reference=reference, amount_minor=amount_minor)
        )

    async def void(self, *, key: str, reference: str) -> PaymentResult:
        return await self._flaky(lambda: self.inner.void(key=key, reference=reference))


@dataclass(frozen=True)
class Scenario:
    stock: dict[tuple[str, str], int]
    orders: list[tuple[dict[str, int], str]]
    warehouse_failure_rate: float
    commit_fault_rate: float
    gateway_fault_rate: float
    chaos: list[tuple[float, str]]
    """(seconds after the orders went in, "crash" | "duplicate")"""
    seed: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    items = st.dictionaries(st.sampled_from(SKUS), st.integers(1, 3), min_size=1, max_size=2)
    card = st.sampled_from((APPROVING, APPROVING, APPROVING, *DECLINING))
    chaos = st.tuples(st.floats(0, 1.5), st.sampled_from(("crash", "duplicate")))
    return Scenario(
        stock={(s, w): draw(st.integers(0, 4)) for s in SKUS for w in WAREHOUSES},
        orders=draw(st.lists(st.tuples(items, card), min_size=2, max_size=6)),
        warehouse_failure_rate=draw(st.sampled_from((0.0, 0.0, 0.3))),
        commit_fault_rate=draw(st.sampled_from((0.0, 0.1, 0.1))),
        gateway_fault_rate=draw(st.sampled_from((0.0, 0.15, 0.15))),
        chaos=sorted(draw(st.lists(chaos, max_size=4))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@dataclass
class Rig:
    harness: SagaHarness
    commit_faults: Faults
    gateway_faults: Faults


@pytest.fixture
async def rig(backend: Backend) -> AsyncIterator[Rig]:
    """One harness for all of a test's examples (each example brings its own orders)."""
    gateway_faults = Faults()
    async with saga_harness(
        backend,
        gateway=FlakyGateway(gateway_faults),
        retry_attempts=10,
        fraud_velocity_max_orders=1_000_000,
    ) as h:
        yield Rig(h, Faults(), gateway_faults)


@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
async def test_orders_settle_consistently_whatever_breaks(rig: Rig, scenario: Scenario) -> None:
    h = rig.harness
    rng = random.Random(scenario.seed)
    rig.commit_faults = Faults(scenario.commit_fault_rate, rng)
    rig.gateway_faults.rate, rig.gateway_faults.rng = scenario.gateway_fault_rate, rng
    rig.gateway_faults.fired = 0
    await h.reset()
    for (sku, warehouse), on_hand in scenario.stock.items():
        await h.set_stock(sku, warehouse, on_hand)
    initial = await h.all_stock()

    c = h.container
    steps = replace(
        c.step_settings(),
        warehouse_failure_rate=scenario.warehouse_failure_rate,
        warehouse_seed=scenario.seed,
    )
    shipping = warehouse_handler(steps, clock=c.clock, ids=c.ids, policy=c.retry_policy)

    def flaky() -> MessageUnitOfWork:
        return FlakyUnitOfWork(h, rig.commit_faults)

    async def start() -> None:
        await h.start(uow=flaky, replace=[shipping])

    violations: list[str] = []
    watching = asyncio.Event()
    monitor = asyncio.create_task(_watch_stock(h, violations, watching))
    started = len(h.runtimes)
    copies = 0
    try:
        await start()
        order_ids = list(
            await asyncio.gather(*(h.place(items, card) for items, card in scenario.orders))
        )
        began = time.monotonic()
        for at, what in scenario.chaos:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - began)))
            if what == "crash":
                await h.crash()
                h.clock.advance(timedelta(seconds=c.settings.redelivery_after_seconds))
                await start()
            elif await _deliver_twice(h, rng, order_ids):
                copies += 1
        orders = await h.settle_all(order_ids, within=90)
        await _quiet(h, within=30)
    finally:
        await h.stop()
        watching.set()  # not cancel(): never interrupt a query (see SagaHarness.crash)
        await monitor

    for order in orders:
        event(f"order {order.status}/{order.failure_reason}")
    crashes = sum(what == "crash" for _, what in scenario.chaos)
    event(f"crashes: {crashes}")
    event(f"injected faults: {rig.commit_faults.fired + rig.gateway_faults.fired > 0}")
    event(f"messages delivered twice: {copies > 0}")
    assert not violations, violations
    if crashes == 0:  # a crash may strike after a commit and before the runtime counts it
        skipped = sum(runtime.stats.duplicates for runtime in h.runtimes[started:])
        assert skipped >= copies, f"{copies} messages delivered twice, {skipped} skipped"
    await _check_books(h, orders, initial)
    await _check_read_models(h)


async def _check_read_models(h: SagaHarness) -> None:
    """The order read models kept live through all of it equal a rebuild from the streams."""
    store = SqlProjectionStore(h.container.engine)
    live = await store.snapshot()
    await store.rebuild()
    rebuilt = await store.snapshot()
    for model in (ORDER_HISTORY, FULFILMENT):
        assert rebuilt[model] == live[model], model


async def _watch_stock(h: SagaHarness, violations: list[str], done: asyncio.Event) -> None:
    """No oversell, ever: sample the stock while the orders run."""
    while not done.is_set():
        for item, (on_hand, reserved) in (await h.all_stock()).items():
            if on_hand < 0 or reserved < 0 or reserved > on_hand:
                violations.append(f"{item}: on hand {on_hand}, reserved {reserved}")
        await asyncio.sleep(0.03)


async def _deliver_twice(h: SagaHarness, rng: random.Random, order_ids: list[str]) -> bool:
    """Queue a second copy of one of the orders' messages, sent or not: same message id."""
    consumed = {t for handler in h.handlers() for t in handler.types}
    async with h.container.engine.begin() as conn:
        rows = (
            await conn.execute(
                sa.select(outbox_messages).where(
                    outbox_messages.c.key.in_(order_ids), outbox_messages.c.type.in_(consumed)
                )
            )
        ).all()
        if not rows:
            return False
        row = rng.choice(rows)
        await conn.execute(
            outbox_messages.insert().values(
                message_id=row.message_id,
                type=row.type,
                key=row.key,
                payload=row.payload,
                headers=row.headers,
                correlation_id=row.correlation_id,
                causation_id=row.causation_id,
                created_at=row.created_at,
                available_at=h.clock.now(),
                attempts=0,
            )
        )
    h.container.signal.notify()
    return True


async def _quiet(h: SagaHarness, within: float) -> None:
    """Wait until no message that some consumer takes is waiting (late shipments, copies)."""
    consumed = {t for handler in h.handlers() for t in handler.types}
    pending = sa.select(sa.func.count()).where(
        outbox_messages.c.sent_at.is_(None), outbox_messages.c.type.in_(consumed)
    )

    async def quiet() -> bool:
        async with h.read() as conn:
            return (await conn.scalar(pending)) == 0

    await h.wait_until(quiet, "the outbox to drain", within)


async def _check_books(
    h: SagaHarness, orders: list[OrderRow], initial: dict[tuple[str, str], tuple[int, int]]
) -> None:
    shipped: dict[tuple[str, str], int] = defaultdict(int)
    for order in orders:
        where = f"order {order.id} ({order.status}/{order.failure_reason})"
        assert order.status in ("CONFIRMED", "FAILED"), f"{where}: every fault was transient"
        assert await h.key_status(order.id) == order.status, where
        await h.event_types(order.id)  # versions 1..n, the order row at n
        shipments = await h.shipments(order.id)
        sent = [s for s in shipments if s.status == "SHIPPED"]
        operations = await h.payment_operations(order.id)
        captures = [op for op in operations if op[0] == "capture" and op[1]]
        assert len(captures) <= 1, f"{where}: captured twice: {operations}"
        if captures:
            assert sent, f"{where}: captured without a shipment: {operations}"
        payment = await h.payment(order.id)
        if order.status == "CONFIRMED":
            assert payment is not None, where
            value = sum(s.value_minor for s in sent)
            assert len(sent) == len(shipments), f"{where}: {[s.status for s in shipments]}"
            assert (payment.status, payment.captured_minor) == ("CAPTURED", value), where
            assert value == order.total_minor, where
            for s in sent:
                for line in s.lines:
                    shipped[(line["sku"], s.warehouse_id)] += line["quantity"]
        else:
            assert not sent, f"{where}: still counts shipments as shipped: {shipments}"
            if payment is not None:
                net = payment.captured_minor - payment.refunded_minor
                assert net == 0, f"{where}: kept {net} of the customer's money"
                assert payment.status != "AUTHORIZED", f"{where}: an authorization hold is left"
    final = await h.all_stock()
    for item, (on_hand, _) in initial.items():
        expected = on_hand - shipped.get(item, 0)
        assert final[item] == (expected, 0), (
            f"{item}: expected on hand {expected} and nothing reserved, found {final[item]}"
        )
    await h.ledger_balances()
