"""Against a real broker: a consumer fetching in sessions reads what a full fetch would.

The sessions replace how aiokafka's client sends fetches, and this is what notices a
broker or an aiokafka that answers them differently.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.fetch_sessions import FetchSession, use_sessions

pytestmark = pytest.mark.integration

_PARTITIONS = 8
_ROUNDS = 6
_PER_ROUND = 40


async def _read(consumer: AIOKafkaConsumer, received: dict[int, list[bytes]], until: int) -> None:
    """Read into `received` (by partition) until it holds `until` records; 30 s at most."""

    async def read() -> None:
        while sum(map(len, received.values())) < until:
            batches = await consumer.getmany(timeout_ms=1_000)
            for tp, records in batches.items():
                received[tp.partition].extend(record.value for record in records)

    await asyncio.wait_for(read(), 30)


async def test_a_consumer_in_sessions_reads_every_record_once_through_pauses_and_seeks(
    kafka_bootstrap: str,
) -> None:
    topic = f"fetch-sessions-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=_PARTITIONS, replication_factor=1)]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100
    )
    sessions: dict[int, FetchSession] = {}
    consumer._client.send = use_sessions(consumer._client.send, sessions)
    await producer.start()
    await consumer.start()
    partitions = [TopicPartition(topic, number) for number in range(_PARTITIONS)]
    consumer.assign(partitions)
    sent: dict[int, list[bytes]] = defaultdict(list)
    received: dict[int, list[bytes]] = defaultdict(list)
    try:
        for round_number in range(_ROUNDS):
            if round_number == 2:
                consumer.pause(partitions[3])  # dropped from the session
            if round_number == 4:
                consumer.resume(partitions[3])  # added back, at the offset it stopped at
            for number in range(_PER_ROUND):
                partition = (number * 7 + round_number) % _PARTITIONS
                value = b"%d-%d" % (round_number, number)
                await producer.send_and_wait(topic, value=value, partition=partition)
                sent[partition].append(value)
            paused_behind = len(sent[3]) - len(received[3]) if round_number in (2, 3) else 0
            await _read(consumer, received, sum(map(len, sent.values())) - paused_behind)

        # A seek moves one partition's offset within the session: it is read again from there.
        consumer.seek(partitions[5], 0)
        again = len(sent[5])
        await _read(consumer, received, sum(map(len, sent.values())) + again)
        (session,) = sessions.values()
        in_session = (session.session_id, session.incremental, session.restarted)
    finally:
        await consumer.stop()
        await producer.stop()

    assert {p: values for p, values in received.items()} == {
        p: values + values if p == 5 else values for p, values in sent.items()
    }
    session_id, incremental, restarted = in_session
    assert session_id != 0 and incremental > _ROUNDS and restarted == 0
