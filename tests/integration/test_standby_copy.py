"""A worker's local table copy against a real broker: it holds exactly what its changelog says.

A worker trusts its local RocksDB copy up to the offset stored with it, as active
owner or as standby. If the copy lacks a record below that offset, a takeover
brings back state that changed long ago (a matched request waiting again). Two
workers with standby replicas share the partitions under a steady load, the second
joining while records keep coming. After both stop, each copy must equal the
changelog replayed up to its stored offset. The loss `streams.table_recovery`
fixes depends on timing this test does not control (it passed here without the
fix); `tests/functional/test_table_recovery.py` reproduces that one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import Rdict

from streams.app import create_app
from streams.settings import Settings
from streams.worker_process import WorkerProcess
from tests.support.cluster_drill import SteadyLoad

pytestmark = pytest.mark.integration

_OFFSET_KEY = b"__faust\0offset__"
_RATE = 400.0
_LOAD_BEFORE_JOIN_S = 15.0
"""Load before the second worker starts: its engine rebuild on joining takes longer with
more state, and the standby records Faust dropped were those fetched meanwhile."""
_LOAD_AFTER_JOIN_S = 6.0
"""Load kept up after the second worker is ready, so both copies go on receiving records."""


async def _keep_loading(load: SteadyLoad, seconds: float) -> None:
    # Pacing, not synchronisation: the load goes on for a fixed stretch.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        load.check()
        await asyncio.sleep(0.2)


def _local_copy(settings: Settings) -> dict[int, tuple[int, dict[bytes, bytes]]]:
    """Per partition with a stored offset: (that offset, every other key and value)."""
    stream = create_app(settings)
    store: Any = stream.state.data
    copies: dict[int, tuple[int, dict[bytes, bytes]]] = {}
    try:
        for partition in range(settings.topic_partitions):
            path = store.partition_path(partition)
            if not path.exists():
                continue
            db: Any = Rdict(str(path), options=store.rocksdb_options.as_options())
            try:
                contents = dict(db.items())
            finally:
                db.close()
            offset = contents.pop(_OFFSET_KEY, None)
            if offset is not None:
                copies[partition] = (int(offset), contents)
        return copies
    finally:
        # Building the app made Faust's consumer, whose thread has its own event loop.
        consumer: Any = stream.app.consumer
        consumer._thread.thread_loop.close()


async def _replay(settings: Settings, partition: int, last_offset: int) -> dict[bytes, bytes]:
    """The table partition as its changelog leaves it after `last_offset`."""
    topic = f"{settings.app_id}-state-changelog"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=",".join(settings.broker_hosts),
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        end = (await consumer.end_offsets([tp]))[tp]
        assert last_offset < end, (
            f"partition {partition}: copy claims {last_offset}, log ends {end}"
        )
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        return await asyncio.wait_for(_read_through(consumer, tp, last_offset), 120)
    finally:
        await consumer.stop()


async def _read_through(
    consumer: AIOKafkaConsumer, tp: TopicPartition, last_offset: int
) -> dict[bytes, bytes]:
    table: dict[bytes, bytes] = {}
    position = 0
    while position <= last_offset:
        batches = await consumer.getmany(tp, timeout_ms=1000)
        for record in batches.get(tp, []):
            if record.offset > last_offset:
                break
            if record.value is None:
                table.pop(record.key, None)
            else:
                table[record.key] = record.value
        position = await consumer.position(tp)
    return table


def _differences(copy: dict[bytes, bytes], replayed: dict[bytes, bytes]) -> list[bytes]:
    keys = copy.keys() | replayed.keys()
    return sorted(key for key in keys if copy.get(key) != replayed.get(key))


async def test_each_local_copy_equals_its_changelog_after_a_join_under_load(
    settings: Settings, worker_factory: type[WorkerProcess], tmp_path: Path
) -> None:
    first = worker_factory(standby_replicas=1)
    first.start()
    await first.wait_ready()
    second = worker_factory(data_dir=tmp_path / "second", standby_replicas=1)
    run_id = f"sc-{uuid.uuid4().hex[:6]}"
    async with SteadyLoad(settings, pools=40, rate=_RATE, ttl_s=300.0, run_id=run_id) as load:
        await _keep_loading(load, _LOAD_BEFORE_JOIN_S)
        second.start()
        await second.wait_ready()
        joined = len(load.produced)
        await _keep_loading(load, _LOAD_AFTER_JOIN_S)
    assert len(load.produced) > joined, "no load after the second worker joined"
    # A clean stop applies what each worker buffered and stores its offset with it.
    await asyncio.gather(asyncio.to_thread(first.stop), asyncio.to_thread(second.stop))

    checked = 0
    for worker in (first, second):
        for partition, (offset, copy) in _local_copy(worker.settings).items():
            replayed = await _replay(settings, partition, offset)
            wrong = _differences(copy, replayed)
            assert not wrong, (
                f"worker {worker.settings.web_port} partition {partition}: {len(wrong)} keys "
                f"differ from the changelog up to offset {offset}, e.g. {wrong[:3]}"
            )
            checked += 1
    # Both workers hold every partition: the first from its start, the second from its
    # prefill, each as owner or standby since.
    assert checked == 2 * settings.topic_partitions
