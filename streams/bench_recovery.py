"""`matchstream bench --scenario recovery`: a restart with many requests waiting.

The state a worker recovers is its `state` table's changelog. The bench writes
that changelog directly (the records the matcher writes for a waiting request
and for its pool, keyed and partitioned as the matcher keys them), because
feeding a million requests through the matcher first would take longer than the
rest of the bench together. The pools are strict (`min_score` 0.95 over random
profiles), so no two of the waiting requests would have matched: the state is
one a worker could have written.

Three phases on a fresh local broker:

1. Baseline: one bare aiokafka consumer reads the whole changelog.
2. Cold recovery: a worker with an empty data directory (a new machine, or a
   partition moved to a worker without a standby) restores the table from the
   changelog and rebuilds the engine.
3. Warm restart: the same worker is stopped and started again on its RocksDB
   directory, so it reads only the changelog's tail, then rebuilds the engine.

Each recovery is timed from the process start to the log line saying the engine
was rebuilt with every waiting request, when the worker takes input again, and
to the line saying the partner indexes the rebuild left for later are built; RSS
is read from `/proc` then (`VmRSS`) and at its peak (`VmHWM`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import random
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from models.codec import dumps
from models.messages import PoolConfig, Profile
from models.state import PoolState, RequestState, state_key
from streams.bench import measure_on_own_broker
from streams.kafka_local import KAFKA_VERSION
from streams.settings import Settings
from streams.topics import ensure_topics, state_changelog
from streams.worker_process import WorkerProcess
from web.live import partition_of

__all__ = ["RecoveryReport", "changelog_records", "run_recovery_bench"]

log = logging.getLogger(__name__)

_CLIENT_TIMEOUT_S = 60.0
_RECOVERY_TIMEOUT_S = 1_800.0
"""Long enough for a million waiting requests on a loaded machine; a result, not a hang."""
_WORKER_STOP_TIMEOUT_S = 60.0
_POLL_S = 0.2  # reading a log file: there is no event to await
_CITIES = [f"city-{n}" for n in range(50)]
_LANGUAGES = ["en", "de", "fr", "es"]
_TAGS = [f"tag-{n}" for n in range(60)]
_REBUILT = re.compile(r"engine rebuilt pools=(\d+) waiting=(\d+) seconds=([0-9.]+)")
_INDEXED = re.compile(r"partner indexes built pools=\d+ seconds=[0-9.]+")
_TARGET_S = 60.0
_TARGET_RSS_MIB = 2_048.0


@dataclass
class Recovery:
    """One worker start until its engine held every waiting request."""

    seconds: float = 0.0
    engine_seconds: float = 0.0
    """Of `seconds`, the rebuild of the engine from the restored table."""
    indexed_seconds: float = 0.0
    """From the start until the partner indexes left out of the rebuild were built."""
    rss_mib: float = 0.0
    peak_rss_mib: float = 0.0


@dataclass
class RecoveryReport:
    waiting: int
    pools: int
    partitions: int
    embedding_dims: int
    event_loop: str
    """The worker's (`MATCHSTREAM_EVENT_LOOP`)."""
    changelog_bytes: int = 0
    baseline_s: float = 0.0
    cold: Recovery = field(default_factory=Recovery)
    warm: Recovery = field(default_factory=Recovery)

    def markdown(self) -> str:
        def row(label: str, recovery: Recovery) -> str:
            return (
                f"| {label} | {recovery.seconds:.1f} s | {recovery.engine_seconds:.1f} s "
                f"| {recovery.indexed_seconds:.1f} s "
                f"| {recovery.seconds / self.baseline_s:.1f} | {recovery.rss_mib:,.0f} MiB "
                f"| {recovery.peak_rss_mib:,.0f} MiB |"
            )

        per_request = self.cold.rss_mib * 1024**2 / self.waiting
        lines = [
            (
                f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, Kafka "
                f"{KAFKA_VERSION} (local single node); {self.waiting:,} waiting requests in "
                f"{self.pools:,} pair pools, {self.partitions} partitions, criteria, interests, "
                f"attributes, {self.embedding_dims}-dim embeddings; changelog "
                f"{self.changelog_bytes / 1024**2:,.0f} MiB; worker event loop "
                f"{self.event_loop}."
            ),
            "",
            (
                "| phase | back after | engine rebuild | partner indexes built after "
                "| back, vs baseline | RSS when indexed | peak RSS |"
            ),
            "|---|---|---|---|---|---|---|",
            (
                f"| bare read of the changelog (baseline) | {self.baseline_s:.3f} s | - | - "
                "| 1.0 | - | - |"
            ),
            row("cold recovery (empty data directory)", self.cold),
            row("warm restart (RocksDB kept)", self.warm),
            "",
            (
                f"Targets: back in under {_TARGET_S:.0f} s (cold {self.cold.seconds:.1f} s, warm "
                f"{self.warm.seconds:.1f} s; every partner index built after "
                f"{self.cold.indexed_seconds:.1f} and {self.warm.indexed_seconds:.1f} s); at most "
                f"{_TARGET_RSS_MIB:,.0f} MiB ({self.cold.rss_mib:,.0f} MiB once indexed, about "
                f"{per_request:,.0f} bytes per waiting request including the worker's own "
                "footprint)."
            ),
        ]
        return "\n".join(lines)


