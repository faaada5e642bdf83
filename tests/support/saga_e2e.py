"""Helpers for the order saga's crash tests with real processes (tests/e2e/test_saga_crashes.py).

On top of :mod:`tests.support.pipeline`: a shopper that keeps retrying through API restarts
with the same Idempotency-Key, customer tokens, opening stock with its ledger entries, a kill -9
schedule keyed to the orders' progress, waiting until every order is terminal, and one check of
every invariant the saga promises, which reports all violations at once with the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import aio_pika
import httpx
import sqlalchemy as sa

from orderly.adapters.auth import JwtTokens
from orderly.adapters.db.saga_repositories import record_stock_changes
from orderly.adapters.db.tables import stock
from orderly.adapters.system import SystemClock
from orderly.config import DEV_JWT_SECRET
from tests.conftest import service_missing
from tests.support.pipeline import Deployment, Process

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
OPEN_ORDERS = (
    "SELECT o.id, o.status, s.status, s.step, s.step_status, s.deadline_at "
    "FROM orders o LEFT JOIN sagas s ON s.id = o.id "
    "WHERE o.status NOT IN ('CONFIRMED', 'FAILED', 'CANCELLED', 'NEEDS_ATTENTION') "
    "ORDER BY o.created_at"
)
TERMINAL_EVENTS = frozenset(
    {"order.confirmed", "order.failed", "order.cancelled", "order.needs_attention"}
)
ADDRESS = {"country": "US", "city": "Austin", "line1": "1 Congress Ave", "postalCode": "78701"}


class Kind(Enum):
    """What a test order is, and so how it must end."""

    NORMAL = "normal"
    DECLINED = "declined"
    OUT_OF_STOCK = "out_of_stock"
    MULTI_WAREHOUSE = "multi_warehouse"


EXPECTED: dict[Kind, tuple[str, str | None]] = {
    Kind.NORMAL: ("CONFIRMED", None),
    Kind.DECLINED: ("FAILED", "PAYMENT_DECLINED"),
    Kind.OUT_OF_STOCK: ("FAILED", "OUT_OF_STOCK"),
    Kind.MULTI_WAREHOUSE: ("CONFIRMED", None),
}


@dataclass(frozen=True)
class PlannedOrder:
    kind: Kind
    customer: str
    body: dict[str, Any]


def customer_token(user_id: str) -> str:
    """A customer token as `orderly token` prints it (the processes run with the dev secret:
    ``orderly_env`` drops any inherited ORDERLY_* setting)."""
    tokens = JwtTokens(DEV_JWT_SECRET, "orderly", timedelta(hours=2), SystemClock())
    return tokens.issue(user_id, "customer")


def order_mix(count: int, per_customer: int = 4) -> list[PlannedOrder]:
    """``count`` orders cycling through a fixed pattern of kinds, ``per_customer`` per customer
    (at most the fraud velocity limit of 5, so no order is held for review)."""
    pattern: list[tuple[Kind, list[dict[str, Any]], str]] = [
        (Kind.NORMAL, [{"sku": "PROD-001", "quantity": 1}], "pm_card_visa"),
        (Kind.NORMAL, [{"sku": "PROD-003", "quantity": 2}], "pm_card_mastercard"),
        (Kind.DECLINED, [{"sku": "PROD-005", "quantity": 1}], "pm_card_chargeDeclined"),
        (Kind.NORMAL, [{"sku": "PROD-006", "quantity": 1}], "pm_card_visa"),
        (Kind.OUT_OF_STOCK, [{"sku": "PROD-002", "quantity": 1}], "pm_card_visa"),
        (
            Kind.MULTI_WAREHOUSE,
            [{"sku": "PROD-004", "quantity": 1}, {"sku": "PROD-006", "quantity": 1}],
            "pm_card_visa",
        ),
        (
            Kind.NORMAL,
            [{"sku": "PROD-001", "quantity": 1}, {"sku": "PROD-003", "quantity": 1}],
            "pm_card_amex",
        ),
        (
            Kind.DECLINED,
            [{"sku": "PROD-003", "quantity": 1}],
            "pm_card_chargeDeclinedInsufficientFunds",
        ),
        (
            Kind.OUT_OF_STOCK,
            [{"sku": "PROD-001", "quantity": 1}, {"sku": "PROD-002", "quantity": 2}],
            "pm_card_visa",
        ),
        (Kind.NORMAL, [{"sku": "PROD-005", "quantity": 2}], "pm_card_visa"),
    ]
    orders = []
    for i in range(count):
        kind, items, method = pattern[i % len(pattern)]
        body = {"items": items, "paymentMethod": method, "shippingAddress": ADDRESS}
        orders.append(PlannedOrder(kind, f"shopper-{i // per_customer:03d}", body))
    return orders


# Enough of every SKU that no order of the mix runs short by contention: PROD-002 stays at 0,
# PROD-004 is only in WH-NYC and PROD-006 only in WH-AUS (a multi-warehouse order splits).
PLENTY: dict[str, dict[str, int]] = {
    "PROD-001": {"WH-AUS": 150, "WH-NYC": 150},
    "PROD-003": {"WH-AUS": 200, "WH-NYC": 100},
    "PROD-004": {"WH-NYC": 150},
    "PROD-005": {"WH-AUS": 150, "WH-NYC": 100},
    "PROD-006": {"WH-AUS": 300},
}


async def set_opening_stock(made: Deployment, levels: Mapping[str, Mapping[str, int]]) -> None:
    """Set on-hand stock before any process runs, with the ledger entries the seed would write.

    Not through ``PUT /api/admin/inventory``: on PostgreSQL that writes no ledger entry (see
    the report of the saga crash tests), which would break the ledger check for a reason that
    has nothing to do with crashes.
    """
    now = datetime.now(UTC)
    async with made.engine.begin() as conn:
        changes: list[dict[str, Any]] = []
        for sku, per_warehouse in levels.items():
            for warehouse, on_hand in per_warehouse.items():
                key = (stock.c.sku == sku) & (stock.c.warehouse_id == warehouse)
                before = await conn.scalar(sa.select(stock.c.on_hand).where(key))
                if before is None:
                    await conn.execute(
                        stock.insert().values(
                            sku=sku, warehouse_id=warehouse, on_hand=on_hand, reserved=0
                        )
                    )
                else:
                    await conn.execute(stock.update().where(key).values(on_hand=on_hand))
                changes.append(
                    {
                        "sku": sku,
                        "warehouse_id": warehouse,
                        "kind": "adjust",
                        "on_hand_delta": on_hand - (before or 0),
                        "reserved_delta": 0,
                        "order_id": None,
                    }
                )
        await record_stock_changes(conn, changes, now)


async def place_through_restarts(
    api_url: Callable[[], str],
    orders: Sequence[PlannedOrder],
    *,
    concurrency: int = 16,
    within: float = 120.0,
) -> list[str]:
    """POST every order, each with its own Idempotency-Key, retrying with the same key through
    connection errors (the API killed or restarting), 503 and 409 (in flight), as a careful
    client does; the order ids, in the order of ``orders``."""
    limit = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + within

    async def one(http: httpx.AsyncClient, order: PlannedOrder) -> str:
        headers = {
            "Authorization": f"Bearer {customer_token(order.customer)}",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        async with limit:
            while True:
                last: str
                try:
                    response = await http.post(
                        f"{api_url()}/api/orders", json=order.body, headers=headers
                    )
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 202:
                        order_id: str = response.json()["orderId"]
                        return order_id
                    assert response.status_code in (409, 503), response.text
                    last = f"{response.status_code} {response.text}"
                if time.monotonic() > deadline:
                    raise AssertionError(f"an order was not accepted in {within}s: {last}")
                await asyncio.sleep(0.2)

    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        return list(await asyncio.gather(*(one(http, order) for order in orders)))


# ---- crashes ----------------------------------------------------------------------------------


TERMINAL_COUNT = (
    "SELECT count(*) FROM orders "
    "WHERE status IN ('CONFIRMED', 'FAILED', 'CANCELLED', 'NEEDS_ATTENTION')"
)


@dataclass(frozen=True)
class Kill:
    """kill -9 ``target`` ("worker0", "worker1", "relay" or "api") once ``placed`` orders are
    in the database and ``settled`` of them are terminal, so it lands mid-flow on any machine."""

    target: str
    placed: int = 0
    settled: int = 0


@dataclass
class Crashes:
    """Starts a deployment's processes, then kills them -9 one at a time and restarts each.

    A replacement starts in the background while the schedule goes on; a process is only
    killed once it is up (killing one that is still starting would test little).
    """

    made: Deployment
    current: dict[str, Process] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    _starting: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    async def start(self, workers: int, *, relay: bool) -> None:
        targets = [f"worker{i}" for i in range(workers)] + (["relay"] if relay else [])
        await asyncio.gather(self._launch("api"), *(self._launch(t) for t in targets))
        self.started_at = time.monotonic()

    async def _launch(self, target: str) -> None:
        if target == "api":
            await asyncio.to_thread(self.made.start_api)
            return
        command = target.rstrip("0123456789")
        self.current[target] = await asyncio.to_thread(self.made.start, command)

    def api_url(self) -> str:
        assert self.made.api is not None
        return self.made.api.url

    async def run(self, schedule: Sequence[Kill], within: float) -> None:
        """Carry out ``schedule`` in order; a kill whose moment never comes (the orders all
        settled first) happens anyway at the end, so every kill is exercised."""
        deadline = time.monotonic() + within
        for kill in schedule:
            while time.monotonic() < deadline:
                placed = int(await self.made.scalar("SELECT count(*) FROM orders"))
                settled = int(await self.made.scalar(TERMINAL_COUNT))
                if placed >= kill.placed and settled >= kill.settled:
                    break
                await asyncio.sleep(0.1)
            await self.kill(kill.target)
        await self.restarted()

    async def kill(self, target: str) -> None:
        if target in self._starting:
            await self._starting.pop(target)
        if target == "api":
            api = self.made.api
            assert api is not None
            await asyncio.to_thread(api.stop, signal.SIGKILL)
            pid = api.process.pid
        else:
            victim = self.current[target]
            await asyncio.to_thread(victim.kill)
            pid = victim.process.pid
        self._starting[target] = asyncio.create_task(self._launch(target))
        self.done.append(f"{time.monotonic() - self.started_at:5.1f}s kill -9 {target} ({pid})")

    async def restarted(self) -> None:
        """Wait until every replacement is up (or failed to start: then raise)."""
        pending, self._starting = list(self._starting.values()), {}
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    def died_on_their_own(self) -> list[str]:
        """The current processes that are not running (should be none)."""
        dead = [
            f"{t} ({p.process.pid})"
            for t, p in self.current.items()
            if p.process.poll() is not None
        ]
        if self.made.api is not None and self.made.api.process.poll() is not None:
            dead.append(f"api ({self.made.api.process.pid})")
        return dead


# ---- waiting and checking ---------------------------------------------------------------------


def log_excerpt(made: Deployment, order_ids: Sequence[str] = (), tail: int = 2500) -> str:
    """Each process's lines mentioning one of ``order_ids`` or an error, else its tail."""
    parts = []
    logs = [(p.name, p.output()) for p in made.processes]
    if made.api is not None:
        logs.append(("api", made.api.output()))
    for name, text in logs:
        lines = text.splitlines()
        wanted = [
            line
            for line in lines
            if any(o in line for o in order_ids)
            or any(w in line.lower() for w in ("error", "traceback", "dead", "exception"))
        ]
        body = "\n".join(wanted[-40:]) if wanted else text[-tail:]
        parts.append(f"--- {name}\n{body[-tail:]}")
    return "\n".join(parts)


