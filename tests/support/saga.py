"""The whole order saga in one process, for integration tests on SQLite and PostgreSQL.

:func:`saga_harness` builds a fresh container on the test's database (so each test may use its
own settings), runs the real consumer runtime on the local transport in a task, places orders
through the ASGI app, and offers what the saga tests keep asking: wait for an order to settle,
run the sweepers, read the tables, and check that the stock ledger balances.

The clock is a :class:`TickingClock`: it follows real time, so retry delays and delivery leases
come due on their own, and ``advance`` still jumps ahead for step timeouts, review timeouts and
reservation TTLs (which only act when a test calls :meth:`SagaHarness.sweep`).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orderly.adapters.db.engine import READ_ONLY
from orderly.adapters.db.tables import (
    fraud_reviews,
    idempotency_keys,
    metadata,
    order_events,
    orders,
    outbox_messages,
    payment_operations,
    payments,
    reservation_lines,
    saga_log,
    sagas,
    shipments,
    stock,
    stock_ledger,
)
from orderly.bootstrap import Container, bootstrap
from orderly.config import Settings
from orderly.entrypoints.api.app import create_app
from orderly.services.consumer import ConsumerRuntime, Handler, RuntimeOptions
from orderly.services.inventory import set_on_hand
from orderly.services.order_aftercare import ALERTER, REFUNDS, alert_handler, refund_handler
from orderly.services.order_saga import cancel_order, decide_review
from orderly.services.order_steps import PAYMENT, payment_handler
from orderly.services.payments import PaymentGateway, PaymentResult
from orderly.services.ports import (
    JSON,
    MessageUnitOfWorkFactory,
    NewDeadLetter,
    StockChange,
)
from orderly.testing import ManualClock
from tests.conftest import Backend

TERMINAL = frozenset({"CONFIRMED", "FAILED", "CANCELLED", "NEEDS_ATTENTION"})
CUSTOMER = "alice"


class TickingClock(ManualClock):
    """A manual clock that also moves with real time (see the module docstring)."""

    def __init__(self, start: datetime | None = None) -> None:
        super().__init__(start or datetime.now(UTC))
        self._origin = time.monotonic()

    def now(self) -> datetime:
        return super().now() + timedelta(seconds=time.monotonic() - self._origin)

    def set(self, moment: datetime) -> None:
        super().set(moment)
        self._origin = time.monotonic()


@dataclass
class RecordingAlerts:
    """The alert hook, remembered: dead letters and orders that need attention."""

    dead_letters: list[NewDeadLetter] = field(default_factory=list)
    attention: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def dead_lettered(self, letter: NewDeadLetter, letter_id: int) -> None:
        self.dead_letters.append(letter)

    async def needs_attention(self, order_id: str, why: str, detail: dict[str, Any]) -> None:
        self.attention.append((order_id, why, detail))


@dataclass(frozen=True)
class OrderRow:
    id: str
    customer_id: str
    status: str
    failure_reason: str | None
    version: int
    total_minor: int


@dataclass(frozen=True)
class SagaRow:
    status: str
    step: int
    step_status: str
    done: tuple[str, ...]
    reason: str | None


@dataclass
class _Running:
    runtime: ConsumerRuntime
    task: asyncio.Task[None]
    stop: asyncio.Event
    close: Callable[[], Awaitable[None]]


class SagaHarness:
    """One container, its consumer runtime (started and stopped at will) and an API client."""

    def __init__(
        self,
        container: Container,
        clock: TickingClock,
        client: httpx.AsyncClient,
        gateway: PaymentGateway | None,
    ) -> None:
        self.container = container
        self.clock = clock
        self.client = client
        self.alerts = RecordingAlerts()
        self._gateway = gateway
        self._running: _Running | None = None
        self.runtimes: list[ConsumerRuntime] = []
        self._tokens: dict[tuple[str, str], str] = {}
        self.auth(CUSTOMER)
        self.auth("ops", "admin")

    # ---- the consumer runtime ------------------------------------------------------------------

    def handlers(
        self, exclude: Iterable[str] = (), replace: Sequence[Handler] = ()
    ) -> list[Handler]:
        """Every consumer of the container, with this harness's gateway and alert hook;
        ``replace`` swaps in handlers by consumer name, ``exclude`` leaves consumers out."""
        c = self.container
        policy = c.retry_policy
        by_name = {h.consumer: h for h in c.handlers()}
        by_name[ALERTER] = alert_handler(self.alerts, policy)
        if self._gateway is not None:
            steps = c.step_settings()
            by_name[PAYMENT] = payment_handler(
                self._gateway, steps, clock=c.clock, ids=c.ids, policy=policy
            )
            by_name[REFUNDS] = refund_handler(self._gateway, policy, clock=c.clock, ids=c.ids)
        for handler in replace:
            by_name[handler.consumer] = handler
        skip = set(exclude)
        return [h for name, h in by_name.items() if name not in skip]

    async def start(
        self,
        *,
        exclude: Iterable[str] = (),
        replace: Sequence[Handler] = (),
        uow: MessageUnitOfWorkFactory | None = None,
        lanes: int = 8,
    ) -> ConsumerRuntime:
        """Run the consumer runtime (as ``container.consumer_runtime`` builds it, with a short
        receive timeout) in a task."""
        assert self._running is None, "the runtime is already running"
        transport = self.container.transport()
        await transport.connect()
        runtime = ConsumerRuntime(
            transport,
            uow or self.container.message_uow,
            self.handlers(exclude, replace),
            clock=self.clock,
            alerts=self.alerts,
            options=RuntimeOptions(lanes=lanes, batch=32, receive_timeout=0.25, drain_timeout=5),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(stop), name="saga-runtime")
        self._running = _Running(runtime, task, stop, transport.close)
        self.runtimes.append(runtime)
        return runtime

    async def stop(self) -> None:
        """Stop the runtime gracefully: what it received is finished first."""
        running, self._running = self._running, None
        if running is None:
            return
        running.stop.set()
        try:
            await asyncio.wait_for(running.task, timeout=30)
        finally:
            await running.close()
            del running
            _release_interrupted_connections()  # lanes still busy after the drain are cancelled

    async def crash(self) -> None:
        """Kill the runtime mid-flight: every task of it is cancelled wherever it is, open
        transactions roll back, and the rows it had claimed come back when their lease ends."""
        running, self._running = self._running, None
        if running is None:
            return
        await _kill(running)
        await running.close()
        del running
        _release_interrupted_connections()

    @asynccontextmanager
    async def running(
        self, *, exclude: Iterable[str] = (), replace: Sequence[Handler] = ()
    ) -> AsyncIterator[ConsumerRuntime]:
        runtime = await self.start(exclude=exclude, replace=replace)
        try:
            yield runtime
        finally:
            await self.stop()

    # ---- what shoppers and operators do -------------------------------------------------------

    async def place(
        self,
        items: Mapping[str, int],
        payment_method: str = "pm_card_visa",
        address: JSON | None = None,
        *,
        customer: str = CUSTOMER,
    ) -> str:
        """Place an order through the API (202); returns its id."""
        body: JSON = {
            "items": [{"sku": sku, "quantity": qty} for sku, qty in items.items()],
            "paymentMethod": payment_method,
        }
        if address is not None:
            body["shippingAddress"] = address
        response = await self.client.post(
            "/api/orders",
            json=body,
            headers={**self.auth(customer), "Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 202, response.text
        order_id: str = response.json()["orderId"]
        return order_id

    def auth(self, user: str, role: str = "customer") -> dict[str, str]:
        """Bearer headers, issued once per user: the API checks a token's times against the
        wall clock, which a test that advances ``clock`` has left behind."""
        token = self._tokens.get((user, role))
        if token is None:
            token = self._tokens[(user, role)] = self.container.tokens.issue(user, role)
        return {"Authorization": f"Bearer {token}"}

    async def cancel(self, order_id: str, customer: str | None = CUSTOMER) -> str:
        """The customer cancels (``OrderConflict`` when it is too late)."""
        async with self.container.message_uow() as uow:
            outcome = await cancel_order(uow, self.container.saga_runner(), order_id, customer)
            await uow.commit()
        return outcome

    async def decide_review(self, order_id: str, approve: bool) -> None:
        async with self.container.message_uow() as uow:
            await decide_review(
                uow, order_id, approve, "ops", clock=self.clock, ids=self.container.ids
            )
            await uow.commit()

    async def set_stock(self, sku: str, warehouse_id: str, on_hand: int) -> None:
        """An operator's stock count (as the admin API sets it: a ledger adjustment)."""
        await set_on_hand(self.container.uow, StockChange(sku, warehouse_id, on_hand))

    async def reset(self) -> None:
        """Empty every table and seed the demo catalogue again, as the ``backend`` fixture
        does (the runtime must be stopped)."""
        assert self._running is None, "stop the runtime first"
        async with self.container.engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                await conn.execute(table.delete())
        await self.container.seed()

    async def sweep(self) -> int:
        """One pass of the saga timeouts and the reservation sweeper; how many things moved."""
        moved = await self.container.saga_timeouts().sweep()
        return moved + await self.container.reservation_sweeper().sweep()

    # ---- waiting -------------------------------------------------------------------------------

    async def settle(self, order_id: str, within: float = 20.0) -> OrderRow:
        """Wait until the order is terminal; returns it."""
        deadline = time.monotonic() + within
        while True:
            order = await self.order(order_id)
            if order.status in TERMINAL:
                return order
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"order {order_id} still {order.status} after {within}s; "
                    f"saga {await self.saga(order_id)}; "
                    f"unsent {await self.unsent_detail(order_id)} at {self.clock.now()}"
                )
            await asyncio.sleep(0.02)

    async def settle_all(self, order_ids: Iterable[str], within: float = 30.0) -> list[OrderRow]:
        deadline = time.monotonic() + within
        return [await self.settle(o, max(deadline - time.monotonic(), 0.1)) for o in order_ids]

    async def wait_until(
        self, check: Callable[[], Awaitable[bool]], what: str, within: float = 15.0
    ) -> None:
        deadline = time.monotonic() + within
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def wait_for_step(self, order_id: str, step: int, step_status: str = "REQUESTED") -> None:
        """Wait until the order's saga is running ``step`` (an index) in ``step_status``."""

        async def there() -> bool:
            saga = await self.saga(order_id)
            return (
                saga is not None
                and saga.status == "RUNNING"
                and saga.step == step
                and saga.step_status == step_status
            )

        await self.wait_until(there, f"saga of {order_id} at step {step} {step_status}")

    # ---- reading the tables --------------------------------------------------------------------

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection (on SQLite it takes no write lock, as the views do)."""
        async with self.container.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            yield conn

    async def _all(self, statement: Any) -> list[Any]:
        async with self.read() as conn:
            return list((await conn.execute(statement)).all())

    async def order(self, order_id: str) -> OrderRow:
        [row] = await self._all(sa.select(orders).where(orders.c.id == order_id))
        return OrderRow(
            row.id, row.customer_id, row.status, row.failure_reason, row.version, row.total_minor
        )

    async def saga(self, order_id: str) -> SagaRow | None:
        rows = await self._all(sa.select(sagas).where(sagas.c.id == order_id))
        if not rows:
            return None
        r = rows[0]
        return SagaRow(r.status, r.step, r.step_status, tuple(r.done), r.reason)

    async def events(self, order_id: str) -> list[tuple[int, str]]:
        rows = await self._all(
            sa.select(order_events.c.version, order_events.c.type)
            .where(order_events.c.order_id == order_id)
            .order_by(order_events.c.version)
        )
        return [(r.version, r.type) for r in rows]

    async def event_types(self, order_id: str) -> list[str]:
        """The order's event types, after checking that versions run 1, 2, 3, ... with the
        order row's version the last."""
        events = await self.events(order_id)
        assert [v for v, _ in events] == list(range(1, len(events) + 1)), events
        assert (await self.order(order_id)).version == len(events)
        return [t for _, t in events]

    async def saga_log(
        self, order_id: str, kind: str | None = None
    ) -> list[tuple[str, str | None]]:
        statement = sa.select(saga_log.c.kind, saga_log.c.step).where(
            saga_log.c.saga_id == order_id
        )
        if kind is not None:
            statement = statement.where(saga_log.c.kind == kind)
        return [(r.kind, r.step) for r in await self._all(statement.order_by(saga_log.c.id))]

    async def compensated_steps(self, order_id: str) -> list[str | None]:
        """The steps whose compensation the saga requested, in the order it did."""
        return [s for _, s in await self.saga_log(order_id, "compensation.requested")]

    async def stock_levels(self, sku: str) -> dict[str, tuple[int, int]]:
        """{warehouse: (on_hand, reserved)}."""
        rows = await self._all(sa.select(stock).where(stock.c.sku == sku))
        return {r.warehouse_id: (r.on_hand, r.reserved) for r in rows}

    async def all_stock(self) -> dict[tuple[str, str], tuple[int, int]]:
        rows = await self._all(sa.select(stock))
        return {(r.sku, r.warehouse_id): (r.on_hand, r.reserved) for r in rows}

    async def payment(self, order_id: str) -> Any:
        """The order's payments row, or None."""
        rows = await self._all(sa.select(payments).where(payments.c.order_id == order_id))
        return rows[0] if rows else None

    async def payment_operations(self, order_id: str) -> list[tuple[str, bool, int]]:
        """(kind, ok, amount) of every gateway call recorded for the order, in order."""
        rows = await self._all(
            sa.select(payment_operations)
            .where(payment_operations.c.order_id == order_id)
            .order_by(payment_operations.c.id)
        )
        return [(r.kind, r.ok, r.amount_minor) for r in rows]

    async def shipments(self, order_id: str) -> list[Any]:
        return await self._all(
            sa.select(shipments).where(shipments.c.order_id == order_id).order_by(shipments.c.id)
        )

    async def fraud_review(self, order_id: str) -> Any:
        """The order's fraud_reviews row, or None."""
        rows = await self._all(sa.select(fraud_reviews).where(fraud_reviews.c.order_id == order_id))
        return rows[0] if rows else None

    async def key_status(self, order_id: str) -> str | None:
        [row] = await self._all(
            sa.select(idempotency_keys.c.resource_status).where(
                idempotency_keys.c.resource_id == order_id
            )
        )
        status: str | None = row.resource_status
        return status

    async def outbox(self, type_: str, key: str | None = None) -> list[Any]:
        statement = sa.select(outbox_messages).where(outbox_messages.c.type == type_)
        if key is not None:
            statement = statement.where(outbox_messages.c.key == key)
        return await self._all(statement.order_by(outbox_messages.c.id))

    async def unsent(self, key: str) -> list[str]:
        rows = await self._all(
            sa.select(outbox_messages.c.type).where(
                outbox_messages.c.key == key, outbox_messages.c.sent_at.is_(None)
            )
        )
        return [r.type for r in rows]

    async def unsent_detail(self, key: str) -> list[str]:
        """The unsent messages of a key with their queue state, for a failure's message."""
        o = outbox_messages.c
        rows = await self._all(
            sa.select(o.type, o.attempts, o.available_at, o.claimed_by, o.claimed_until)
            .where(o.key == key, o.sent_at.is_(None))
            .order_by(o.id)
        )
        return [
            f"{r.type} (attempts {r.attempts}, available {r.available_at}, "
            f"claimed by {r.claimed_by} until {r.claimed_until})"
            for r in rows
        ]

    async def ledger_balances(self) -> None:
        """For every (sku, warehouse): the ledger's deltas add up to on_hand and reserved, and
        reserved is what the ACTIVE reservation lines hold."""
        ledger = {
            (r.sku, r.warehouse_id): (int(r.on_hand), int(r.reserved))
            for r in await self._all(
                sa.select(
                    stock_ledger.c.sku,
                    stock_ledger.c.warehouse_id,
                    sa.func.sum(stock_ledger.c.on_hand_delta).label("on_hand"),
                    sa.func.sum(stock_ledger.c.reserved_delta).label("reserved"),
                ).group_by(stock_ledger.c.sku, stock_ledger.c.warehouse_id)
            )
        }
        held = {
            (r.sku, r.warehouse_id): int(r.quantity)
            for r in await self._all(
                sa.select(
                    reservation_lines.c.sku,
                    reservation_lines.c.warehouse_id,
                    sa.func.sum(reservation_lines.c.quantity).label("quantity"),
                )
                .where(reservation_lines.c.status == "ACTIVE")
                .group_by(reservation_lines.c.sku, reservation_lines.c.warehouse_id)
            )
        }
        levels = await self.all_stock()
        problems = []
        for item, (on_hand, reserved) in sorted(levels.items()):
            if ledger.get(item, (0, 0)) != (on_hand, reserved):
                problems.append(f"{item}: stock {(on_hand, reserved)}, ledger {ledger.get(item)}")
            if held.get(item, 0) != reserved:
                problems.append(f"{item}: reserved {reserved}, active lines {held.get(item, 0)}")
            if on_hand < 0 or reserved < 0 or reserved > on_hand:
                problems.append(f"{item}: impossible stock {(on_hand, reserved)}")
        for item in sorted(set(ledger) - set(levels)):
            problems.append(f"{item}: ledger entries without a stock row")
        assert not problems, "the stock ledger does not balance:\n" + "\n".join(problems)


