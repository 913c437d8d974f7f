"""Helpers for the integration tier: worker processes and output readers."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka_local import free_port
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from streams.worker_process import WorkerProcess


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


async def logged(
    worker: WorkerProcess, pattern: str, *, after: int = 0, timeout_s: float = 60.0
) -> re.Match[str]:
    """The first line matching `pattern` that `worker` logs after offset `after`."""
    deadline = time.monotonic() + timeout_s
    while (found := re.compile(pattern).search(worker.log_text(), after)) is None:
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{worker.log_text()[-3000:]}"
        await asyncio.sleep(0.2)  # polling a log file: there is no event to await
    return found


@dataclass
class Outputs:
    """Everything read so far from the output topics, decoded."""

    statuses: list[dict[str, object]] = field(default_factory=list)
    found: list[dict[str, object]] = field(default_factory=list)
    dlq: list[dict[str, object]] = field(default_factory=list)
    recommendations: list[dict[str, Any]] = field(default_factory=list)


class OutputReader:
    """Reads `match.status`, `match.found`, `match.dlq` and `match.recommendations` from the start."""

    def __init__(self, settings: Settings) -> None:
        self.names = TopicNames.with_prefix(settings.topic_prefix)
        self.outputs = Outputs()
        self._consumer = AIOKafkaConsumer(
            self.names.status,
            self.names.found,
            self.names.dlq,
            self.names.recommendations,
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
            self.names.recommendations: self.outputs.recommendations,
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
