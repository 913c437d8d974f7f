"""Pool summaries (CONTRACT section 1.8) from the state records a worker writes.

A `PoolLedger` follows every state record of one pool, those loaded at recovery
and those written since, so each count is a count of table state, not an
estimate. `summarize` adds what only the live worker knows: the engine's work
counters, the partition's unconsumed input and whether it is recovering.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from matching.pool import PoolBook
from models.codec import utc_now_iso
from models.messages import PoolSummary
from models.state import ACTIVE_STATUSES, MatchState, PoolState, RequestState, StateRecord

__all__ = ["SAMPLE_LIMIT", "PartitionView", "PoolLedger", "quantile", "summarize"]

SAMPLE_LIMIT = 200_000
"""Scores and waits kept per pool for exact quantiles: the most recent ones."""

_RATE_WINDOW_S = 60.0
_STUCK_AFTER_S = 30.0  # a request alone in its bucket this long, with nothing to relax, is stuck
_LAG_BLOCKER = 1_000  # unconsumed input worth telling an operator about, when it grows
_SORT_IN_PYTHON_UP_TO = 1_000  # values; above, numpy's partition beats a Python sort


@dataclass(frozen=True)
class PartitionView:
    """What the worker knows about the pool's input partition right now."""

    lag: int = 0
    """Input messages not yet consumed on the pool's partition (all pools on it)."""
    lag_growing: bool = False
    recovering: bool = False


@dataclass
class PoolLedger:
    """Counts of one pool's requests and matches, kept current from state records."""

    pool_id: str
    mode: str = "pair"
    paused: bool = False
    closed: bool = False
    batch_status: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    last_event_at: float | None = None
    matches_found: int = 0
    matches_checked: int = 0
    matches_with_reasons: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLE_LIMIT))
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLE_LIMIT))
    _status_of: dict[str, str] = field(default_factory=dict)
    _matches_seen: set[str] = field(default_factory=set)
    _final_matches: set[str] = field(default_factory=set)
    _arrivals: deque[float] = field(default_factory=deque)
    _matched_at: deque[float] = field(default_factory=deque)
    version: int = 0
    """Grows with every change; a progress snapshot is due when it moved."""

    def observe(self, record: StateRecord) -> bool:
        """Account for one record written to (or loaded from) the state table.

        Returns:
            True when it is news: a request's new status, or a match becoming final.
        """
        self.version += 1
        at = record.changed_at
        if isinstance(record, PoolState):
            self.mode = record.config.mode
            self.paused, self.closed = record.paused, record.closed
            if record.config.mode == "batch":
                self.batch_status = record.status
                self.started_at = record.started_at or self.started_at
                self.completed_at = record.completed_at or self.completed_at
            if record.closed and self.completed_at is None:
                self.completed_at = at
            return False
        self.last_event_at = max(self.last_event_at or at, at)
        if isinstance(record, RequestState):
            return self._observe_request(record)
        if isinstance(record, MatchState):
            return self._observe_match(record)
        return False

    def _observe_request(self, request: RequestState) -> bool:
        previous = self._status_of.get(request.request_id)
        if previous == request.status:
            return False
        if previous is None:
            self.started_at = min(self.started_at or request.queued_at, request.queued_at)
            self._arrivals.append(request.queued_at)
        else:
            self.statuses[previous] -= 1
        self.statuses[request.status] += 1
        self._status_of[request.request_id] = request.status
        if request.status == "matched":
            self.waits.append(max(0.0, request.changed_at - request.queued_at))
            self._matched_at.append(request.changed_at)
        return True

    def _observe_match(self, match: MatchState) -> bool:
        match_id = match.found.match_id
        if match_id not in self._matches_seen:
            self._matches_seen.add(match_id)
            self.matches_checked += 1
        if not match.final or match_id in self._final_matches:
            return False
        self._final_matches.add(match_id)
        self.matches_found += 1
        self.matches_with_reasons += bool(match.found.reasons)
        self.scores.append(match.found.score)
        return True

    @property
    def requests_total(self) -> int:
        return len(self._status_of)

    @property
    def waiting(self) -> int:
        return sum(self.statuses[status] for status in ACTIVE_STATUSES)

    def rates(self, now: float) -> tuple[float, float]:
        """Requests arriving and requests matched per second over the last minute."""
        horizon = now - _RATE_WINDOW_S
        for times in (self._arrivals, self._matched_at):
            while times and times[0] < horizon:
                times.popleft()
        return len(self._arrivals) / _RATE_WINDOW_S, len(self._matched_at) / _RATE_WINDOW_S