def _tasks_of(runtime: ConsumerRuntime) -> list[asyncio.Task[Any]]:
    """The runtime's tasks: ``run``, its pumps and their lanes (which it starts outside its
    task group)."""
    found = []
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if frame is not None and frame.f_locals.get("self") is runtime:
            found.append(task)
    return found


async def _kill(running: _Running) -> None:
    doomed = _tasks_of(running.runtime)
    for task in doomed:
        task.cancel()  # once: a second cancel could interrupt a connection's clean-up
    # On Python 3.11 asyncio.wait_for (the local transport's wake-up wait) may swallow a
    # cancellation; a pump that lost it sees the stop event at its next turn instead.
    running.stop.set()
    if doomed:
        _, pending = await asyncio.wait(doomed, timeout=30)
        assert not pending, f"runtime tasks would not die: {pending}"


def _release_interrupted_connections() -> None:
    """A connection interrupted mid-statement is closed, but on SQLite its unfinished statement
    (kept alive by the cancelled tasks' tracebacks, in reference cycles) holds the write lock
    until the garbage collector gets to it. A dead process would have let go at once. Call it
    once nothing refers to the dead tasks any more."""
    gc.collect()


def database_url(backend: Backend) -> str:
    return backend.container.engine.url.render_as_string(hide_password=False)


