"""One pool's waiting requests, indexed by the values of its `match_on` keys."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from matching.partner_index import (
    INDEX_FROM,
    BucketKey,
    PartnerIndex,
    bucket_key,
    same_criterion,
)
from matching.recommend_pool import RecommendLists
from models.messages import PoolConfig
from models.state import BatchRunSummary, MatchState, RequestState, RunStatus

__all__ = ["PoolBook", "PoolWork", "RunProgress", "same_criterion"]

_INDEXED_MODES = frozenset({"pair", "group"})


@dataclass
class PoolWork:
    """How much matching work a pool cost this worker since it took the pool."""

    considered: int = 0
    """Waiting requests looked at as candidates: those in buckets that could agree (by a
    Python loop), or that can agree now (by `PartnerIndex`, which skips the buckets
    whose differing keys the newcomer has not waited long enough to relax)."""
    scored: int = 0
    """Candidates that passed the criteria and were scored (one by one, or vectorised)."""


@dataclass
class RunProgress:
    """A batch pool's `start_matching` runs, as `PoolState` records them."""

    status: RunStatus = "pending"
    started_at: float | None = None
    completed_at: float | None = None
    number: int = 0
    requests: list[str] = field(default_factory=list)
    """While running: the request_ids the run pairs."""
    last: BatchRunSummary | None = None
    refused: str | None = None
    launched: bool = False
    """Whether this worker handed the running run's job out (not stored: after a
    recovery the run is computed again, with the same seed)."""


class PoolBook:
    """In-memory view of a pool, rebuilt from the state table after recovery.

    Waiting requests sit in buckets keyed by their `match_on` values, so finding
    candidates visits only buckets that can agree with the newcomer instead of
    every waiting request.
    """

    def __init__(self, *, pool_id: str, partition: int, config: PoolConfig) -> None:
        self.pool_id = pool_id
        self.partition = partition
        self.config = config
        self.paused = False
        self.closed = False
        self.known_requests: set[str] = set()
        self.waiting: dict[str, RequestState] = {}
        self.proposals: dict[str, MatchState] = {}
        """Matches waiting for their members' confirmations, by match_id."""
        self.repairs: list[RequestState] = []
        """Request records to rewrite to agree with a stored match (after a partial write)."""
        self.unrecorded: dict[str, MatchState] = {}
        """Members of stored matches whose own record never landed, by request_id."""
        self.proposed: dict[str, RequestState] = {}
        """Requests in a proposal, by request_id: active, but not candidates."""
        self.active_by_user: dict[str, str] = {}
        self.work = PoolWork()
        self.lists: RecommendLists | None = None
        """The top-K lists while the pool is in `recommend` mode."""
        self.run = RunProgress()
        self.next_sweep_at = math.inf
        """When the next waiting request crosses a `relax_after_s` threshold."""
        self.partners: PartnerIndex | None = None
        """Vectorised partner search, kept while a `pair`/`group` pool has many waiting."""
        self.index_deferred = False
        """From a recovery until `index_now` indexes every waiting request at once (on the
        pool's first search, or when the worker gets to it: `MatchEngine.index_next_pool`)."""
        self._buckets: dict[BucketKey, dict[str, RequestState]] = {}
        self._expiries: list[tuple[float, str]] = []

    def buckets(self) -> dict[BucketKey, list[RequestState]]:
        """Waiting requests grouped by their `match_on` values."""
        return {key: list(bucket.values()) for key, bucket in self._buckets.items() if bucket}

    def bucket_key(self, request: RequestState) -> BucketKey:
        return bucket_key(self.config, request)

    def add_waiting(self, request: RequestState) -> None:
        self.known_requests.add(request.request_id)
        self.waiting[request.request_id] = request
        self.active_by_user[request.user_id] = request.request_id
        self._buckets.setdefault(self.bucket_key(request), {})[request.request_id] = request
        if self.partners is not None:
            self.partners.add(request)
        elif len(self.waiting) >= INDEX_FROM and not self.index_deferred:
            self._index_partners()
        if request.expires_at is not None:
            heapq.heappush(self._expiries, (request.expires_at, request.request_id))
        thresholds = [limit for limit in self.config.relax_after_s.values() if limit > 0]
        if thresholds:
            self.next_sweep_at = min(self.next_sweep_at, request.queued_at + min(thresholds))
        if self.lists is not None:
            # In recommend pools the waiting requests are the users the lists rank.
            self.lists.join(request.user_id, request.profile, priority=request.priority)

    def expiry_due(self, now: float) -> bool:
        """Whether `pop_expired` may find something: the earliest TTL has passed."""
        return bool(self._expiries) and self._expiries[0][0] <= now

    def pop_expired(self, now: float) -> list[RequestState]:
        """Remove and return the waiting requests whose TTL has passed."""
        expired = []
        while self._expiries and self._expiries[0][0] <= now:
            _, request_id = heapq.heappop(self._expiries)
            request = self.waiting.get(request_id)
            # The heap keeps entries of requests that already left; skip those.
            if request is not None and request.expires_at is not None and request.expires_at <= now:
                self.remove_waiting(request_id)
                expired.append(request)
        return expired

    def plan_next_sweep(self, now: float) -> None:
        """Find the next moment a waiting request relaxes a key it has not relaxed yet."""
        limits = [limit for limit in self.config.relax_after_s.values() if limit > 0]
        upcoming = (
            request.queued_at + limit
            for request in self.waiting.values()
            for limit in limits
            if request.queued_at + limit > now
        )
        self.next_sweep_at = min(upcoming, default=math.inf)

    def remove_waiting(self, request_id: str) -> RequestState | None:
        request = self.waiting.pop(request_id, None)
        if request is None:
            return None
        if self.active_by_user.get(request.user_id) == request_id:
            del self.active_by_user[request.user_id]
        if self.lists is not None:
            self.lists.leave(request.user_id)
        if self.partners is not None:
            self.partners.remove(request_id)
            if len(self.waiting) < INDEX_FROM // 2:
                self.partners = None  # hysteresis: a pool hovering at the limit keeps it
        key = self.bucket_key(request)
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.pop(request_id, None)
            if not bucket:
                del self._buckets[key]
        return request

    def reindex(self, config: PoolConfig) -> None:
        """Adopt a new config; buckets depend on `match_on`, so rebuild them."""
        self.config = config
        waiting = list(self.waiting.values())
        self._buckets.clear()
        for request in waiting:
            self._buckets.setdefault(self.bucket_key(request), {})[request.request_id] = request
        self.partners = None
        self.index_deferred = False
        if len(waiting) >= INDEX_FROM:
            self._index_partners()

    def index_now(self) -> None:
        """End `index_deferred`: index the pool in one pass if it is large enough."""
        self.index_deferred = False
        if self.partners is None and len(self.waiting) >= INDEX_FROM:
            self._index_partners()

    def _index_partners(self) -> None:
        if self.config.mode not in _INDEXED_MODES:
            return
        self.partners = PartnerIndex(config=self.config)
        self.partners.add_buckets(self._buckets)

    def buckets_near(self, key: BucketKey, relaxable: frozenset[int]) -> Iterator[RequestState]:
        """Waiting requests whose bucket can agree with `key`.

        Args:
            key: the newcomer's `match_on` values.
            relaxable: positions of keys that may differ once both sides relaxed them.
        """
        for other_key, bucket in self._buckets.items():
            if all(
                mine is None or theirs is None or mine == theirs or position in relaxable
                for position, (mine, theirs) in enumerate(zip(key, other_key, strict=True))
            ):
                yield from bucket.values()
