"""Top-k recommendation lists for `recommend` pools, kept exact under joins, leaves and updates.

`TopKIndex` holds every active user's features and top-k list. A join scores the
newcomer against everyone in one vectorised pass (`matching.profile_vectors`), builds
the newcomer's list and touches another user's list only when the newcomer beats its
k-th entry (the bump rule). A leave refills only the lists that held the leaver. An
update is a leave and a join that keeps the user's identity. After any sequence of
these the lists equal a from-scratch computation (`rematch`), and each call says
exactly whose lists changed. Ties rank by user_id.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from matching.arrays import Floats, Ints, Mask
from matching.profile_vectors import BLOCK_CELLS, TEXT_PARTS, ProfileVectors, ScoreBlock
from matching.text_similarity import TfIdfModel
from models.messages import PoolConfig, Profile

__all__ = ["Recommendation", "TopKIndex"]

_EXACT_SELECTION_WIDTH = 4096
_RERANK_IN_PLACE = 32
_JOIN_CHUNK = 1024


class Recommendation(NamedTuple):
    """One entry of a user's list (CONTRACT section 1.7, `top`)."""

    user_id: str
    score: float
    reasons: tuple[str, ...]


class _Entry(NamedTuple):
    score: float
    slot: int
    reasons: tuple[str, ...]


