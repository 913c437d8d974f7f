"""Partners for a newcomer among many waiting requests: vectorised scores per criteria bucket.

`PoolBook` keeps a `PartnerIndex` for a `pair`/`group` pool once many requests wait.
Each criteria bucket holds its requests' profiles as `ProfileVectors` (slot 0 is
scratch for the newcomer). A search finds the buckets that can agree with the
newcomer through an index of bucket values, scores it against each of them in one
pass, masks the requests that cannot agree (same user, `relax_after_s` not reached
yet), and yields candidates in `matching.arrival.rank_candidates` order, computing
exact scores only for the few that can reach the front. With `chaos`, every
candidate at or above `min_score` draws a number, so the exact scores near
`min_score` are settled first and the draws are handed out in request_id order.

The scores equal `score_pair`'s. The float32 pass is a filter within
`ProfileVectors.margin`; the exact pass is float64, within 1e-12 of `score_pair`'s
arithmetic, so its rounding to 6 decimals agrees except within 1e-9 of a rounding
midpoint, where `score_pair` itself is asked (likewise for the cosine a reason
prints). Where that bound is not sure to hold (huge or tiny embeddings, NaN
attributes, extreme weights), `search` declines and the caller loops in Python.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from matching.arrays import Floats, Ints, Mask
from matching.profile_vectors import EMBEDDING, ProfileVectors, ScoreBlock
from matching.scoring import ScoredPair, score_pair
from matching.text_similarity import TfIdfModel
from models.messages import CriterionValue, PoolConfig, Profile
from models.state import RequestState

__all__ = ["INDEX_FROM", "BucketKey", "PartnerIndex", "Search", "bucket_key", "same_criterion"]

BucketKey = tuple[object, ...]
INDEX_FROM = 64
"""Waiting requests from which a pool keeps an index (dropped below half of it)."""
_FIRST_LOOK = 8
"""Candidates ranked exactly in a search's first round; each widening takes 4 times more."""
_REBUILD_AFTER = 4
"""A bucket rebuilds its vectors after this many newcomers per slot (plus a floor)."""
_PYTHON_DRAWS = 2048
"""Draws made by `random.Random` itself; numpy's setup costs more below this."""
_MIDPOINT_GUARD = 1e-3
"""Distance (in units of 1e-6) from a rounding midpoint below which `score_pair` decides."""
_SAFE_RANGE = (1e-100, 1e100)
"""Weights inside which float64 errors stay far below 1e-9."""
_SAFE_LARGEST = (1e-40, 1e40)
"""Largest |embedding value| (unless all are 0) for which the same holds."""
_SIMILAR_COSINE = 0.5
"""`score_pair` gives the embedding's reason from this cosine on."""
_SLOT_BITS = 32
"""Low bits of a located request: its slot (a bucket holds far fewer than 2**32)."""
_SLOT_MASK = (1 << _SLOT_BITS) - 1


def same_criterion(mine: CriterionValue, theirs: CriterionValue) -> bool:
    """JSON equality: `true` is not `1`, though Python says so; `1` and `1.0` agree."""
    return isinstance(mine, bool) == isinstance(theirs, bool) and mine == theirs


def bucket_key(config: PoolConfig, request: RequestState) -> BucketKey:
    """A request's `match_on` values, as buckets group them."""
    criteria = request.criteria
    return tuple([_bucket_value(criteria.get(key)) for key in config.match_on])


def _bucket_value(value: CriterionValue) -> object:
    # Keep booleans out of the buckets of the numbers Python considers equal to them.
    return ("bool", value) if isinstance(value, bool) else value