async def wait_until_terminal(
    made: Deployment, expected: int, within: float, notes: Sequence[str] = ()
) -> None:
    """Until every one of ``expected`` orders has a terminal status; else fail with the stuck
    orders, their sagas and the processes' logs."""
    deadline = time.monotonic() + within
    while True:
        total = int(await made.scalar("SELECT count(*) FROM orders"))
        open_ = len(await made.rows(OPEN_ORDERS))
        if total >= expected and open_ == 0:
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    stuck = (await made.rows(OPEN_ORDERS))[:10]
    ids = [str(row[0]) for row in stuck]
    raise AssertionError(
        f"{open_} of {total} orders (expected {expected}) not terminal after {within}s; "
        f"first stuck (order, status, saga status, step, step status, deadline):\n"
        + "\n".join(map(str, stuck))
        + "\n"
        + "\n".join(notes)
        + "\n"
        + await diagnostics(made, ids)
        + "\n"
        + log_excerpt(made, ids[:3])
    )


async def stock_levels(made: Deployment) -> dict[tuple[str, str], tuple[int, int]]:
    rows = await made.rows("SELECT sku, warehouse_id, on_hand, reserved FROM stock")
    return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}


async def saga_violations(
    made: Deployment,
    kinds: Mapping[str, Kind],
    initial: Mapping[tuple[str, str], tuple[int, int]],
) -> list[str]:
    """Every broken promise of the order saga, one line each (empty when all hold)."""
    bad: list[str] = []
    orders = {
        str(r[0]): (str(r[1]), r[2], int(r[3]), int(r[4]))
        for r in await made.rows(
            "SELECT id, status, failure_reason, total_minor, version FROM orders"
        )
    }
    if set(orders) != set(kinds):
        bad.append(
            f"orders in the database {len(orders)} != orders accepted {len(kinds)} "
            f"(extra {sorted(set(orders) - set(kinds))[:5]}, "
            f"missing {sorted(set(kinds) - set(orders))[:5]})"
        )
    for order_id, kind in kinds.items():
        if order_id not in orders:
            continue
        status, reason, _, _ = orders[order_id]
        want_status, want_reason = EXPECTED[kind]
        if (status, reason) != (want_status, want_reason):
            bad.append(
                f"order {order_id} ({kind.value}): {status}/{reason}, "
                f"expected {want_status}/{want_reason}"
            )
    bad += await _event_violations(made, orders)
    bad += await _saga_row_violations(made, orders)
    bad += await _payment_violations(made, orders, kinds)
    bad += await _stock_violations(made, orders, initial)
    bad += await _shipment_violations(made, orders, kinds)
    dead = await made.rows("SELECT consumer, type, key, error FROM dead_letters ORDER BY id")
    bad += [f"dead letter of {r[1]} for {r[2]} at {r[0]}: {str(r[3])[:200]}" for r in dead]
    return bad


