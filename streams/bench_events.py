"""`matchstream bench` for networking events: recommend lists and batch pairing, in process.

Both scenarios drive `MatchEngine` exactly as the matcher agent does, minus Kafka:
message decoding, table writes and the relay are what the stream bench
(`streams.bench`) measures, so they are left out here and the numbers are the
matching work itself. Inputs are built before the clock starts.

- Recommend: N attendees with 384-dimensional embeddings and interests join one
  `recommend` pool (top 3) as a backlog, the way messages that arrive together
  reach the matcher; the engine applies them in chunks (`matching.recommend_pool`)
  and a final tick drains the rest. Time = first request handled to every list
  final. For the smallest size the lists are checked against a from-scratch
  recomputation.
- Batch: N attendees wait in a `batch` pool with a seat for everyone;
  `start_matching` runs through the engine (start, compute, finish and records).
  The exact matching's total is the optimum the other rows are measured against:
  the approximation used above `matching.batch.EXACT_LIMIT`, and chaos 5.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matching.batch import start_matching
from matching.engine import MatchEngine
from models.messages import MatchRequest, PoolCommand, PoolConfig, Profile
from models.state import RecommendationState
from streams.event_workload import attendee_profiles

__all__ = ["BatchRow", "RecommendRow", "bench_batch", "bench_recommend", "run_events_bench"]

log = logging.getLogger(__name__)

SEED_FIGURE = "500 users in 2-3 hours (seed 003/004, queue-based matchmaker)"


@dataclass(frozen=True)
class RecommendRow:
    attendees: int
    seconds: float
    cpu_seconds: float
    """Process CPU time in the window: on a busy machine, closer to the work than wall time."""
    published: int
    """List records written (every list that changed, with the bump rule)."""
    checked: bool


@dataclass(frozen=True)
class BatchRow:
    label: str
    attendees: int
    seconds: float
    cpu_seconds: float
    total_score: float
    method: str


class _Stopwatch:
    """Wall and process CPU time since it was made."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self._wall, time.process_time() - self._cpu


def bench_recommend(attendees: int, *, dimensions: int = 384, check: bool = False) -> RecommendRow:
    """Time `attendees` joins of one recommend pool until every list is final."""
    profiles = attendee_profiles(attendees, dimensions=dimensions, seed=attendees)
    requests = [
        MatchRequest(
            request_id=f"r-{number}",
            pool_id="event",
            user_id=f"u-{number:06d}",
            profile=Profile.model_validate(profile),
            priority=number % 4,
        )
        for number, profile in enumerate(profiles)
    ]
    config = PoolConfig(
        mode="recommend",
        top_k=3,
        request_ttl_s=None,
        weights={"interests": 1.0, "embedding": 1.0, "attributes": 0.5},
    )
    engine = MatchEngine()
    command = PoolCommand(command="configure", pool_id="event", config=config)
    engine.handle_command(command, partition=0, now=0.0)
    published = 0
    clock = _Stopwatch()
    for number, request in enumerate(requests):
        effects = engine.handle_request(request, partition=0, now=1.0 + number * 1e-4)
        published += sum(isinstance(record, RecommendationState) for _, record in effects.writes)
    effects = engine.tick(partition=0, now=2.0 + attendees * 1e-4)
    published += sum(isinstance(record, RecommendationState) for _, record in effects.writes)
    seconds, cpu = clock.read()
    lists = engine.pools["event"].lists
    assert lists is not None and lists.pending == 0 and len(lists.index) == attendees
    if check:
        # Recomputing from scratch must change no list.
        assert lists.index.rematch(refit_text=False) == [], "incremental lists differ"
    log.info(
        "bench.events.recommend attendees=%d wall_s=%.2f cpu_s=%.2f lists=%d",
        attendees,
        seconds,
        cpu,
        published,
    )
    return RecommendRow(attendees, seconds, cpu, published, check)


