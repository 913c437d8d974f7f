"""`matchstream bench --scenario ceiling`: how close a Faust worker can come to the bare relay.

The stream scenario measures the matcher; this one measures what any matcher built
on Faust's agents could reach at best, next to the same bare relay
(`streams.bench.bare_relay`, the baseline of the throughput target). The same
`match.request` messages go through the probe worker of `streams.ceiling_probe`,
one design after the other, each with fresh topics and a fresh consumer group:
Faust's per-event path, the batched design with no matching at all, and the
batched design with the real engine.

A probe's window runs from the broker timestamp of its first output to that of its
last, once its group has committed the end of the input; rate = input messages /
window. CPU is the probe process's, sampled as the stream scenario samples the
worker's.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition

from streams.bench import (
    BenchError,
    Offsets,
    SampledWorker,
    bare_relay,
    check_workload_size,
    machine_line,
    measure_on_own_broker,
    read_range,
)
from streams.ceiling_probe import DESIGNS, OUTPUTS_PER_REQUEST
from streams.produce import produce_messages
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics, state_changelog
from streams.workload import Workload, WorkloadMessage

__all__ = ["CeilingReport", "ProbeRun", "run_ceiling_bench"]

log = logging.getLogger(__name__)

_CLIENT_TIMEOUT_S = 30.0
_PROBE_START_TIMEOUT_S = 120.0
_PROBE_MIN_RATE = 100.0
"""Slower than this (input messages/s) counts as a failure, not a result."""
_PROBE_STOP_TIMEOUT_S = 20.0

_DESIGN_LABELS = {
    "per-event": "Faust per event, no matching",
    "batched": "Faust batched, no matching",
    "batched-engine": "Faust batched, with the engine",
}


@dataclass(frozen=True)
class ProbeRun:
    """One design's figures."""

    design: str
    rate: float
    """Input messages per second."""
    cpu_s_per_1k: float
    """Probe CPU seconds per 1,000 input messages."""
    cpu_share: float
    """Share of one core the probe kept busy over its window."""
    outputs_per_input: float

    @property
    def full_core_rate(self) -> float:
        """Input messages per second if the probe kept one core busy all the time."""
        return 1_000 / max(self.cpu_s_per_1k, 1e-9)


@dataclass
class CeilingReport:
    """Everything `run_ceiling_bench` prints."""

    requests: int
    pools: int
    partitions: int
    relay_messages: int = 0
    relay_rate: float = 0.0
    relay_cpu_s: float = 0.0
    probes: list[ProbeRun] = field(default_factory=list)

    def markdown(self) -> str:
        relay_cpu_per_1k = self.relay_cpu_s / max(self.relay_messages / 1_000, 1e-9)
        lines = [
            (
                f"{machine_line()}; {self.relay_messages:,} `match.request` messages "
                f"({self.requests:,} requests over {self.pools:,} pools with their cancels "
                f"and duplicates), {self.partitions} partitions."
            ),
            "",
            (
                "| path | input messages/s | vs bare relay | CPU per 1,000 | core busy "
                "| vs bare relay at a full core | outputs per input |"
            ),
            "|---|---|---|---|---|---|---|",
            (
                f"| bare relay (baseline) | {self.relay_rate:,.0f} | 1.000 "
                f"| {relay_cpu_per_1k:.3f} s | - | - | 1.00 |"
            ),
        ]
        for probe in self.probes:
            lines.append(
                f"| {_DESIGN_LABELS[probe.design]} | {probe.rate:,.0f} "
                f"| {probe.rate / max(self.relay_rate, 1e-9):.3f} "
                f"| {probe.cpu_s_per_1k:.3f} s | {probe.cpu_share:.0%} "
                f"| {probe.full_core_rate / max(self.relay_rate, 1e-9):.3f} "
                f"| {probe.outputs_per_input:.2f} |"
            )
        lines += [
            "",
            (
                "The probes keep no table and run no output relay: their rates bound what "
                "a matcher on Faust's agents can reach (streams/ceiling_probe.py). A probe "
                "that keeps less than its core busy waits on Faust's input path; at a full "
                "core it would reach 1,000 / (its CPU per 1,000) input messages/s."
            ),
        ]
        return "\n".join(lines)


