"""A sparse feature of many users (interests, attribute keys, text terms) kept for dot products.

Each user (a slot) has weighted terms; each term keeps the slots that hold it, so
the dot products of a few users with everyone cost only the postings of their terms.
A 0/1 feature with a small vocabulary (interests from a list, attribute keys) is kept
as a dense term x slot matrix of bytes instead: when popular terms are held by
thousands of users, one matrix product is far cheaper than gathering their postings,
and filling a cell is far cheaper than growing a posting list per term (most of
rebuilding an index at recovery, docs/performance.md). A byte per cell, not a float,
as the matrix is most of an index's memory; a product widens only the rows of the
terms its queries hold. The postings are built from the matrix the moment the
vocabulary outgrows the matrix.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from matching.arrays import Floats, Ints

__all__ = ["SparseTerms"]

_Row = tuple[tuple[int, ...], tuple[float, ...]]
"""A slot's term ids in order and their weights; tuples, as a slot's terms change only as a whole."""
_NO_TERMS: _Row = ((), ())
_DENSE_TERMS = 256
"""Largest vocabulary kept dense; 0/1 counts up to this are exact in float32."""
_Cells = npt.NDArray[np.uint8]
_Counts = npt.NDArray[np.int32]
"""Terms per slot: four bytes, not a float's eight, in each of a bucket's features."""
_Term = TypeVar("_Term", bound=Hashable)
_ONES: dict[int, tuple[float, ...]] = {}
_NO_SLOTS: Ints = np.zeros(0, np.int64)
_NO_WEIGHTS: Floats = np.zeros(0)


class SparseTerms:
    """One sparse feature: each slot's weighted terms and, per term, the slots holding it.

    Args:
        binary: every weight is 1.0, so products are small integers that any
            summation order gets exactly right (the dense path relies on it).
    """

    def __init__(self, *, binary: bool = False) -> None:
        self._binary = binary
        self._ids: dict[Hashable, int] = {}
        self._slots: list[Ints] = []
        self._weights: list[Floats] = []
        self._fill: list[int] = []
        self._position: list[dict[int, int]] = []
        """Per term: its slots, their weights, how many, where each slot is (postings only)."""
        self._rows: dict[int, _Row] = {}
        """Each slot's term ids and weights (postings only; the dense matrix holds them otherwise)."""
        self.counts: _Counts = np.zeros(0, np.int32)
        """Terms per slot; 0 = the slot holds nothing."""
        self._holders = 0
        self._dense: _Cells | None = np.zeros((0, 0), np.uint8) if binary else None
        """term x slot 0/1 matrix while the vocabulary is small; None once postings take over."""

    def reserve(self, capacity: int) -> None:
        self.counts = np.concatenate([self.counts, np.zeros(capacity - len(self.counts), np.int32)])
        if self._dense is not None:
            grow = capacity - self._dense.shape[1]
            extra = np.zeros((len(self._dense), grow), np.uint8)
            self._dense = np.concatenate([self._dense, extra], axis=1)

    def set(self, slot: int, vector: Mapping[_Term, float]) -> None:
        self.clear(slot)
        if not vector:
            return
        self._holders += 1
        if self._dense is not None:
            terms = self._term_ids(vector)
            self.counts[slot] = len(terms)
            if self._fits_dense():
                self._dense[terms, slot] = 1
                return
        row = self._rows[slot] = self._row(vector)
        self.counts[slot] = len(row[0])
        self._extend_postings()
        for term, weight in zip(*row, strict=True):
            fill = self._fill[term]
            if fill == len(self._slots[term]):
                self._slots[term] = _grown(self._slots[term], fill, 2 * fill + 4)
                self._weights[term] = _grown(self._weights[term], fill, 2 * fill + 4)
            self._slots[term][fill] = slot
            self._weights[term][fill] = weight
            self._position[term][slot] = fill
            self._fill[term] = fill + 1

    def set_many(self, slots: Sequence[int], vectors: Sequence[Mapping[_Term, float]]) -> None:
        """`set` for many distinct slots: each term's postings grow once, not once per slot."""
        for slot in slots:
            self.clear(slot)
        present = [(slot, vector) for slot, vector in zip(slots, vectors, strict=True) if vector]
        if not present:
            return
        filled = [slot for slot, _ in present]
        self._holders += len(present)
        if self._dense is not None:
            rows = [self._term_ids(vector) for _, vector in present]
            self.counts[filled] = [len(terms) for terms in rows]
            if self._fits_dense():
                at = [slot for slot, terms in zip(filled, rows, strict=True) for _ in terms]
                self._dense[[term for terms in rows for term in terms], at] = 1
                return
        for slot, vector in present:
            self._rows[slot] = self._row(vector)
        self.counts[filled] = [len(self._rows[slot][0]) for slot in filled]
        self._post(filled)

    def clear(self, slot: int) -> None:
        if not self.counts[slot]:
            return
        self.counts[slot] = 0
        self._holders -= 1
        if self._dense is not None:
            self._dense[:, slot] = 0
            return
        for term in self._rows.pop(slot)[0]:
            at = self._position[term].pop(slot)
            last = self._fill[term] - 1
            if at != last:
                moved = int(self._slots[term][last])
                self._slots[term][at] = moved
                self._weights[term][at] = self._weights[term][last]
                self._position[term][moved] = at
            self._fill[term] = last

    def dot(self, queries: Ints, width: int) -> Floats | None:
        """Sparse dot products of each query slot with every slot; None if nobody has terms.

        Each cell sums its terms in term-id order, whichever side asks, so the result
        is exactly symmetric.
        """
        if not self._holders:
            return None
        if self._dense is not None:
            asked = self._dense[:, queries]
            held = np.flatnonzero(asked.any(axis=1))  # other terms add nothing to a product
            mine = asked[held].T.astype(np.float32)
            everyone = self._dense[held, :width].astype(np.float32)
            return (mine @ everyone).astype(np.float64)
        cells: list[Ints] = []
        values: list[Floats] = []
        for row, slot in enumerate(queries.tolist()):
            terms, weights = self._rows.get(slot, _NO_TERMS)
            for term, weight in zip(terms, weights, strict=True):
                fill = self._fill[term]
                cells.append(self._slots[term][:fill] + row * width)
                values.append(self._weights[term][:fill] * weight)
        size = len(queries) * width
        if not cells:
            return np.zeros((len(queries), width))
        summed: Floats = np.bincount(
            np.concatenate(cells), np.concatenate(values), minlength=size
        ).astype(np.float64, copy=False)
        return summed.reshape(len(queries), width)

    def _row(self, vector: Mapping[_Term, float]) -> _Row:
        """Term ids in order and their weights; a term seen for the first time gets an id."""
        ids = self._ids
        if self._binary:
            terms = tuple(sorted(self._term_ids(vector)))
            return terms, _ones(len(terms))
        pairs = sorted(
            [
                (ids[term] if term in ids else self._term_id(term), weight)
                for term, weight in vector.items()
            ]
        )
        return tuple([term for term, _ in pairs]), tuple([weight for _, weight in pairs])

    def _term_ids(self, vector: Mapping[_Term, float]) -> list[int]:
        ids = self._ids
        return [ids[term] if term in ids else self._term_id(term) for term in vector]

    def _fits_dense(self) -> bool:
        """Make room for every term id in the dense matrix, or give it up for postings for good."""
        assert self._dense is not None
        terms = len(self._ids)
        if terms > _DENSE_TERMS:
            self._to_postings()
            return False
        room = len(self._dense)
        if terms > room:
            taller = min(_DENSE_TERMS, max(terms, 2 * room))
            extra = np.zeros((taller - room, self._dense.shape[1]), np.uint8)
            self._dense = np.concatenate([self._dense, extra])
        return True

    def _to_postings(self) -> None:
        """Rows and postings from the dense matrix, which is dropped."""
        assert self._dense is not None
        holders, terms = np.nonzero(self._dense.T)  # by slot, then term: each row in term order
        self._dense = None
        if not len(holders):
            return
        starts = np.flatnonzero(np.diff(holders)) + 1
        for slot, row_terms in zip(
            holders[np.r_[0, starts]].tolist(), np.split(terms, starts), strict=True
        ):
            ids = tuple(row_terms.tolist())
            self._rows[slot] = (ids, _ones(len(ids)))
        self._post(list(self._rows))

    def _post(self, slots: Sequence[int]) -> None:
        """Add the rows of `slots` (not posted yet) to their terms' postings, each term's once."""
        self._extend_postings()
        postings: dict[int, tuple[list[int], list[float]]] = {}
        for slot in slots:
            terms, weights = self._rows[slot]
            for term, weight in zip(terms, weights, strict=True):
                held_slots, held_weights = postings.setdefault(term, ([], []))
                held_slots.append(slot)
                held_weights.append(weight)
        for term, (held_slots, held_weights) in postings.items():
            fill = self._fill[term]
            end = fill + len(held_slots)
            if end > len(self._slots[term]):
                # A quarter to spare, not double: a bulk fill is mostly a pool's final size.
                capacity = end + end // 4 + 4
                self._slots[term] = _grown(self._slots[term], fill, capacity)
                self._weights[term] = _grown(self._weights[term], fill, capacity)
            self._slots[term][fill:end] = held_slots
            self._weights[term][fill:end] = held_weights
            self._position[term].update(zip(held_slots, range(fill, end), strict=True))
            self._fill[term] = end

    def _extend_postings(self) -> None:
        """Empty postings for the term ids given out since the last posting."""
        for _ in range(len(self._fill), len(self._ids)):
            # Shared and empty, so never written: the first posting grows them (`_grown`).
            self._slots.append(_NO_SLOTS)
            self._weights.append(_NO_WEIGHTS)
            self._fill.append(0)
            self._position.append({})

    def _term_id(self, term: Hashable) -> int:
        found = self._ids.get(term)
        if found is None:
            found = self._ids[term] = len(self._ids)
        return found


def _ones(count: int) -> tuple[float, ...]:
    """Weights of a binary row: one shared tuple per length rather than one per slot."""
    ones = _ONES.get(count)
    if ones is None:
        ones = _ONES[count] = (1.0,) * count
    return ones


_Array = TypeVar("_Array", Ints, Floats)


def _grown(array: _Array, fill: int, capacity: int) -> _Array:
    """`array`'s first `fill` values in a new array of `capacity`; np.resize was a tenth of a rebuild."""
    grown = np.zeros(capacity, array.dtype)
    grown[:fill] = array[:fill]
    return grown