class TopKIndex:
    """The top-k lists of a `recommend` pool.

    Every mutation returns the user_ids, sorted, whose list differs from before the
    call (a newcomer always, a user who left never), so the caller re-emits exactly
    those. Lists hold only users scoring at least `config.min_score`; `match_on` and
    priorities are the caller's business.

    A join reads every present user's float32 embedding once (15 MB at 10,000 users
    of 384 dimensions), so it is memory-bound; messages that arrive together should
    go through one `join_many`, which reads it once for all of them.

    Args:
        config: `top_k`, `min_score` and `weights` are used (scores as
            `matching.scoring.score_pair` with the same `text_model`).
        text_model: document frequencies for the text parts; `rematch` refits them.

    Example:
        >>> index = TopKIndex(config=PoolConfig(mode="recommend", top_k=1))
        >>> index.join("u-1", Profile(interests=["rust"]))
        ['u-1']
        >>> index.join("u-2", Profile(interests=["rust", "go"]))
        ['u-1', 'u-2']
        >>> index.top("u-1")
        [Recommendation(user_id='u-2', score=0.5, reasons=('shared interests: rust',))]
    """

    def __init__(self, *, config: PoolConfig, text_model: TfIdfModel | None = None) -> None:
        self._config = config
        self._vectors = ProfileVectors(config.weights, text_model or TfIdfModel())
        self._slot_of: dict[str, int] = {}
        self._user_of: list[str] = []
        self._free: list[int] = []
        self._ordered: list[str] = []
        self._rank: Ints = np.zeros(0, np.int64)
        """Position of each slot's user_id in `_ordered`: ties rank by it."""
        self._alive: Mask = np.zeros(0, np.bool_)
        self._bar: Floats = np.zeros(0)
        """The score a newcomer must reach to be considered for each slot's list."""
        self._lists: list[list[_Entry]] = []
        self._listers: list[set[int]] = []
        """Who lists each slot: the lists a leave or an update must refill."""
        self._before: dict[str, tuple[_Entry, ...] | None] = {}
        self._stale: set[int] = set()

    @property
    def config(self) -> PoolConfig:
        return self._config

    @property
    def text_model(self) -> TfIdfModel:
        return self._vectors.text_model

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._slot_of

    def top(self, user_id: str) -> list[Recommendation]:
        """A user's current list, best first. Raises KeyError for an absent user."""
        return [
            Recommendation(self._user_of[entry.slot], entry.score, entry.reasons)
            for entry in self._lists[self._slot_of[user_id]]
        ]

    def score(self, left: str, right: str) -> float:
        """The score of two present users, exactly as their lists rank it."""
        slot, other = self._slot_of[left], self._slot_of[right]
        block = self._vectors.block(np.array([slot], np.int64), len(self._user_of))
        return float(self._vectors.exact(block, np.zeros(1, np.int64), np.array([other]))[0])

    def join(self, user_id: str, profile: Profile | None) -> list[str]:
        """Add a user, or re-score a present one with a new profile."""
        return self._apply((), ((user_id, profile),))

    def join_many(self, users: Iterable[tuple[str, Profile | None]]) -> list[str]:
        """`join` for many users in one pass (much faster than one by one).

        The result equals joining them one by one in any order; a user given twice
        keeps the last profile.
        """
        return self.apply(joining=users)

    def apply(
        self,
        *,
        leaving: Iterable[str] = (),
        joining: Iterable[tuple[str, Profile | None]] = (),
    ) -> list[str]:
        """Leaves, then joins and updates, in as few passes as the sizes allow.

        Equals `leave` for each of `leaving`, then `join` for each of `joining` (in
        any order), but reports each changed list once.
        """
        upserts = list(dict(joining).items())
        self._before = {}
        # Chunks joined in turn score each new pair once; one block would score it twice.
        self._apply(leaving, upserts[:_JOIN_CHUNK], fresh=False)
        for start in range(_JOIN_CHUNK, len(upserts), _JOIN_CHUNK):
            self._apply((), upserts[start : start + _JOIN_CHUNK], fresh=False)
        return self._changed()

    def update(self, user_id: str, profile: Profile | None) -> list[str]:
        """Re-score a present user; a no-op for an absent one (they may have just left)."""
        return self.join(user_id, profile) if user_id in self._slot_of else []

    def leave(self, user_id: str) -> list[str]:
        """Remove a user and refill the lists that held them; a no-op if absent."""
        return self._apply((user_id,), ())

    def rematch(self, config: PoolConfig | None = None, *, refit_text: bool = True) -> list[str]:
        """Recompute every list from scratch, optionally under a new config.

        Args:
            config: replaces the current one when given.
            refit_text: refit document frequencies on the present users' texts.
        """
        self._config = config or self._config
        present = [(slot, self._vectors.profiles[slot]) for slot in self._slot_of.values()]
        model = self._vectors.text_model
        if refit_text:
            model = TfIdfModel.fit(
                getattr(profile, part) for _, profile in present if profile for part in TEXT_PARTS
            )
        self._vectors = ProfileVectors(self._config.weights, model)
        self._vectors.reserve(len(self._alive))
        self._before = {self._user_of[slot]: tuple(self._lists[slot]) for slot, _ in present}
        for slot, profile in present:
            self._vectors.set(slot, profile)
            self._lists[slot], self._listers[slot] = [], set()
        # From scratch = everyone joins again, in chunks (see join_many).
        self._alive[:] = False
        slots = sorted(slot for slot, _ in present)
        for start in range(0, len(slots), _JOIN_CHUNK):
            chunk = slots[start : start + _JOIN_CHUNK]
            self._alive[chunk] = True
            self._stale = set(chunk)
            self._rescan(chunk, self._stale)
        return self._changed()

    # -- mutation ---------------------------------------------------------------------

    def _apply(
        self,
        leaving: Iterable[str],
        upserts: Iterable[tuple[str, Profile | None]],
        *,
        fresh: bool = True,
    ) -> list[str]:
        """Apply leaves, then joins and updates; `fresh=False` continues a call's history."""
        if fresh:
            self._before = {}
        self._stale = set()
        refill: set[int] = set()
        freed: list[int] = []
        departed: list[str] = []
        for user_id in leaving:
            slot = self._slot_of.pop(user_id, None)
            if slot is not None:
                refill |= self._detach(slot)
                freed.append(slot)
                departed.append(user_id)
        arrived: list[str] = []
        for user_id, profile in upserts:
            slot = self._slot_of.get(user_id)
            if slot is None:
                slot = self._allocate(user_id)
                self._before[user_id] = None
                arrived.append(user_id)
            else:
                refill |= self._listers[slot]
            self._vectors.set(slot, profile)
            self._stale.add(slot)
        self._rerank(arrived, departed)
        refill -= set(freed)
        # Slots freed now are reused only after this call, so no list confuses two users.
        self._rescan(sorted(refill | self._stale), self._stale)
        self._free.extend(freed)
        return self._changed()

    def _detach(self, slot: int) -> set[int]:
        holders = self._listers[slot]
        for holder in holders:
            self._remember(holder)
        for entry in self._lists[slot]:
            self._listers[entry.slot].discard(slot)
        self._lists[slot], self._listers[slot] = [], set()
        self._bar[slot] = np.inf
        self._alive[slot] = False
        self._vectors.clear(slot)
        self._before.pop(self._user_of[slot], None)
        self._user_of[slot] = ""
        return holders

    def _allocate(self, user_id: str) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._user_of)
            self._user_of.append("")
            self._lists.append([])
            self._listers.append(set())
            if slot == len(self._alive):
                self._reserve(2 * slot + 16)
        self._slot_of[user_id] = slot
        self._user_of[slot] = user_id
        self._alive[slot] = True
        return slot

    def _reserve(self, capacity: int) -> None:
        grow = capacity - len(self._alive)
        self._rank = np.concatenate([self._rank, np.zeros(grow, np.int64)])
        self._alive = np.concatenate([self._alive, np.zeros(grow, np.bool_)])
        self._bar = np.concatenate([self._bar, np.full(grow, np.inf)])
        self._vectors.reserve(capacity)

    def _rerank(self, arrived: list[str], departed: list[str]) -> None:
        ranks = self._rank[: len(self._user_of)]
        if len(arrived) + len(departed) > _RERANK_IN_PLACE:
            self._ordered = sorted(self._slot_of)
            slots = [self._slot_of[user_id] for user_id in self._ordered]
            ranks[slots] = np.arange(len(slots))
            return
        for user_id in departed:
            position = bisect.bisect_left(self._ordered, user_id)
            del self._ordered[position]
            ranks[ranks > position] -= 1
        for user_id in arrived:
            position = bisect.bisect_left(self._ordered, user_id)
            self._ordered.insert(position, user_id)
            ranks[ranks >= position] += 1
            ranks[self._slot_of[user_id]] = position

    def _remember(self, slot: int) -> None:
        self._before.setdefault(self._user_of[slot], tuple(self._lists[slot]))

    def _changed(self) -> list[str]:
        return sorted(
            user_id
            for user_id, before in self._before.items()
            if user_id in self._slot_of and before != tuple(self._lists[self._slot_of[user_id]])
        )

    # -- scoring ------------------------------------------------------------------------

    def _rescan(self, slots: Sequence[int], offering: Iterable[int]) -> None:
        """Rebuild the lists of `slots` from scratch; offer each `offering` slot to the rest."""
        if not slots:
            return
        width = len(self._user_of)
        alive = self._alive[:width]
        dead = np.flatnonzero(~alive)
        closed = np.union1d(dead, np.asarray(slots, np.int64))
        anyone_open = len(closed) < width
        offered = set(offering)
        step = max(1, BLOCK_CELLS // width)
        for start in range(0, len(slots), step):
            queries = np.array(slots[start : start + step], np.int64)
            block = self._vectors.block(queries, width)
            block.approx[:, dead] = -np.inf
            block.approx[np.arange(len(queries)), queries] = -np.inf
            self._select(block)
            offers = [row for row, slot in enumerate(queries.tolist()) if slot in offered]
            if offers and anyone_open:
                self._offer(block, np.array(offers, np.int64), closed)

    def _select(self, block: ScoreBlock) -> None:
        approx, top_k, margin = block.approx, self._config.top_k, self._vectors.margin
        floor = np.maximum(_kth_largest_bound(approx, top_k), self._config.min_score) - margin
        rows, columns = np.nonzero(approx >= floor[:, None])
        scores = self._vectors.exact(block, rows, columns)
        kept = scores >= self._config.min_score
        rows, columns, scores = rows[kept], columns[kept], scores[kept]
        order = np.lexsort((self._rank[columns], -scores, rows))
        rows, columns, scores = rows[order], columns[order], scores[order]
        starts = np.searchsorted(rows, np.arange(len(block.slots) + 1))
        for row, slot in enumerate(block.slots.tolist()):
            picked = range(starts[row], min(starts[row + 1], starts[row] + top_k))
            self._replace(slot, [(float(scores[at]), int(columns[at])) for at in picked])

    def _replace(self, slot: int, picked: list[tuple[float, int]]) -> None:
        self._remember(slot)
        old = {entry.slot: entry for entry in self._lists[slot]}
        fresh: list[_Entry] = []
        for score, other in picked:
            entry = old.get(other)
            if entry is None or entry.score != score or {slot, other} & self._stale:
                entry = _Entry(score, other, self._vectors.reasons(slot, other))
            fresh.append(entry)
        for entry in self._lists[slot]:
            self._listers[entry.slot].discard(slot)
        for entry in fresh:
            self._listers[entry.slot].add(slot)
        self._lists[slot] = fresh
        self._note_bar(slot)

    def _offer(self, block: ScoreBlock, rows: Ints, closed: Ints) -> None:
        """The bump rule: put each row's user into the lists whose k-th entry it beats.

        Args:
            block: scores of the rows' users.
            rows: which rows of the block to offer.
            closed: slots whose lists must not take offers (rebuilt in full, or free).
        """
        bar = self._bar[: block.approx.shape[1]] - self._vectors.margin
        bar[closed] = np.inf
        hits, owners = np.nonzero(block.approx[rows] >= bar)
        if not len(hits):
            return
        scores = self._vectors.exact(block, rows[hits], owners)
        newcomers = block.slots[rows[hits]].tolist()
        for owner, newcomer, score in zip(owners.tolist(), newcomers, scores.tolist(), strict=True):
            if score >= self._config.min_score:
                self._bump(owner, newcomer, score)

    def _bump(self, owner: int, newcomer: int, score: float) -> None:
        entries, top_k = self._lists[owner], self._config.top_k
        key = (-score, self._user_of[newcomer])
        ranks = [(-entry.score, self._user_of[entry.slot]) for entry in entries]
        if len(entries) >= top_k and key >= ranks[-1]:
            return
        self._remember(owner)
        at = next((position for position, rank in enumerate(ranks) if key < rank), len(entries))
        entries.insert(at, _Entry(score, newcomer, self._vectors.reasons(owner, newcomer)))
        self._listers[newcomer].add(owner)
        if len(entries) > top_k:
            self._listers[entries.pop().slot].discard(owner)
        self._note_bar(owner)

    def _note_bar(self, slot: int) -> None:
        entries = self._lists[slot]
        full = len(entries) >= self._config.top_k
        self._bar[slot] = max(entries[-1].score if full else -np.inf, self._config.min_score)


def _kth_largest_bound(approx: Floats, k: int) -> Floats:
    """Per row, a lower bound on the k-th largest value (-inf when a row has fewer).

    Wide rows use the k-th largest of block maxima: those come from k different
    blocks, so they cannot exceed the true k-th largest, and finding them costs one
    pass instead of a partition.
    """
    rows, width = approx.shape
    if width <= k:
        return np.full(rows, -np.inf)
    if width > _EXACT_SELECTION_WIDTH:
        blocks = max(64, 4 * k)
        size = width // blocks
        maxima = approx[:, : blocks * size].reshape(rows, blocks, size).max(axis=2)
        approx = np.concatenate([maxima, approx[:, blocks * size :]], axis=1)
        width = approx.shape[1]
    return np.partition(approx, width - k, axis=1)[:, width - k]
