"""Running a worker process."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from faust.worker import Worker as FaustWorker

from streams.app import Matchstream, create_app
from streams.changelog_prefill import prefill_changelog
from streams.durable_producer import DurableProducer
from streams.metrics import time_collections
from streams.runtime import use_event_loop
from streams.settings import Settings
from streams.topics import ensure_topics

__all__ = ["run_worker"]

log = logging.getLogger(__name__)

_PREFILL_TIMEOUT_S = 600.0
"""Ample for a million-record changelog (a few seconds here); past it Faust recovers the rest."""


def run_worker(settings: Settings, *, loglevel: str = "info") -> int:
    """Run a Faust worker with the RocksDB store until it is stopped (SIGTERM/SIGINT).

    After a crash the local tables are discarded and rebuilt from the changelog:
    RocksDB may hold writes whose changelog messages never reached the broker,
    and a store ahead of its changelog would disagree with every other replica.
    """
    worker_dir = settings.data_dir / "worker"
    # Faust creates only the last level of its data directory.
    worker_dir.mkdir(parents=True, exist_ok=True)
    running_marker = worker_dir / "RUNNING"
    use_event_loop(settings.event_loop)
    asyncio.run(ensure_topics(settings))
    stream = create_app(settings)
    time_collections()
    if running_marker.exists():
        _discard_tables(Path(stream.app.conf.tabledir), running_marker)
    running_marker.write_text(str(os.getpid()))
    logging.getLogger("matchstream").setLevel(loglevel.upper())
    worker = Worker(stream, stop_timeout_s=settings.stop_timeout_s, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        worker.cancel_stop_deadline()
        if _send_failure(stream) is None:
            running_marker.unlink(missing_ok=True)
    return 0


def _send_failure(stream: Matchstream) -> BaseException | None:
    """A send that failed for good: the local tables may hold writes the changelog lacks."""
    producer = stream.app._producer
    return producer.send_failure if isinstance(producer, DurableProducer) else None


def _discard_tables(table_dir: Path, marker: Path) -> None:
    log.warning(
        "previous worker did not stop cleanly pid=%s; rebuilding tables from the changelog "
        "table_dir=%s",
        marker.read_text().strip(),
        table_dir,
    )
    shutil.rmtree(table_dir, ignore_errors=True)


class Worker(FaustWorker):
    """A Faust worker that fills the local state store from the changelog first.

    `on_execute` runs once logging is set up and before the app and its recovery start.
    The class keeps Faust's name: its log says `[^Worker]: Ready`, which scripts wait for.
    """

    def __init__(self, stream: Matchstream, *, stop_timeout_s: float, **kwargs: Any) -> None:
        self._stream = stream
        self._stop_timeout_s = stop_timeout_s
        self._stop_deadline: threading.Timer | None = None
        super().__init__(stream.app, **kwargs)

    async def on_stop(self) -> None:
        # Faust commits input offsets only once the changelog is flushed to the broker. With
        # the broker unreachable that flush never ends, and the stop waited with it.
        if self._stop_deadline is None:
            self._stop_deadline = _exit_unless_stopped_within(self._stop_timeout_s)
        await super().on_stop()

    def cancel_stop_deadline(self) -> None:
        """The stop is over: what is left (freeing the heap) cannot lose anything."""
        if self._stop_deadline is not None:
            self._stop_deadline.cancel()

    async def on_execute(self) -> None:
        await super().on_execute()
        log.info("event loop %s", type(asyncio.get_running_loop()).__module__)
        store = self._stream.state.data
        if not hasattr(store, "rocksdb_options"):
            return  # an in-memory store has nothing local to fill
        report = await prefill_changelog(
            store,
            topic=self._stream.state.changelog_topic.get_topic_name(),
            partitions=self._stream.settings.topic_partitions,
            bootstrap_servers=",".join(self._stream.settings.broker_hosts),
            timeout_s=_PREFILL_TIMEOUT_S,
        )
        if report is not None:
            log.info(
                "changelog prefill records=%d partitions=%d seconds=%.3f",
                report.records,
                len(report.partitions),
                report.seconds,
            )


_STOP_TIMEOUT_EXIT_CODE = 1


def _exit_unless_stopped_within(seconds: float) -> threading.Timer:
    """End the process `seconds` from now if it is still running then.

    Exiting mid-stop is a crash, which loses nothing: offsets not committed are
    delivered again (their `InputMark`s make that harmless), and the `RUNNING`
    marker, left in place, makes the next start rebuild the tables from the changelog.
    A thread, because a stuck stop can leave the event loop waiting forever.
    """

    def give_up() -> None:
        log.error(
            "worker did not stop within %.0f s (MATCHSTREAM_STOP_TIMEOUT_S); exiting as after "
            "a crash",
            seconds,
        )
        sys.stderr.flush()
        os._exit(_STOP_TIMEOUT_EXIT_CODE)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer
