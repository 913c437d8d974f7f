"""`matchstream bench --scenario partner`: finding partners among many waiting requests.

One pair pool holds N waiting requests (criteria on city and language, 384-dim
embeddings, interests and attributes), filled the way a paused pool fills: nobody
is matched meanwhile. Newcomers then ask for partners and are never added, so
every search sees the same N. The baseline of the same run is the Python scan
(`matching.arrival.scan_partners`) that the vectorised search
(`matching.partner_index`) must agree with; both are timed per search in this
thread's CPU time (closest to the work on a shared machine) and in wall time.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from matching.arrival import find_partners, scan_partners
from matching.pool import PoolBook
from matching.scoring import ScoredPair
from models.messages import PoolConfig, Profile
from models.state import RequestState

__all__ = ["SearchRow", "bench_partner_search", "run_partner_bench"]

_CITIES = [f"city-{n}" for n in range(50)]
_LANGUAGES = ["en", "de", "fr", "es"]
_TAGS = [f"tag-{n}" for n in range(60)]
_CONFIG = PoolConfig(mode="pair", match_on=["city", "language"], relax_after_s={"language": 600.0})

Search = Callable[[PoolBook, RequestState, float], list[tuple[RequestState, ScoredPair]] | None]


@dataclass(frozen=True)
class SearchRow:
    label: str
    searches: int
    cpu_ms: tuple[float, float]
    """p50 and p99 of one search, thread CPU time."""
    wall_ms: tuple[float, float]


def _request(rng: random.Random, number: int, queued_at: float) -> RequestState:
    profile = Profile(
        interests=rng.sample(_TAGS, 5),
        attributes={"level": rng.choice(["junior", "mid", "senior"]), "remote": rng.random() < 0.5},
        embedding=[rng.gauss(0.0, 1.0) for _ in range(384)],
    )
    return RequestState(
        request_id=f"req-{number:08d}",
        pool_id="bench",
        user_id=f"user-{number}",
        criteria={"city": rng.choice(_CITIES), "language": rng.choice(_LANGUAGES)},
        profile=profile,
        priority=rng.randint(0, 3),
        status="queued",
        queued_at=queued_at,
        partition=0,
        changed_at=queued_at,
    )


def _timed(
    label: str, search: Search, book: PoolBook, newcomers: Sequence[RequestState], now: float
) -> SearchRow:
    cpu, wall = [], []
    for newcomer in newcomers:
        started_cpu, started = time.thread_time(), time.perf_counter()
        search(book, newcomer, now)
        cpu.append(time.thread_time() - started_cpu)
        wall.append(time.perf_counter() - started)

    def quantiles(samples: list[float]) -> tuple[float, float]:
        p50, p99 = np.percentile(np.array(samples) * 1e3, [50, 99])
        return float(p50), float(p99)

    return SearchRow(label, len(newcomers), quantiles(cpu), quantiles(wall))


def bench_partner_search(
    waiting: int, *, newcomers: int, scanned: int, seed: int = 7
) -> tuple[list[SearchRow], float, bool]:
    """Time both searches; returns the rows, the seconds to fill the pool, and agreement.

    Args:
        waiting: requests waiting in the pool.
        newcomers: searches timed with the index.
        scanned: searches timed with the Python scan (slow; a few suffice).
        seed: the workload's random seed.
    """
    rng = random.Random(seed)
    now = 1_000.0
    book = PoolBook(pool_id="bench", partition=0, config=_CONFIG)
    started = time.perf_counter()
    for number in range(waiting):
        book.add_waiting(_request(rng, number, now - rng.uniform(0, 300)))
    filled_s = time.perf_counter() - started
    asking = [_request(rng, 10_000_000 + number, now) for number in range(newcomers)]
    gc.collect()
    gc.freeze()  # the pool is long-lived: keep full collections of it out of the timings
    try:
        rows = [
            _timed("Python scan (baseline)", scan_partners, book, asking[:scanned], now),
            _timed("vectorised index", find_partners, book, asking, now),
        ]
        agree = all(
            _answer(find_partners(book, newcomer, now))
            == _answer(scan_partners(book, newcomer, now))
            for newcomer in asking[:scanned]
        )
    finally:
        gc.unfreeze()
    return rows, filled_s, agree


def _answer(found: list[tuple[RequestState, ScoredPair]] | None) -> list[tuple[str, float]]:
    return [(partner.request_id, scored.score) for partner, scored in found or []]


def run_partner_bench(*, waiting: int, newcomers: int = 2_000, scanned: int = 30) -> int:
    """Run the partner-search scenario and print its table; 0 when both searches agree.

    Example:
        >>> run_partner_bench(waiting=1_000, newcomers=100, scanned=10)  # doctest: +SKIP
        0
    """
    if waiting < 2 or newcomers < 1 or not 1 <= scanned <= newcomers:
        raise ValueError("need waiting >= 2, newcomers >= 1 and 1 <= scanned <= newcomers")
    rows, filled_s, agree = bench_partner_search(waiting, newcomers=newcomers, scanned=scanned)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    baseline = rows[0].cpu_ms[1]
    lines = [
        (
            f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, numpy "
            f"{np.__version__}; in process, no Kafka."
        ),
        "",
        (
            f"Partner search in one pair pool of {waiting:,} waiting requests (200 criteria "
            "buckets, 384-dim embeddings, interests, attributes):"
        ),
        "",
        "| search | searches | CPU p50 | CPU p99 | wall p50 | wall p99 | CPU p99 vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.label} | {row.searches:,} | {row.cpu_ms[0]:.3f} ms | {row.cpu_ms[1]:.3f} ms "
            f"| {row.wall_ms[0]:.3f} ms | {row.wall_ms[1]:.3f} ms | {row.cpu_ms[1] / baseline:.3f} |"
        )
    lines += [
        "",
        (
            f"Same partners and scores from both on {rows[0].searches} newcomers: {agree}. "
            f"Pool filled in {filled_s:.1f} s; peak RSS of the process {peak_mib:,.0f} MiB."
        ),
    ]
    print("\n".join(lines))
    return 0 if agree else 1
