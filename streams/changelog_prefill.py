"""Bringing the worker's local RocksDB copy of the state table up to the changelog's end.

Faust restores a table by passing every changelog record through its stream
machinery, one queue hand-off and timeout each: about 9,000 records/s here, two
minutes for a million waiting requests (docs/performance.md). A plain consumer
reads the same changelog 30-40 times faster. So before Faust starts, the worker
copies each changelog partition from the offset its local copy has (Faust's own
persisted offset, kept in the partition's RocksDB) to the end, exactly as Faust's
recovery would write it: raw key and value, a delete per tombstone, then the
offset. Faust then finds its copy current and reads only what was appended
since.

Every partition is filled, not only those this worker will own (the group has
not assigned any yet): a partition owned elsewhere costs a read and disk space,
and is current should it move here. If the broker cannot be reached in time the
fill is skipped and Faust's recovery does all the work, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from rocksdict import WriteBatch

__all__ = ["FillReport", "prefill_changelog"]

log = logging.getLogger(__name__)

_FETCH_RECORDS = 20_000


@dataclass
class FillReport:
    """What one fill did, for the log and the tests."""

    records: int = 0
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Per partition filled: (first offset read, end offset)."""
    seconds: float = 0.0


async def prefill_changelog(
    store: Any, *, topic: str, partitions: int, bootstrap_servers: str, timeout_s: float
) -> FillReport | None:
    """Fill `store` (Faust's RocksDB store of the table) from `topic`; None if skipped.

    `partitions` is the table's partition count, which its changelog shares.
    """
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (KafkaError, TimeoutError, OSError) as exc:
        log.warning("changelog prefill skipped: broker unreachable error=%r", exc)
        await consumer.stop()  # a half-started client still holds connections and tasks
        return None
    try:
        report = await asyncio.wait_for(_fill(consumer, store, topic, partitions), timeout_s)
    except (KafkaError, TimeoutError) as exc:
        # What was written so far is consistent: each batch carries its offset.
        log.warning("changelog prefill stopped early error=%r", exc)
        return None
    finally:
        await consumer.stop()
    report.seconds = time.monotonic() - started
    return report


async def _fill(consumer: AIOKafkaConsumer, store: Any, topic: str, partitions: int) -> FillReport:
    report = FillReport()
    if topic not in await consumer.topics():
        return report  # a first start: Faust creates the changelog
    tps = [TopicPartition(topic, partition) for partition in range(partitions)]
    ends = await consumer.end_offsets(tps)
    beginnings = await consumer.beginning_offsets(tps)
    databases = {tp: store.rocksdb_options.open(store.partition_path(tp.partition)) for tp in tps}
    try:
        todo: dict[TopicPartition, int] = {}
        for tp, db in databases.items():
            start = _start_offset(db, store.offset_key, tp, beginnings[tp])
            if start < ends[tp]:
                todo[tp] = ends[tp]
                report.partitions[tp.partition] = (start, ends[tp])
        if not todo:
            return report
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, report.partitions[tp.partition][0])
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1_000, max_records=_FETCH_RECORDS)
            for tp, records in batches.items():
                report.records += _write(databases[tp], store.offset_key, records)
            for tp, end in list(todo.items()):
                if await consumer.position(tp) >= end:
                    del todo[tp]
    finally:
        for db in databases.values():
            db.close()
    return report


def _start_offset(db: Any, offset_key: bytes, tp: TopicPartition, beginning: int) -> int:
    persisted = db.get(offset_key)
    start = 0 if persisted is None else int(persisted) + 1
    if start < beginning:
        # The log no longer holds what came after the local copy: start it afresh.
        log.warning(
            "changelog prefill: local copy behind the log start, rebuilt partition=%d "
            "local_next=%d log_start=%d",
            tp.partition,
            start,
            beginning,
        )
        stale = WriteBatch(raw_mode=True)
        for key in db.keys():  # noqa: SIM118  (an Rdict is not iterable)
            stale.delete(key)
        db.write(stale)
        start = beginning
    return start


def _write(db: Any, offset_key: bytes, records: list[Any]) -> int:
    batch = WriteBatch(raw_mode=True)
    for record in records:
        if record.value is None:
            batch.delete(record.key)
        else:
            batch.put(record.key, record.value)
    batch.put(offset_key, str(records[-1].offset).encode())
    db.write(batch)
    return len(records)
