"""Against a real broker: the worker's producer flush ends only when the broker holds every write.

The broker is paused (SIGSTOP) while writes pile up, as during a broker restart: more than
the client's batch for the partition holds, so most wait in Faust's buffer. Faust's own
flush returned once that buffer made no progress for 0.1 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.durable_producer import DurableApp
from streams.kafka_local import LocalKafka
from streams.topics import TopicNames
from tests.support.harness import isolated_settings, prepare_topics

pytestmark = pytest.mark.integration

WRITES = 400
WRITE = b"w" * 1_000  # 400 kB in all: many times the client's 16 kB batch


async def _end_offset(bootstrap: str, partition: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return (await consumer.end_offsets([partition]))[partition]
    finally:
        await consumer.stop()


async def test_flush_returns_only_once_the_broker_holds_every_write(
    own_broker: LocalKafka, tmp_path: Path
) -> None:
    bootstrap = own_broker.status().bootstrap
    settings = isolated_settings(bootstrap, tmp_path / "data")
    await prepare_topics(settings)
    # The worker's producer without its agents (a consumer would start a thread of its own).
    app = DurableApp("durable-flush-test", broker=settings.broker, producer_acks=-1)
    name = TopicNames.with_prefix(settings.topic_prefix).dlq
    topic = app.topic(name, key_serializer="raw", value_serializer="raw")
    producer = app.producer
    await producer.start()
    try:
        topic.send_soon(key=b"first", value=WRITE, partition=0)
        await asyncio.wait_for(producer.flush(), 60)  # the partition's leader is known
        (broker_pid,) = own_broker.running_pids()

        os.kill(broker_pid, signal.SIGSTOP)
        try:
            for _ in range(WRITES):
                topic.send_soon(key=b"write", value=WRITE, partition=0)
            flush = asyncio.create_task(producer.flush())
            done, _ = await asyncio.wait({flush}, timeout=1.0)
            assert not done, "the flush ended while the broker was paused"
        finally:
            os.kill(broker_pid, signal.SIGCONT)

        await asyncio.wait_for(flush, 120)
        assert await _end_offset(bootstrap, TopicPartition(name, 0)) == WRITES + 1
    finally:
        await asyncio.wait_for(producer.stop(), 60)
