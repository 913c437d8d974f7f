"""`matching.sparse_terms.SparseTerms`: the dense and the postings path agree."""

from __future__ import annotations

import numpy as np

from matching import sparse_terms
from matching.sparse_terms import SparseTerms


def _filled(binary: bool, rows: list[list[str]]) -> SparseTerms:
    feature = SparseTerms(binary=binary)
    feature.reserve(len(rows))
    for slot, terms in enumerate(rows):
        feature.set(slot, dict.fromkeys(terms, 1.0))
    return feature


def test_dense_and_postings_give_the_same_counts_through_growth_and_clears(monkeypatch) -> None:
    monkeypatch.setattr(sparse_terms, "_DENSE_TERMS", 12)
    rng = np.random.default_rng(4)
    vocabulary = [f"t{number}" for number in range(10)]
    rows = [list(rng.choice(vocabulary, 3, replace=False)) for _ in range(30)]
    dense, postings = _filled(True, rows), _filled(False, rows)
    dense.clear(3)
    postings.clear(3)
    queries = np.arange(30, dtype=np.int64)

    assert dense._dense is not None
    assert np.array_equal(dense.dot(queries, 30), postings.dot(queries, 30))

    # Past the limit the dense matrix is given up and the postings answer.
    for feature in (dense, postings):
        feature.set(5, {f"new-{number}": 1.0 for number in range(5)})
    assert dense._dense is None
    assert np.array_equal(dense.dot(queries, 30), postings.dot(queries, 30))


def test_filling_many_slots_at_once_gives_the_products_of_filling_one_by_one(monkeypatch) -> None:
    monkeypatch.setattr(sparse_terms, "_DENSE_TERMS", 12)
    rng = np.random.default_rng(7)
    vocabulary = [f"t{number}" for number in range(10)]
    rows = [list(rng.choice(vocabulary, rng.integers(0, 4), replace=False)) for _ in range(40)]
    queries = np.arange(40, dtype=np.int64)
    for binary in (True, False):
        one_by_one = _filled(binary, rows)
        at_once = SparseTerms(binary=binary)
        at_once.reserve(40)
        at_once.set_many(range(40), [dict.fromkeys(terms, 1.0) for terms in rows])
        assert np.array_equal(at_once.dot(queries, 40), one_by_one.dot(queries, 40))
        assert np.array_equal(at_once.counts, one_by_one.counts)
        for feature in (one_by_one, at_once):
            feature.clear(7)
            feature.set(8, {"t1": 1.0, "t9": 1.0})
        assert np.array_equal(at_once.dot(queries, 40), one_by_one.dot(queries, 40))


def test_a_bulk_fill_that_outgrows_the_dense_matrix_keeps_every_slot(monkeypatch) -> None:
    monkeypatch.setattr(sparse_terms, "_DENSE_TERMS", 12)
    rng = np.random.default_rng(11)
    first = [list(rng.choice([f"t{n}" for n in range(10)], 3, replace=False)) for _ in range(20)]
    second = [list(rng.choice([f"u{n}" for n in range(10)], 2, replace=False)) for _ in range(20)]
    queries = np.arange(40, dtype=np.int64)
    binary, weighted = SparseTerms(binary=True), SparseTerms()
    for feature in (binary, weighted):
        feature.reserve(40)
        feature.set_many(range(20), [dict.fromkeys(terms, 1.0) for terms in first])
        feature.clear(4)
    assert binary._dense is not None

    for feature in (binary, weighted):
        feature.set_many(range(20, 40), [dict.fromkeys(terms, 1.0) for terms in second])
    assert binary._dense is None
    assert np.array_equal(binary.dot(queries, 40), weighted.dot(queries, 40))
    assert np.array_equal(binary.counts, weighted.counts)
    assert binary.counts[4] == 0
