"""The changelog prefill against a real broker: the local store ends as Faust's recovery leaves it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from rocksdict import Rdict

from streams.app import Matchstream, create_app
from streams.changelog_prefill import FillReport, prefill_changelog
from streams.settings import Settings

pytestmark = pytest.mark.integration

_PARTITIONS = 4


async def _append(
    settings: Settings, topic: str, records: list[tuple[int, bytes, bytes | None]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=",".join(settings.broker_hosts), acks="all")
    await producer.start()
    try:
        for partition, key, value in records:
            await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


def _contents(store: Any, partition: int) -> dict[bytes, bytes]:
    db: Any = Rdict(
        str(store.partition_path(partition)), options=store.rocksdb_options.as_options()
    )
    try:
        return dict(db.items())
    finally:
        db.close()


@pytest.fixture
def stream(settings: Settings) -> Iterator[Matchstream]:
    """The worker's app, as the worker builds it, never started."""
    built = create_app(settings)
    yield built
    # Building the app made Faust's consumer, whose thread has its own event loop.
    consumer: Any = built.app.consumer
    consumer._thread.thread_loop.close()


async def _fill(stream: Matchstream) -> FillReport | None:
    return await prefill_changelog(
        stream.state.data,
        topic=stream.state.changelog_topic.get_topic_name(),
        partitions=stream.settings.topic_partitions,
        bootstrap_servers=",".join(stream.settings.broker_hosts),
        timeout_s=60.0,
    )


async def test_the_store_ends_with_each_key_s_last_value_and_the_last_offset(
    stream: Matchstream,
) -> None:
    topic = stream.state.changelog_topic.get_topic_name()
    await _append(
        stream.settings,
        topic,
        [
            (0, b"pool:a", b"1"),
            (0, b"req:a-1", b"waiting"),
            (1, b"pool:b", b"1"),
            (0, b"req:a-1", b"matched"),
            (1, b"req:b-1", b"waiting"),
            (1, b"req:b-1", None),
        ],
    )

    report = await _fill(stream)
    store: Any = stream.state.data

    assert report is not None and report.records == 6
    assert report.partitions == {0: (0, 3), 1: (0, 3)}
    offset_key = store.offset_key
    assert _contents(store, 0) == {b"pool:a": b"1", b"req:a-1": b"matched", offset_key: b"2"}
    assert _contents(store, 1) == {b"pool:b": b"1", offset_key: b"2"}
    assert _contents(store, 2) == {}


async def test_a_second_fill_reads_only_what_was_appended_since(stream: Matchstream) -> None:
    topic = stream.state.changelog_topic.get_topic_name()
    await _append(stream.settings, topic, [(2, b"req:c-1", b"waiting"), (2, b"pool:c", b"1")])
    await _fill(stream)
    await _append(stream.settings, topic, [(2, b"req:c-1", b"matched"), (3, b"pool:d", b"1")])

    report = await _fill(stream)
    store: Any = stream.state.data

    assert report is not None and report.records == 2
    assert report.partitions == {2: (2, 3), 3: (0, 1)}
    assert _contents(store, 2)[b"req:c-1"] == b"matched"
    assert _contents(store, 3) == {b"pool:d": b"1", store.offset_key: b"0"}


async def test_a_copy_older_than_the_log_start_is_rebuilt_from_the_log(
    stream: Matchstream,
) -> None:
    topic = stream.state.changelog_topic.get_topic_name()
    await _append(stream.settings, topic, [(1, b"req:gone", b"waiting")])
    await _fill(stream)
    await _append(stream.settings, topic, [(1, b"req:gone", None), (1, b"pool:e", b"1")])
    # Retention removed the records the copy has not seen yet (a compacted topic
    # refuses to delete records, so this changelog is given retention first).
    admin = AIOKafkaAdminClient(bootstrap_servers=",".join(stream.settings.broker_hosts))
    await admin.start()
    try:
        retention = ConfigResource(
            ConfigResourceType.TOPIC, topic, {"cleanup.policy": "compact,delete"}
        )
        await admin.alter_configs([retention])
        await admin.delete_records({TopicPartition(topic, 1): RecordsToDelete(before_offset=2)})
    finally:
        await admin.close()

    report = await _fill(stream)
    store: Any = stream.state.data

    assert report is not None and report.partitions == {1: (2, 3)}
    assert _contents(store, 1) == {b"pool:e": b"1", store.offset_key: b"2"}
