"""Intake benchmark: orderly's ``POST /api/orders`` against a bare FastAPI + asyncpg twin.

For each app, on its own fresh PostgreSQL database, one uvicorn process on 127.0.0.1:
  1. closed loop: ``--connections`` clients post orders back to back (after ``--warmup``);
  2. open loop: ``--rate`` orders/s on a fixed schedule, latency from the scheduled send time;
  3. replays: ``--replays`` retries of ``--replay-keys`` finished Idempotency-Keys (from the open
     loop), against a restarted server, with row counts, tuple counters, WAL, transaction ids
     and the key sequence read before and after.
Prints a markdown table; writes JSON (and the servers' logs) under bench/results/.

Run from the repository root: ``.venv/bin/python -m bench.intake.run`` (``make bench-intake``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import orjson
import uvloop

from bench.intake import database, report, servers
from bench.intake.latency import PhaseResult
from bench.intake.loadgen import (
    Orders,
    Placed,
    Target,
    client_session,
    closed_loop,
    gc_paused,
    open_loop,
    order_bodies,
    replays,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
APPS = ("orderly", "bare")
MAX_REQUESTS_PER_PHASE = 200_000
BUSY_BACKGROUND_CORES = 0.15


@dataclass(frozen=True, slots=True)
class Options:
    duration: float
    warmup: float
    connections: int
    rate: float
    open_duration: float
    open_connections: int
    replays: int
    replay_keys: int
    users: int
    port: int
    apps: tuple[str, ...]
    bare_loop: str
    database_prefix: str
    quiet_wait: float


def _bounded(low: float, high: float, kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low:g}..{high:g}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.intake.run", description=(__doc__ or "").split("\n", 1)[0]
    )
    p.add_argument(
        "--duration",
        type=_bounded(1, 60, float),
        default=10.0,
        help="closed-loop measurement, seconds (default 10)",
    )
    p.add_argument(
        "--warmup",
        type=_bounded(0, 30, float),
        default=2.0,
        help="closed-loop warm-up before it, seconds (default 2)",
    )
    p.add_argument(
        "--connections",
        type=_bounded(1, 512, int),
        default=64,
        help="closed-loop and replay concurrency (default 64)",
    )
    p.add_argument(
        "--rate",
        type=_bounded(1, 5000, float),
        default=500.0,
        help="open-loop offered rate, orders/s (default 500)",
    )
    p.add_argument(
        "--open-duration",
        type=_bounded(1, 60, float),
        default=10.0,
        help="open-loop duration, seconds (default 10)",
    )
    p.add_argument(
        "--open-connections",
        type=_bounded(1, 1024, int),
        default=256,
        help="open-loop socket cap (default 256)",
    )
    p.add_argument(
        "--replays",
        type=_bounded(1, 50_000, int),
        default=3000,
        help="retries of finished keys, measured (default 3000)",
    )
    p.add_argument(
        "--replay-keys",
        type=_bounded(1, 5000, int),
        default=1000,
        help="distinct finished keys retried round robin (default 1000)",
    )
    p.add_argument(
        "--users",
        type=_bounded(1, 16, int),
        default=2,
        help="distinct users (tokens) placing orders (default 2)",
    )
    p.add_argument(
        "--port",
        type=_bounded(1024, 65000, int),
        default=18431,
        help="orderly's port; the bare app uses the next one (default 18431)",
    )
    p.add_argument(
        "--apps",
        default="orderly,bare",
        help="comma-separated, run in this order (default orderly,bare)",
    )
    p.add_argument(
        "--bare-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the bare app's event loop (uvicorn's --loop; default auto)",
    )
    p.add_argument(
        "--database-prefix",
        default="orderly_bench",
        help="databases <prefix>_<app> are dropped and created (default orderly_bench)",
    )
    p.add_argument(
        "--quiet-wait",
        type=_bounded(0, 600, float),
        default=30.0,
        help="wait up to this long for other CPU load to stop before each app (default 30 s)",
    )
    database.add_host_option(p)
    args = p.parse_args(argv)
    database.apply_host_option(p, args.pg_host)
    apps = tuple(a.strip() for a in args.apps.split(",") if a.strip())
    if not apps or set(apps) - set(APPS):
        p.error(f"--apps takes a comma-separated subset of {', '.join(APPS)}")
    fields = {k: v for k, v in vars(args).items() if k not in ("apps", "pg_host")}
    return Options(apps=apps, **fields)


@dataclass(frozen=True, slots=True)
class Setup:
    """What every app shares: the secret, the users' tokens, the request bodies."""

    env: dict[str, str]
    tokens: tuple[str, ...]
    bodies: list[bytes]
    stamp: str


