"""Failure drills: crashes, a broker restart, scale-out and a burst, judged by the audit.

Every drill drives real worker processes only through the contract's topics, ends
every request (TTL as a backstop, then `close` on every pool), and then runs the
checks of `matchstream audit` over everything the topics hold. The processing
guarantee under test is at-least-once delivery applied once (docs/design.md,
"Processing guarantee"): outputs may repeat identically after a crash, never
conflict and never go missing. Each drill prints one `DRILL ...` line of figures.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from matching.audit import AuditReport
from streams.audit import audit_topics
from streams.kafka_local import LocalKafka
from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from streams.worker_process import WorkerProcess
from tests.support.drill import (
    Chaos,
    DrillFigures,
    DrillWorkload,
    MemoryWatch,
    StatusTracker,
    WorkerSet,
    drill_seed,
    env_int,
    log_counts,
    poll_until,
    produce_paced,
    read_topic,
    request_ids,
)
from tests.support.harness import isolated_settings, prepare_topics

pytestmark = pytest.mark.integration

CRASH_REQUESTS = env_int("DRILL_REQUESTS", 20_000)
SCALE_REQUESTS = env_int("DRILL_SCALE_REQUESTS", 10_000)
BURST_REQUESTS = env_int("DRILL_BURST_REQUESTS", 200_000)
BURST_RSS_LIMIT_MIB = 768
"""A worker's peak RSS must stay under this through the burst; see the burst drill."""


@pytest.fixture
def workers() -> Iterator[list[WorkerSet]]:
    """Collects the drill's `WorkerSet`s and stops every worker at the end."""
    sets: list[WorkerSet] = []
    yield sets
    for worker_set in sets:
        worker_set.stop_all()


def _print(
    capsys: pytest.CaptureFixture[str], figures: DrillFigures, timeline: Sequence[str] = ()
) -> None:
    with capsys.disabled():
        print(f"\n{figures.render()}")
        for line in timeline:
            print(f"  {line}")


def _assert_alive(*workers: WorkerProcess) -> None:
    dead = [worker for worker in workers if not worker.running]
    assert not dead, "a worker died on its own:\n" + "\n".join(
        worker.log_text()[-3000:] for worker in dead
    )


def _assert_audit(report: AuditReport, expected: int) -> None:
    """The contract holds and every request ended exactly once."""
    assert report.ok, report.render()
    assert report.requests == expected, report.render()
    assert report.terminal == expected, report.render()
    assert report.still_active == 0, report.render()


async def _end_everything(
    settings: Settings,
    workload: DrillWorkload,
    tracker: StatusTracker,
    expected: set[tuple[str, str]],
    *,
    timeout_s: float,
    workers: WorkerSet | None = None,
) -> None:
    """Wait until every request was processed, then close every pool and wait for the ends."""
    names = TopicNames.with_prefix(settings.topic_prefix)

    def missing(target: set[tuple[str, str]]) -> str:
        lost = expected - target
        evidence = "" if workers is None else _log_evidence(workers)
        return f"{len(lost)} requests, e.g. {sorted(lost)[:5]}{evidence}"

    await poll_until(
        lambda: tracker.healthy() and tracker.seen >= expected,
        timeout_s=timeout_s,
        what="a status for every request",
        details=lambda: missing(tracker.seen),
    )
    # Let answers to the last proposals land before closing, so confirmations end as
    # matches and declines rather than all as `pool_closed`.
    await _quiet(tracker, quiet_s=2.0, timeout_s=30.0)
    await produce_paced(settings, workload.close(names), rate=None)
    await poll_until(
        lambda: tracker.healthy() and tracker.ended >= expected,
        timeout_s=timeout_s,
        what="a terminal status for every request",
        details=lambda: missing(tracker.ended),
    )


def _log_evidence(workers: WorkerSet) -> str:
    """Worker log lines that explain missing statuses: skipped input, stalls, crashes."""
    signs = ("input gap", "hole accepted", "stalled", "Crashed", "applied partly")
    lines = [
        line
        for text in workers.logs()
        for line in text.splitlines()
        if any(sign in line for sign in signs)
    ]
    return "\nworker logs:\n" + "\n".join(lines[-20:]) if lines else ""


