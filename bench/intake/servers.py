"""Starting and stopping the API servers under test, and who used the CPU meanwhile.

Each server runs in its own session and process group (``start_new_session=True``): uvicorn can
outlive SIGTERM while holding its port, so the whole group is killed at the end and the port is
checked to be free again (STACK.md, "Pitfalls seen").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.intake.loadgen import LOOPBACK

READY_PATH = "/health/ready"
STOP_GRACE_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerError(RuntimeError):
    """A server did not start, did not stop, or its port is taken."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to start one server: its command line, environment, port and log file."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    port: int
    log_path: Path
    cwd: Path


@dataclass(slots=True)
class Server:
    spec: ServerSpec
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound (as uvicorn binds it, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def start(spec: ServerSpec) -> Server:
    """Start ``spec`` in a new process group; refuse if its port is already taken."""
    if not port_is_free(spec.port):
        raise ServerError(f"port {spec.port} is in use; stop whatever listens there first")
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    with spec.log_path.open("ab") as log:
        process = subprocess.Popen(
            spec.argv,
            env=spec.env,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(spec, process)


async def wait_ready(server: Server, timeout_s: float = 30.0) -> None:
    """Poll the readiness probe until it answers 200; fail early if the server died."""
    url = f"http://{LOOPBACK}:{server.spec.port}{READY_PATH}"
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise ServerError(f"{server.spec.name} exited; see {server.spec.log_path}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise ServerError(f"{server.spec.name} not ready after {timeout_s:.0f} s")


def stop(server: Server) -> None:
    """SIGTERM the server's process group, SIGKILL it after a grace period, check the port."""
    _signal_group(server.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(server.pid, signal.SIGKILL)
        server.process.wait(timeout=STOP_GRACE_S)
    _signal_group(server.pid, signal.SIGKILL)  # stragglers left in the group
    deadline = time.monotonic() + STOP_GRACE_S
    while not port_is_free(server.spec.port):
        if time.monotonic() > deadline:
            raise ServerError(f"port {server.spec.port} still taken after stopping")
        time.sleep(0.1)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative CPU seconds at one instant: the server, PostgreSQL, this client, the box."""

    at: float
    server: float
    postgres: float
    client: float
    busy: float


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """Average cores busy over an interval (the machine has ``os.cpu_count()`` of them)."""

    server: float
    postgres: float
    client: float
    other: float
    total: float


def _proc_cpu_seconds(stat_path: Path) -> tuple[str, float]:
    """The command name and utime+stime+cutime+cstime of one /proc/<pid>/stat."""
    text = stat_path.read_text()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    ticks = sum(int(f) for f in fields[11:15])
    return comm, ticks / CLOCK_TICKS


def _postgres_seconds() -> float:
    """CPU of every ``postgres`` process; the postmaster's cutime holds the exited backends."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            comm, seconds = _proc_cpu_seconds(stat)
            if comm == "postgres":
                total += seconds
    return total


def _busy_seconds() -> float:
    """Busy CPU seconds of the whole machine (user, nice, system, irq, softirq): /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def background_cores(seconds: float = 1.0) -> float:
    """Cores busy while nothing of ours runs: other work on the box skews every number."""
    before = _busy_seconds()
    time.sleep(seconds)
    return (_busy_seconds() - before) / seconds


def cpu_sample(server: Server) -> CpuSample:
    times = os.times()
    _, server_seconds = _proc_cpu_seconds(Path(f"/proc/{server.pid}/stat"))
    return CpuSample(
        at=time.monotonic(),
        server=server_seconds,
        postgres=_postgres_seconds(),
        client=times.user + times.system,
        busy=_busy_seconds(),
    )


def cpu_usage(before: CpuSample, after: CpuSample) -> CpuUsage:
    wall = after.at - before.at
    server = (after.server - before.server) / wall
    postgres = (after.postgres - before.postgres) / wall
    client = (after.client - before.client) / wall
    total = (after.busy - before.busy) / wall
    return CpuUsage(server, postgres, client, max(0.0, total - server - postgres - client), total)
