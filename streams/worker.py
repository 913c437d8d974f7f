"""Running a worker process."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from faust.worker import Worker

from streams.app import create_app
from streams.settings import Settings
from streams.topics import ensure_topics

__all__ = ["run_worker"]

log = logging.getLogger(__name__)


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
    asyncio.run(ensure_topics(settings))
    stream = create_app(settings)
    if running_marker.exists():
        _discard_tables(Path(stream.app.conf.tabledir), running_marker)
    running_marker.write_text(str(os.getpid()))
    logging.getLogger("matchstream").setLevel(loglevel.upper())
    worker = Worker(stream.app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        running_marker.unlink(missing_ok=True)
    return 0


def _discard_tables(table_dir: Path, marker: Path) -> None:
    log.warning(
        "previous worker did not stop cleanly pid=%s; rebuilding tables from the changelog "
        "table_dir=%s",
        marker.read_text().strip(),
        table_dir,
    )
    shutil.rmtree(table_dir, ignore_errors=True)
