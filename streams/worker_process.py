"""`matchstream worker` as a child process, for the demo, the bench and the tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from streams.settings import Settings

__all__ = ["MATCHSTREAM_WORKER", "WorkerProcess", "WorkerProcessError"]

_READY_LINE = "[^Worker]: Ready"
MATCHSTREAM_WORKER = ("-c", "from streams.cli import main; main()", "worker")
"""The Python interpreter's arguments that run `matchstream worker`."""


class WorkerProcessError(RuntimeError):
    """The worker exited or did not become ready in time; the message has its log tail."""


class WorkerProcess:
    """A Faust worker in its own process group, configured through its environment.

    Example:
        >>> worker = WorkerProcess(Settings(), Path("/tmp/worker.log"))
        >>> worker.running
        False
    """

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        arguments: Sequence[str] = MATCHSTREAM_WORKER,
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.arguments = arguments
        """The Python interpreter's arguments (`MATCHSTREAM_WORKER` unless another worker)."""
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise WorkerProcessError("the worker was never started")
        return self.process.pid

    def start(self) -> None:
        """Start a new run; `log_text` and `wait_ready` then look at this run only."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.arguments],
                # The rest of the environment (PATH, a database URL, ...) passes through.
                env={**os.environ, **self.settings.as_environment()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_text(self) -> str:
        """What this run of the worker logged so far."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until this run logged that it is ready.

        Raises:
            WorkerProcessError: it exited first, or the timeout passed.
        """
        deadline = time.monotonic() + timeout_s
        while _READY_LINE not in self.log_text():
            if not self.running:
                raise WorkerProcessError(f"worker exited:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise WorkerProcessError(
                    f"worker not ready in {timeout_s}s:\n{self.log_text()[-3000:]}"
                )
            await asyncio.sleep(0.2)  # polling a log file: there is no event to await

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, nothing flushed."""
        if self.process is not None and self.running:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM for a clean stop, SIGKILL when it takes longer than `timeout_s`."""
        if self.process is None or not self.running:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
