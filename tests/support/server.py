"""Run `orderly` as real processes: CLI commands, and servers in their own process group.

uvicorn can outlive SIGTERM while holding its port (STACK.md), so a server is started with
``start_new_session=True``, stopped by signalling its whole process group, and the port is
checked free afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"
CLI_TIMEOUT_SECONDS = 60.0
STARTUP_TIMEOUT_SECONDS = 45.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0
PORT_ATTEMPTS = 3


class ServerFailed(RuntimeError):
    """An orderly server did not come up (its log is in the message)."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def database_url(workdir: Path) -> str:
    return f"sqlite+aiosqlite:///{workdir / 'orderly.db'}"


def orderly_env(workdir: Path, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The inherited environment minus any ORDERLY_* setting, plus a SQLite database in
    ``workdir``, ORDERLY_ENV=test and ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERLY_")}
    env["ORDERLY_DATABASE_URL"] = database_url(workdir)
    env["ORDERLY_ENV"] = "test"
    env.update(overrides or {})
    return env


def orderly_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orderly", *args]


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = CLI_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m orderly ARGS`` to completion (in ``cwd``, so no stray .env is read)."""
    return subprocess.run(
        orderly_command(*args),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class OrderlyServer:
    """A running ``orderly up`` (or ``orderly api``) process."""

    port: int
    env: dict[str, str]
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal the whole process group, wait, SIGKILL it if it lingers; the exit code."""
        pid = self.process.pid
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            if not _exited(pid, SHUTDOWN_TIMEOUT_SECONDS):
                os.killpg(pid, signal.SIGKILL)
                _exited(pid, SHUTDOWN_TIMEOUT_SECONDS)
            # The leader is a zombie until reaped, so its group id cannot have been reused:
            # end anything it left behind in the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        return self.process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``pid`` to exit, without reaping it."""
    deadline = time.monotonic() + timeout
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _wait_ready(server: OrderlyServer, deadline: float) -> None:
    with server.client(timeout=2.0) as client:
        while True:
            if server.process.poll() is not None:
                raise ServerFailed(
                    f"orderly exited with {server.process.returncode} before it was ready:\n"
                    f"{server.output()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health/ready").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerFailed(f"orderly was not ready in time:\n{server.output()}")
            time.sleep(0.1)


def start_server(
    workdir: Path,
    command: str = "up",
    overrides: Mapping[str, str] | None = None,
) -> OrderlyServer:
    """Start ``python -m orderly COMMAND --port P`` and wait until /health/ready answers 200.

    Another process may grab the free port before the server binds it: then try a new port.
    """
    env = orderly_env(workdir, overrides)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        log_path = workdir / f"orderly-{command}-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                orderly_command(command, "--host", HOST, "--port", str(port)),
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = OrderlyServer(port, env, workdir, process, log_path)
        try:
            _wait_ready(server, time.monotonic() + STARTUP_TIMEOUT_SECONDS)
        except ServerFailed:
            server.stop(signal.SIGKILL)
            if "address already in use" in server.output() and attempt < PORT_ATTEMPTS:
                continue
            raise
        return server
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def running_server(
    workdir: Path,
    command: str = "up",
    overrides: Mapping[str, str] | None = None,
) -> Iterator[OrderlyServer]:
    """A started server; afterwards its process group is gone and its port is free."""
    server = start_server(workdir, command, overrides)
    try:
        yield server
    finally:
        server.stop()
        assert _group_is_gone(server.process.pid), "orderly left processes behind"
        assert port_is_free(server.port), f"port {server.port} is still taken after shutdown"


def _group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)  # signal 0: only asks whether the group exists
    except ProcessLookupError:
        return True
    return False
