"""`matchstream bench`: the matcher's throughput and latency next to a bare relay.

Every run starts its own single-node broker on a free port in a temporary
directory under the data dir, uses topic names and consumer groups no other run
shares, and removes everything when done. Three phases, one after the other:

1. Bare relay. The workload's `match.request` messages are produced to an input
   topic first; then one aiokafka consumer in a consumer group reads them and
   produces each value to an output topic (acks=all), committing after every
   acknowledged batch, like the worker's output relay. Rate = messages / time
   from the first message received to the last batch acknowledged. Its CPU
   time (this process runs nothing else meanwhile) per record read or written
   prices one Kafka record on the leanest client path there is.
2. Matcher. The same workload (with its `configure` commands) is produced to
   `match.request` / `pool.command` before a worker process starts, so its
   startup is outside the window. The window runs from the broker timestamp of
   the first record the worker emits (`match.status`, `match.found`,
   `match.dlq`) to that of the last, once the worker's consumer group has
   committed the end of both input topics and its output relay has committed
   the end of the state changelog: at that point every input message has been
   processed and every output it causes exists. Rate = input messages (requests,
   duplicates, cancels, configure commands) / window. Workload requests that
   find no partner stay `queued`; they are processed all the same. The records
   the worker moves per input (the input, each state changelog record twice:
   written, then read by the output relay, and the outputs) times the bare
   relay's price of a record give the input rate at which Kafka I/O alone
   would fill the worker's one Python thread.
3. Latency. Requests are produced at half the matcher's rate (or at a fixed
   `--latency-rate`, to compare revisions at the same load) for about ten
   seconds into fresh unconfigured (`pair`) pools, two per pool, so the second
   request of each pool completes a match on arrival. Latency = the moment the
   `match.found` is consumed minus the moment the completing request was sent,
   both on this process's monotonic clock. The phase runs twice: as the cores
   come, shared by the worker, the broker and this process, and then with the
   worker on a core of its own and the broker and this process on the others
   (`streams.bench_cores`), as in a deployment where the broker runs elsewhere.
   A last run at a few requests a second gives the path's floor.

Worker CPU is read from `/proc/<pid>/stat` (user + system time) every 100 ms and
interpolated to each phase; the main thread's run-queue wait from
`/proc/<pid>/schedstat` tells whether the worker had a core to itself (on a
busy machine it did not, and the matcher numbers are low for that reason);
peak RSS is `VmHWM` from `/proc/<pid>/status`.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import platform
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from models.codec import dumps, loads, utc_now_iso
from models.messages import TERMINAL_STATUSES
from models.state import kind_prefix
from streams.bench_cores import worker_on_own_core
from streams.kafka_local import KAFKA_VERSION, LocalKafka, LocalKafkaError, free_port
from streams.produce import produce_messages
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from streams.worker_process import MATCHSTREAM_WORKER, WorkerProcess
from streams.workload import Workload, WorkloadMessage

__all__ = [
    "BenchError",
    "BenchReport",
    "Offsets",
    "SampledWorker",
    "bare_relay",
    "check_workload_size",
    "machine_line",
    "measure_on_own_broker",
    "own_broker",
    "read_range",
    "run_bench",
]

log = logging.getLogger(__name__)

_BROKER_START_TIMEOUT_S = 120.0
_CLIENT_TIMEOUT_S = 30.0
_RELAY_TIMEOUT_S = 120.0
_WORKER_FIRST_COMMIT_TIMEOUT_S = 120.0
_MATCHER_MIN_RATE = 100.0
"""Slower than this (input messages/s) counts as a failure, not a result."""
_LATENCY_PHASE_S = 10.0
_FLOOR_RATE = 20.0
"""Requests/s of the floor phase: each request finds the worker idle, so its latency
is the path's own (three Kafka hops), with no queueing behind other work."""
_LATENCY_DRAIN_TIMEOUT_S = 30.0
_WORKER_STOP_TIMEOUT_S = 20.0
_POLL_S = 0.25
_CPU_SAMPLE_S = 0.1
_BATCH_RECORDS = 5_000
_OVERSUBSCRIBED = 0.10
"""Run-queue share of the worker above which the report warns about a busy machine."""
_FALLING_BEHIND_MS = 250.0
"""A late-phase median latency above this, and twice the early one, means a backlog."""
# A match record's changelog key as Faust writes it (a JSON string), less its closing quote.
_MATCH_KEY_JSON = dumps(kind_prefix("m"))[:-1]
# Two bounds of the worker's collection histogram (`COLLECTION_BUCKETS_S`): the report
# counts the collections longer than each.
_LONG_COLLECTION_S = 0.01
_VERY_LONG_COLLECTION_S = 0.05


class BenchError(RuntimeError):
    """A phase did not finish in time or the worker died."""