async def _event_violations(
    made: Deployment, orders: Mapping[str, tuple[str, Any, int, int]]
) -> list[str]:
    bad = []
    streams: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in await made.rows("SELECT order_id, version, type FROM order_events"):
        streams[str(r[0])].append((int(r[1]), str(r[2])))
    terminal_of_status = {
        "CONFIRMED": "order.confirmed",
        "FAILED": "order.failed",
        "CANCELLED": "order.cancelled",
        "NEEDS_ATTENTION": "order.needs_attention",
    }
    for order_id, (status, _, _, version) in orders.items():
        events = sorted(streams.get(order_id, []))
        versions = [v for v, _ in events]
        if versions != list(range(1, len(versions) + 1)):
            bad.append(f"order {order_id}: event versions {versions} are not 1..n")
        terminal = [t for _, t in events if t in TERMINAL_EVENTS]
        if len(terminal) != 1:
            bad.append(f"order {order_id}: terminal events {terminal} (exactly one expected)")
        elif events[-1][1] not in TERMINAL_EVENTS:
            bad.append(f"order {order_id}: events after the terminal one: {events}")
        if terminal and terminal[-1] != terminal_of_status.get(status):
            bad.append(f"order {order_id}: status {status} but terminal event {terminal[-1]}")
        if events and version != events[-1][0]:
            bad.append(f"order {order_id}: row version {version}, last event {events[-1][0]}")
    return bad