async def _quiet(tracker: StatusTracker, *, quiet_s: float, timeout_s: float) -> None:
    """Until no status arrived for `quiet_s` (or `timeout_s` passed: busy is no failure)."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        if tracker.statuses != last:
            last, since = tracker.statuses, time.monotonic()
        await asyncio.sleep(0.2)


async def test_crash_drill_kills_and_broker_restart_lose_nothing(
    own_broker: LocalKafka,
    workers: list[WorkerSet],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two workers; one is SIGKILLed and restarted three times, the broker once."""
    seed = drill_seed()
    rng = random.Random(seed)
    began = time.monotonic()
    settings = isolated_settings(own_broker.status().bootstrap, tmp_path / "data")
    await prepare_topics(settings)
    names = TopicNames.with_prefix(settings.topic_prefix)
    pools = 40
    workload = DrillWorkload(
        requests=CRASH_REQUESTS,
        pools=pools,
        seed=seed,
        run_id="crash",
        malformed=100,
        # Users come back about twice per pool: some requests supersede earlier ones.
        users_per_pool=max(2, CRASH_REQUESTS // pools // 2),
    )
    stream = list(workload.stream(names))
    expected = request_ids(stream)

    worker_set = WorkerSet(settings, tmp_path)
    workers.append(worker_set)
    victim, survivor = worker_set.add("a"), worker_set.add("b")
    for worker in (victim, survivor):
        worker.start()
    await asyncio.gather(victim.wait_ready(120), survivor.wait_ready(120))
    await produce_paced(settings, workload.configure(names), rate=None)
    await wait_until_consumed(settings, names.command, timeout_s=90)

    # The memory watch runs until the audit is done: workers keep working meanwhile.
    async with MemoryWatch(worker_set.workers) as memory:
        async with StatusTracker(settings, answer_proposals=True, seed=seed) as tracker:
            chaos = Chaos(rng=rng, memory=memory, broker=own_broker)
            events: list[tuple[str, object]] = [("kill", victim)] * 3 + [("broker", None)]
            rng.shuffle(events)
            # Spread the inputs over roughly the time the chaos takes, so that kills and
            # the broker restart hit a worker that is still receiving work.
            rate = len(stream) / 40.0
            async with asyncio.TaskGroup() as group:
                produced = group.create_task(produce_paced(settings, stream, rate=rate))
                group.create_task(chaos.run(events, pause_s=(1.0, 6.0)))
            await _end_everything(
                settings, workload, tracker, expected, timeout_s=300, workers=worker_set
            )
            answers = tracker.answers
        _assert_alive(victim, survivor)
        report = await asyncio.wait_for(audit_topics(settings), 180)
        dlq = await read_topic(settings, names.dlq)
    counts = log_counts(worker_set.logs())
    figures = DrillFigures(
        "crash",
        seed,
        {
            "requests": len(expected),
            "inputs": sum(produced.result().values()),
            "profile_updates": produced.result()["profile"],
            "kills": chaos.kills,
            "worker_restarts": chaos.worker_restarts,
            "broker_restarts": chaos.broker_restarts,
            "matches": report.matches,
            "accepts": answers.accepted,
            "declines": answers.declined,
            "silent": answers.silent,
            "identical_duplicates": report.duplicate_outputs,
            "violations": sum(len(v) for v in report.violations.values()),
            "dlq": len(dlq),
            "redelivered_skipped": counts["redelivered_skipped"],
            "stall_revivals": counts["stall_revivals"],
            "peak_rss": memory.render(),
            "elapsed_s": f"{time.monotonic() - began:.0f}",
        },
    )
    _print(capsys, figures, chaos.log)

    _assert_audit(report, len(expected))
    assert (chaos.kills, chaos.worker_restarts, chaos.broker_restarts) == (3, 3, 1)
    assert counts["unclean_restarts"] == 3, "each restart after SIGKILL rebuilds its tables"
    assert answers.failed == 0, "the drill's own confirmations must all have been sent"
    assert answers.accepted and answers.declined, "confirmations were not exercised"
    # Every malformed input is in the DLQ with a reason; a crash may repeat a record.
    records = [orjson.loads(record.value) for record in dlq]
    assert all(record["error"] for record in records)
    rejected = {(r["topic"], r["partition"], r["offset"]) for r in records}
    assert len(rejected) == 100, f"{len(rejected)} distinct DLQ records, {len(dlq)} in all"


async def test_scale_out_third_worker_joins_and_one_leaves(
    kafka_bootstrap: str,
    workers: list[WorkerSet],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two workers share the pools; a third joins mid-run and takes partitions; one leaves."""
    seed = drill_seed()
    began = time.monotonic()
    settings = isolated_settings(kafka_bootstrap, tmp_path / "data", partitions=6)
    await prepare_topics(settings)
    names = TopicNames.with_prefix(settings.topic_prefix)
    workload = DrillWorkload(requests=SCALE_REQUESTS, pools=30, seed=seed, run_id="scale")
    stream = list(workload.stream(names))
    expected = request_ids(stream)

    worker_set = WorkerSet(settings, tmp_path)
    workers.append(worker_set)
    first, second, joiner = worker_set.add("a"), worker_set.add("b"), worker_set.add("c")
    for worker in (first, second):
        worker.start()
    await asyncio.gather(first.wait_ready(120), second.wait_ready(120))
    await produce_paced(settings, workload.configure(names), rate=None)
    await wait_until_consumed(settings, names.command, timeout_s=90)

    async with MemoryWatch(worker_set.workers) as memory:
        async with StatusTracker(settings, answer_proposals=True, seed=seed) as tracker:

            async def change_membership() -> None:
                await poll_until(
                    lambda: len(tracker.seen) >= len(expected) // 4,
                    timeout_s=120,
                    what="a quarter of the requests processed",
                )
                joiner.start()
                await joiner.wait_ready(120)
                await poll_until(
                    lambda: _pools_taken(joiner.log_text()) > 0,
                    timeout_s=120,
                    what="the third worker to take partitions",
                    details=lambda: joiner.log_text()[-2000:],
                )
                await poll_until(
                    lambda: len(tracker.seen) >= len(expected) * 3 // 5,
                    timeout_s=120,
                    what="three fifths of the requests processed",
                )
                # A clean leave: SIGTERM, partitions handed over.
                await asyncio.to_thread(first.stop)

            async with asyncio.TaskGroup() as group:
                group.create_task(produce_paced(settings, stream, rate=len(stream) / 25.0))
                group.create_task(change_membership())
            await _end_everything(
                settings, workload, tracker, expected, timeout_s=180, workers=worker_set
            )

        assert not first.running
        _assert_alive(second, joiner)
        report = await asyncio.wait_for(audit_topics(settings), 120)
    figures = DrillFigures(
        "scale-out",
        seed,
        {
            "requests": len(expected),
            "workers": "2 -> 3 -> 2",
            "joiner_pools": _pools_taken(joiner.log_text()),
            "matches": report.matches,
            "identical_duplicates": report.duplicate_outputs,
            "violations": sum(len(v) for v in report.violations.values()),
            "peak_rss": memory.render(),
            "elapsed_s": f"{time.monotonic() - began:.0f}",
        },
    )
    _print(capsys, figures)
    _assert_audit(report, len(expected))


def _pools_taken(log_text: str) -> int:
    """The most pools a worker rebuilt from its assigned table partitions."""
    return max((int(n) for n in re.findall(r"engine rebuilt pools=(\d+)", log_text)), default=0)


async def test_burst_is_processed_with_bounded_memory(
    kafka_bootstrap: str,
    workers: list[WorkerSet],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every request is produced before the workers catch up; all end; RSS stays bounded.

    The bound: the matcher holds waiting requests and the ids of every request it
    has seen per pool, Faust buffers at most its stream buffer and a fetch per
    partition, so a backlog of any length must not grow a worker. 768 MiB is about
    five times the peak of a 20,000-request run and far below what 200,000 buffered
    requests (over 300 MiB of JSON alone) would add on top.
    """
    seed = drill_seed()
    began = time.monotonic()
    settings = isolated_settings(kafka_bootstrap, tmp_path / "data", partitions=4)
    await prepare_topics(settings)
    names = TopicNames.with_prefix(settings.topic_prefix)
    workload = DrillWorkload(
        requests=BURST_REQUESTS,
        pools=200,
        seed=seed,
        run_id="burst",
        cancel_ratio=0.01,
        duplicate_ratio=0.01,
        profile_ratio=0.0,
    )
    stream = list(workload.stream(names))
    expected = request_ids(stream)

    worker_set = WorkerSet(settings, tmp_path)
    workers.append(worker_set)
    pair = [worker_set.add("a"), worker_set.add("b")]
    for worker in pair:
        worker.start()
    await asyncio.gather(*(worker.wait_ready(120) for worker in pair))
    await produce_paced(settings, workload.configure(names), rate=None)
    await wait_until_consumed(settings, names.command, timeout_s=90)

    async with MemoryWatch(worker_set.workers) as memory:
        async with StatusTracker(settings, answer_proposals=True, seed=seed) as tracker:
            produce_began = time.monotonic()
            await produce_paced(settings, stream, rate=None, chunk=2_000)
            produce_s = time.monotonic() - produce_began
            backlog = len(expected) - len(tracker.seen)
            # With the whole backlog in Kafka: a worker that buffered it would show it here.
            rss_backlog_mib = memory.current_mib()
            await _end_everything(
                settings, workload, tracker, expected, timeout_s=900, workers=worker_set
            )
            drain_s = time.monotonic() - produce_began
        _assert_alive(*pair)
        report = await asyncio.wait_for(audit_topics(settings), 300)
    figures = DrillFigures(
        "burst",
        seed,
        {
            "requests": len(expected),
            "produce_s": f"{produce_s:.0f}",
            "backlog_at_end_of_produce": backlog,
            "processed_s": f"{drain_s:.0f}",
            "rss_at_full_backlog": f"{rss_backlog_mib:.0f}MiB",
            "requests_per_s": f"{len(expected) / drain_s:.0f}",
            "matches": report.matches,
            "identical_duplicates": report.duplicate_outputs,
            "violations": sum(len(v) for v in report.violations.values()),
            "peak_rss": memory.render(),
            "elapsed_s": f"{time.monotonic() - began:.0f}",
        },
    )
    _print(capsys, figures)
    _assert_audit(report, len(expected))
    # "Faster than processed": most of the burst was still waiting when producing ended.
    assert backlog > len(expected) // 2, figures.render()
    assert 0 < memory.peak_mib < BURST_RSS_LIMIT_MIB, figures.render()
