"""A three-node local cluster keeps every acknowledged write through the crash of a node."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.kafka_local import LocalKafka, free_port
from streams.settings import get_settings
from streams.topics import TopicNames, ensure_topics
from tests.support.harness import isolated_settings

pytestmark = pytest.mark.integration

# Generous for a 2-core machine running three JVMs; a healthy start takes ~10 s.
START_TIMEOUT_S = 90.0
CLIENT_TIMEOUT_S = 30.0
BATCH = 40

T = TypeVar("T")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalKafka]:
    """Three nodes on free ports in a fresh data dir, always stopped afterwards."""
    kafka = LocalKafka(
        port=free_port(3),
        nodes=3,
        data_dir=tmp_path / "var",
        cache_dir=get_settings().kafka_cache_dir,
    )
    try:
        yield kafka
    finally:
        kafka.stop()


@asynccontextmanager
async def _admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await asyncio.wait_for(admin.start(), CLIENT_TIMEOUT_S)
    try:
        yield admin
    finally:
        await admin.close()


async def _eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """The first result of `probe` that is not None, polled until a deadline."""
    # Each broker learns of new topics and ISR changes from the metadata log on its own
    # schedule, so the one answering may briefly lag behind the one asked before.
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while (result := await asyncio.wait_for(probe(), CLIENT_TIMEOUT_S)) is None:
        assert time.monotonic() < deadline, (
            f"timed out after {CLIENT_TIMEOUT_S}s waiting for {what}"
        )
        await asyncio.sleep(0.2)
    return result


async def _partitions(
    admin: AIOKafkaAdminClient,
    topic: str,
    ready: Callable[[list[dict[str, Any]]], bool] = bool,
    what: str = "the topic's partitions",
) -> list[dict[str, Any]]:
    """The topic's partitions once `ready(partitions)` holds."""

    async def probe() -> list[dict[str, Any]] | None:
        (described,) = await admin.describe_topics([topic])
        partitions = sorted(described["partitions"], key=lambda part: part["partition"])
        return partitions if described["error_code"] == 0 and ready(partitions) else None

    return await _eventually(probe, what)


async def _topic_config(admin: AIOKafkaAdminClient, topic: str, name: str) -> str:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={name: None})

    async def probe() -> str | None:
        (response,) = await admin.describe_configs([resource])
        (described,) = response.to_object()["resources"]
        entries = {e["config_names"]: e["config_value"] for e in described["config_entries"]}
        return entries.get(name) if described["error_code"] == 0 else None

    return await _eventually(probe, f"{name} of {topic}")


async def _send(producer: AIOKafkaProducer, topic: str, values: list[bytes]) -> None:
    sent = [await producer.send(topic, value, key=value) for value in values]
    await asyncio.wait_for(asyncio.gather(*sent), CLIENT_TIMEOUT_S)


async def _receive(consumer: AIOKafkaConsumer, seen: set[bytes], wanted: set[bytes]) -> None:
    async def until_seen() -> None:
        while not wanted <= seen:
            batches = await consumer.getmany(timeout_ms=200)
            seen.update(record.value for records in batches.values() for record in records)

    try:
        await asyncio.wait_for(until_seen(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(
            f"{len(wanted - seen)} of {len(wanted)} values never arrived"
        ) from None


def _batch(label: str) -> list[bytes]:
    return [f"{label}-{number}".encode() for number in range(BATCH)]


async def test_writes_survive_a_node_crash_and_the_node_rejoins(
    cluster: LocalKafka, tmp_path: Path
) -> None:
    await asyncio.to_thread(cluster.start, START_TIMEOUT_S)
    status = cluster.status()
    assert status.running
    assert len(status.bootstrap.split(",")) == 3

    settings = isolated_settings(status.bootstrap, tmp_path / "data", partitions=3)
    await asyncio.wait_for(ensure_topics(settings), CLIENT_TIMEOUT_S)
    topic = TopicNames.with_prefix(settings.topic_prefix).request
    async with _admin(status.bootstrap) as admin:
        partitions = await _partitions(admin, topic)
        assert [len(part["replicas"]) for part in partitions] == [3, 3, 3]
        assert await _topic_config(admin, topic, "min.insync.replicas") == "2"
        # Killing a leader forces an election, the interesting case for acks=all.
        victim = partitions[0]["leader"]

    producer = AIOKafkaProducer(
        bootstrap_servers=status.bootstrap, acks="all", enable_idempotence=True
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=status.bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await asyncio.wait_for(producer.start(), CLIENT_TIMEOUT_S)
    await asyncio.wait_for(consumer.start(), CLIENT_TIMEOUT_S)
    seen: set[bytes] = set()
    try:
        before, during, after = _batch("before"), _batch("during"), _batch("after")
        await _send(producer, topic, before)
        # The group's coordinator exists before the crash, as in any running cluster.
        await _receive(consumer, seen, set(before))

        cluster.kill(node_id=victim)
        crashed = cluster.status()
        assert [node.running for node in crashed.nodes] == [n != victim for n in (1, 2, 3)]

        # Two in-sync copies remain, which min.insync.replicas=2 accepts.
        await _send(producer, topic, during)
        await _receive(consumer, seen, set(before + during))

        survivors = {node.node_id: node.pid for node in crashed.nodes if node.running}
        await asyncio.to_thread(cluster.start, START_TIMEOUT_S)
        rejoined = cluster.status()
        assert rejoined.running
        assert {n.node_id: n.pid for n in rejoined.nodes if n.node_id != victim} == survivors

        async with _admin(status.bootstrap) as admin:
            await _partitions(
                admin,
                topic,
                lambda parts: all(len(part["isr"]) == 3 for part in parts),
                "every partition back to 3 in-sync replicas",
            )
        await _send(producer, topic, after)
        await _receive(consumer, seen, set(before + during + after))
        assert seen == set(before + during + after)
    finally:
        await consumer.stop()
        await producer.stop()