@dataclass
class _Bucket:
    """The waiting requests of one criteria bucket, by slot (slot 0 is the newcomer's)."""

    values: tuple[CriterionValue, ...]
    vectors: ProfileVectors
    number: int
    """Its number in `PartnerIndex`, which locates requests by number and slot."""
    requests: list[RequestState | None] = field(default_factory=lambda: [None])
    queued_at: Floats = field(default_factory=lambda: np.zeros(1))
    priority: Ints = field(default_factory=lambda: np.zeros(1, np.int64))
    ids: npt.NDArray[np.str_] = field(default_factory=lambda: np.zeros(1, "U1"))
    alive: Mask = field(default_factory=lambda: np.zeros(1, np.bool_))
    free: list[int] = field(default_factory=list)
    size: int = 0
    unsafe: int = 0
    """Requests whose values `search` cannot score exactly."""
    scratch_uses: int = 0
    """Newcomers scored here since the vectors were built: each may add terms for good."""

    def put(self, request: RequestState) -> int:
        slot = self.free.pop() if self.free else len(self.requests)
        if slot == len(self.requests):
            self.requests.append(None)
        if slot >= len(self.alive):
            self._grow(2 * len(self.alive))
        if len(request.request_id) > self.ids.dtype.itemsize // 4:
            self.ids = self.ids.astype(f"U{2 * len(request.request_id)}")
        safe = _safe(request)
        self.vectors.set(slot, _scored_profile(request))
        self.requests[slot] = request
        self.queued_at[slot], self.priority[slot] = request.queued_at, request.priority
        self.ids[slot], self.alive[slot] = request.request_id, True
        self.size += 1
        self.unsafe += not safe
        return slot

    def put_many(self, requests: Sequence[RequestState]) -> list[int]:
        """`put` for many requests: the arrays grow once and each feature fills in one pass."""
        slots = []
        for _ in requests:
            if self.free:
                slots.append(self.free.pop())
            else:
                slots.append(len(self.requests))
                self.requests.append(None)
        if len(self.requests) > len(self.alive):
            # An eighth to spare, not double: a bulk fill is mostly a bucket's final size.
            self._grow(len(self.requests) + len(self.requests) // 8)
        longest = max(len(request.request_id) for request in requests)
        if longest > self.ids.dtype.itemsize // 4:
            # Exactly as wide as needed: ids take four bytes per character in every slot.
            self.ids = self.ids.astype(f"U{longest}")
        safe = [_safe(request) for request in requests]
        profiles = [request.profile if ok else None for request, ok in zip(requests, safe)]
        self.vectors.set_many(slots, profiles)
        for slot, request in zip(slots, requests, strict=True):
            self.requests[slot] = request
        at = np.array(slots, np.int64)
        self.queued_at[at] = [request.queued_at for request in requests]
        self.priority[at] = [request.priority for request in requests]
        self.ids[at] = [request.request_id for request in requests]
        self.alive[at] = True
        self.size += len(requests)
        self.unsafe += safe.count(False)
        return slots

    def take(self, slot: int) -> None:
        request = self.requests[slot]
        assert request is not None
        self.vectors.clear(slot)
        self.requests[slot], self.alive[slot] = None, False
        self.free.append(slot)
        self.size -= 1
        self.unsafe -= not _safe(request)

    def score_newcomer(self, profile: Profile | None) -> ScoreBlock:
        """The newcomer (in slot 0) against every slot."""
        if self.scratch_uses > _REBUILD_AFTER * len(self.requests) + _REBUILD_AFTER**2:
            self._rebuild()
        self.scratch_uses += 1
        self.vectors.set(0, profile)
        return self.vectors.block(np.zeros(1, np.int64), len(self.requests))

    def _rebuild(self) -> None:
        """Forget the terms newcomers brought: vocabularies only ever grow (`SparseTerms`)."""
        vectors = ProfileVectors(self.vectors.weights, self.vectors.text_model)
        vectors.reserve(len(self.alive))
        for slot, request in enumerate(self.requests):
            if request is not None:
                vectors.set(slot, _scored_profile(request))
        self.vectors, self.scratch_uses = vectors, 0

    def _grow(self, capacity: int) -> None:
        extra = capacity - len(self.alive)
        self.queued_at = np.concatenate([self.queued_at, np.zeros(extra)])
        self.priority = np.concatenate([self.priority, np.zeros(extra, np.int64)])
        self.ids = np.concatenate([self.ids, np.zeros(extra, self.ids.dtype)])
        self.alive = np.concatenate([self.alive, np.zeros(extra, np.bool_)])
        self.vectors.reserve(capacity)


class PartnerIndex:
    """A `pair`/`group` pool's waiting requests as vectors, grouped by criteria bucket.

    Args:
        config: `match_on`, `relax_after_s`, `weights`, `min_score` and `chaos` are used.

    Example:
        >>> index = PartnerIndex(config=PoolConfig(match_on=["level"]))
        >>> index.add(waiting_request)  # doctest: +SKIP
        >>> search = index.search(newcomer, now)  # doctest: +SKIP
        >>> next(search.ranked())  # the best candidate and its exact score  # doctest: +SKIP
    """

    def __init__(self, *, config: PoolConfig) -> None:
        self.config = config
        self._buckets: dict[BucketKey, _Bucket] = {}
        self._located: dict[str, int] = {}
        """Each request's bucket number and slot as one int (`_SLOT_BITS`): a (bucket,
        slot) tuple would cost 72 bytes more per waiting request."""
        self._numbered: dict[int, _Bucket] = {}
        self._next_number = 0
        self._by_user: dict[str, str | list[str]] = {}
        """Each user's waiting request id, or ids when they have more than one (rare: the
        engine replaces a user's request with their newer one). A list each would cost
        80 bytes per waiting request."""
        self._by_value: list[dict[object, set[BucketKey]]] = [{} for _ in config.match_on]
        weights = [weight for weight in config.weights.values() if weight > 0]
        self._usable = all(_SAFE_RANGE[0] <= weight <= _SAFE_RANGE[1] for weight in weights)

    def __len__(self) -> int:
        return len(self._located)

    def add(self, request: RequestState) -> None:
        self.remove(request.request_id)
        key = bucket_key(self.config, request)
        bucket = self._bucket(key, request)
        self._located[request.request_id] = bucket.number << _SLOT_BITS | bucket.put(request)
        self._add_to_user(request)

    def add_buckets(self, buckets: Mapping[BucketKey, Mapping[str, RequestState]]) -> None:
        """`add` for many requests with distinct ids, grouped by `bucket_key` (a pool indexed whole).

        At recovery this is most of rebuilding a large pool: one pass per bucket and
        feature instead of one per request (docs/performance.md, "Recovery and memory").
        """
        for key, by_id in buckets.items():
            if not by_id:
                continue
            for request_id in by_id:
                self.remove(request_id)
            members = list(by_id.values())
            bucket = self._bucket(key, members[0])
            at = bucket.number << _SLOT_BITS
            for request, slot in zip(members, bucket.put_many(members), strict=True):
                self._located[request.request_id] = at | slot
                self._add_to_user(request)

    def _bucket(self, key: BucketKey, member: RequestState) -> _Bucket:
        """The bucket of `key`, made for `member` if it does not exist yet."""
        bucket = self._buckets.get(key)
        if bucket is None:
            values = tuple(member.criteria.get(name) for name in self.config.match_on)
            vectors = ProfileVectors(self.config.weights, TfIdfModel())
            vectors.reserve(1)
            bucket = _Bucket(values=values, vectors=vectors, number=self._next_number)
            self._buckets[key] = self._numbered[bucket.number] = bucket
            self._next_number += 1
            for position, value in enumerate(key):
                self._by_value[position].setdefault(value, set()).add(key)
        return bucket

    def remove(self, request_id: str) -> None:
        located = self._located.pop(request_id, None)
        if located is None:
            return
        bucket, slot = self._unpacked(located)
        request = bucket.requests[slot]
        assert request is not None
        bucket.take(slot)
        self._remove_from_user(request)
        if bucket.size == 0:
            key = bucket_key(self.config, request)
            del self._buckets[key]
            del self._numbered[bucket.number]
            for position, value in enumerate(key):
                keys = self._by_value[position][value]
                keys.discard(key)
                if not keys:
                    del self._by_value[position][value]

    def _add_to_user(self, request: RequestState) -> None:
        held = self._by_user.get(request.user_id)
        if held is None:
            self._by_user[request.user_id] = request.request_id
        elif isinstance(held, str):
            self._by_user[request.user_id] = [held, request.request_id]
        else:
            held.append(request.request_id)

    def _remove_from_user(self, request: RequestState) -> None:
        held = self._by_user[request.user_id]
        if isinstance(held, str):
            del self._by_user[request.user_id]
        else:
            held.remove(request.request_id)
            if len(held) == 1:
                self._by_user[request.user_id] = held[0]

    def locate(self, request_id: str) -> tuple[_Bucket, int]:
        """The bucket and slot of a waiting request."""
        return self._unpacked(self._located[request_id])

    def _unpacked(self, located: int) -> tuple[_Bucket, int]:
        return self._numbered[located >> _SLOT_BITS], located & _SLOT_MASK

    def user_requests(self, user_id: str) -> Sequence[str]:
        """Ids of the user's waiting requests."""
        held = self._by_user.get(user_id, ())
        return (held,) if isinstance(held, str) else held

    def search(self, newcomer: RequestState, now: float, *, at_least: int = 0) -> Search | None:
        """Score the newcomer against every waiting request that can agree with it now.

        Args:
            newcomer: not in the index (a request is never its own candidate anyway).
            now: decides who has waited long enough to relax a key.
            at_least: decline when fewer requests wait in the buckets that can agree.

        Returns:
            The candidates, or None when the index declines (too few, or values it
            cannot score exactly): the caller then loops over them in Python.
        """
        if not self._usable or not _safe(newcomer):
            return None
        buckets = self._agreeing(newcomer, now)
        waiting = sum(bucket.size for bucket, _ in buckets)
        if waiting < at_least or any(bucket.unsafe for bucket, _ in buckets):
            return None
        return Search(self, newcomer, now, buckets, waiting)

    def _agreeing(self, newcomer: RequestState, now: float) -> list[tuple[_Bucket, float | None]]:
        """Buckets that can agree with the newcomer, each with the wait its requests need."""
        config = self.config
        mine = [newcomer.criteria.get(name) for name in config.match_on]
        limits = [config.relax_after_s.get(name) for name in config.match_on]
        relaxed = [limit is not None and now - newcomer.queued_at >= limit for limit in limits]
        keys: set[BucketKey] | None = None
        for position, value in enumerate(mine):
            if value is None or relaxed[position]:
                continue
            # Only buckets holding this value, or no value, can agree on this key.
            index = self._by_value[position]
            found = index.get(_bucket_value(value), set()) | index.get(None, set())
            if keys is None or len(found) < len(keys):
                keys = found
        agreeing = []
        for key in self._buckets if keys is None else keys:
            bucket = self._buckets[key]
            wait: float | None = None
            for position, theirs in enumerate(bucket.values):
                value, limit = mine[position], limits[position]
                if value is None or theirs is None or same_criterion(value, theirs):
                    continue
                if limit is None or not relaxed[position]:
                    break
                wait = limit if wait is None else max(wait, limit)
            else:
                agreeing.append((bucket, wait))
        return agreeing


class Search:
    """One newcomer's candidates: their approximate scores and, on demand, exact ranks."""

    def __init__(
        self,
        index: PartnerIndex,
        newcomer: RequestState,
        now: float,
        buckets: list[tuple[_Bucket, float | None]],
        waiting: int,
    ) -> None:
        config = index.config
        self._index = index
        self.newcomer = newcomer
        self.considered = waiting
        """Requests waiting in the buckets that can agree with the newcomer now."""
        self.scored = 0
        """Those that agree with it (wait, user) and whose score was computed."""
        self._weights = config.weights
        self._min_score = config.min_score
        self._chaos = config.chaos / 10.0
        self._parts: list[tuple[_Bucket, ScoreBlock]] = []
        self._blended = np.zeros(0)
        """`chaos` times each candidate's draw."""
        self._slack = 1e-6
        """Bound on |approximate - exact score|, rounding to 6 decimals included."""
        own_slots = [index.locate(rid) for rid in index.user_requests(newcomer.user_id)]
        owners, columns, approx = [], [], []
        for bucket, wait in buckets:
            width = len(bucket.requests)
            block = bucket.score_newcomer(newcomer.profile)
            mask = bucket.alive[:width].copy()
            if wait is not None:
                mask &= now - bucket.queued_at[:width] >= wait
            mask[np.array([slot for owner, slot in own_slots if owner is bucket], np.int64)] = False
            self.scored += int(np.count_nonzero(mask))
            self._slack = max(self._slack, bucket.vectors.margin + 1e-6)
            scores = block.approx[0]
            kept = np.flatnonzero(mask & (scores >= self._min_score - self._slack))
            owners.append(np.full(len(kept), len(self._parts), np.int64))
            columns.append(kept)
            approx.append(scores[kept])
            self._parts.append((bucket, block))
        self._owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        self._column = np.concatenate(columns) if columns else np.zeros(0, np.int64)
        self._approx = np.concatenate(approx) if approx else np.zeros(0)

    def ranked(self) -> Iterator[tuple[RequestState, float]]:
        """Candidates scoring at least `min_score`, in `rank_candidates` order, with exact scores.

        Rounds rank exactly only the candidates whose approximate rank value is
        close to the best few; what a round yields ranks before everything left.
        """
        exact = np.full(len(self._approx), np.nan)
        members = np.ones(len(self._approx), np.bool_)
        if self._chaos > 0:
            # Who draws a number depends on who reaches min_score: settle the doubtful.
            doubtful = np.flatnonzero(self._approx < self._min_score + self._slack)
            exact[doubtful] = self._exact(doubtful)
            members[doubtful] = exact[doubtful] >= self._min_score
            value = self._blend(np.where(np.isnan(exact), self._approx, exact), members)
        else:
            value = self._approx.copy()
        value[~members] = -np.inf
        look = _FIRST_LOOK
        while True:
            open_count = int(np.count_nonzero(value > -np.inf))
            if open_count == 0:
                return
            if look >= open_count:
                floor = -np.inf
            else:
                floor = float(np.partition(value, len(value) - look)[len(value) - look])
                floor -= 2 * self._slack
            near = np.flatnonzero((value >= floor) & (value > -np.inf))
            unknown = near[np.isnan(exact[near])]
            if len(unknown):
                exact[unknown] = self._exact(unknown)
                if self._chaos > 0:
                    value[unknown] = self._blended[unknown] + (1.0 - self._chaos) * exact[unknown]
                else:
                    value[unknown] = exact[unknown]
                    value[unknown[exact[unknown] < self._min_score]] = -np.inf
            safe = near[(value[near] >= floor + self._slack) & (value[near] > -np.inf)]
            yield from self._in_order(safe, value, exact)
            value[safe] = -np.inf
            look *= 4

    def scored_pair(self, candidate: RequestState, score: float) -> ScoredPair:
        """`score_pair(newcomer, candidate)` for a candidate `ranked` yielded with `score`.

        The reasons come from `ProfileVectors.reasons`, worded as `score_pair` words
        them, unless the cosine it prints is within 1e-9 of where its wording changes.
        """
        bucket, slot = self._index.locate(candidate.request_id)
        vectors = bucket.vectors
        cosine = vectors.embeddings.cosine(0, slot) if EMBEDDING in vectors.weights else None
        if cosine is not None and (
            abs(cosine - _SIMILAR_COSINE) < 1e-9 or abs(cosine * 100 % 1 - 0.5) < 1e-7
        ):
            return score_pair(self.newcomer.profile, candidate.profile, self._weights)
        return ScoredPair(score, list(vectors.reasons(0, slot)))

    def _in_order(
        self, chosen: Ints, value: Floats, exact: Floats
    ) -> Iterator[tuple[RequestState, float]]:
        rows = []
        for at in chosen.tolist():
            bucket = self._parts[int(self._owner[at])][0]
            request = bucket.requests[int(self._column[at])]
            assert request is not None
            rows.append((float(value[at]), request, float(exact[at])))
        rows.sort(key=lambda row: (-row[0], -row[1].priority, row[1].queued_at, row[1].request_id))
        for _, request, score in rows:
            yield request, score

    def _blend(self, scores: Floats, members: Mask) -> Floats:
        """`rank_candidates`' blend; the draws go to the members in request_id order."""
        chosen = np.flatnonzero(members)
        draws = np.zeros(len(scores))
        if len(chosen):
            # Items are grouped by bucket, in the order of `_parts`.
            ids = np.concatenate(
                [
                    bucket.ids[self._column[self._owner == owner]]
                    for owner, (bucket, _) in enumerate(self._parts)
                ]
            )[chosen]
            draws[chosen[np.argsort(ids, kind="stable")]] = _draws(
                self.newcomer.request_id, len(chosen)
            )
        self._blended = self._chaos * draws
        return (1.0 - self._chaos) * scores + self._blended

    def _exact(self, items: Ints) -> Floats:
        """`score_pair`'s score of the newcomer with each of some candidates."""
        scores = np.zeros(len(items))
        owners = self._owner[items]
        for owner in np.unique(owners).tolist():
            here = np.flatnonzero(owners == owner)
            bucket, block = self._parts[owner]
            columns = self._column[items[here]]
            raw = _raw_scores(bucket.vectors, block, columns)
            scaled = raw * 1e6
            rounded = np.round(raw, 6)
            midway = np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < _MIDPOINT_GUARD)
            for at in midway.tolist():
                request = bucket.requests[int(columns[at])]
                assert request is not None
                rounded[at] = score_pair(
                    self.newcomer.profile, request.profile, self._weights
                ).score
            scores[here] = rounded
        return scores


