"""The processes under test that listen on no port (workers, relays), and who used the CPU.

Like ``bench.intake.servers``: each process runs in its own session and process group and is
stopped by signalling the whole group (SIGTERM, then SIGKILL after a grace period), so nothing
it started outlives the benchmark. Readiness is a line in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.intake import servers

STOP_GRACE_S = 15.0
BROKER_COMMANDS = {
    "redis": ("redis-server",),
    "amqp": ("beam.smp",),
    "nats": ("nats-server",),
    "kafka": ("tansu",),
}
"""Process names (``/proc/<pid>/comm`` prefixes) of each transport's broker."""


class ProcessFailed(RuntimeError):
    """A process under test exited or did not become ready."""


@dataclass(slots=True)
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start(
    name: str, argv: tuple[str, ...], env: Mapping[str, str], log_path: Path, cwd: Path
) -> Proc:
    """Start ``argv`` in a new session and process group, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, process, log_path)


async def wait_for_line(proc: Proc, text: str, timeout_s: float = 60.0) -> None:
    """Wait until ``text`` appears in the process's log; fail early if it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise ProcessFailed(
                f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}"
            )
        with contextlib.suppress(OSError):
            if text in proc.log_path.read_text(errors="replace"):
                return
        await asyncio.sleep(0.1)
    raise ProcessFailed(f"{proc.name} not ready after {timeout_s:.0f} s:\n{proc.log_tail()}")


def stop(proc: Proc) -> int:
    """SIGTERM the process group, SIGKILL it after a grace period; the exit code."""
    servers._signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        servers._signal_group(proc.pid, signal.SIGKILL)
        proc.process.wait(timeout=STOP_GRACE_S)
    servers._signal_group(proc.pid, signal.SIGKILL)  # stragglers left in the group
    return proc.process.returncode


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative CPU seconds at one instant, by name: our processes, PostgreSQL, the broker,
    this process (the producer or load generator) and the whole machine."""

    at: float
    seconds: dict[str, float]


def _process_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError):
        return servers._proc_cpu_seconds(Path(f"/proc/{pid}/stat"))[1]
    return 0.0


def _seconds_by_command(prefixes: tuple[str, ...]) -> float:
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            comm, seconds = servers._proc_cpu_seconds(stat)
            if comm.startswith(prefixes):
                total += seconds
    return total


def cpu_sample(procs: Mapping[str, int], broker: str | None) -> CpuSample:
    """CPU seconds so far of ``procs`` (name to pid), PostgreSQL, ``broker``'s processes."""
    times = os.times()
    seconds = {name: _process_seconds(pid) for name, pid in procs.items()}
    seconds["postgres"] = servers._postgres_seconds()
    if broker in BROKER_COMMANDS:
        seconds["broker"] = _seconds_by_command(BROKER_COMMANDS[broker])
    seconds["client"] = times.user + times.system
    seconds["machine"] = servers._busy_seconds()
    return CpuSample(time.monotonic(), seconds)


def cpu_cores(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Average cores each name kept busy between two samples (``machine`` is everything)."""
    wall = after.at - before.at
    if wall <= 0:
        return {}
    return {k: (after.seconds[k] - before.seconds[k]) / wall for k in after.seconds}
