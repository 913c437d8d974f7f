"""Helpers for the integration tier: worker processes and output readers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka_local import free_port
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

READY_LINE = "[^Worker]: Ready"


def isolated_settings(bootstrap: str, data_dir: Path, *, partitions: int = 4) -> Settings:
    """Settings with topic names, consumer groups and tables no other test shares."""
    run = uuid.uuid4().hex[:10]
    return Settings(
        broker=f"kafka://{bootstrap}",
        topic_prefix=f"t{run}.",
        app_id=f"ms-{run}",
        data_dir=data_dir,
        web_port=free_port(),
        topic_partitions=partitions,
        tick_interval_s=0.5,
    )


class WorkerProcess:
    """`matchstream worker` in a subprocess, with its log in a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            MATCHSTREAM_BROKER=self.settings.broker,
            MATCHSTREAM_TOPIC_PREFIX=self.settings.topic_prefix,
            MATCHSTREAM_APP_ID=self.settings.app_id,
            MATCHSTREAM_DATA_DIR=str(self.settings.data_dir),
            MATCHSTREAM_WEB_PORT=str(self.settings.web_port),
            MATCHSTREAM_TOPIC_PARTITIONS=str(self.settings.topic_partitions),
            MATCHSTREAM_TICK_INTERVAL_S=str(self.settings.tick_interval_s),
        )
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from streams.cli import main; main()", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def log_text(self) -> str:
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode("utf-8", errors="replace")

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until this run of the worker logged that it is ready."""
        deadline = time.monotonic() + timeout_s
        while READY_LINE not in self.log_text():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker not ready in {timeout_s}s:\n{self.log_text()[-3000:]}"
                )
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Outputs:
    """Everything read so far from the output topics, decoded."""

    statuses: list[dict[str, object]] = field(default_factory=list)
    found: list[dict[str, object]] = field(default_factory=list)
    dlq: list[dict[str, object]] = field(default_factory=list)


class OutputReader:
    """Reads `match.status`, `match.found` and `match.dlq` from the beginning."""

    def __init__(self, settings: Settings) -> None:
        self.names = TopicNames.with_prefix(settings.topic_prefix)
        self.outputs = Outputs()
        self._consumer = AIOKafkaConsumer(
            self.names.status,
            self.names.found,
            self.names.dlq,
            bootstrap_servers=",".join(settings.broker_hosts),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,
        )

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def _poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=100, max_records=10_000)
        targets = {
            self.names.status: self.outputs.statuses,
            self.names.found: self.outputs.found,
            self.names.dlq: self.outputs.dlq,
        }
        for tp, messages in batches.items():
            targets[tp.topic].extend(orjson.loads(message.value) for message in messages)

    async def wait_for(
        self, condition: Callable[[Outputs], bool], *, timeout_s: float, what: str
    ) -> Outputs:
        """Poll until `condition(outputs)` holds; fail with `what` after the timeout."""

        async def poll_until() -> None:
            while not condition(self.outputs):
                await self._poll()

        try:
            await asyncio.wait_for(poll_until(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None
        return self.outputs

    async def settle(self, *, quiet_s: float = 2.0, timeout_s: float = 60.0) -> Outputs:
        """Read until nothing new arrived for `quiet_s` (used before asserting absence)."""

        async def until_quiet() -> None:
            last_change, seen = time.monotonic(), -1
            while time.monotonic() - last_change < quiet_s:
                await self._poll()
                count = len(self.outputs.statuses) + len(self.outputs.found)
                if count != seen:
                    seen, last_change = count, time.monotonic()

        await asyncio.wait_for(until_quiet(), timeout_s)
        return self.outputs


async def send_messages(
    settings: Settings, messages: Iterable[tuple[str, bytes | None, bytes]]
) -> None:
    """Produce (topic, key, value) messages and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=",".join(settings.broker_hosts), acks="all")
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def prepare_topics(settings: Settings) -> None:
    await asyncio.wait_for(ensure_topics(settings), 60)
