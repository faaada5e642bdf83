"""The aiohttp load generator for ``POST /api/orders``: closed loop, open loop, key replays.

It only ever talks to 127.0.0.1 (a ``Target`` holds a port, never a host) and every phase is
bounded both in time and in request count. Each new order gets a fresh UUID4 Idempotency-Key
and one of the users' bearer tokens.

Open-loop latency is measured from each request's *scheduled* send time, not from when it was
actually sent, so a stalled server cannot hide its stall by slowing the client down
(coordinated omission). The phases run with the client's garbage collector paused
(``gc_paused``), so the client's own pauses are not charged to the server.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import orjson

from bench.intake.latency import PhaseResult, Recorder

LOOPBACK = "127.0.0.1"
ORDERS_PATH = "/api/orders"
REQUEST_TIMEOUT_S = 10.0
SKUS = ("PROD-001", "PROD-002", "PROD-003", "PROD-004", "PROD-005", "PROD-006")
ADDRESS = {"country": "US", "city": "Austin", "line1": "1 Congress Ave", "postalCode": "78701"}


@dataclass(frozen=True, slots=True)
class Target:
    """An API on the loopback interface, and the users' bearer tokens."""

    port: int
    tokens: tuple[str, ...]

    @property
    def orders_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{ORDERS_PATH}"

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    replayed: bool
    body: bytes


@dataclass(frozen=True, slots=True)
class OrderRequest:
    body: bytes
    key: str
    token: str


def order_bodies(count: int, seed: int = 7) -> list[bytes]:
    """``count`` realistic bodies: two distinct SKUs, quantities 1-3, a shipping address."""
    rng = random.Random(seed)
    return [
        orjson.dumps(
            {
                "items": [
                    {"sku": sku, "quantity": rng.randint(1, 3)} for sku in rng.sample(SKUS, 2)
                ],
                "paymentMethod": "pm_card_visa",
                "shippingAddress": ADDRESS,
            }
        )
        for _ in range(count)
    ]


class Orders:
    """The n-th new order: a body from the pool, a fresh key, the users' tokens in turn."""

    def __init__(self, target: Target, bodies: list[bytes]) -> None:
        self._target = target
        self._bodies = bodies

    def request(self, n: int) -> OrderRequest:
        tokens = self._target.tokens
        return OrderRequest(
            self._bodies[n % len(self._bodies)], str(uuid.uuid4()), tokens[n % len(tokens)]
        )


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside a phase: a full collection stalls this process for
    tens of milliseconds, and the stall would be charged to the server as latency."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def client_session(connections: int) -> aiohttp.ClientSession:
    """A keep-alive session with at most ``connections`` sockets."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def send(session: aiohttp.ClientSession, target: Target, order: OrderRequest) -> Reply:
    headers = {
        "Authorization": f"Bearer {order.token}",
        "Idempotency-Key": order.key,
        "Content-Type": "application/json",
    }
    async with session.post(target.orders_url, data=order.body, headers=headers) as response:
        body = await response.read()
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return Reply(response.status, replayed, body)


async def _timed(
    session: aiohttp.ClientSession,
    target: Target,
    order: OrderRequest,
    recorder: Recorder,
    since: float,
) -> Reply | None:
    """Send ``order``; record the time from ``since`` (perf_counter) to the full answer."""
    try:
        reply = await send(session, target, order)
    except (aiohttp.ClientError, TimeoutError) as exc:
        recorder.failed(type(exc).__name__)
        return None
    if reply.status == 202:
        recorder.ok(time.perf_counter() - since)
    else:
        recorder.failed(f"http {reply.status}")
    return reply


async def closed_loop(
    session: aiohttp.ClientSession,
    orders: Orders,
    target: Target,
    *,
    connections: int,
    duration_s: float,
    max_requests: int,
) -> PhaseResult:
    """``connections`` workers each send the next order as soon as the last one is answered."""
    recorder = Recorder()
    numbers = itertools.count()
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            n = next(numbers)
            if n >= max_requests:
                return
            await _timed(session, target, orders.request(n), recorder, time.perf_counter())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return recorder.result("closed-loop", time.perf_counter() - started)


Placed = tuple[OrderRequest, Reply]


async def open_loop(
    session: aiohttp.ClientSession,
    orders: Orders,
    target: Target,
    *,
    rate: float,
    duration_s: float,
    keep: int = 0,
) -> tuple[PhaseResult, list[Placed]]:
    """Send ``rate`` orders a second on a fixed schedule, whatever the answers' pace.

    Also returns up to ``keep`` accepted orders with their answers, for the replay phase.
    """
    recorder = Recorder()
    kept: list[Placed] = []
    total = round(rate * duration_s)
    start = time.perf_counter() + 0.005

    async def one(order: OrderRequest, scheduled: float) -> None:
        reply = await _timed(session, target, order, recorder, scheduled)
        if reply is not None and reply.status == 202 and len(kept) < keep:
            kept.append((order, reply))

    tasks: list[asyncio.Task[None]] = []
    for n in range(total):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        recorder.lagged(time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(one(orders.request(n), scheduled)))
    await asyncio.gather(*tasks)
    result = recorder.result("open-loop", time.perf_counter() - start, offered_rate=rate)
    return result, kept


@dataclass(frozen=True, slots=True)
class ReplayCheck:
    """How many replays answered exactly the first response, and how many did not."""

    identical: int
    different: int


async def replays(
    session: aiohttp.ClientSession,
    target: Target,
    placed: list[Placed],
    *,
    connections: int,
    count: int,
) -> tuple[PhaseResult, ReplayCheck]:
    """Send ``count`` retries of the ``placed`` orders, round robin (so no key is retried
    twice at once); each must replay its first answer byte for byte."""
    recorder = Recorder()
    numbers = iter(range(count))
    identical = 0

    async def worker() -> None:
        nonlocal identical
        for n in numbers:
            order, first = placed[n % len(placed)]
            reply = await _timed(session, target, order, recorder, time.perf_counter())
            if reply == Reply(first.status, True, first.body):
                identical += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    result = recorder.result("replay", time.perf_counter() - started)
    return result, ReplayCheck(identical, count - identical)