def run_ceiling_bench(settings: Settings, *, requests: int, pools: int) -> int:
    """Measure the bare relay and each probe design on a fresh local broker; print a table.

    Returns:
        0 on success, 1 when a phase failed (the reason is printed).

    Example:
        >>> run_ceiling_bench(Settings(), requests=20_000, pools=200)  # doctest: +SKIP
        0
    """
    check_workload_size(requests=requests, pools=pools)
    run = uuid.uuid4().hex[:8]
    report = CeilingReport(requests=requests, pools=pools, partitions=settings.topic_partitions)
    workload = Workload(requests=requests, pools=pools, run_id=f"c{run}")
    messages = [message for message in workload.messages() if message.topic_kind == "request"]
    if not measure_on_own_broker(
        settings,
        name="ceiling",
        run=run,
        measure=lambda bench: _bench(bench, messages, report),
    ):
        return 1
    print(report.markdown())
    return 0


async def _bench(
    settings: Settings, messages: list[WorkloadMessage], report: CeilingReport
) -> None:
    report.relay_messages, report.relay_rate, report.relay_cpu_s = await bare_relay(
        settings, messages
    )
    log.info("bench.ceiling.relay messages=%d rate=%.0f", report.relay_messages, report.relay_rate)
    for design in DESIGNS:
        probe = await _run_probe(settings, messages, design)
        log.info("bench.ceiling.probe design=%s rate=%.0f", design, probe.rate)
        report.probes.append(probe)


async def _run_probe(settings: Settings, messages: list[WorkloadMessage], design: str) -> ProbeRun:
    probe_settings = settings.model_copy(
        update={
            "topic_prefix": f"{settings.topic_prefix}{design}-",
            "app_id": f"{settings.app_id}-{design}",
            "data_dir": settings.data_dir / design,
        }
    )
    names = TopicNames.with_prefix(probe_settings.topic_prefix)
    await asyncio.wait_for(ensure_topics(probe_settings), _CLIENT_TIMEOUT_S)
    await asyncio.wait_for(
        produce_messages(probe_settings, messages, total=len(messages), progress=False),
        _CLIENT_TIMEOUT_S + len(messages) / 1_000,
    )
    # The contract's topics of the probe's own prefix: requests in, statuses out, and the
    # state changelog for its state records.
    worker = SampledWorker(
        probe_settings,
        arguments=(
            "-m",
            "streams.ceiling_probe",
            "--design",
            design,
            "--input",
            names.request,
            "--state",
            state_changelog(probe_settings),
            "--output",
            names.status,
        ),
    )
    worker.start()
    hosts = ",".join(settings.broker_hosts)
    try:
        sampler = asyncio.create_task(worker.sample_cpu())
        try:
            async with Offsets(hosts) as offsets:
                inputs = await offsets.ends(names.request)
                await worker.wait_until(
                    lambda: offsets.committed(probe_settings.app_id, inputs),
                    _PROBE_START_TIMEOUT_S + len(messages) / _PROBE_MIN_RATE,
                    f"the {design} probe to commit the end of its input",
                )
                outputs = await offsets.ends(names.status)
            first_ms, last_ms, count = await _output_window(hosts, outputs)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        window = max((last_ms - first_ms) / 1_000, 1e-3)
        cpu, _waited = worker.cpu_between(first_ms / 1_000, last_ms / 1_000)
    finally:
        await asyncio.to_thread(worker.stop, _PROBE_STOP_TIMEOUT_S)
    expected = len(messages) * OUTPUTS_PER_REQUEST
    if design != "batched-engine" and count != expected:
        raise BenchError(f"the {design} probe sent {count} outputs, expected {expected}")
    return ProbeRun(
        design=design,
        rate=len(messages) / window,
        cpu_s_per_1k=cpu / (len(messages) / 1_000),
        cpu_share=cpu / window,
        outputs_per_input=count / len(messages),
    )


async def _output_window(hosts: str, ends: dict[TopicPartition, int]) -> tuple[int, int, int]:
    """First and last broker timestamps (ms) of the outputs up to `ends`, and their count."""
    first_ms, last_ms, count = sys.maxsize, 0, 0

    def take(_tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        nonlocal first_ms, last_ms, count
        first_ms, last_ms = min(first_ms, record.timestamp), max(last_ms, record.timestamp)
        count += 1

    await read_range(hosts, {}, ends, take)
    if count == 0:
        raise BenchError("the probe emitted no output")
    return first_ms, last_ms, count