def changelog_records(
    *, waiting: int, pools: int, partitions: int, embedding_dims: int, now: float, seed: int = 11
) -> Iterator[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every pool and waiting request record, as the matcher writes them.

    Example:
        >>> records = list(changelog_records(
        ...     waiting=3, pools=1, partitions=4, embedding_dims=2, now=0.0))
        >>> [key[:2] for _, key, _ in records]
        [b'"p', b'"r', b'"r', b'"r']
    """
    rng = random.Random(seed)
    config = PoolConfig(
        mode="pair",
        match_on=["city", "language"],
        min_score=0.95,
        request_ttl_s=None,
    )
    pool_ids = [f"recovery-{number}" for number in range(pools)]
    pool_partitions = {pool_id: partition_of(pool_id, partitions) for pool_id in pool_ids}
    for pool_id in pool_ids:
        pool = PoolState(
            pool_id=pool_id, partition=pool_partitions[pool_id], config=config, changed_at=now
        )
        yield pool.partition, _table_key(state_key("p", pool_id)), dumps(pool)
    for number in range(waiting):
        pool_id = pool_ids[number % pools]
        embedding = [round(rng.gauss(0.0, 1.0), 4) for _ in range(embedding_dims)]
        request = RequestState(
            request_id=f"req-{number:08d}",
            pool_id=pool_id,
            user_id=f"user-{number}",
            criteria={"city": rng.choice(_CITIES), "language": rng.choice(_LANGUAGES)},
            profile=Profile(
                interests=rng.sample(_TAGS, 5),
                attributes={"level": rng.choice(["junior", "mid", "senior"])},
                embedding=embedding or None,
            ),
            status="queued",
            queued_at=now - rng.uniform(0, 300),
            partition=pool_partitions[pool_id],
            changed_at=now,
        )
        key = _table_key(state_key("r", pool_id, request.request_id))
        yield request.partition, key, dumps(request)


def _table_key(key: str) -> bytes:
    # Faust encodes the keys of a `str`-keyed table as JSON in its changelog.
    return orjson.dumps(key)


def run_recovery_bench(
    settings: Settings, *, waiting: int, pools: int = 100, embedding_dims: int = 0
) -> int:
    """Time a cold recovery and a warm restart with `waiting` requests; print the table.

    Returns:
        0 on success, 1 when a phase failed (the reason is printed).

    Example:
        >>> run_recovery_bench(Settings(), waiting=10_000)  # doctest: +SKIP
        0
    """
    if waiting < 1 or pools < 1 or embedding_dims < 0:
        raise ValueError("need waiting >= 1, pools >= 1 and embedding_dims >= 0")
    report = RecoveryReport(
        waiting=waiting,
        pools=pools,
        partitions=settings.topic_partitions,
        embedding_dims=embedding_dims,
        event_loop=settings.event_loop,
    )
    if not measure_on_own_broker(
        settings,
        name="recovery",
        run=uuid.uuid4().hex[:8],
        measure=lambda bench: _bench(bench, report),
        failures=(RecoveryBenchError,),
    ):
        return 1
    print(report.markdown())
    return 0


class RecoveryBenchError(RuntimeError):
    """The worker died or did not come back in time."""


async def _bench(settings: Settings, report: RecoveryReport) -> None:
    await asyncio.wait_for(ensure_topics(settings), _CLIENT_TIMEOUT_S)
    changelog = state_changelog(settings)
    report.changelog_bytes = await _write_changelog(settings, changelog, report)
    ends = await _changelog_ends(settings, changelog)
    report.baseline_s = await _read_all(settings, changelog, ends)
    # The output relay had emitted everything before the restart; a fresh relay group
    # would replay the whole changelog as status events during the measurement.
    await _commit(settings, f"{settings.app_id}-relay", ends)
    log.info(
        "bench.recovery.written records=%d baseline_s=%.1f", sum(ends.values()), report.baseline_s
    )
    worker = WorkerProcess(settings, settings.data_dir / "worker.log")
    try:
        report.cold = await _recover(worker, report.waiting)
        await asyncio.to_thread(worker.stop, _WORKER_STOP_TIMEOUT_S)
        report.warm = await _recover(worker, report.waiting)
        if "did not stop cleanly" in worker.log_text():
            raise RecoveryBenchError(
                "the worker's stop was cut short, so the restart rebuilt its tables: "
                "not a warm restart"
            )
    finally:
        # Nothing is measured after this point, and a worker holding a million
        # requests can take longer to exit cleanly than the rest of the run.
        await asyncio.to_thread(worker.kill)


async def _write_changelog(settings: Settings, topic: str, report: RecoveryReport) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=",".join(settings.broker_hosts),
        linger_ms=20,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    written = 0
    try:
        pending = []
        for partition, key, value in changelog_records(
            waiting=report.waiting,
            pools=report.pools,
            partitions=report.partitions,
            embedding_dims=report.embedding_dims,
            now=time.time(),
        ):
            pending.append(await producer.send(topic, value=value, key=key, partition=partition))
            written += len(key) + len(value)
            if len(pending) >= 10_000:
                await asyncio.wait_for(asyncio.gather(*pending), _CLIENT_TIMEOUT_S)
                pending.clear()
        await asyncio.wait_for(asyncio.gather(*pending), _CLIENT_TIMEOUT_S)
    finally:
        await producer.stop()
    return written


async def _changelog_ends(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=",".join(settings.broker_hosts))
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, number) for number in range(settings.topic_partitions)]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def _read_all(settings: Settings, topic: str, ends: dict[TopicPartition, int]) -> float:
    """Seconds one consumer needs to read every record of the changelog."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=",".join(settings.broker_hosts),
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        remaining = sum(ends.values())
        started = time.monotonic()

        async def read() -> None:
            nonlocal remaining
            while remaining > 0:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                remaining -= sum(len(records) for records in batches.values())

        await asyncio.wait_for(read(), _RECOVERY_TIMEOUT_S)
        return time.monotonic() - started
    finally:
        await consumer.stop()


async def _commit(settings: Settings, group: str, ends: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=",".join(settings.broker_hosts), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items()})
    finally:
        await consumer.stop()