def _raw_scores(vectors: ProfileVectors, block: ScoreBlock, columns: Ints) -> Floats:
    """`ProfileVectors.exact` of the block's first row, clipped but not yet rounded."""
    numerator = block.numerator[0, columns]
    denominator = block.denominator[0, columns]
    if block.embedding is not None:
        comparable = block.embedding[0, columns]
        values = np.zeros(len(columns))
        values[comparable] = vectors.embeddings.exact(
            np.zeros(int(np.count_nonzero(comparable)), np.int64), columns[comparable]
        )
        weight = vectors.weights[EMBEDDING]
        numerator = numerator + values * weight
        denominator = denominator + np.where(comparable, weight, 0.0)
    raw = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    return np.clip(raw, 0.0, 1.0)


def _draws(seed: str, count: int) -> Floats:
    """`count` times `random.Random(seed).random()`, as `rank_candidates` draws them."""
    source = random.Random(seed)
    if count <= _PYTHON_DRAWS:
        return np.array([source.random() for _ in range(count)])
    # numpy's MT19937 makes doubles as `random.Random` does, and one call draws them all.
    words = source.getstate()[1]
    bits = np.random.MT19937()
    key = np.array(words[:-1], np.uint32)
    bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": words[-1]}}
    return np.random.Generator(bits).random(count)


def _scored_profile(request: RequestState) -> Profile | None:
    # An unsafe request's bucket is never searched: keep its values out of the arrays.
    return request.profile if _safe(request) else None


def _safe(request: RequestState) -> bool:
    """Whether float64 scores of this request stay within 1e-12 of `score_pair`'s."""
    if "\x00" in request.request_id:
        return False  # numpy strings drop trailing NULs, which would change request_id order
    return _safe_profile(request.profile)


def _safe_profile(profile: Profile | None) -> bool:
    if profile is None:
        return True
    if any(isinstance(value, float) and math.isnan(value) for value in profile.attributes.values()):
        return False
    if not profile.embedding:
        return True
    # With the largest |x| inside this range the squared norm stays inside _SAFE_RANGE.
    largest = max(map(abs, profile.embedding))
    return largest == 0.0 or _SAFE_LARGEST[0] <= largest <= _SAFE_LARGEST[1]