def bench_batch(attendees: int) -> list[BatchRow]:
    """Pair and seat `attendees` exactly, approximately and with chaos 5."""
    seats_per_table = 10
    config = PoolConfig(
        mode="batch",
        request_ttl_s=None,
        tables=-(-attendees // seats_per_table),
        seats_per_table=seats_per_table,
    )
    profiles = attendee_profiles(attendees, dimensions=384, seed=attendees + 1, texts=True)
    engine = MatchEngine()
    engine.handle_command(
        PoolCommand(command="configure", pool_id="meetup", config=config), partition=0, now=0.0
    )
    for number, profile in enumerate(profiles):
        request = MatchRequest(
            request_id=f"r-{number}",
            pool_id="meetup",
            user_id=f"u-{number:05d}",
            profile=Profile.model_validate(profile),
        )
        engine.handle_request(request, partition=0, now=1.0)
    clock = _Stopwatch()
    start = engine.handle_command(
        PoolCommand(command="start_matching", pool_id="meetup"), partition=0, now=2.0
    )
    (job,) = start.jobs
    result = job.compute()
    engine.finish_batch("meetup", job.run, result, seconds=0.0, now=3.0)
    rows = [
        BatchRow(
            "exact, through the engine (start_matching to records)",
            attendees,
            *clock.read(),
            result.stats.total_score,
            result.stats.method,
        )
    ]
    for label, exact_limit, chaos in [
        ("greedy + swaps (the method above 1,000)", 0, 0.0),
        ("exact with chaos 5", attendees, 5.0),
    ]:
        clock = _Stopwatch()
        other = start_matching(
            job.attendees,
            job.config.model_copy(update={"chaos": chaos}),
            rng=random.Random(job.seed),
            exact_limit=exact_limit,
        )
        rows.append(
            BatchRow(label, attendees, *clock.read(), other.stats.total_score, other.stats.method)
        )
        log.info("bench.events.batch run=%r cpu_s=%.2f", label, rows[-1].cpu_seconds)
    return rows


def run_events_bench(*, recommend_sizes: Sequence[int], batch_attendees: int) -> int:
    """Run both scenarios and print their tables; 0 on success.

    Example:
        >>> run_events_bench(recommend_sizes=[200, 400], batch_attendees=100)  # doctest: +SKIP
        0
    """
    sizes = sorted(set(recommend_sizes))
    if not sizes or sizes[0] < 2 or batch_attendees < 2:
        raise ValueError("need recommend sizes >= 2 and batch attendees >= 2")
    recommend = [bench_recommend(size, check=index == 0) for index, size in enumerate(sizes)]
    batch = bench_batch(batch_attendees)
    print(events_markdown(recommend, batch))
    return 0


def events_markdown(recommend: Sequence[RecommendRow], batch: Sequence[BatchRow]) -> str:
    """The two tables with the machine line and the notes that make them readable."""
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    lines = [
        (
            f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, numpy "
            f"{np.__version__}, OPENBLAS_NUM_THREADS={blas}, gc thresholds "
            f"{gc.get_threshold()}; in process, no Kafka."
        ),
        "",
        "Recommend pool (384-dim embeddings + interests + role, top 3, all lists final):",
        "",
        (
            "| attendees | CPU time | wall time | CPU per attendee | list records "
            "| records per attendee | CPU growth vs size growth |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    previous: RecommendRow | None = None
    for row in recommend:
        growth = "-"
        if previous is not None:
            cpu_ratio = row.cpu_seconds / previous.cpu_seconds
            size_ratio = row.attendees / previous.attendees
            exponent = math.log(cpu_ratio) / math.log(size_ratio)
            growth = f"x{cpu_ratio:.1f} for x{size_ratio:.0f} (n^{exponent:.2f})"
        lines.append(
            f"| {row.attendees:,} | {row.cpu_seconds:.2f} s | {row.seconds:.2f} s "
            f"| {row.cpu_seconds / row.attendees * 1e3:.2f} ms | {row.published:,} "
            f"| {row.published / row.attendees:.2f} | {growth} |"
        )
        previous = row
    checked = [row.attendees for row in recommend if row.checked]
    lines += [
        "",
        (
            f"Seed figure: {SEED_FIGURE}. Lists checked against a from-scratch recomputation "
            f"at {', '.join(f'{size:,}' for size in checked)} attendees."
        ),
        "",
        (
            f"Batch pool ({batch[0].attendees:,} attendees, 384-dim embeddings, interests, "
            "facts and opinions, a seat for everyone):"
        ),
        "",
        "| run | CPU time | wall time | total score | fraction of the optimum |",
        "|---|---|---|---|---|",
    ]
    optimum = batch[0].total_score
    for run in batch:
        fraction = run.total_score / optimum if optimum else 1.0
        lines.append(
            f"| {run.label} | {run.cpu_seconds:.2f} s | {run.seconds:.2f} s "
            f"| {run.total_score:,.1f} | {fraction:.4f} |"
        )
    lines += [
        "",
        (
            "Scores are the true pair scores; chaos only changes which pairs are chosen. CPU "
            "time is the process's; wall time also counts waiting for a core on a busy machine."
        ),
    ]
    return "\n".join(lines)
