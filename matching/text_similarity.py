"""Lexical similarity of profile texts (`facts`, `opinions`): TF-IDF cosine with readable overlaps.

A text becomes its content words plus pairs of adjacent content words ("remote work"),
so that a shared phrase counts for more than two shared words. Term frequencies are
damped (`1 + ln tf`) and weighted by inverse document frequency.

Document frequencies come from a snapshot (`TfIdfModel.fit`), not from a live count:
with live counts every join would change the score of every pair sharing a word with
the newcomer, and no incremental top-k list could keep up. A word the snapshot never
saw gets the largest idf, as if it were in no document; the unfitted model weights
every word alike, which makes the score a plain term-frequency cosine.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "STOP_WORDS",
    "TextMatch",
    "TfIdfModel",
    "shared_terms",
    "terms",
    "text_reason",
    "text_similarity",
]

_STOP_WORD_TEXT = """
    about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing don down during each either
    even ever few for from further get gets got had has have having he her here hers herself
    him himself his how however if in into is isn it its itself just least less let like ll
    lot lots make many may me might more most much must my myself no nor not now of off often
    on once one only or other our ours ourselves out over own quite rather re really same say
    she should since so some such than that the their theirs them themselves then there these
    they thing things think this those though through to too under until up upon us ve very
    was we were what when where whether which while who whom whose why will with would yes yet
    you your yours yourself yourselves believe feel guess pretty actually always never
