"""Pool summaries against a scripted workload whose true figures are known."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matching.engine import MatchEngine
from matching.summary import PartitionView, PoolLedger, quantile, summarize
from models.messages import MatchRequest, PoolCommand, PoolConfig, Profile
from models.state import StateRecord


class _Pool:
    """An engine and a ledger fed with every record the engine writes."""

    def __init__(self, pool_id: str = "p") -> None:
        self.pool_id = pool_id
        self.engine = MatchEngine()
        self.ledger = PoolLedger(pool_id=pool_id)
        self.table: dict[str, StateRecord] = {}

    def _apply(self, effects) -> None:  # type: ignore[no-untyped-def]
        for key, record in effects.writes:
            self.table[key] = record
            self.ledger.observe(record)

    def configure(self, now: float, **config: object) -> None:
        command = PoolCommand(
            command="configure", pool_id=self.pool_id, config=PoolConfig(**config)
        )
        self._apply(self.engine.handle_command(command, partition=0, now=now))

    def command(self, name: str, now: float) -> None:
        command = PoolCommand(command=name, pool_id=self.pool_id)  # type: ignore[arg-type]
        self._apply(self.engine.handle_command(command, partition=0, now=now))

    def ask(self, user: str, now: float, **fields: object) -> None:
        request = MatchRequest(request_id=f"r-{user}", pool_id=self.pool_id, user_id=user, **fields)
        self._apply(self.engine.handle_request(request, partition=0, now=now))

    def cancel(self, user: str, now: float) -> None:
        request = MatchRequest(
            type="cancel", request_id=f"r-{user}", pool_id=self.pool_id, user_id=user
        )
        self._apply(self.engine.handle_request(request, partition=0, now=now))

    def tick(self, now: float) -> None:
        self._apply(self.engine.tick(partition=0, now=now))

    def summary(self, now: float, view: PartitionView | None = None):  # type: ignore[no-untyped-def]
        book = self.engine.pools.get(self.pool_id)
        return summarize(self.ledger, book, view or PartitionView(), now=now)


def _profile(*interests: str) -> Profile:
    return Profile(interests=list(interests))


def test_counts_scores_and_waits_match_the_script() -> None:
    pool = _Pool()
    pool.configure(0.0, match_on=["level"], request_ttl_s=100)
    # a/b match after b waited 0 s (a waited 4 s); c/d after d arrives; e cancels; f expires.
    pool.ask("a", 1.0, criteria={"level": 1}, profile=_profile("go", "rust"))
    pool.ask("b", 5.0, criteria={"level": 1}, profile=_profile("go", "rust"))
    pool.ask("c", 6.0, criteria={"level": 2}, profile=_profile("go", "c"))
    pool.ask("d", 8.0, criteria={"level": 2}, profile=_profile("go", "java"))
    pool.ask("e", 9.0, criteria={"level": 3})
    pool.cancel("e", 10.0)
    pool.ask("f", 11.0, criteria={"level": 4})
    pool.tick(200.0)

    summary = pool.summary(200.0)

    assert summary.requests_total == 6
    assert (summary.matches_found, summary.waiting, summary.cancelled, summary.expired) == (
        2,
        0,
        1,
        1,
    )
    assert summary.status == "running"
    assert summary.matches_with_evidence == 2
    # interests: {go, rust} vs {go, rust} -> 1.0; {go, c} vs {go, java} -> 1/3 (Jaccard).
    scores = sorted(pool.ledger.scores)
    assert summary.avg_score == pytest.approx(sum(scores) / 2)
    assert summary.p90_score == pytest.approx(scores[0] + 0.9 * (scores[1] - scores[0]))
    # Waits of matched requests: a 4, b 0, c 2, d 0 -> median 1, p90 3.4 (linear).
    assert summary.wait_p50_s == pytest.approx(1.0)
    assert summary.wait_p90_s == pytest.approx(3.4)
    assert summary.started_at == "1970-01-01T00:00:01.000Z"
    # Each newcomer looked at the one waiting request of its bucket, if any.
    assert (summary.candidates_total, summary.candidates_processed) == (2, 2)
    assert summary.eta_seconds == 0.0


def test_blockers_appear_and_clear() -> None:
    pool = _Pool()
    pool.configure(0.0, match_on=["topic"], request_ttl_s=1000)
    pool.ask("lonely", 0.0, criteria={"topic": "graphs"})
    assert pool.summary(10.0).blockers == []  # not waiting long enough to call it stuck

    stuck = pool.summary(60.0).blockers
    assert len(stuck) == 1 and "topic='graphs'" in stuck[0]

    pool.command("pause", 61.0)
    paused = pool.summary(62.0)
    assert paused.status == "paused"
    assert any("paused" in blocker for blocker in paused.blockers)

    pool.command("resume", 63.0)
    pool.ask("partner", 64.0, criteria={"topic": "graphs"})
    assert pool.summary(65.0).blockers == []

    lagging = pool.summary(66.0, PartitionView(lag=5_000, lag_growing=True, recovering=True))
    assert len(lagging.blockers) == 2
    assert lagging.queue_depth == 5_000
    assert lagging.vector_pass_total == lagging.vector_pass_done + 5_000


def test_eta_comes_from_measured_rates_or_is_none() -> None:
    pool = _Pool()
    pool.configure(0.0, request_ttl_s=1000)
    assert pool.summary(0.0).eta_seconds == 0.0
    pool.ask("first", 1.0)
    assert pool.summary(2.0).eta_seconds is None  # nothing matched yet: no honest figure
    for index in range(10):
        pool.ask(f"x{index}", 2.0 + index)
    # 10 requests matched in the last minute, 1 waiting: 1 / (10 / 60 s) = 6 s.
    summary = pool.summary(12.0)
    assert summary.waiting == 1
    assert summary.eta_seconds == pytest.approx(6.0)
    assert pool.summary(80.0).eta_seconds is None  # the minute passed without a match
    pool.ask("closer", 81.0)
    assert pool.summary(81.0).eta_seconds == 0.0


def test_closing_completes_the_pool() -> None:
    pool = _Pool()
    pool.ask("a", 1.0)
    pool.command("close", 2.0)
    summary = pool.summary(3.0)
    assert summary.status == "completed"
    assert summary.completed_at == "1970-01-01T00:00:02.000Z"
    assert summary.expired == 1


@settings(max_examples=200, deadline=None)
@given(
    values=st.one_of(
        st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=60),
        st.integers(min_value=900, max_value=1_100).map(
            lambda size: [((i * 7919) % 1_009) / 7.0 for i in range(size)]
        ),
    ),
    q=st.one_of(st.sampled_from([0.0, 0.5, 0.9, 1.0]), st.floats(min_value=0, max_value=1)),
)
def test_quantile_is_numpy_linear_exactly(values: list[float], q: float) -> None:
    # Sizes either side of the switch from a Python sort to numpy's partition.
    assert quantile(deque(values), q) == float(np.quantile(np.array(values), q))


def test_quantile_of_nothing_is_none() -> None:
    assert quantile(deque(), 0.5) is None
