"""Running a worker process."""

from __future__ import annotations

import asyncio
import logging

from faust.worker import Worker

from streams.app import create_app
from streams.settings import Settings
from streams.topics import ensure_topics

__all__ = ["run_worker"]


def run_worker(settings: Settings, *, loglevel: str = "info") -> int:
    """Run a Faust worker with the RocksDB store until it is stopped (SIGTERM/SIGINT)."""
    # Faust creates only the last level of its data directory.
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_topics(settings))
    stream = create_app(settings)
    logging.getLogger("matchstream").setLevel(loglevel.upper())
    worker = Worker(stream.app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
