"""`start_matching` for `batch` pools: pair everyone waiting for the best total score, then seat them.

Matching. Up to `EXACT_LIMIT` (1000) matched attendees the pairs are a maximum-weight
matching of the complete graph (`matching.blossom`, exact, about 3 s at 1000). Above
that they come from `matching.approximate` (greedy plus swaps, measured 0.5% to 1.3%
below the optimum on pools of random profiles).

Chaos. Each pair's weight is `(1 - c) * score + c * u` with `c = chaos / 10` and `u`
uniform in [0, 1), drawn from the caller's `random.Random`: 0 is strictly best, and at
10 the weights no longer depend on the profiles, so by symmetry every pairing is equally
likely. Reported scores are always the true ones.

Who can sit, the odd one out and the seating rules are in `matching.seating`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from matching.approximate import approximate_matching
from matching.arrays import Floats, IntMatrix
from matching.blossom import exact_matching
from matching.profile_vectors import pair_reasons, score_matrix
from matching.scoring import group_score
from matching.seating import place_odd_one, seat_groups, seatable_people
from matching.text_similarity import TfIdfModel
from models.messages import PoolConfig, Profile, Seat

__all__ = [
    "EXACT_LIMIT",
    "Attendee",
    "BatchJob",
    "BatchPair",
    "BatchResult",
    "BatchStats",
    "start_matching",
]

EXACT_LIMIT = 1000
"""Largest number of matched attendees solved exactly (about 3 s at 1000 on 2 cores)."""
_SCALE = 1_000_000


@dataclass(frozen=True, slots=True)
class Attendee:
    """Someone waiting in a batch pool."""

    user_id: str
    profile: Profile | None = None


@dataclass(frozen=True, slots=True)
class BatchPair:
    """A pair, or the one trio; `score` is the mean of its pairwise scores."""

    members: tuple[str, ...]
    score: float
    reasons: tuple[str, ...]
    table_no: int | None


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What the run did; `pairs_scored` counts pair scores computed."""

    attendees: int
    matched: int
    seated: int
    unseated: int
    pairs_scored: int
    total_score: float
    method: Literal["exact", "approximate"]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Pairs (with the trio, if any), seats, who got no seat, and stats."""

    pairs: tuple[BatchPair, ...]
    seats: tuple[Seat, ...]
    unseated: tuple[str, ...]
    stats: BatchStats


@dataclass(frozen=True, slots=True)
class BatchJob:
    """One `start_matching` run of a pool, with everything it reads, to compute off the loop.

    Example:
        >>> job = BatchJob(pool_id="p", run=1, attendees=(), config=PoolConfig(mode="batch"),
        ...                seed="p/1")
        >>> job.compute().stats.attendees
        0
    """

    pool_id: str
    run: int
    attendees: tuple[Attendee, ...]
    config: PoolConfig
    seed: str
    """Seeds the run's random draws (chaos), so a restarted run draws the same."""

    def compute(self) -> BatchResult:
        """Pair and seat the attendees: pure, and safe to call from another thread."""
        return start_matching(self.attendees, self.config, rng=random.Random(self.seed))


def start_matching(
    attendees: Sequence[Attendee],
    config: PoolConfig,
    *,
    rng: random.Random,
    text_model: TfIdfModel | None = None,
    exact_limit: int = EXACT_LIMIT,
) -> BatchResult:
    """Pair and seat everyone waiting in a batch pool (see the module docstring for the rules).

    Args:
        attendees: in the order that decides who is matched when seats run short.
        config: `weights`, `chaos`, `tables` and `seats_per_table` are used.
        rng: the only source of randomness, so a run can be replayed.
        text_model: document frequencies for `facts`/`opinions`; fitted on the
            attendees when None.
        exact_limit: largest matched count solved exactly.

    Returns:
        The pairs, the seats, who ends unseated, and stats.

    Raises:
        ValueError: a user_id appears twice.

    Example:
        >>> people = [Attendee("a", Profile(interests=["go"])), Attendee("b"),
        ...           Attendee("c", Profile(interests=["go", "rust"]))]
        >>> result = start_matching(people, PoolConfig(mode="batch", tables=2, seats_per_table=2),
        ...                         rng=random.Random(1))
        >>> [(pair.members, pair.score) for pair in result.pairs], result.unseated
        ([(('a', 'c'), 0.5)], ('b',))
    """
    user_ids = [attendee.user_id for attendee in attendees]
    if len(set(user_ids)) != len(user_ids):
        raise ValueError("attendees: each user_id must appear once")
    capacity = seatable_people(config)
    chosen = list(attendees[:capacity]) if capacity is not None else list(attendees)
    model = text_model or TfIdfModel.fit(
        getattr(attendee.profile, part)
        for attendee in chosen
        if attendee.profile is not None
        for part in ("facts", "opinions")
    )
    scores = score_matrix([attendee.profile for attendee in chosen], config.weights, model)
    weights = _blend(scores, config.chaos / 10.0, rng)
    exact = len(chosen) <= exact_limit
    matched = exact_matching(weights) if exact else approximate_matching(weights)
    groups: list[tuple[int, ...]] = [tuple(pair) for pair in matched]
    paired = {member for pair in matched for member in pair}
    spare = [position for position in range(len(chosen)) if position not in paired]
    trio = place_odd_one(spare[0], matched, weights) if spare and matched else None
    layout = seat_groups(groups, trio, config)
    alone = spare if trio is None else []
    unseated = [user_ids[position] for position in sorted(layout.unseated + alone)]
    unseated += user_ids[len(chosen) :]
    pairs = tuple(
        _describe(group, layout.tables.get(group), chosen, scores, config, model)
        for group in layout.order
    )
    seats = tuple(
        Seat(user_id=chosen[position].user_id, table_no=table_no, seat_no=seat_no)
        for position, (table_no, seat_no) in sorted(layout.seats.items(), key=lambda item: item[1])
    )
    stats = BatchStats(
        attendees=len(attendees),
        matched=sum(len(pair.members) for pair in pairs),
        seated=len(seats),
        unseated=len(unseated),
        pairs_scored=len(chosen) * (len(chosen) - 1) // 2,
        total_score=round(sum(pair.score for pair in pairs), 6),
        method="exact" if exact else "approximate",
    )
    return BatchResult(pairs, seats, tuple(unseated), stats)


def _blend(scores: Floats, chaos: float, rng: random.Random) -> IntMatrix:
    blended = scores
    if chaos > 0:
        noise = np.triu(np.random.default_rng(rng.getrandbits(64)).random(scores.shape), 1)
        blended = (1.0 - chaos) * scores + chaos * (noise + noise.T)
    weights = np.rint(blended * _SCALE).astype(np.int64)
    np.fill_diagonal(weights, 0)
    return weights


def _describe(
    group: tuple[int, ...],
    table_no: int | None,
    chosen: list[Attendee],
    scores: Floats,
    config: PoolConfig,
    model: TfIdfModel,
) -> BatchPair:
    pair_scores = [float(scores[a, b]) for index, a in enumerate(group) for b in group[index + 1 :]]
    reasons: list[str] = []
    first, second = group[0], group[1]
    sources = [(first, second)]
    if len(group) == 3:
        odd = group[2]
        sources.append((odd, first if scores[odd, first] >= scores[odd, second] else second))
    for left, right in sources:
        for reason in pair_reasons(
            chosen[left].profile, chosen[right].profile, config.weights, model
        ):
            if reason not in reasons:
                reasons.append(reason)
    return BatchPair(
        members=tuple(chosen[member].user_id for member in group),
        score=group_score(pair_scores),
        reasons=tuple(reasons),
        table_no=table_no,
    )
