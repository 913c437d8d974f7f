"""The integration tier runs against a real Apache Kafka broker started here.

There is no skip: if Java, Maven or the broker is missing, these tests fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.kafka_local import LocalKafka, free_port
from streams.settings import Settings, get_settings
from streams.worker_process import WorkerProcess
from tests.support.harness import isolated_settings, prepare_topics
from tests.support.postgres import LocalPostgres


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = LocalKafka(
        port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka"),
        cache_dir=get_settings().kafka_cache_dir,
    )
    broker.start(timeout_s=120)
    try:
        yield broker.status().bootstrap
    finally:
        broker.stop()


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[LocalKafka]:
    """A broker of this test's own (free port, temporary dir), for tests that stop or restart it."""
    broker = LocalKafka(
        port=free_port(), data_dir=tmp_path / "broker", cache_dir=get_settings().kafka_cache_dir
    )
    await asyncio.to_thread(broker.start, 120)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


@pytest.fixture(scope="session")
def local_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server for the session, started only when a test asks for it."""
    server = LocalPostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
async def settings(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Settings]:
    isolated = isolated_settings(kafka_bootstrap, tmp_path / "data")
    await prepare_topics(isolated)
    yield isolated


@pytest.fixture
def worker_factory(settings: Settings, tmp_path: Path) -> Iterator[type[WorkerProcess]]:
    """Start workers for this test's settings; all are stopped at the end."""
    started: list[WorkerProcess] = []

    class _Factory(WorkerProcess):
        def __init__(self, data_dir: Path | None = None, **overrides: Any) -> None:
            """A second worker needs its own `data_dir` (and gets its own web port)."""
            own = settings.model_copy(update=overrides)
            if data_dir is not None:
                own = own.model_copy(update={"data_dir": data_dir, "web_port": free_port()})
            super().__init__(own, tmp_path / f"worker-{len(started)}.log")
            started.append(self)

    yield _Factory
    for worker in started:
        worker.stop()