def summarize(
    ledger: PoolLedger, book: PoolBook | None, partition: PartitionView, *, now: float
) -> PoolSummary:
    """The summary of one pool as this worker sees it at `now`."""
    stuck, blockers = _blockers(ledger, book, partition, now)
    waiting = ledger.waiting
    processed = ledger.requests_total
    return PoolSummary(
        pool_id=ledger.pool_id,
        job_id=ledger.pool_id,
        status=_status(ledger),
        mode=ledger.mode,
        started_at=_iso(ledger.started_at),
        completed_at=_iso(ledger.completed_at),
        last_event_at=_iso(ledger.last_event_at),
        candidates_total=book.work.considered if book else 0,
        candidates_processed=book.work.scored if book else 0,
        vector_pass_total=processed + partition.lag,
        vector_pass_done=processed,
        ransac_checked=ledger.matches_checked,
        matches_found=ledger.matches_found,
        matches_with_evidence=ledger.matches_with_reasons,
        avg_score=math.fsum(ledger.scores) / len(ledger.scores) if ledger.scores else None,
        p90_score=quantile(ledger.scores, 0.9),
        queue_depth=waiting + partition.lag,
        eta_seconds=_eta(ledger, waiting - stuck, now),
        blockers=blockers,
        requests_total=processed,
        waiting=waiting,
        expired=ledger.statuses["expired"],
        cancelled=ledger.statuses["cancelled"],
        wait_p50_s=quantile(ledger.waits, 0.5),
        wait_p90_s=quantile(ledger.waits, 0.9),
        at=utc_now_iso(now),
    )


def _status(ledger: PoolLedger) -> str:
    if ledger.paused:
        return "paused"
    if ledger.closed or ledger.batch_status == "completed":
        return "completed"
    if ledger.batch_status in {"pending", "running"}:
        return ledger.batch_status
    return "running" if ledger.requests_total else "pending"


def _blockers(
    ledger: PoolLedger, book: PoolBook | None, partition: PartitionView, now: float
) -> tuple[int, list[str]]:
    blockers = []
    if ledger.paused:
        blockers.append("pool is paused: requests wait and are not matched until resume")
    stuck, example = _stuck_requests(book, now)
    if stuck:
        blockers.append(
            f"{stuck} request(s) waited over {_STUCK_AFTER_S:.0f} s with no compatible "
            f"partner under match_on (e.g. {example}); relax_after_s or more requests "
            "with those values would unblock them"
        )
    if partition.lag >= _LAG_BLOCKER and partition.lag_growing:
        blockers.append(f"input lag of {partition.lag} messages is growing on this partition")
    if partition.recovering:
        blockers.append("the owning worker is recovering this pool's state from the changelog")
    return stuck, blockers


def _stuck_requests(book: PoolBook | None, now: float) -> tuple[int, str]:
    """Waiting requests that cannot meet enough partners in their bucket and cannot relax."""
    if book is None or book.paused or book.config.mode not in {"pair", "group"}:
        return 0, ""
    config = book.config
    if any(key in config.relax_after_s for key in config.match_on):
        return 0, ""  # they will relax in time: waiting, not blocked
    stuck, example = 0, ""
    for key, requests in book.buckets().items():
        if len(requests) >= config.members_per_match:
            continue  # enough company; they match as soon as scores allow
        old = [r for r in requests if now - r.queued_at >= _STUCK_AFTER_S]
        if old:
            stuck += len(old)
            example = example or ", ".join(
                f"{name}={value!r}" for name, value in zip(config.match_on, key, strict=False)
            )
    return stuck, example or "no match_on keys"


def _eta(ledger: PoolLedger, matchable: int, now: float) -> float | None:
    """Seconds until today's matchable waiting requests are matched (Little's law).

    Waiting requests divided by the requests matched per second over the last
    minute. None when nothing was matched in that minute or the pool is paused,
    since any figure would then be invented.
    """
    if ledger.waiting == 0:
        return 0.0
    if matchable <= 0 or ledger.paused or ledger.mode not in {"pair", "group"}:
        return None
    _, matched = ledger.rates(now)
    if matched <= 0:
        return None
    return round(matchable / matched, 1)


def quantile(values: deque[float], q: float) -> float | None:
    """Linear interpolation between the two nearest ranks, as PostgreSQL's PERCENTILE_CONT.

    Summaries of many small pools run back to back on the event loop, where a
    numpy call's fixed cost (about 60 us) was most of each; numpy sorts faster
    only once there are many values. Both paths give numpy's exact result.
    """
    if not values:
        return None
    if len(values) > _SORT_IN_PYTHON_UP_TO:
        return float(np.quantile(np.fromiter(values, float, count=len(values)), q))
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    low, high = ordered[below], ordered[min(below + 1, len(ordered) - 1)]
    weight = position - below
    step = high - low
    # Interpolated from the nearer rank, so a weight near 1 lands on `high` exactly.
    return high - step * (1 - weight) if weight >= 0.5 else low + step * weight


def _iso(moment: float | None) -> str | None:
    return None if moment is None else utc_now_iso(moment)