@dataclass(frozen=True)
class Collections:
    """The worker's garbage collections (`matchstream_gc_pause_seconds`, all generations)."""

    count: float = 0.0
    seconds: float = 0.0
    over_10_ms: float = 0.0
    over_50_ms: float = 0.0

    def __sub__(self, earlier: Collections) -> Collections:
        return Collections(
            self.count - earlier.count,
            self.seconds - earlier.seconds,
            self.over_10_ms - earlier.over_10_ms,
            self.over_50_ms - earlier.over_50_ms,
        )

    @classmethod
    def parse(cls, exposition: str) -> Collections:
        """The counts in a `/metrics` page; buckets count the collections up to their bound."""
        count = seconds = within_10_ms = within_50_ms = 0.0
        for family in text_string_to_metric_families(exposition):
            if family.name != "matchstream_gc_pause_seconds":
                continue
            for sample in family.samples:
                bound = sample.labels.get("le")
                if sample.name.endswith("_count"):
                    count += sample.value
                elif sample.name.endswith("_sum"):
                    seconds += sample.value
                elif bound is not None and float(bound) == _LONG_COLLECTION_S:
                    within_10_ms += sample.value
                elif bound is not None and float(bound) == _VERY_LONG_COLLECTION_S:
                    within_50_ms += sample.value
        return cls(count, seconds, count - within_10_ms, count - within_50_ms)

    def cell(self) -> str:
        return (
            f"{self.count:,.0f} in {self.seconds * 1_000:,.0f} ms, "
            f"{self.over_10_ms:.0f} over 10 ms, {self.over_50_ms:.0f} over 50 ms"
        )


@dataclass
class LatencyRun:
    """One paced phase: requests sent `rate` per second into fresh pools, two per pool."""

    rate: float = 0.0
    expected: int = 0
    """Matches the phase waits for: one per pool."""
    latencies_ms: list[float] = field(default_factory=list)
    """In the order the matches arrived."""
    legs_ms: list[tuple[float, float, float, float]] = field(default_factory=list)
    """Each latency split at the match's decision (`created_at`), the append of its
    record to the state changelog and the relay's `match.found` (record timestamps);
    wall clock, 1 ms resolution."""
    cpu_s_per_1k: float = 0.0
    runqueue_share: float = 0.0
    """Share of the phase the worker's main thread was runnable but not running."""
    client_cpu_s_per_1k: float = 0.0
    """This process's own CPU (sending, receiving, timing) per 1,000 requests: the
    bench shares the cores with the worker and the broker."""
    collections: Collections | None = None
    """The worker's garbage collections during the phase; None if its metrics were not read."""

    def percentiles(self) -> tuple[float, float]:
        ordered = sorted(self.latencies_ms)
        return _percentile(ordered, 50), _percentile(ordered, 99)

    def missing(self) -> int:
        return self.expected - len(self.latencies_ms)

    def legs(self) -> str:
        if not self.legs_ms:
            return "-"
        legs = [sorted(leg) for leg in zip(*self.legs_ms, strict=True)]
        p50 = " / ".join(f"{_percentile(leg, 50):.1f}" for leg in legs)
        p99 = " / ".join(f"{_percentile(leg, 99):.1f}" for leg in legs)
        return f"{p50} ms; {p99} ms"


