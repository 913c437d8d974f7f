"""Users' embeddings, L2-normalised, for vectorised cosines against everyone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from matching.arrays import Floats, Ints, Mask
from matching.scoring import embedding_scale

__all__ = ["EmbeddingStore"]


class _EmbeddingGroup:
    """L2-normalised embeddings of one dimension, in float64 and in float32.

    The first dimension a pool sees is stored by slot (row = slot), so that a block's
    matrix product lands where it belongs; any other dimension is packed into rows
    and scattered, so a stray dimension costs memory only for its own users.
    """

    def __init__(self, dimension: int, capacity: int, *, by_slot: bool) -> None:
        self.by_slot = by_slot
        self.precise: Floats = np.zeros((capacity, dimension))
        self.coarse = np.zeros((capacity, dimension), np.float32)
        self.slots: Ints = np.zeros(capacity, np.int64)
        self.size = 0

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.slots)
        self.precise = np.concatenate([self.precise, np.zeros((extra, self.precise.shape[1]))])
        self.coarse = np.concatenate(
            [self.coarse, np.zeros((extra, self.coarse.shape[1]), np.float32)]
        )
        self.slots = np.concatenate([self.slots, np.zeros(extra, np.int64)])


class EmbeddingStore:
    """Embeddings grouped by dimension: a different length is not comparable."""

    def __init__(self) -> None:
        self.groups: dict[int, _EmbeddingGroup] = {}
        self.dimensions: Ints = np.zeros(0, np.int64)
        self.rows: Ints = np.zeros(0, np.int64)
        self.largest = 0

    def reserve(self, capacity: int) -> None:
        grow = capacity - len(self.dimensions)
        self.dimensions = np.concatenate([self.dimensions, np.zeros(grow, np.int64)])
        self.rows = np.concatenate([self.rows, np.zeros(grow, np.int64)])
        for group in self.groups.values():
            if group.by_slot:
                group.grow(capacity)

    def set(self, slot: int, embedding: Sequence[float] | None) -> None:
        self.clear(slot)
        vector = np.asarray(embedding or (), dtype=np.float64)
        scale = embedding_scale(float(np.max(np.abs(vector)))) if vector.size else 1.0
        if scale != 1.0:
            vector = vector / scale
        norm = float(np.sqrt(vector @ vector)) if vector.size else 0.0
        if norm == 0.0 or not np.isfinite(norm):
            return
        group = self.groups.get(vector.size)
        if group is None:
            by_slot = not self.groups
            capacity = len(self.dimensions) if by_slot else 4
            group = self.groups[vector.size] = _EmbeddingGroup(
                vector.size, capacity, by_slot=by_slot
            )
            self.largest = max(self.largest, vector.size)
        if group.by_slot:
            row = slot
        else:
            if group.size == len(group.slots):
                group.grow(2 * group.size)
            row = group.size
            group.slots[row] = slot
            group.size += 1
        group.precise[row] = vector / norm
        group.coarse[row] = group.precise[row]
        self.dimensions[slot], self.rows[slot] = vector.size, row

    def clear(self, slot: int) -> None:
        dimension = int(self.dimensions[slot])
        if dimension == 0:
            return
        group, row = self.groups[dimension], int(self.rows[slot])
        self.dimensions[slot] = 0
        if group.by_slot:
            group.precise[row], group.coarse[row] = 0.0, 0.0
            return
        last = group.size - 1
        if row != last:
            moved = int(group.slots[last])
            group.precise[row], group.coarse[row] = group.precise[last], group.coarse[last]
            group.slots[row] = moved
            self.rows[moved] = row
        group.size = last

    def block(self, queries: Ints, width: int, *, precise: bool) -> tuple[Floats, Mask]:
        """`(cosine + 1) / 2` of each query against every slot (0 where undefined), and where defined."""
        mine = self.dimensions[queries]
        comparable = (mine[:, None] == self.dimensions[None, :width]) & (mine > 0)[:, None]
        values = np.zeros((len(queries), width))
        for dimension in np.unique(mine[mine > 0]).tolist():
            group = self.groups[dimension]
            here = np.flatnonzero(mine == dimension)
            matrix = group.precise if precise else group.coarse
            own = matrix[self.rows[queries[here]]]
            if not group.by_slot:
                packed = group.slots[: group.size]
                values[np.ix_(here, packed)] = own @ matrix[: group.size].T
            elif len(here) == len(queries):
                values[:] = own @ matrix[:width].T
            else:
                values[here] = own @ matrix[:width].T
        values = _half_cosine(values)
        values *= comparable
        return values, comparable

    def exact(self, left: Ints, right: Ints) -> Floats:
        """`(cosine + 1) / 2` of pairs of slots with comparable embeddings, in float64.

        Elementwise products summed along one row give the same bits whichever side
        is left, unlike a matrix product, whose summation order depends on the shapes.
        """
        values = np.zeros(len(left))
        dimensions = self.dimensions[left]
        for dimension in np.unique(dimensions).tolist():
            group, here = self.groups[dimension], np.flatnonzero(dimensions == dimension)
            products = group.precise[self.rows[left[here]]] * group.precise[self.rows[right[here]]]
            values[here] = products.sum(axis=1)
        return _half_cosine(values)

    def cosine(self, left: int, right: int) -> float | None:
        dimension = int(self.dimensions[left])
        if dimension == 0 or dimension != self.dimensions[right]:
            return None
        matrix = self.groups[dimension].precise
        return float(matrix[self.rows[left]] @ matrix[self.rows[right]])


def _half_cosine(cosines: Floats) -> Floats:
    """Map a cosine to [0, 1], in place."""
    np.clip(cosines, -1.0, 1.0, out=cosines)
    cosines += 1.0
    cosines *= 0.5
    return cosines