"""
STOP_WORDS: frozenset[str] = frozenset(_STOP_WORD_TEXT.split())
"""Words too common to say anything about a person; they also break phrases apart."""

# Words, or a punctuation mark that ends a phrase; apostrophes and hyphens join words.
_TOKEN = re.compile(r"[^\W_]+|[^\w\s'\u2019-]")
_MAX_LISTED = 3


def terms(texts: Sequence[str]) -> list[str]:
    """The terms of some texts: content words and adjacent content-word pairs.

    Args:
        texts: e.g. a profile's `opinions`; a phrase never spans two texts.

    Returns:
        Lower-cased terms in order of appearance, repeats kept.

    Example:
        >>> terms(["I think remote work is great"])
        ['remote', 'work', 'remote work', 'great']
    """
    found: list[str] = []
    for text in texts:
        previous: str | None = None
        for token in _TOKEN.findall(text.lower()):
            if not token.isalnum() or len(token) < 2 or token in STOP_WORDS:
                previous = None
                continue
            found.append(token)
            if previous is not None:
                found.append(f"{previous} {token}")
            previous = token
    return found


class TfIdfModel:
    """Inverse document frequencies frozen at fit time.

    Args:
        document_frequencies: in how many documents each term occurs.
        documents: how many documents were counted.

    Raises:
        ValueError: a count is negative or above `documents`.
    """

    __slots__ = ("_documents", "_frequencies", "_unseen_idf")

    def __init__(
        self, *, document_frequencies: Mapping[str, int] | None = None, documents: int = 0
    ) -> None:
        frequencies = dict(document_frequencies or {})
        if documents < 0:
            raise ValueError("documents must be >= 0")
        if any(not 0 <= count <= documents for count in frequencies.values()):
            raise ValueError("every document frequency must be in [0, documents]")
        self._documents = documents
        self._frequencies = frequencies
        self._unseen_idf = self._idf_of(0)

    @classmethod
    def fit(cls, documents: Iterable[Sequence[str]]) -> TfIdfModel:
        """Count document frequencies.

        Args:
            documents: each one a list of texts (one user's `facts`, say); empty ones count.

        Example:
            >>> model = TfIdfModel.fit([["rust is fun"], ["rust and go"], ["golf"]])
            >>> model.idf("rust") < model.idf("golf")
            True
        """
        counts: Counter[str] = Counter()
        total = 0
        for texts in documents:
            total += 1
            counts.update(set(terms(texts)))
        return cls(document_frequencies=counts, documents=total)

    @property
    def documents(self) -> int:
        """How many documents the model was fitted on (0 = unfitted)."""
        return self._documents

    def idf(self, term: str) -> float:
        """Smoothed inverse document frequency; >= 1, largest for unseen terms."""
        count = self._frequencies.get(term)
        return self._unseen_idf if count is None else self._idf_of(count)

    def vector(self, texts: Sequence[str]) -> dict[str, float]:
        """The L2-normalised TF-IDF vector of some texts; empty when they hold no term."""
        counts = Counter(terms(texts))
        weights = {term: (1.0 + math.log(tf)) * self.idf(term) for term, tf in counts.items()}
        norm = math.sqrt(sum(weight * weight for weight in weights.values()))
        return {term: weight / norm for term, weight in weights.items()} if norm > 0 else {}

    def _idf_of(self, count: int) -> float:
        return math.log((1 + self._documents) / (1 + count)) + 1.0


@dataclass(frozen=True, slots=True)
class TextMatch:
    """A text similarity in [0, 1] and the terms that contribute most to it."""

    score: float
    shared: tuple[str, ...]


def text_similarity(
    left: Sequence[str], right: Sequence[str], model: TfIdfModel | None = None
) -> TextMatch | None:
    """Cosine of two texts' TF-IDF vectors.

    Args:
        left: one user's texts (e.g. `opinions`).
        right: the other user's.
        model: document frequencies; None weights every term alike.

    Returns:
        The match, or None when either side has no term (nothing to compare).

    Example:
        >>> text_similarity(["Remote work is great"], ["I love remote work"]).shared
        ('remote work',)
    """
    model = model or TfIdfModel()
    mine, theirs = model.vector(left), model.vector(right)
    if not mine or not theirs:
        return None
    common = sorted(mine.keys() & theirs.keys())
    score = sum(mine[term] * theirs[term] for term in common)
    return TextMatch(min(1.0, max(0.0, score)), tuple(shared_terms(mine, theirs)))


def shared_terms(
    left: Mapping[str, float], right: Mapping[str, float], limit: int = _MAX_LISTED
) -> list[str]:
    """The phrases two vectors share, largest contribution to their cosine first.

    Shared pairs of adjacent words join into phrases ("meetups beat" and "beat
    conferences" make "meetups beat conferences"), and a phrase stands in for its
    words: "remote work" is listed, "remote" and "work" not. A phrase's weight is
    the sum of its terms' contributions.

    Example:
        >>> vector = TfIdfModel().vector(["static typing saves time", "I like golf"])
        >>> shared_terms(vector, vector)
        ['static typing saves time', 'golf']
    """
    shared = left.keys() & right.keys()
    contribution = {term: left[term] * right[term] for term in shared}
    pairs = sorted((term for term in shared if " " in term), key=lambda t: (-contribution[t], t))
    phrases = _joined([term.split(" ") for term in pairs])
    covered = {word for phrase in phrases for word in phrase}
    phrases += [[term] for term in shared if " " not in term and term not in covered]

    def weight(phrase: list[str]) -> float:
        terms = phrase + [" ".join(phrase[at : at + 2]) for at in range(len(phrase) - 1)]
        return sum(contribution.get(term, 0.0) for term in terms)

    ranked = sorted(phrases, key=lambda phrase: (-weight(phrase), phrase))
    return [" ".join(phrase) for phrase in ranked[:limit]]


def _joined(phrases: list[list[str]]) -> list[list[str]]:
    """Join phrases where one ends with the word the next begins with."""
    joined = [list(phrase) for phrase in phrases]
    merged = True
    while merged:
        merged = False
        for first in joined:
            follower = next((p for p in joined if p is not first and p[0] == first[-1]), None)
            if follower is not None and first[-1] not in follower[1:]:
                first.extend(follower[1:])
                joined.remove(follower)
                merged = True
                break
    return joined


def text_reason(part: str, shared: Sequence[str]) -> str | None:
    """A reason a person can read, e.g. "similar opinions on remote work"; None if nothing shared."""
    if not shared:
        return None
    listed = ", ".join(shared)
    if part == "opinions":
        return f"similar opinions on {listed}"
    if part == "facts":
        return f"both mention {listed}"
    return f"similar {part}: {listed}"