@asynccontextmanager
async def saga_harness(
    backend: Backend, *, gateway: PaymentGateway | None = None, **overrides: Any
) -> AsyncIterator[SagaHarness]:
    """A harness on ``backend``'s database with test settings plus ``overrides``; the runtime
    is stopped and the container disposed on the way out."""
    settings: JSON = {
        "env": "test",
        "database_url": database_url(backend),
        "retry_base_delay_seconds": 0.01,
        "redelivery_after_seconds": 1,
        "db_pool_size": 10,
        **overrides,
    }
    clock = TickingClock()
    container = bootstrap(Settings(**settings), clock=clock)
    app = create_app(container, check_schema=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        harness = SagaHarness(container, clock, client, gateway)
        try:
            yield harness
        finally:
            try:
                await harness.stop()
            finally:
                await container.close()


class DelegatingGateway:
    """A payment gateway that passes every call to ``inner``; tests override what they break."""

    name = "simulated"

    def __init__(self, inner: PaymentGateway) -> None:
        self.inner = inner

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
        return await self.inner.authorize(
            key=key,
            order_id=order_id,
            amount_minor=amount_minor,
            currency=currency,
            payment_method=payment_method,
            customer_id=customer_id,
        )

    async def capture(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        return await self.inner.capture(key=key, reference=reference, amount_minor=amount_minor)

    async def void(self, *, key: str, reference: str) -> PaymentResult:
        return await self.inner.void(key=key, reference=reference)

    async def refund(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        return await self.inner.refund(key=key, reference=reference, amount_minor=amount_minor)

    async def close(self) -> None:
        await self.inner.close()
