"""The local development broker, started for real from the cached jars."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka_local import LocalKafka, free_port
from streams.settings import get_settings

pytestmark = pytest.mark.integration

# Generous for a 2-core machine running other suites; a healthy start takes ~5 s.
START_TIMEOUT_S = 90.0
CLIENT_TIMEOUT_S = 30.0


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker on a free port in a fresh data dir, always stopped afterwards."""
    broker = LocalKafka(
        port=free_port(), data_dir=tmp_path / "var", cache_dir=get_settings().kafka_cache_dir
    )
    try:
        yield broker
    finally:
        broker.stop()


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    # The broker creates no topic on first use: a typo must fail, not appear.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await asyncio.wait_for(admin.start(), CLIENT_TIMEOUT_S)
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await asyncio.wait_for(producer.start(), CLIENT_TIMEOUT_S)
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, value, key=key), CLIENT_TIMEOUT_S)
    finally:
        await producer.stop()


async def _consume_first(bootstrap: str, topic: str) -> tuple[bytes | None, bytes | None]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await asyncio.wait_for(consumer.start(), CLIENT_TIMEOUT_S)
    try:
        record = await asyncio.wait_for(consumer.getone(), CLIENT_TIMEOUT_S)
        return record.key, record.value
    finally:
        await consumer.stop()


async def test_messages_round_trip_and_survive_a_restart(kafka: LocalKafka) -> None:
    topic = f"test-local-kafka-{uuid.uuid4().hex}"
    await asyncio.to_thread(kafka.start, START_TIMEOUT_S)

    status = kafka.status()
    (node,) = status.nodes
    assert status.running
    assert node.pid is not None
    assert node.port == kafka.port
    assert status.bootstrap == node.bootstrap == f"127.0.0.1:{kafka.port}"
    assert node.log_path.stat().st_size > 0  # the SLF4J binding works

    await _produce(status.bootstrap, topic, b"player-1", b"hello")
    assert await _consume_first(status.bootstrap, topic) == (b"player-1", b"hello")

    assert await asyncio.to_thread(kafka.stop) is True
    assert not kafka.status().running
    assert not kafka.nodes[0].pid_path.exists()
    assert not _accepts(kafka.port)

    await asyncio.to_thread(kafka.start, START_TIMEOUT_S)
    restarted = kafka.status()
    assert restarted.running
    assert restarted.nodes[0].pid != node.pid
    assert await _consume_first(restarted.bootstrap, topic) == (b"player-1", b"hello")


async def test_second_start_is_a_no_op_and_a_killed_broker_restarts(kafka: LocalKafka) -> None:
    await asyncio.to_thread(kafka.start, START_TIMEOUT_S)
    first = kafka.status()

    await asyncio.to_thread(kafka.start, START_TIMEOUT_S)
    assert kafka.status().nodes[0].pid == first.nodes[0].pid

    kafka.kill()
    assert not kafka.status().running

    await asyncio.to_thread(kafka.start, START_TIMEOUT_S)
    recovered = kafka.status()
    assert recovered.running
    assert recovered.nodes[0].pid != first.nodes[0].pid
    topic = f"test-local-kafka-{uuid.uuid4().hex}"
    await _produce(recovered.bootstrap, topic, b"k", b"after-crash")
    assert await _consume_first(recovered.bootstrap, topic) == (b"k", b"after-crash")