async def _saga_row_violations(
    made: Deployment, orders: Mapping[str, tuple[str, Any, int, int]]
) -> list[str]:
    sagas = {str(r[0]): str(r[1]) for r in await made.rows("SELECT id, status FROM sagas")}
    expected = {"CONFIRMED": "COMPLETED", "FAILED": "COMPENSATED"}
    bad = []
    for order_id, (status, _, _, _) in orders.items():
        saga = sagas.get(order_id)
        if saga != expected.get(status, "?"):
            bad.append(f"order {order_id}: {status} but its saga is {saga}")
    return bad


async def _payment_violations(
    made: Deployment,
    orders: Mapping[str, tuple[str, Any, int, int]],
    kinds: Mapping[str, Kind],
) -> list[str]:
    captures: dict[str, list[int]] = defaultdict(list)
    operations: Counter[str] = Counter()
    for r in await made.rows("SELECT order_id, kind, ok, amount_minor FROM payment_operations"):
        operations[str(r[0])] += 1
        if r[1] == "capture" and bool(r[2]):
            captures[str(r[0])].append(int(r[3]))
    payments = {
        str(r[0]): (str(r[1]), int(r[2]))
        for r in await made.rows("SELECT order_id, status, captured_minor FROM payments")
    }
    bad = []
    for order_id, (status, _, total, _) in orders.items():
        captured = captures.get(order_id, [])
        payment = payments.get(order_id)
        if status == "CONFIRMED":
            if captured != [total]:
                bad.append(
                    f"order {order_id}: CONFIRMED, total {total}, successful captures {captured}"
                )
            if payment != ("CAPTURED", total):
                bad.append(f"order {order_id}: CONFIRMED, payment record {payment}")
        elif status == "FAILED":
            if captured:
                bad.append(f"order {order_id}: FAILED with successful captures {captured}")
            if payment is not None and payment[0] in ("AUTHORIZED", "CAPTURED"):
                bad.append(f"order {order_id}: FAILED but its payment is still {payment[0]}")
        if kinds.get(order_id) is Kind.OUT_OF_STOCK and operations[order_id]:
            bad.append(f"order {order_id}: out of stock, yet {operations[order_id]} gateway calls")
    return bad


