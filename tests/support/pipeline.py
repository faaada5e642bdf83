"""A whole orderly deployment as real processes: api, workers and relay on one transport.

Used by the crash and hot-SKU tests. Each process runs in its own process group, so a test can
``kill -9`` one and start it again; every process is gone when the deployment closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from orderly.adapters.db.engine import create_engine, dispose_engine
from tests.support.server import (
    OrderlyServer,
    ServerFailed,
    orderly_command,
    orderly_env,
    run_cli,
    start_server,
)

WORKER_READY = "background processing started"
READY_TIMEOUT_SECONDS = 45.0


@dataclass
class Process:
    """``python -m orderly worker|relay`` in its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


@dataclass
class Deployment:
    """The processes of one orderly installation, sharing one database and one broker."""

    workdir: Path
    env: dict[str, str]
    engine: AsyncEngine
    api: OrderlyServer | None = None
    processes: list[Process] = field(default_factory=list)

    def cli(self, *args: str) -> str:
        result = run_cli(list(args), self.env, self.workdir)
        assert result.returncode == 0, f"orderly {' '.join(args)}: {result.stderr}"
        return result.stdout

    def start_api(self) -> OrderlyServer:
        self.api = start_server(self.workdir, "api", self.env)
        return self.api

    def start(self, command: str, *, wait_ready: bool = True) -> Process:
        """Start ``orderly worker`` or ``orderly relay``; wait until it is consuming."""
        log_path = self.workdir / f"{command}-{uuid.uuid4().hex[:6]}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                orderly_command(command),
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(command, popen, log_path)
        self.processes.append(process)
        if wait_ready:
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while WORKER_READY not in process.output():
                if popen.poll() is not None or time.monotonic() > deadline:
                    raise ServerFailed(f"orderly {command} did not start:\n{process.output()}")
                time.sleep(0.1)
        return process

    async def set_stock(self, sku: str, on_hand: dict[str, int]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM stock WHERE sku = :sku"), {"sku": sku})
            for warehouse, units in on_hand.items():
                await conn.execute(
                    sa.text(
                        "INSERT INTO stock (sku, warehouse_id, on_hand, reserved) "
                        "VALUES (:sku, :wh, :n, 0)"
                    ),
                    {"sku": sku, "wh": warehouse, "n": units},
                )

    async def scalar(self, query: str, **params: Any) -> Any:
        return (await self.rows(query, **params))[0][0]

    async def rows(self, query: str, **params: Any) -> list[Any]:
        for attempt in range(2):
            try:
                async with self.engine.connect() as conn:
                    return list(await conn.execute(sa.text(query), params))
            except DBAPIError:
                # The test's own pooled connections die in a database outage too.
                await self.engine.dispose()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def pending_orders(self) -> int:
        """Orders whose saga has not reached an outcome yet."""
        return int(
            await self.scalar(
                "SELECT count(*) FROM orders WHERE status NOT IN "
                "('CONFIRMED', 'FAILED', 'CANCELLED', 'NEEDS_ATTENTION')"
            )
        )

    async def wait_until_settled(self, expected: int, within: float = 120.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            total = int(await self.scalar("SELECT count(*) FROM orders"))
            if total == expected and await self.pending_orders() == 0:
                return
            await asyncio.sleep(0.25)
        logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.processes)
        pending = await self.pending_orders()
        raise AssertionError(
            f"{pending} of {expected} orders still unsettled after {within}s\n{logs}"
        )

    def stop_processes(self) -> None:
        for process in self.processes:
            if process.process.poll() is None:
                process.kill(signal.SIGTERM)
        if self.api is not None:
            self.api.stop()


@contextlib.asynccontextmanager
async def deployment(
    workdir: Path, database_url: str, overrides: Mapping[str, str]
) -> AsyncIterator[Deployment]:
    """A migrated and seeded database with nothing running yet; everything stopped after."""
    env = orderly_env(workdir, {"ORDERLY_DATABASE_URL": database_url, **overrides})
    env.setdefault("ORDERLY_LOG_LEVEL", "warning")
    # One test shopper places hundreds of orders: the fraud velocity rule would hold them all.
    env.setdefault("ORDERLY_FRAUD_VELOCITY_MAX_ORDERS", "1000000")
    # Several processes share one PostgreSQL (max_connections 100) with the test itself.
    env.setdefault("ORDERLY_DB_POOL_SIZE", "8")
    made = Deployment(workdir, env, create_engine(database_url, pool_size=5))
    made.cli("migrate")
    made.cli("seed")
    try:
        yield made
    finally:
        made.stop_processes()
        await dispose_engine(made.engine)


async def place_orders(
    base_url: str, token: str, bodies: list[dict[str, Any]], concurrency: int = 32
) -> list[str]:
    """POST every body with a fresh key; the order ids (all must be accepted)."""
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(base_url=base_url, timeout=30, trust_env=False) as client:

        async def one(body: dict[str, Any]) -> str:
            # A well-behaved client: a 503 or a dropped connection (a kept-alive connection the
            # server closed meanwhile) is retried later with the same Idempotency-Key.
            key = {**headers, "Idempotency-Key": str(uuid.uuid4())}
            response: httpx.Response | None = None
            async with limit:
                for _ in range(40):
                    try:
                        response = await client.post("/api/orders", json=body, headers=key)
                    except httpx.TransportError:
                        await asyncio.sleep(0.5)
                        continue
                    if response.status_code != 503:
                        break
                    await asyncio.sleep(0.5)
                assert response is not None, "the API never answered"
                assert response.status_code == 202, response.text
                order_id: str = response.json()["orderId"]
                return order_id

        return list(await asyncio.gather(*(one(body) for body in bodies)))
