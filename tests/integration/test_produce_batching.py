"""Against a real broker: produce batching acts on aiokafka's producer, and a worker uses it.

Both parts set private state of aiokafka's producer, so these tests are what
notices another aiokafka that no longer reads it.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.produce_batching import BacklogLinger, send_whole_nodes
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from tests.support.harness import logged

pytestmark = pytest.mark.integration

_BACKLOG_LINGER_MS = 3_000
_HELD_S = 2.5
"""Less than the backlog linger, and far more than an acknowledgement takes without it."""
_BACKLOG_REQUESTS = 6_000
_LINGER_MS = 1_500
_SECOND_BATCH_AFTER_S = 0.5
"""Well inside the first batch's linger: the second batch is due a whole spacing later."""


async def _new_topic(bootstrap: str, name: str, partitions: int) -> str:
    topic = f"{name}-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()
    return topic


async def _acknowledged_after(producer: AIOKafkaProducer, topic: str) -> float:
    """Seconds from sending one record to its acknowledgement."""
    started = time.monotonic()
    acknowledged = await producer.send(topic, value=b"record")
    await asyncio.wait_for(acknowledged, 30)
    return time.monotonic() - started


async def test_a_backlog_holds_new_batches_for_its_linger_and_caught_up_they_leave_at_once(
    kafka_bootstrap: str,
) -> None:
    topic = await _new_topic(kafka_bootstrap, "backlog-linger", 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=b"metadata known")
        linger = BacklogLinger(
            backlog_linger_ms=_BACKLOG_LINGER_MS, backlog_messages=500, caught_up_messages=50
        )

        linger.observe(10_000)
        linger.apply(producer)
        assert await _acknowledged_after(producer, topic) >= _HELD_S

        linger.observe(0)
        linger.apply(producer)
        assert await _acknowledged_after(producer, topic) < _HELD_S
        assert producer._message_accumulator._linger_time == 0
    finally:
        await producer.stop()


async def _second_partition_sent_with_the_first(producer: AIOKafkaProducer, topic: str) -> bool:
    """Send to partition 0, then to 1 a moment later; whether 1's record left with 0's."""
    first = await producer.send(topic, value=b"first", partition=0)
    await asyncio.sleep(_SECOND_BATCH_AFTER_S)  # the spacing is the workload, not a wait
    second = await producer.send(topic, value=b"second", partition=1)
    await asyncio.wait_for(first, 30)
    sent_together = second.done()
    await asyncio.wait_for(second, 30)
    return sent_together


async def test_whole_nodes_send_a_later_batch_with_the_first_due_one(kafka_bootstrap: str) -> None:
    topic = await _new_topic(kafka_bootstrap, "whole-nodes", 2)
    own = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=_LINGER_MS)
    whole = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=_LINGER_MS)
    await own.start()
    await whole.start()
    try:
        send_whole_nodes(whole)
        for producer in (own, whole):
            await producer.partitions_for(topic)  # metadata known: leaders found
        assert not await _second_partition_sent_with_the_first(own, topic)
        assert await _second_partition_sent_with_the_first(whole, topic)
    finally:
        await own.stop()
        await whole.stop()


async def test_a_worker_lingers_through_a_backlog_and_stops_once_it_caught_up(
    settings: Settings, worker_factory
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=",".join(settings.broker_hosts), acks="all")
    await producer.start()
    try:
        for number in range(_BACKLOG_REQUESTS):
            pool = f"p{number % 50}"
            body = {"request_id": f"r{number}", "pool_id": pool, "user_id": f"u{number}"}
            await producer.send(names.request, value=orjson.dumps(body), key=pool.encode())
        await producer.flush()
    finally:
        await producer.stop()

    worker = worker_factory()
    worker.start()
    started = await logged(worker, r"backlog linger on behind=(\d+) linger_ms=25", timeout_s=120)
    assert int(started.group(1)) > 150
    ended = await logged(worker, r"backlog linger off behind=(\d+)", after=started.end())
    assert int(ended.group(1)) <= 20
    assert "produce batching off" not in worker.log_text()
