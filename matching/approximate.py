"""A fast near-optimal matching for pools too large for the exact one.

The greedy matching (best pair first) improved by 2-opt swaps (re-pair two pairs
whenever that raises the total) until no swap helps: well under a second at 1,500
attendees. On pools of random profiles (60 to 1,500 attendees) it ends 0.5% to 1.3%
below the optimum; `APPROXIMATION_GAP` is the bound the tests hold it to on such
pools. On adversarial weights it can do much worse (greedy only promises half the
optimum), which is why `matching.batch` solves every size it can afford exactly.
"""

from __future__ import annotations

import numpy as np

from matching.arrays import IntMatrix, Mask

__all__ = ["APPROXIMATION_GAP", "approximate_matching"]

APPROXIMATION_GAP = 0.03
"""On score matrices of real-looking pools the approximation's total is within this of the optimum."""


def approximate_matching(weights: IntMatrix) -> list[tuple[int, int]]:
    """Greedy matching improved by 2-opt swaps; pairs `(i, j)` with `i < j`, one left out if odd.

    Args:
        weights: symmetric, non-negative integers; the diagonal is ignored.
    """
    count = len(weights)
    if count < 2:
        return []
    # An odd count gets a dummy vertex (weight 0 to all): whoever is paired with it is out,
    # and swaps may change who that is.
    size = count + count % 2
    padded = np.zeros((size, size), np.int64)
    padded[:count, :count] = weights
    np.fill_diagonal(padded, 0)
    pairs = _improve_by_swaps(padded, _greedy(padded))
    return sorted((min(pair), max(pair)) for pair in pairs if max(pair) < count)


def _greedy(weights: IntMatrix) -> list[tuple[int, int]]:
    size = len(weights)
    rows, columns = np.triu_indices(size, 1)
    order = np.argsort(-weights[rows, columns], kind="stable")
    free = [True] * size
    pairs: list[tuple[int, int]] = []
    for left, right in zip(rows[order].tolist(), columns[order].tolist(), strict=True):
        if free[left] and free[right]:
            free[left] = free[right] = False
            pairs.append((left, right))
            if 2 * len(pairs) == size:
                break
    return pairs


def _improve_by_swaps(weights: IntMatrix, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Re-pair two pairs (a, b), (c, d) as (a, c), (b, d) or (a, d), (b, c) while that gains.

    The best swap is taken each round; gains are symmetric in the two pairs, so
    after a swap only the two rows and columns of the pairs involved change.
    """
    firsts = np.array([left for left, _ in pairs], np.int64)
    seconds = np.array([right for _, right in pairs], np.int64)
    count = len(pairs)
    if count < 2:
        return pairs

    def gains(rows: IntMatrix) -> tuple[IntMatrix, Mask]:
        a, b = firsts[rows][:, None], seconds[rows][:, None]
        current = weights[firsts, seconds]
        base = current[rows][:, None] + current[None, :]
        straight = weights[a, firsts[None, :]] + weights[b, seconds[None, :]] - base
        crossed = weights[a, seconds[None, :]] + weights[b, firsts[None, :]] - base
        best = np.maximum(straight, crossed)
        best[np.arange(len(rows)), rows] = -1  # a pair with itself: never a gain
        return best, crossed > straight

    table, crossed = gains(np.arange(count))
    while True:
        flat = int(np.argmax(table))
        p, q = divmod(flat, count)
        if table[p, q] <= 0:
            break
        a, b, c, d = firsts[p], seconds[p], firsts[q], seconds[q]
        if crossed[p, q]:
            firsts[p], seconds[p], firsts[q], seconds[q] = a, d, b, c
        else:
            firsts[p], seconds[p], firsts[q], seconds[q] = a, c, b, d
        changed = np.array([p, q], np.int64)
        rows, flips = gains(changed)
        table[changed], crossed[changed] = rows, flips
        table[:, changed], crossed[:, changed] = rows.T, flips.T
    return list(zip(firsts.tolist(), seconds.tolist(), strict=True))