async def _stock_violations(
    made: Deployment,
    orders: Mapping[str, tuple[str, Any, int, int]],
    initial: Mapping[tuple[str, str], tuple[int, int]],
) -> list[str]:
    bad = []
    now = await stock_levels(made)
    sold: Counter[str] = Counter()
    for r in await made.rows("SELECT order_id, sku, quantity FROM order_lines"):
        if orders.get(str(r[0]), ("",))[0] == "CONFIRMED":
            sold[str(r[1])] += int(r[2])
    for sku in sorted({sku for sku, _ in initial}):
        before = sum(on_hand for (s, _), (on_hand, _) in initial.items() if s == sku)
        after = sum(on_hand for (s, _), (on_hand, _) in now.items() if s == sku)
        if after != before - sold[sku]:
            bad.append(f"{sku}: on hand {after}, expected {before} - {sold[sku]} sold")
    for (sku, warehouse), (_, reserved) in sorted(now.items()):
        if reserved != 0:
            bad.append(f"{sku}@{warehouse}: {reserved} still reserved")
    ledger = {
        (str(r[0]), str(r[1])): (int(r[2]), int(r[3]))
        for r in await made.rows(
            "SELECT sku, warehouse_id, sum(on_hand_delta), sum(reserved_delta) "
            "FROM stock_ledger GROUP BY sku, warehouse_id"
        )
    }
    for item in sorted(set(now) | set(ledger)):
        if ledger.get(item, (0, 0)) != now.get(item, (0, 0)):
            bad.append(
                f"{item[0]}@{item[1]}: stock (on_hand, reserved) {now.get(item)} but the "
                f"ledger sums to {ledger.get(item)}"
            )
    active = await made.rows("SELECT order_id FROM reservations WHERE status = 'ACTIVE'")
    bad += [f"order {r[0]}: its reservation is still ACTIVE" for r in active]
    return bad