def base_env() -> dict[str, str]:
    """The parent environment, minus other ORDERLY_ settings, plus a fresh prod secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERLY_")}
    env.update(ORDERLY_ENV="prod", ORDERLY_JWT_SECRET=secrets.token_urlsafe(36))
    return env


def database_name(options: Options, app: str) -> str:
    return f"{options.database_prefix}_{app}"


async def prepare(options: Options) -> Setup:
    """Fresh databases for every app, and tokens, all at once."""
    env = base_env()
    users = [f"bench-user-{i}" for i in range(1, options.users + 1)]
    recreating = asyncio.gather(
        *(database.recreate(database_name(options, app), env) for app in options.apps)
    )
    tokens, _ = await asyncio.gather(database.tokens(users, env), recreating)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Setup(env, tuple(tokens), order_bodies(256), stamp)


def server_spec(app: str, options: Options, setup: Setup, phase: str) -> servers.ServerSpec:
    name = database_name(options, app)
    log_path = RESULTS / "logs" / f"intake-{setup.stamp}-{app}-{phase}.log"
    argv: tuple[str, ...]
    if app == "orderly":
        port = options.port
        env = {**setup.env, "ORDERLY_DATABASE_URL": database.sqlalchemy_url(name)}
        argv = (database.ORDERLY, "api", "--port", str(port))
    else:
        port = options.port + 1
        env = setup.env
        argv = (sys.executable, "-m", "bench.intake.bare_app", "--port", str(port))
        argv += ("--dsn", database.dsn(name), "--loop", options.bare_loop)
    return servers.ServerSpec(app, argv, env, port, log_path, REPO)


@dataclass(frozen=True, slots=True)
class LoadResult:
    warmup: PhaseResult
    closed: PhaseResult
    open: PhaseResult
    cpu: dict[str, servers.CpuUsage]
    wal_bytes_per_order: float
    placed: list[Placed]


async def measure_load(server: servers.Server, options: Options, setup: Setup) -> LoadResult:
    """Warm-up, closed loop, open loop (which keeps orders for the replays to retry)."""
    target = Target(server.spec.port, setup.tokens)
    orders = Orders(target, setup.bodies)
    closed_args = {"connections": options.connections, "max_requests": MAX_REQUESTS_PER_PHASE}
    async with client_session(options.connections) as session:
        warmup = await closed_loop(
            session, orders, target, duration_s=options.warmup, **closed_args
        )
        lsn = await database.current_wal_lsn()
        with gc_paused():
            cpu_before = servers.cpu_sample(server)
            closed = await closed_loop(
                session, orders, target, duration_s=options.duration, **closed_args
            )
            cpu_closed = servers.cpu_usage(cpu_before, servers.cpu_sample(server))
        wal = await database.wal_bytes_between(lsn, await database.current_wal_lsn())
    async with client_session(options.open_connections) as session:
        with gc_paused():
            cpu_before = servers.cpu_sample(server)
            opened, placed = await open_loop(
                session,
                orders,
                target,
                rate=options.rate,
                duration_s=options.open_duration,
                keep=options.replay_keys,
            )
            cpu_open = servers.cpu_usage(cpu_before, servers.cpu_sample(server))
    if not placed:
        raise RuntimeError("the open loop placed no order for the replays to retry")
    cpu = {"closed": cpu_closed, "open": cpu_open}
    return LoadResult(warmup, closed, opened, cpu, wal / max(closed.ok, 1), placed)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    warmup: PhaseResult
    measured: PhaseResult
    identical: int
    different: int
    cpu: servers.CpuUsage


async def measure_replays(
    server: servers.Server, options: Options, setup: Setup, load: LoadResult
) -> ReplayResult:
    """A short warm-up of replays, then ``--replays`` measured ones; all must be identical.

    The warm-up retries the first keys, so most keys are retried more than once overall."""
    target = Target(server.spec.port, setup.tokens)
    warm_count = max(1, min(300, options.replays // 10))
    async with client_session(options.connections) as session:
        warm, warm_check = await replays(
            session, target, load.placed, connections=options.connections, count=warm_count
        )
        with gc_paused():
            before = servers.cpu_sample(server)
            measured, check = await replays(
                session, target, load.placed, connections=options.connections, count=options.replays
            )
            cpu = servers.cpu_usage(before, servers.cpu_sample(server))
    identical = warm_check.identical + check.identical
    return ReplayResult(warm, measured, identical, warm_check.different + check.different, cpu)


@dataclass(frozen=True, slots=True)
class AppResult:
    app: str
    background_cores: float
    load: LoadResult
    replay: ReplayResult
    writes: dict[str, Any]


T = TypeVar("T")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _serve(
    runner: asyncio.Runner,
    spec: servers.ServerSpec,
    work: Callable[[servers.Server], Coroutine[Any, Any, T]],
) -> T:
    """Start the server, wait until ready, run ``work`` against it, always stop it."""
    server = servers.start(spec)
    try:
        runner.run(servers.wait_ready(server))
        return runner.run(work(server))
    finally:
        servers.stop(server)


def wait_for_quiet(limit_s: float) -> float:
    """Wait up to ``limit_s`` for other work on the box to stop; return the cores it used."""
    deadline = time.monotonic() + limit_s
    busy = servers.background_cores()
    while busy > BUSY_BACKGROUND_CORES and time.monotonic() < deadline:
        _say(f"{busy:.2f} cores busy with something else; waiting for quiet")
        busy = servers.background_cores(2.0)
    if busy > BUSY_BACKGROUND_CORES:
        _say(f"warning: {busy:.2f} cores busy before the run; the numbers will suffer")
    return busy


def bench_app(runner: asyncio.Runner, app: str, options: Options, setup: Setup) -> AppResult:
    """Load phases on one server; replays on a second one, between two write snapshots."""
    name = database_name(options, app)
    background = wait_for_quiet(options.quiet_wait)
    _say(f"{app}: warm-up, closed loop, open loop ...")
    load = _serve(
        runner, server_spec(app, options, setup, "load"), lambda s: measure_load(s, options, setup)
    )
    runner.run(database.wait_idle(name))
    runner.run(database.settle(name))
    before = runner.run(database.write_snapshot(name))
    _say(f"{app}: replays ...")
    replay = _serve(
        runner,
        server_spec(app, options, setup, "replay"),
        lambda s: measure_replays(s, options, setup, load),
    )
    runner.run(database.wait_idle(name))
    after = runner.run(database.write_snapshot(name))
    wal = runner.run(database.wal_bytes_between(before.wal_lsn, after.wal_lsn))
    return AppResult(app, background, load, replay, database.write_delta(before, after, wal))


def machine(pg_version: str) -> dict[str, Any]:
    models = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    packages = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "pydantic", "aiohttp")
    return {
        "cores": os.cpu_count(),
        "cpu_model": models[0] if models else "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "postgresql_connection": database.connection_kind(),
        "packages": {name: metadata.version(name) for name in packages},
    }


def _commit() -> str:
    """The checked-out commit, with ``+dirty`` when src/ has uncommitted changes."""
    git = ("git", "-C", str(REPO))
    try:
        head = subprocess.run(
            (*git, "rev-parse", "--short", "HEAD"), capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            (*git, "status", "--porcelain", "--", "src"), capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def app_json(result: AppResult) -> dict[str, Any]:
    load, replay = result.load, result.replay
    return {
        "background_cores_before": result.background_cores,
        "warmup": load.warmup.as_json(),
        "closed_loop": load.closed.as_json(),
        "open_loop": load.open.as_json(),
        "cpu_cores": {k: asdict(v) for k, v in load.cpu.items()} | {"replay": asdict(replay.cpu)},
        "wal_bytes_per_order": load.wal_bytes_per_order,
        "replay": {
            "warmup": replay.warmup.as_json(),
            "measured": replay.measured.as_json(),
            "identical": replay.identical,
            "different": replay.different,
            "writes": result.writes,
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; print the markdown table; write the JSON result."""
    options = parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        _say(f"preparing databases {', '.join(database_name(options, a) for a in options.apps)}")
        setup = runner.run(prepare(options))
        results = [bench_app(runner, app, options, setup) for app in options.apps]
        pg_version = runner.run(database.server_version())
    document: dict[str, Any] = {
        "started": setup.stamp,
        "options": asdict(options),
        "machine": machine(pg_version),
        "commit": _commit(),
        "apps": {r.app: app_json(r) for r in results},
    }
    document["verdicts"] = report.verdicts(document)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"intake-{setup.stamp}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(report.markdown(document))
    print(f"\nJSON result: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