@dataclass
class BenchReport:
    """Every number the bench prints."""

    requests: int
    pools: int
    partitions: int
    event_loop: str
    """The worker's (`MATCHSTREAM_EVENT_LOOP`)."""
    fixed_latency_rate: float | None = None
    """The latency phases' rate when given (`--latency-rate`); else half the matcher's."""
    relay_messages: int = 0
    relay_rate: float = 0.0
    relay_cpu_s: float = 0.0
    """CPU seconds of this process (the relay alone runs in it then) over the relay window."""
    matcher_messages: int = 0
    matcher_window_s: float = 0.0
    matcher_rate: float = 0.0
    changelog_records: int = 0
    output_records: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    paced: LatencyRun = field(default_factory=LatencyRun)
    """At half the matcher's saturating rate."""
    isolated: LatencyRun | None = None
    """The same rate with the worker on a core of its own; None on a single core."""
    floor: LatencyRun = field(default_factory=LatencyRun)
    """At `_FLOOR_RATE`."""
    cpu_s_per_1k: float = 0.0
    cpu_share: float = 0.0
    """Worker CPU seconds per second of the matcher window."""
    runqueue_share: float = 0.0
    """Share of the matcher window the worker's main thread was runnable but not running."""
    peak_rss_mib: float = 0.0

    def _relay_cpu_per_record(self) -> float:
        return self.relay_cpu_s / max(2 * self.relay_messages, 1)

    def _per_input(self, records: int) -> float:
        return records / max(self.matcher_messages, 1)

    def _records_per_input(self) -> float:
        return (
            1 + 2 * self._per_input(self.changelog_records) + self._per_input(self.output_records)
        )

    def _records_breakdown(self) -> str:
        changelog = self._per_input(self.changelog_records)
        outputs = self._per_input(self.output_records)
        return f"{self._records_per_input():.2f} = 1 + 2 x {changelog:.2f} + {outputs:.2f}"

    def _io_ceiling(self) -> float:
        """Input rate at which the Kafka records alone would keep one core busy.

        The worker is one Python thread; the bare relay is the leanest client path
        to each record, so no design with as many records per input can go faster.
        """
        return 1 / max(self._records_per_input() * self._relay_cpu_per_record(), 1e-9)

    def _isolated_sentence(self) -> str:
        run = self.isolated
        if run is None:
            return ""
        return (
            f"With a core of its own, at the same rate: worker CPU {run.cpu_s_per_1k:.2f} s "
            f"per 1,000 requests; its main thread waited for that core "
            f"{run.runqueue_share:.0%} of the phase (the worker's other threads share it). "
        )

    def markdown(self) -> str:
        """The report as a machine line and a Markdown table."""
        outcomes = ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items()))
        rows = [
            (
                "bare relay (aiokafka consume -> produce, acks=all)",
                f"{self.relay_rate:,.0f} msgs/s",
            ),
            (
                "matcher (worker; every match.request and pool.command message)",
                f"{self.matcher_rate:,.0f} requests/s",
            ),
            ("ratio matcher / bare relay", f"{self.matcher_rate / self.relay_rate:.2f}"),
            (
                "CPU per record moved by the bare relay (one read, one write per message)",
                f"{self._relay_cpu_per_record() * 1e6:.1f} us",
            ),
            (
                "Kafka records moved per input message: input + 2 x changelog + outputs",
                self._records_breakdown(),
            ),
            (
                "input messages/s one core could move at the bare relay's CPU per record",
                f"{self._io_ceiling():,.0f}/s",
            ),
            (
                f"latency p50 / p99 at {self.paced.rate:,.0f} requests/s",
                _latency_cell(self.paced),
            ),
            (
                "latency legs p50 / p99: request > decision > changelog > match.found > consumed",
                self.paced.legs(),
            ),
            (
                "worker on a core of its own, broker and bench on the others: latency and legs"
                + (f" at {self.isolated.rate:,.0f}/s" if self.isolated else ""),
                f"{_latency_cell(self.isolated)}; {self.isolated.legs()}"
                if self.isolated
                else "- (one core)",
            ),
            (
                f"floor, worker idle between requests: latency and legs at {self.floor.rate:.0f}/s",
                f"{_latency_cell(self.floor)}; {self.floor.legs()}",
            ),
            (
                "worker's garbage collections (they stop its Python code): paced / own core / floor",
                " / ".join(
                    run.collections.cell() if run and run.collections else "-"
                    for run in (self.paced, self.isolated, self.floor)
                ),
            ),
            ("worker CPU per 1,000 requests (matcher window)", f"{self.cpu_s_per_1k:.2f} s"),
            ("worker peak RSS", f"{self.peak_rss_mib:,.0f} MiB"),
        ]
        machine = (
            f"{machine_line()}; "
            f"{self.requests:,} requests over {self.pools:,} pools, "
            f"{self.partitions} partitions; worker event loop {self.event_loop}"
        )
        window = (
            f"Matcher window: {self.matcher_messages:,} input messages in "
            f"{self.matcher_window_s:.2f} s; request outcomes: {outcomes or 'none'}. "
            f"The worker kept {self.cpu_share:.0%} of a core busy and waited for a free "
            f"core {self.runqueue_share:.0%} of the window."
        )
        if self.runqueue_share > _OVERSUBSCRIBED:
            window += (
                " The cores were oversubscribed (broker, bench and other processes), so "
                "the matcher rows understate what the worker does on a quiet machine."
            )
        latencies = self.paced.latencies_ms
        quarter = max(1, len(latencies) // 4)
        early = _percentile(sorted(latencies[:quarter]), 50)
        late = _percentile(sorted(latencies[-quarter:]), 50)
        pace = (
            f"a fixed {self.paced.rate:,.0f} requests/s (--latency-rate)"
            if self.fixed_latency_rate
            else "half the matcher's rate"
        )
        paced = (
            f"Latency phase, paced at {pace}: {self.paced.expected:,} pairs; worker CPU "
            f"{self.paced.cpu_s_per_1k:.2f} s per 1,000 requests, and its main thread waited "
            f"for a free core {self.paced.runqueue_share:.0%} of the phase; this bench "
            f"process used {self.paced.client_cpu_s_per_1k:.2f} s of CPU per 1,000 requests "
            f"sending and timing them; median latency "
            f"{early:.0f} ms in the first quarter, {late:.0f} ms in the last. "
            + self._isolated_sentence()
            + f"Floor phase: {self.floor.expected:,} pairs; worker CPU "
            f"{self.floor.cpu_s_per_1k:.2f} s per 1,000 requests (its idle work included)."
        )
        if late > 2 * early and late > _FALLING_BEHIND_MS:
            paced += (
                " The worker fell behind the paced input, so the latency rows include "
                "queueing: paced input arrives in small batches, which cost the worker "
                "more per message than the backlog of the matcher window did."
            )
        lines = [
            machine,
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {name} | {value} |" for name, value in rows),
            "",
            window,
            paced,
        ]
        return "\n".join(lines)


def run_bench(
    settings: Settings, *, requests: int, pools: int, latency_rate: float | None = None
) -> int:
    """Measure a bare relay and the matcher on a fresh local broker and print a table.

    The broker in `settings` is not used: every run starts its own, so numbers
    never include someone else's traffic or leftover topics.

    Args:
        settings: data dir (the run's temporary directory is made inside it),
            partitions, jar cache; broker, topic prefix, app id and web port are
            replaced for the run.
        requests: workload requests of the throughput phases.
        pools: pools the workload spreads them over.
        latency_rate: requests/s of the latency phases; None paces them at half the
            matcher's measured rate.

    Returns:
        0 on success, 1 when a phase failed (the reason is printed).

    Example:
        >>> run_bench(Settings(), requests=2_000, pools=40)  # doctest: +SKIP
        0
    """
    check_workload_size(requests=requests, pools=pools)
    if latency_rate is not None and latency_rate <= 0:
        raise ValueError(f"latency_rate must be positive, got {latency_rate}")
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    report = BenchReport(
        requests=requests,
        pools=pools,
        partitions=settings.topic_partitions,
        event_loop=settings.event_loop,
        fixed_latency_rate=latency_rate,
    )
    workload = Workload(requests=requests, pools=pools, run_id=f"b{run}")
    if not measure_on_own_broker(
        settings, name="stream", run=run, measure=lambda bench: _bench(bench, workload, report)
    ):
        return 1
    print(report.markdown())
    log.info("bench.done elapsed_s=%.1f", time.monotonic() - started)
    return 0


def check_workload_size(*, requests: int, pools: int) -> None:
    """Raise ValueError unless the workload has a pair to match and a pool to match it in."""
    if requests < 2 or pools < 1:
        raise ValueError(f"need requests >= 2 and pools >= 1, got {requests} and {pools}")


def measure_on_own_broker(
    settings: Settings,
    *,
    name: str,
    run: str,
    measure: Callable[[Settings], Coroutine[Any, Any, None]],
    failures: tuple[type[Exception], ...] = (BenchError,),
) -> bool:
    """Run `measure` with the settings of a broker of its own (`own_broker`).

    `name` is the scenario's: it names the broker's directory and the run's app id.

    Returns:
        True when it finished; False when it raised one of `failures`, a broker that
        would not start or a timeout, whose reason is then logged and printed.
    """
    caught: tuple[type[Exception], ...] = (*failures, LocalKafkaError, TimeoutError)
    try:
        with own_broker(settings, name=name, run=run) as bench:
            asyncio.run(measure(bench))
    except caught as exc:
        log.error("bench.failed scenario=%s error=%r", name, exc)
        print(f"{name} bench failed: {exc or type(exc).__name__}", file=sys.stderr)
        return False
    return True


@contextmanager
def own_broker(settings: Settings, *, name: str, run: str) -> Iterator[Settings]:
    """A started single-node broker in a temporary directory, and settings for it alone.

    Topic prefix, app id, data dir and web port are the run's own; the broker is
    stopped and its directory removed afterwards.

    Raises:
        LocalKafkaError: the broker did not start.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=settings.data_dir) as tmp:
        home = Path(tmp)
        kafka = LocalKafka(port=free_port(), data_dir=home, cache_dir=settings.kafka_cache_dir)
        try:
            kafka.start(timeout_s=_BROKER_START_TIMEOUT_S)
            yield settings.model_copy(
                update={
                    "broker": f"kafka://127.0.0.1:{kafka.port}",
                    "topic_prefix": f"bench-{run}-",
                    "app_id": f"matchstream-{name}-{run}",
                    "data_dir": home,
                    "web_port": free_port(),
                }
            )
        finally:
            kafka.stop()


async def _bench(settings: Settings, workload: Workload, report: BenchReport) -> None:
    messages = list(workload.messages())
    report.relay_messages, report.relay_rate, report.relay_cpu_s = await bare_relay(
        settings, [message for message in messages if message.topic_kind == "request"]
    )
    log.info(
        "bench.relay messages=%d rate=%.0f cpu_s=%.2f",
        report.relay_messages,
        report.relay_rate,
        report.relay_cpu_s,
    )

    await asyncio.wait_for(ensure_topics(settings), _CLIENT_TIMEOUT_S)
    await asyncio.wait_for(
        produce_messages(settings, messages, total=len(messages), progress=False),
        _CLIENT_TIMEOUT_S + len(messages) / 1_000,
    )
    worker = SampledWorker(settings)
    worker.start()
    log.info("bench.worker.started pid=%d log=%s", worker.pid, worker.log_path)
    try:
        sampler = asyncio.create_task(worker.sample_cpu())
        try:
            await _measure_matcher(settings, worker, workload, len(messages), report)
            report.paced.rate = report.fixed_latency_rate or max(
                10.0, round(report.matcher_rate / 2)
            )
            await _measure_latency(settings, worker, report.paced)
            others = [os.getpid(), *_broker_pids(settings)]
            with worker_on_own_core(worker.pid, others) as core:
                if core is not None:
                    report.isolated = LatencyRun(rate=report.paced.rate)
                    await _measure_latency(settings, worker, report.isolated)
            report.floor.rate = _FLOOR_RATE
            await _measure_latency(settings, worker, report.floor)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        report.peak_rss_mib = worker.peak_rss_mib()
    finally:
        await asyncio.to_thread(worker.stop, _WORKER_STOP_TIMEOUT_S)


def _broker_pids(settings: Settings) -> list[int]:
    """The JVM of the run's broker (`own_broker` put its files in the run's data dir)."""
    kafka = LocalKafka(
        port=settings.broker_port, data_dir=settings.data_dir, cache_dir=settings.kafka_cache_dir
    )
    return kafka.running_pids()


# -- phase 1: the bare relay -----------------------------------------------------------


async def bare_relay(
    settings: Settings, messages: Sequence[WorkloadMessage]
) -> tuple[int, float, float]:
    """Produce `messages`, then time a consume -> produce -> commit loop over them.

    Returns the messages relayed, their rate and this process's CPU seconds meanwhile.
    """
    relay_settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}relay-"})
    names = TopicNames.with_prefix(relay_settings.topic_prefix)
    await asyncio.wait_for(ensure_topics(relay_settings), _CLIENT_TIMEOUT_S)
    await asyncio.wait_for(
        produce_messages(relay_settings, messages, total=len(messages), progress=False),
        _CLIENT_TIMEOUT_S + len(messages) / 1_000,
    )
    hosts = ",".join(settings.broker_hosts)
    # The same client settings as streams.relay.OutputRelay.
    producer = AIOKafkaProducer(
        bootstrap_servers=hosts, acks="all", linger_ms=2, enable_idempotence=True
    )
    consumer = AIOKafkaConsumer(
        names.request,
        bootstrap_servers=hosts,
        group_id=f"{settings.app_id}-bare-relay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    await asyncio.wait_for(producer.start(), _CLIENT_TIMEOUT_S)
    try:
        await asyncio.wait_for(consumer.start(), _CLIENT_TIMEOUT_S)
        try:
            return await asyncio.wait_for(
                _relay_all(consumer, producer, names.status, len(messages)), _RELAY_TIMEOUT_S
            )
        finally:
            await consumer.stop()
    finally:
        await producer.stop()


async def _relay_all(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, output: str, total: int
) -> tuple[int, float, float]:
    done = 0
    first: float | None = None
    first_cpu = 0.0
    while done < total:
        batches = await consumer.getmany(timeout_ms=200, max_records=_BATCH_RECORDS)
        if not batches:
            continue
        if first is None:
            first, first_cpu = time.monotonic(), time.process_time()
        pending = []
        for records in batches.values():
            for record in records:
                pending.append(await producer.send(output, value=record.value, key=record.key))
        await asyncio.gather(*pending)
        await consumer.commit()
        done += len(pending)
    assert first is not None
    cpu = time.process_time() - first_cpu
    return done, done / max(time.monotonic() - first, 1e-6), cpu


# -- phase 2: the matcher --------------------------------------------------------------


async def _measure_matcher(
    settings: Settings,
    worker: SampledWorker,
    workload: Workload,
    total: int,
    report: BenchReport,
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    hosts = ",".join(settings.broker_hosts)
    async with Offsets(hosts) as offsets:
        inputs = await offsets.ends(names.request, names.command)
        await worker.wait_until(
            lambda: offsets.committed(settings.app_id, inputs),
            _WORKER_FIRST_COMMIT_TIMEOUT_S + total / _MATCHER_MIN_RATE,
            "the matcher to commit the end of its input topics",
        )
        changelog = await offsets.ends(_changelog_topic(settings))
        await worker.wait_until(
            lambda: offsets.committed(f"{settings.app_id}-relay", changelog),
            _CLIENT_TIMEOUT_S,
            "the output relay to commit the end of the state changelog",
        )
        outputs = await offsets.ends(names.status, names.found, names.dlq)
    first_ms, last_ms, outcomes = await _read_outputs(hosts, outputs, names)
    window = (last_ms - first_ms) / 1_000
    report.matcher_messages = total
    report.matcher_window_s = window
    report.matcher_rate = total / max(window, 1e-3)
    report.changelog_records = sum(changelog.values())
    report.output_records = sum(outputs.values())
    report.outcomes = outcomes
    cpu, waited = worker.cpu_between(first_ms / 1_000, last_ms / 1_000)
    report.cpu_s_per_1k = cpu / (workload.requests / 1_000)
    report.cpu_share = cpu / max(window, 1e-3)
    report.runqueue_share = waited / max(window, 1e-3)
    log.info(
        "bench.matcher messages=%d window_s=%.2f rate=%.0f cpu_s=%.2f runqueue_s=%.2f",
        total,
        window,
        report.matcher_rate,
        cpu,
        waited,
    )


def _changelog_topic(settings: Settings) -> str:
    # Faust names a table's changelog `<app id>-<table name>-changelog`.
    return f"{settings.app_id}-state-changelog"


class Offsets:
    """End offsets of topics and committed offsets of consumer groups."""

    def __init__(self, hosts: str) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=hosts)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=hosts, group_id=None)

    async def __aenter__(self) -> Self:
        await asyncio.wait_for(self._admin.start(), _CLIENT_TIMEOUT_S)
        try:
            await asyncio.wait_for(self._consumer.start(), _CLIENT_TIMEOUT_S)
        except BaseException:
            await self._admin.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def partitions(self, *topics: str) -> list[TopicPartition]:
        """Every partition of `topics`."""
        described = await asyncio.wait_for(
            self._admin.describe_topics(list(topics)), _CLIENT_TIMEOUT_S
        )
        return [
            TopicPartition(item["topic"], part["partition"])
            for item in described
            for part in item["partitions"]
        ]

    async def ends(self, *topics: str) -> dict[TopicPartition, int]:
        """End offsets of every partition of `topics`, empty partitions left out."""
        partitions = await self.partitions(*topics)
        ends = await asyncio.wait_for(self._consumer.end_offsets(partitions), _CLIENT_TIMEOUT_S)
        return {tp: offset for tp, offset in ends.items() if offset > 0}

    async def committed(self, group: str, targets: dict[TopicPartition, int]) -> bool:
        """Whether `group` has committed at least `targets`."""
        try:
            committed = await asyncio.wait_for(
                self._admin.list_consumer_group_offsets(group), _CLIENT_TIMEOUT_S
            )
        except KafkaError as exc:
            # A group that has not committed yet may have no coordinator either.
            log.debug("bench.offsets.unavailable group=%s error=%r", group, exc)
            return False
        return all(
            tp in committed and committed[tp].offset >= offset for tp, offset in targets.items()
        )


async def read_range(
    hosts: str,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    take: Callable[[TopicPartition, ConsumerRecord[bytes, bytes]], None],
) -> None:
    """Hand every record from `starts` (0 if absent) up to `ends` to `take`."""
    remaining = {tp: end for tp, end in ends.items() if end > starts.get(tp, 0)}
    if not remaining:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=hosts, group_id=None, enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), _CLIENT_TIMEOUT_S)
    try:
        consumer.assign(list(remaining))
        for tp in remaining:
            consumer.seek(tp, starts.get(tp, 0))

        async def drain() -> None:
            while remaining:
                batches = await consumer.getmany(timeout_ms=500, max_records=_BATCH_RECORDS)
                for tp, records in batches.items():
                    for record in records:
                        if record.offset < ends[tp]:
                            take(tp, record)
                    if records and records[-1].offset + 1 >= ends[tp]:
                        remaining.pop(tp, None)

        await asyncio.wait_for(drain(), _CLIENT_TIMEOUT_S)
    finally:
        await consumer.stop()


async def _read_outputs(
    hosts: str, ends: dict[TopicPartition, int], names: TopicNames
) -> tuple[int, int, Counter[str]]:
    """First and last record timestamps (ms) up to `ends`, and each request's last status."""
    first_ms, last_ms = sys.maxsize, 0
    last_status: dict[str, str] = {}
    dlq = 0

    def take(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        nonlocal first_ms, last_ms, dlq
        first_ms = min(first_ms, record.timestamp)
        last_ms = max(last_ms, record.timestamp)
        if tp.topic == names.dlq:
            dlq += 1
        elif tp.topic == names.status:
            event = loads(record.value)
            if event.get("about") is None:
                last_status[event["request_id"]] = event["status"]

    await read_range(hosts, {}, ends, take)
    if last_ms == 0:
        raise BenchError("the worker emitted no output")
    outcomes: Counter[str] = Counter(
        status if status in TERMINAL_STATUSES else f"still {status}"
        for status in last_status.values()
    )
    if dlq:
        outcomes["dlq"] = dlq
    return first_ms, last_ms, outcomes


# -- phase 3: latency ------------------------------------------------------------------


async def _measure_latency(settings: Settings, worker: SampledWorker, run: LatencyRun) -> None:
    """Send `run.rate` requests/s for `_LATENCY_PHASE_S` and time each pair to its match."""
    names = TopicNames.with_prefix(settings.topic_prefix)
    hosts = ",".join(settings.broker_hosts)
    rate = run.rate
    count = max(20, int(rate * _LATENCY_PHASE_S) // 2 * 2)
    run.expected = count // 2
    changelog = _changelog_topic(settings)
    async with Offsets(hosts) as offsets:
        ends = await offsets.ends(names.found, changelog)
        partitions = await offsets.partitions(names.found)
        changelog_partitions = await offsets.partitions(changelog)
    sent: dict[str, tuple[float, float]] = {}
    found: list[tuple[str, float, float, float, float]] = []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=hosts, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    producer = AIOKafkaProducer(bootstrap_servers=hosts, acks="all", linger_ms=0)
    await asyncio.wait_for(consumer.start(), _CLIENT_TIMEOUT_S)
    try:
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, ends.get(tp, 0))
        await asyncio.wait_for(producer.start(), _CLIENT_TIMEOUT_S)
        receiver = asyncio.create_task(_receive(consumer, sent, found, run))
        collections_before = await worker.collections()
        started, client_cpu_started = time.time(), time.process_time()
        try:
            await asyncio.wait_for(
                _send_paced(producer, names.request, rate, count, sent),
                _LATENCY_PHASE_S * 2 + _CLIENT_TIMEOUT_S,
            )
            await worker.wait_until(
                lambda: _all_received(run),
                _LATENCY_DRAIN_TIMEOUT_S,
                "the latency phase's matches",
                fail=False,
            )
            ended = time.time()
            cpu, waited = worker.cpu_between(started, ended)
            run.cpu_s_per_1k = cpu / (count / 1_000)
            run.runqueue_share = waited / max(ended - started, 1e-3)
            run.client_cpu_s_per_1k = (time.process_time() - client_cpu_started) / (count / 1_000)
            collections_after = await worker.collections()
            if collections_before is not None and collections_after is not None:
                run.collections = collections_after - collections_before
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            await producer.stop()
    finally:
        await consumer.stop()
    # Read once the phase is over: the changelog leg is timed by record timestamps, set
    # when the worker's Kafka client took each record, and reading the changelog during
    # the phase took cores from the worker.
    appended = await _final_match_appends(
        hosts, {tp: ends.get(tp, 0) for tp in changelog_partitions}
    )
    run.legs_ms = [
        (
            (decided - sent_at) * 1_000,
            (appended[match_id] - decided) * 1_000,
            (produced - appended[match_id]) * 1_000,
            (received - produced) * 1_000,
        )
        for match_id, sent_at, decided, produced, received in found
        if match_id in appended
    ]
    log.info(
        "bench.latency rate=%.0f matches=%d/%d p50_ms=%.1f p99_ms=%.1f",
        rate,
        len(run.latencies_ms),
        run.expected,
        *run.percentiles(),
    )


async def _send_paced(
    producer: AIOKafkaProducer,
    topic: str,
    rate: float,
    count: int,
    sent: dict[str, tuple[float, float]],
) -> None:
    """Send `count` requests `1/rate` apart; every second one completes its pool's pair."""
    run = uuid.uuid4().hex[:8]
    started = time.monotonic()
    for number in range(count):
        delay = started + number / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pool_id = f"lat-{run}-{number // 2}"
        request_id = f"lat-{run}-r-{number}"
        request = {
            "request_id": request_id,
            "pool_id": pool_id,
            "user_id": f"lat-{run}-u-{number}",
            "created_at": utc_now_iso(),
        }
        if number % 2:
            sent[request_id] = time.monotonic(), time.time()
        await producer.send(topic, value=dumps(request), key=pool_id.encode())
    await asyncio.wait_for(producer.flush(), _CLIENT_TIMEOUT_S)


async def _receive(
    consumer: AIOKafkaConsumer,
    sent: dict[str, tuple[float, float]],
    found: list[tuple[str, float, float, float, float]],
    run: LatencyRun,
) -> None:
    """Time each paced match on arrival."""
    while True:
        batches = await consumer.getmany(timeout_ms=200)
        now, now_wall = time.monotonic(), time.time()
        for records in batches.values():
            for record in records:
                value = loads(record.value)
                decided = datetime.fromisoformat(value["created_at"]).timestamp()
                for member in value["members"]:
                    at = sent.pop(member["request_id"], None)
                    if at is not None:
                        run.latencies_ms.append((now - at[0]) * 1_000)
                        found.append(
                            (value["match_id"], at[1], decided, record.timestamp / 1_000, now_wall)
                        )


async def _final_match_appends(hosts: str, starts: dict[TopicPartition, int]) -> dict[str, float]:
    """match_id -> record timestamp (s) of the match's final record, changelog from `starts`."""
    async with Offsets(hosts) as offsets:
        ends = await offsets.ends(*{tp.topic for tp in starts})
    appended: dict[str, float] = {}

    def take(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        # Decoded only for match records: most of the changelog is requests.
        if (record.key or b"").startswith(_MATCH_KEY_JSON):
            value = loads(record.value)
            if value.get("state") == "final":
                appended.setdefault(value["found"]["match_id"], record.timestamp / 1_000)

    await read_range(hosts, starts, ends, take)
    return appended


async def _all_received(run: LatencyRun) -> bool:
    return len(run.latencies_ms) >= run.expected


def _latency_cell(run: LatencyRun) -> str:
    p50, p99 = run.percentiles()
    missing = run.missing()
    return f"{p50:.1f} / {p99:.1f} ms" + (f" ({missing} matches missing)" if missing else "")


def _percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending sequence; 0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[int(rank) - 1]


# -- the worker process ----------------------------------------------------------------


class SampledWorker(WorkerProcess):
    """A worker process whose CPU time is sampled while the bench runs."""

    def __init__(
        self, settings: Settings, *, arguments: Sequence[str] = MATCHSTREAM_WORKER
    ) -> None:
        super().__init__(settings, settings.data_dir / "worker.log", arguments=arguments)
        self._times: list[float] = []
        self._samples: list[tuple[float, float]] = []
        """(CPU seconds, seconds spent runnable but waiting for a CPU) at `_times`."""
        self._tick = os.sysconf("SC_CLK_TCK")

    def _check_alive(self) -> None:
        if not self.running:
            raise BenchError(f"the worker exited; last lines:\n{self._log_tail()}")

    async def wait_until(
        self,
        condition: Callable[[], Awaitable[bool]],
        timeout_s: float,
        what: str,
        *,
        fail: bool = True,
    ) -> None:
        """Poll `condition` while the worker lives, until it is true or time is up.

        Raises:
            BenchError: the worker died, or time ran out and `fail` is set.
        """

        async def poll() -> None:
            while True:
                self._check_alive()
                if await condition():
                    return
                await asyncio.sleep(_POLL_S)

        try:
            await asyncio.wait_for(poll(), timeout_s)
        except TimeoutError:
            if fail:
                raise BenchError(
                    f"timed out after {timeout_s:.0f}s waiting for {what}; worker log "
                    f"tail:\n{self._log_tail()}"
                ) from None
            log.warning("bench.timeout waiting_for=%r timeout_s=%.0f", what, timeout_s)

    async def sample_cpu(self) -> None:
        """Record the worker's CPU and run-queue time every 100 ms until cancelled."""
        while True:
            sample = self._read_cpu()
            if sample is not None:
                self._times.append(time.time())
                self._samples.append(sample)
            await asyncio.sleep(_CPU_SAMPLE_S)

    def _read_cpu(self) -> tuple[float, float] | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            # The main thread's; Faust does all its work on the event loop thread.
            schedstat = Path(f"/proc/{self.pid}/schedstat").read_text().split()
        except (OSError, IndexError):
            return None
        # Fields 14 and 15 of proc(5), utime and stime; field 3 is stat[0] here.
        cpu = (int(stat[11]) + int(stat[12])) / self._tick
        return cpu, int(schedstat[1]) / 1e9

    async def collections(self) -> Collections | None:
        """The worker's garbage collections so far, from its `/metrics`; None if unreadable."""
        url = f"http://127.0.0.1:{self.settings.web_port}/metrics"

        def read() -> str:
            with urllib.request.urlopen(url, timeout=_CLIENT_TIMEOUT_S) as response:
                return str(response.read().decode())

        try:
            return Collections.parse(await asyncio.to_thread(read))
        except OSError as error:
            log.warning("bench.metrics unreadable url=%s error=%s", url, error)
            return None

    def cpu_between(self, start: float, end: float) -> tuple[float, float]:
        """CPU seconds used and seconds spent waiting for a CPU between two wall-clock moments."""
        (cpu_end, wait_end), (cpu_start, wait_start) = self._at(end), self._at(start)
        return cpu_end - cpu_start, wait_end - wait_start

    def _at(self, moment: float) -> tuple[float, float]:
        """The counters at `moment`, interpolated between the nearest samples."""
        times, samples = self._times, self._samples
        if not samples:
            return 0.0, 0.0
        index = bisect.bisect_left(times, moment)
        if index == 0:
            return samples[0]
        if index == len(samples):
            return samples[-1]
        share = (moment - times[index - 1]) / max(times[index] - times[index - 1], 1e-9)
        before, after = samples[index - 1], samples[index]
        return (
            before[0] + (after[0] - before[0]) * share,
            before[1] + (after[1] - before[1]) * share,
        )

    def peak_rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def machine_line() -> str:
    """The machine's cores, RAM, Python and Kafka, for the first line of a report."""
    return (
        f"Machine: {os.cpu_count()} cores, {_ram_gib():.1f} GiB RAM, "
        f"Python {platform.python_version()}, Kafka {KAFKA_VERSION} (local single node)"
    )


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0