async def _shipment_violations(
    made: Deployment,
    orders: Mapping[str, tuple[str, Any, int, int]],
    kinds: Mapping[str, Kind],
) -> list[str]:
    shipped: dict[str, set[str]] = defaultdict(set)
    for r in await made.rows("SELECT order_id, warehouse_id, status FROM shipments"):
        if r[2] == "SHIPPED":
            shipped[str(r[0])].add(str(r[1]))
    bad = []
    for order_id, (status, _, _, _) in orders.items():
        if status == "CONFIRMED" and not shipped[order_id]:
            bad.append(f"order {order_id}: CONFIRMED with no shipped shipment")
        if status == "FAILED" and shipped[order_id]:
            bad.append(f"order {order_id}: FAILED but shipped from {sorted(shipped[order_id])}")
        if (
            status == "CONFIRMED"
            and kinds.get(order_id) is Kind.MULTI_WAREHOUSE
            and shipped[order_id] != {"WH-AUS", "WH-NYC"}
        ):
            bad.append(f"order {order_id}: multi-warehouse, shipped from {shipped[order_id]}")
    return bad


async def diagnostics(made: Deployment, order_ids: Sequence[str]) -> str:
    """For a failure message: dead letters, and the event stream and saga log of some orders."""
    parts = []
    dead = await made.rows(
        "SELECT consumer, type, key, error FROM dead_letters ORDER BY id LIMIT 10"
    )
    parts.append("dead letters: " + ("\n  ".join(map(str, dead)) if dead else "none"))
    for order_id in order_ids[:3]:
        events = await made.rows(
            "SELECT version, type, occurred_at FROM order_events WHERE order_id = :o "
            "ORDER BY version, id",
            o=order_id,
        )
        saga_log = await made.rows(
            "SELECT kind, step, detail FROM saga_log WHERE saga_id = :o ORDER BY id", o=order_id
        )
        parts.append(
            f"order {order_id} events:\n  "
            + "\n  ".join(map(str, events))
            + "\n saga log:\n  "
            + "\n  ".join(str(row)[:300] for row in saga_log)
        )
    return "\n".join(parts)


# ---- RabbitMQ ---------------------------------------------------------------------------------


async def require_rabbitmq() -> None:
    """Skip (fail under ORDERLY_TEST_REQUIRE_SERVICES=1) when RabbitMQ does not answer."""
    try:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
        service_missing("RabbitMQ", exc)
    await connection.close()


async def delete_rabbitmq_namespace(namespace: str) -> None:
    """Best effort: drop the namespace's queues (listed by rabbitmqctl) and its exchange."""
    executable = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    with contextlib.suppress(
        OSError, subprocess.SubprocessError, aio_pika.exceptions.AMQPError, TimeoutError
    ):
        listed = await asyncio.to_thread(
            subprocess.run,
            [executable, "list_queues", "-q", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        queues = [q for q in listed.stdout.split() if q.startswith(f"{namespace}.")]
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            await channel.exchange_delete(namespace)
