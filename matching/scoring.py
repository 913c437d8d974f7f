"""How well two profiles fit: a score in [0, 1] and reasons a person can read.

The score is the weighted mean of the parts both profiles have, so a pool that only
collects interests is not punished for the missing embeddings. Every part is
symmetric, which makes the score symmetric. The parts are `interests` (Jaccard),
`attributes` (share of common keys with equal values), `embedding` (cosine mapped to
[0, 1]) and the texts `facts` and `opinions` (TF-IDF cosine, `matching.text_similarity`).
`matching.profile_vectors` computes the same scores for many users at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matching.text_similarity import TfIdfModel, text_reason, text_similarity
from models.messages import Profile

__all__ = ["DEFAULT_WEIGHTS", "ScoredPair", "embedding_scale", "group_score", "score_pair"]

DEFAULT_WEIGHTS: Mapping[str, float] = {"interests": 1.0, "embedding": 1.0, "attributes": 0.5}
_MAX_LISTED = 3


class ScoredPair:
    """A score and why; `reasons` is empty when nothing was comparable."""

    __slots__ = ("reasons", "score")

    def __init__(self, score: float, reasons: list[str]) -> None:
        self.score = score
        self.reasons = reasons


def score_pair(
    left: Profile | None,
    right: Profile | None,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    *,
    text_model: TfIdfModel | None = None,
) -> ScoredPair:
    """Score two profiles.

    Args:
        left: one user's profile, or None when they gave none.
        right: the other's.
        weights: weight per part (`interests`, `embedding`, `attributes`, `facts`,
            `opinions`); missing = 0.
        text_model: document frequencies for the text parts; None weighs every term
            alike (a term-frequency cosine).

    Returns:
        The weighted mean of the comparable parts (0.0 when no part is comparable).

    Example:
        >>> score_pair(Profile(interests=["rust"]), Profile(interests=["rust", "go"])).score
        0.5
    """
    if left is None or right is None:
        return ScoredPair(0.0, [])
    total = weight_sum = 0.0
    reasons: list[str] = []
    for part, weight in weights.items():
        if weight <= 0:
            continue
        if part in _TEXT_PARTS:
            result = _text(part, left, right, text_model)
        else:
            result = _PARTS[part](left, right) if part in _PARTS else None
        if result is None:
            continue
        value, reason = result
        total += weight * value
        weight_sum += weight
        if reason:
            reasons.append(reason)
    if weight_sum == 0:
        return ScoredPair(0.0, [])
    return ScoredPair(round(min(1.0, max(0.0, total / weight_sum)), 6), reasons)


def group_score(pair_scores: Sequence[float]) -> float:
    """A group's score: the mean of its pairwise scores."""
    return round(sum(pair_scores) / len(pair_scores), 6) if pair_scores else 0.0


def _interests(left: Profile, right: Profile) -> tuple[float, str | None] | None:
    mine = {item.strip().lower() for item in left.interests if item.strip()}
    theirs = {item.strip().lower() for item in right.interests if item.strip()}
    if not mine or not theirs:
        return None
    shared = sorted(mine & theirs)
    reason = f"shared interests: {', '.join(shared[:_MAX_LISTED])}" if shared else None
    return len(shared) / len(mine | theirs), reason


def _attributes(left: Profile, right: Profile) -> tuple[float, str | None] | None:
    common = sorted(set(left.attributes) & set(right.attributes))
    if not common:
        return None
    same = [key for key in common if left.attributes[key] == right.attributes[key]]
    reason = None
    if same:
        reason = "same " + ", ".join(f"{key}: {left.attributes[key]}" for key in same[:_MAX_LISTED])
    return len(same) / len(common), reason


def embedding_scale(largest: float) -> float:
    """What to divide an embedding by before its norm, given its largest |x|.

    Squares of values under 1e-100 are subnormal (the norm loses digits) and of
    values over 1e100 overflow; dividing by the largest |x| changes no cosine.
    """
    if largest and not 1e-100 <= largest <= 1e100:
        return largest
    return 1.0


def _embedding(left: Profile, right: Profile) -> tuple[float, str | None] | None:
    a, b = left.embedding, right.embedding
    if not a or not b or len(a) != len(b):
        return None
    a_scale, b_scale = embedding_scale(max(map(abs, a))), embedding_scale(max(map(abs, b)))
    if a_scale != 1.0 or b_scale != 1.0:
        a, b = [x / a_scale for x in a], [y / b_scale for y in b]
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    if norms == 0:
        return None
    cosine = max(-1.0, min(1.0, dot / norms))
    reason = f"similar profiles (cosine {cosine:.2f})" if cosine >= 0.5 else None
    return (cosine + 1.0) / 2.0, reason


def _text(
    part: str, left: Profile, right: Profile, model: TfIdfModel | None
) -> tuple[float, str | None] | None:
    match = text_similarity(getattr(left, part), getattr(right, part), model)
    if match is None:
        return None
    return match.score, text_reason(part, match.shared)


_PARTS = {"interests": _interests, "attributes": _attributes, "embedding": _embedding}
_TEXT_PARTS = frozenset({"facts", "opinions"})
