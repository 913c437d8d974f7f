"""A worker told to stop while its broker is gone exits within MATCHSTREAM_STOP_TIMEOUT_S.

Faust's stop commits the input offsets after flushing the changelog, and with no
broker that flush never ends: the worker used to outlive SIGTERM until SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from streams.kafka_local import LocalKafka
from streams.worker_process import WorkerProcess
from tests.support.harness import isolated_settings, prepare_topics

pytestmark = pytest.mark.integration

STOP_TIMEOUT_S = 5.0


async def test_a_stop_without_a_broker_ends_as_a_crash_within_the_timeout(
    own_broker: LocalKafka, tmp_path: Path
) -> None:
    settings = isolated_settings(own_broker.status().bootstrap, tmp_path / "data").model_copy(
        update={"stop_timeout_s": STOP_TIMEOUT_S}
    )
    await prepare_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready(120)
        await asyncio.to_thread(own_broker.stop)

        stopped_at = time.monotonic()
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.process is not None
        exit_code = await asyncio.to_thread(worker.process.wait, STOP_TIMEOUT_S + 30)
        took_s = time.monotonic() - stopped_at

        assert exit_code == 1, worker.log_text()[-3000:]
        assert took_s < STOP_TIMEOUT_S + 10, took_s
        assert "worker did not stop within 5 s" in worker.log_text()

        # The next start treats it as the crash it was and rebuilds its tables.
        await asyncio.to_thread(own_broker.start, 120)
        worker.start()
        await worker.wait_ready(120)
        assert "did not stop cleanly" in worker.log_text()
    finally:
        worker.stop()