async def _recover(worker: WorkerProcess, waiting: int) -> Recovery:
    started = time.monotonic()
    worker.start()
    deadline = started + _RECOVERY_TIMEOUT_S
    recovery = None
    while True:
        text = worker.log_text()
        if recovery is None:
            rebuilt = [(int(found[1]), float(found[2])) for found in _REBUILT.findall(text)]
            complete = [seconds for held, seconds in rebuilt if held == waiting]
            if complete:
                recovery = Recovery(seconds=time.monotonic() - started, engine_seconds=complete[-1])
        # Each rebuild logs its indexes once they are built.
        if recovery is not None and len(_INDEXED.findall(text)) >= len(_REBUILT.findall(text)):
            recovery.indexed_seconds = time.monotonic() - started
            break
        if not worker.running:
            raise RecoveryBenchError(f"the worker exited:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise RecoveryBenchError(
                f"not back with {waiting:,} waiting and indexed after "
                f"{_RECOVERY_TIMEOUT_S:.0f} s:\n{text[-3000:]}"
            )
        await asyncio.sleep(_POLL_S)
    recovery.rss_mib, recovery.peak_rss_mib = _rss_mib(worker.pid)
    log.info(
        "bench.recovery.back seconds=%.1f engine_seconds=%.1f indexed_seconds=%.1f "
        "rss_mib=%.0f peak_rss_mib=%.0f",
        recovery.seconds,
        recovery.engine_seconds,
        recovery.indexed_seconds,
        recovery.rss_mib,
        recovery.peak_rss_mib,
    )
    return recovery


def _rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]
