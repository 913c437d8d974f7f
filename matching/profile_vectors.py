"""Profiles as vectors: every pair's score and reasons, computed for many users at once.

Scores follow `matching.scoring.score_pair` (the weighted mean of the comparable
parts, rounded to 6 decimals); `ProfileVectors` computes the scores of some users
against every user in one vectorised pass. Ties and lists are `matching.recommend`'s
business; `matching.batch` takes the whole matrix from `score_matrix`.

Embeddings are compared in float32 for speed, but that pass is only a filter: every
score that can reach a list is recomputed in float64 (`ProfileVectors.exact`) from
values that do not depend on which users asked, so every score is symmetric and the
same whichever path computed it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from matching.arrays import Floats, Ints, Mask
from matching.embeddings import EmbeddingStore
from matching.sparse_terms import SparseTerms
from matching.text_similarity import TfIdfModel, shared_terms, text_reason
from models.messages import Profile

__all__ = [
    "BLOCK_CELLS",
    "EMBEDDING",
    "SCORED_PARTS",
    "TEXT_PARTS",
    "ProfileVectors",
    "ScoreBlock",
    "finish_scores",
    "pair_reasons",
    "score_matrix",
]

SCORED_PARTS = ("interests", "attributes", "embedding", "facts", "opinions")
"""Parts a weight can name."""
EMBEDDING = "embedding"
TEXT_PARTS = ("facts", "opinions")
BLOCK_CELLS = 1 << 21
"""Scores computed at once (rows x users): bounds memory at about 100 MB."""
_SIMILAR_COSINE = 0.5
_MAX_LISTED = 3


def pair_reasons(
    left: Profile | None,
    right: Profile | None,
    weights: Mapping[str, float],
    text_model: TfIdfModel | None = None,
) -> list[str]:
    """Why two profiles fit: `score_pair`'s reasons plus shared text terms.

    Args:
        left: one profile (None = no profile).
        right: the other.
        weights: parts with a weight > 0 give reasons, in the weights' order.
        text_model: document frequencies for `facts` and `opinions`.

    Example:
        >>> pair_reasons(Profile(opinions=["remote work rocks"]),
        ...              Profile(opinions=["I love remote work"]), {"opinions": 1.0})
        ['similar opinions on remote work']
    """
    vectors = ProfileVectors(weights, text_model or TfIdfModel())
    vectors.reserve(2)
    vectors.set(0, left)
    vectors.set(1, right)
    return list(vectors.reasons(0, 1))


def score_matrix(
    profiles: Sequence[Profile | None],
    weights: Mapping[str, float],
    text_model: TfIdfModel | None = None,
) -> Floats:
    """Every pair's score, as `TopKIndex` scores it, in one symmetric matrix.

    Args:
        profiles: one per user; None = no profile.
        weights: `PoolConfig.weights`.
        text_model: document frequencies for `facts` and `opinions`.

    Returns:
        An n x n float64 array with 0 on the diagonal.
    """
    count = len(profiles)
    vectors = ProfileVectors(weights, text_model or TfIdfModel())
    vectors.reserve(count)
    for slot, profile in enumerate(profiles):
        vectors.set(slot, profile)
    scores = np.zeros((count, count))
    step = max(1, BLOCK_CELLS // max(count, 1))
    for start in range(0, count, step):
        queries = np.arange(start, min(count, start + step), dtype=np.int64)
        scores[queries] = finish_scores(vectors.block(queries, count, precise=True).approx)
    # float64 products summed in a different order per side can differ in the last bit
    scores = np.triu(scores, 1)
    return scores + scores.T


def finish_scores(raw: Floats) -> Floats:
    return np.clip(raw, 0.0, 1.0).round(6)


class ScoreBlock(NamedTuple):
    """Scores of some users (rows) against every slot (columns)."""

    slots: Ints
    approx: Floats
    """Within `ProfileVectors.margin` of the exact score; -inf where no candidate."""
    numerator: Floats
    """Weighted sum of the exact sparse parts."""
    denominator: Floats
    """Weights of the comparable sparse parts."""
    embedding: Mask | None
    """Where embeddings are comparable; None when the embedding part is off."""


class ProfileVectors:
    """Every slot's profile as vectors, and the scores of some slots against all."""

    def __init__(self, weights: Mapping[str, float], text_model: TfIdfModel) -> None:
        self.weights = {
            part: weight for part, weight in weights.items() if part in SCORED_PARTS and weight > 0
        }
        self.text_model = text_model
        self.profiles: list[Profile | None] = []
        self.sparse = {name: SparseTerms(binary=True) for name in ("interests", "keys", "values")}
        self.sparse.update((part, SparseTerms()) for part in TEXT_PARTS)
        self.texts: dict[str, dict[int, dict[str, float]]] = {part: {} for part in TEXT_PARTS}
        self.embeddings = EmbeddingStore()

    @property
    def margin(self) -> float:
        """Bound on |approx - exact| twice over: float32 rounding grows with the dimension."""
        return 2e-6 + (self.embeddings.largest + 2) * 1.2e-7

    def reserve(self, capacity: int) -> None:
        if capacity <= len(self.profiles):
            return
        self.profiles.extend([None] * (capacity - len(self.profiles)))
        for feature in self.sparse.values():
            feature.reserve(capacity)
        self.embeddings.reserve(capacity)

    def set(self, slot: int, profile: Profile | None) -> None:
        self.clear(slot)
        self.profiles[slot] = profile
        if profile is None:
            return
        if "interests" in self.weights:
            self.sparse["interests"].set(slot, dict.fromkeys(_interests(profile), 1.0))
        if "attributes" in self.weights:
            # Tuples hash and compare like their values, so `1 == 1.0 == True` as in score_pair.
            self.sparse["keys"].set(slot, dict.fromkeys(profile.attributes, 1.0))
            self.sparse["values"].set(slot, dict.fromkeys(profile.attributes.items(), 1.0))
        if EMBEDDING in self.weights:
            self.embeddings.set(slot, profile.embedding)
        for part in TEXT_PARTS:
            if part in self.weights:
                vector = self.text_model.vector(getattr(profile, part))
                self.sparse[part].set(slot, vector)
                self.texts[part][slot] = vector

    def set_many(self, slots: Sequence[int], profiles: Sequence[Profile | None]) -> None:
        """`set` for many slots, each feature filled in one pass (a pool indexed whole)."""
        for slot, profile in zip(slots, profiles, strict=True):
            if self.profiles[slot] is not None:  # a slot without a profile holds nothing
                self.clear(slot)
            self.profiles[slot] = profile
        present = [(slot, profile) for slot, profile in zip(slots, profiles) if profile is not None]
        at = [slot for slot, _ in present]
        if "interests" in self.weights:
            interests = [dict.fromkeys(_interests(profile), 1.0) for _, profile in present]
            self.sparse["interests"].set_many(at, interests)
        if "attributes" in self.weights:
            keys = [dict.fromkeys(profile.attributes, 1.0) for _, profile in present]
            values = [dict.fromkeys(profile.attributes.items(), 1.0) for _, profile in present]
            self.sparse["keys"].set_many(at, keys)
            self.sparse["values"].set_many(at, values)
        if EMBEDDING in self.weights:
            for slot, profile in present:
                self.embeddings.set(slot, profile.embedding)
        for part in TEXT_PARTS:
            if part in self.weights:
                vectors = [self.text_model.vector(getattr(profile, part)) for _, profile in present]
                self.sparse[part].set_many(at, vectors)
                self.texts[part].update(zip(at, vectors, strict=True))

    def clear(self, slot: int) -> None:
        self.profiles[slot] = None
        for feature in self.sparse.values():
            feature.clear(slot)
        for texts in self.texts.values():
            texts.pop(slot, None)
        self.embeddings.clear(slot)

    def block(self, queries: Ints, width: int, *, precise: bool = False) -> ScoreBlock:
        # In place where possible: at bulk sizes these arrays are what costs time.
        numerator = np.zeros((len(queries), width))
        denominator = np.zeros((len(queries), width))
        for part, weight in self.weights.items():
            scored = None if part == EMBEDDING else self._sparse_part(part, queries, width)
            if scored is not None:
                values, comparable = scored
                values *= weight
                numerator += values
                np.add(denominator, weight, out=denominator, where=comparable)
        total, weight_sum, comparable_embeddings = numerator.copy(), denominator, None
        if EMBEDDING in self.weights and self.embeddings.groups:
            values, comparable_embeddings = self.embeddings.block(queries, width, precise=precise)
            weight = self.weights[EMBEDDING]
            total = values
            total *= weight
            total += numerator
            weight_sum = denominator.copy()
            np.add(weight_sum, weight, out=weight_sum, where=comparable_embeddings)
        approx = np.divide(total, weight_sum, out=total, where=weight_sum > 0)
        return ScoreBlock(queries, approx, numerator, denominator, comparable_embeddings)

    def exact(self, block: ScoreBlock, rows: Ints, columns: Ints) -> Floats:
        """Final scores of some cells of a block (row index, column slot)."""
        numerator = block.numerator[rows, columns]
        denominator = block.denominator[rows, columns]
        if block.embedding is not None:
            comparable = block.embedding[rows, columns]
            values = np.zeros(len(rows))
            values[comparable] = self.embeddings.exact(
                block.slots[rows[comparable]], columns[comparable]
            )
            values *= self.weights[EMBEDDING]
            numerator = numerator + values
            denominator = denominator.copy()
            np.add(denominator, self.weights[EMBEDDING], out=denominator, where=comparable)
        raw = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
        return finish_scores(raw)

    def reasons(self, viewer: int, other: int) -> tuple[str, ...]:
        """Why two slots fit, worded as `matching.scoring` words it, plus shared text terms."""
        left, right = self.profiles[viewer], self.profiles[other]
        if left is None or right is None:
            return ()
        reasons: list[str] = []
        for part in self.weights:
            if part == "interests":
                # Recomputed for the few pairs that match rather than kept for every slot:
                # a set per waiting request was a fifth of the index's memory.
                shared = sorted(_interests(left) & _interests(right))
                if shared:
                    reasons.append(f"shared interests: {', '.join(shared[:_MAX_LISTED])}")
            elif part == "attributes":
                mine, theirs = left.attributes, right.attributes
                same = [
                    key for key in sorted(mine.keys() & theirs.keys()) if mine[key] == theirs[key]
                ]
                if same:
                    listed = ", ".join(f"{key}: {mine[key]}" for key in same[:_MAX_LISTED])
                    reasons.append(f"same {listed}")
            elif part == EMBEDDING:
                cosine = self.embeddings.cosine(viewer, other)
                if cosine is not None and cosine >= _SIMILAR_COSINE:
                    reasons.append(f"similar profiles (cosine {cosine:.2f})")
            else:
                texts = self.texts[part]
                terms = shared_terms(texts.get(viewer, {}), texts.get(other, {}))
                reason = text_reason(part, terms)
                reasons.extend([reason] if reason else [])
        return tuple(reasons)

    def _sparse_part(self, part: str, queries: Ints, width: int) -> tuple[Floats, Mask] | None:
        """A sparse part's values (0 where not comparable) and where it is comparable."""
        if part == "attributes":
            common = self.sparse["keys"].dot(queries, width)
            if common is None:
                return None
            same = self.sparse["values"].dot(queries, width)
            assert same is not None  # a slot with keys has values
            comparable = common > 0
            return np.divide(same, common, out=same, where=comparable), comparable
        feature = self.sparse[part]
        shared = feature.dot(queries, width)
        if shared is None:
            return None
        mine, theirs = feature.counts[queries][:, None], feature.counts[None, :width]
        comparable = (mine > 0) & (theirs > 0)
        if part != "interests":
            return np.clip(shared, 0.0, 1.0, out=shared), comparable
        union = np.add(mine, theirs, dtype=np.float64)
        union -= shared
        return np.divide(shared, union, out=shared, where=comparable), comparable


def _interests(profile: Profile) -> set[str]:
    """Interests compared case-insensitively, blanks left out, as `matching.scoring` does.

    Interned: each criteria bucket keeps its own vocabulary, and without it every
    bucket would hold its own copy of each lowered interest.
    """
    return {sys.intern(item.strip().lower()) for item in profile.interests if item.strip()}
