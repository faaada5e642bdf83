"""The processes under test: ``orderly api``, ``orderly worker`` (one or more) and, on a broker,
``orderly relay`` (one or more), each in its own session and process group.

Started and stopped with ``bench.intake.servers`` (the API: readiness probe, port check) and
``bench.pipeline.procs`` (the others: SIGTERM to the group, SIGKILL after a grace period). With
``ORDERLY_LOG_LEVEL=warning`` the processes log no "started" line, so a worker or relay is taken
as up once it has stayed alive for a moment; the warm-up orders, which must all reach a final
state, prove the whole chain works before anything is measured.

Also what the processes cost: CPU per process (``/proc/<pid>/stat``, PostgreSQL and the broker
by command name) and the workers' memory high-water mark (``VmHWM`` of ``/proc/<pid>/status``,
read while they run).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.intake import database, servers
from bench.pipeline import procs

ALIVE_FOR_S = 1.0
BROKER_PROCESS = {"local": None, "rabbitmq": "amqp"}
"""``bench.pipeline.procs`` names RabbitMQ's processes (``beam.smp``) after its URL scheme."""


def orderly_argv(command: str, profile: Path | None = None) -> tuple[str, ...]:
    """``orderly <command>``; under cProfile (``bench.saga.profiled``) when ``profile`` is set."""
    if profile is None:
        return (database.ORDERLY, command)
    return (sys.executable, "-m", "bench.saga.profiled", str(profile), command)


def memory_kb(pid: int) -> dict[str, int]:
    """``VmHWM`` (peak resident set) and ``VmRSS`` of a running process, in kB."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0])
    return found


@dataclass(slots=True)
class Stack:
    """One transport's processes. ``peaks`` keeps each worker's memory high-water mark, read
    before it is stopped (a restarted worker is a new process with its own mark)."""

    transport: str
    env: dict[str, str]
    logs: Path
    repo: Path
    port: int
    api: servers.Server | None = None
    children: dict[str, procs.Proc] = field(default_factory=dict)
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    generation: int = 0

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    async def start_api(self) -> None:
        argv = (database.ORDERLY, "api", "--port", str(self.port))
        spec = servers.ServerSpec("api", argv, self.env, self.port, self.log_path("api"), self.repo)
        self.api = servers.start(spec)
        await servers.wait_ready(self.api)

    async def start(
        self, role: str, count: int, extra_env: dict[str, str], profile: Path | None = None
    ) -> None:
        """``count`` processes of ``orderly <role>``; fail if one exits at once."""
        started = []
        for n in range(1, count + 1):
            name = f"{role}-{n}.{self.generation}"
            path = None if profile is None else profile.with_name(f"{profile.stem}-{name}.prof")
            proc = procs.start(
                name,
                orderly_argv(role, path),
                {**self.env, **extra_env},
                self.log_path(name),
                self.repo,
            )
            self.children[name] = proc
            started.append(proc)
        await asyncio.sleep(ALIVE_FOR_S)
        self.check_alive()

    def check_alive(self) -> None:
        """Raise if a process under test has exited (e.g. refused an old schema)."""
        for proc in self.children.values():
            if proc.process.poll() is not None:
                raise procs.ProcessFailed(
                    f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}"
                )
        if self.api is not None and self.api.process.poll() is not None:
            raise procs.ProcessFailed(f"api exited with {self.api.process.returncode}")

    def workers(self) -> list[procs.Proc]:
        return [p for name, p in self.children.items() if name.startswith("worker-")]

    def worker_memory(self) -> dict[str, dict[str, int]]:
        """Each running worker's memory now (kB), by process name."""
        return {p.name: memory_kb(p.pid) for p in self.workers()}

    def _stop(self, name: str) -> None:
        proc = self.children.pop(name)
        if name.startswith("worker-"):
            self.peaks[name] = memory_kb(proc.pid)
        self.exits[name] = procs.stop(proc)

    async def restart_workers(
        self, count: int, extra_env: dict[str, str], profile: Path | None = None
    ) -> None:
        for proc in self.workers():
            self._stop(proc.name)
        self.generation += 1
        await self.start("worker", count, extra_env, profile)

    def stop_all(self) -> None:
        """Relays first (nothing left to move), then workers, then the API."""
        for name in sorted(self.children, key=lambda n: not n.startswith("relay-")):
            self._stop(name)
        if self.api is not None:
            servers.stop(self.api)
            self.api = None

    def pids(self) -> dict[str, int]:
        found = {name: p.pid for name, p in self.children.items()}
        if self.api is not None:
            found["api"] = self.api.pid
        return found

    def cpu(self) -> procs.CpuSample:
        return procs.cpu_sample(self.pids(), BROKER_PROCESS[self.transport])


def cpu_by_role(
    before: procs.CpuSample,
    after: procs.CpuSample,
    count: int,
    extra_cores: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Cores busy and CPU ms per order between two samples, processes summed by role
    (``worker-1.0`` and ``worker-2.0`` are ``worker``); only processes present in both.
    ``postgres`` is every PostgreSQL process and ``broker`` every RabbitMQ process, other
    databases' and tenants' work included; ``other`` is the rest of the machine's load;
    ``extra_cores`` (already in cores) are added as they are, e.g. our own database's backends."""
    wall = after.at - before.at
    cores: dict[str, float] = {}
    for name, seconds in after.seconds.items():
        if name not in before.seconds or wall <= 0:
            continue
        role = name.split("-", 1)[0] if "." in name else name
        cores[role] = cores.get(role, 0.0) + (seconds - before.seconds[name]) / wall
    if "machine" in cores:
        ours = sum(v for k, v in cores.items() if k != "machine")
        cores["other"] = max(0.0, cores["machine"] - ours)
    cores.update(extra_cores or {})
    per_order = {k: v * wall * 1000 / max(count, 1) for k, v in cores.items()}
    return {"cores": cores, "ms_per_order": per_order}


def peak_summary(stack: Stack) -> dict[str, Any]:
    """The highest VmHWM of any worker process of the run, in MB, and every worker's."""
    marks = {name: m.get("VmHWM", 0) for name, m in stack.peaks.items()}
    return {
        "worker_peak_mb": max(marks.values(), default=0) / 1024,
        "by_worker_kb": stack.peaks,
    }
