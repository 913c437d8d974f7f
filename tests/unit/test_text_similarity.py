"""`matching.text_similarity`: TF-IDF cosine of profile texts, with readable overlaps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matching.text_similarity import (
    STOP_WORDS,
    TfIdfModel,
    shared_terms,
    terms,
    text_reason,
    text_similarity,
)

# -- terms ----------------------------------------------------------------------------


def test_terms_are_content_words_and_adjacent_pairs() -> None:
    assert terms(["I think remote work is great"]) == ["remote", "work", "remote work", "great"]


def test_punctuation_and_stop_words_break_phrases_but_hyphens_do_not() -> None:
    found = terms(["Berlin, rust and open-source."])

    assert "berlin rust" not in found
    assert "rust open" not in found
    assert "open source" in found


def test_a_phrase_never_spans_two_texts() -> None:
    assert "berlin cats" not in terms(["I live in Berlin", "cats rule"])


def test_text_of_stop_words_only_has_no_terms() -> None:
    assert terms(["It is what it is, and I think so too."]) == []
    assert {"the", "and", "think"} <= STOP_WORDS


# -- the model ------------------------------------------------------------------------


def test_rare_terms_weigh_more_and_unseen_terms_weigh_most() -> None:
    model = TfIdfModel.fit([["rust is fun"], ["rust and go"], ["golf"]])

    assert model.documents == 3
    assert model.idf("rust") < model.idf("golf") < model.idf("cricket")


def test_the_unfitted_model_weighs_every_term_alike() -> None:
    model = TfIdfModel()

    assert model.idf("rust") == model.idf("remote work") == 1.0


@pytest.mark.parametrize(
    ("frequencies", "documents"), [({"rust": 3}, 2), ({"rust": -1}, 2), ({}, -1)]
)
def test_impossible_counts_are_rejected(frequencies: dict[str, int], documents: int) -> None:
    with pytest.raises(ValueError, match="documents"):
        TfIdfModel(document_frequencies=frequencies, documents=documents)


def test_vectors_have_unit_length() -> None:
    vector = TfIdfModel().vector(["remote work", "work work work"])

    assert math.isclose(math.sqrt(sum(weight * weight for weight in vector.values())), 1.0)
    # Damped term frequency: a word said three times is not three times as important.
    assert vector["work"] < 3 * vector["remote"]


# -- similarity and reasons -----------------------------------------------------------


def test_shared_phrase_is_the_reason_not_its_words() -> None:
    match = text_similarity(["Remote work is great"], ["I love remote work"])

    assert match is not None
    assert match.shared == ("remote work",)
    assert text_reason("opinions", match.shared) == "similar opinions on remote work"


def test_overlapping_pairs_are_listed_as_one_phrase() -> None:
    match = text_similarity(
        ["meetups beat conferences", "I love Berlin"], ["Honestly, meetups beat conferences"]
    )

    assert match is not None
    assert match.shared == ("meetups beat conferences",)
    assert text_reason("opinions", match.shared) == ("similar opinions on meetups beat conferences")


def test_nothing_in_common_scores_zero_and_nothing_to_compare_is_none() -> None:
    assert text_similarity(["I live in Berlin"], ["golf on sundays"]) == (
        text_similarity(["golf on sundays"], ["I live in Berlin"])
    )
    match = text_similarity(["I live in Berlin"], ["golf on sundays"])
    assert match is not None and match.score == 0.0 and match.shared == ()
    assert text_similarity(["and so it is"], ["berlin"]) is None
    assert text_similarity([], ["berlin"]) is None


def test_a_fitted_model_prefers_rare_overlaps() -> None:
    corpus = [["I love coffee"], ["coffee please"], ["coffee"], ["I love chess"], ["golf"]]
    model = TfIdfModel.fit(corpus)
    left, right = model.vector(["coffee and chess"]), model.vector(["chess with coffee"])

    assert shared_terms(left, right) == ["chess", "coffee"]


def test_reasons_read_per_part() -> None:
    assert text_reason("facts", ["berlin", "cats"]) == "both mention berlin, cats"
    assert text_reason("opinions", []) is None
    assert text_reason("hobbies", ["golf"]) == "similar hobbies: golf"


# -- properties -----------------------------------------------------------------------

_words = st.sampled_from(["remote", "work", "Berlin", "cats", "the", "is", "great", ",", "AI"])
_texts = st.lists(st.lists(_words, max_size=6).map(" ".join), max_size=3)


@settings(max_examples=200, deadline=None)
@given(left=_texts, right=_texts)
def test_similarity_is_symmetric_and_in_unit_interval(left: list[str], right: list[str]) -> None:
    forward, backward = text_similarity(left, right), text_similarity(right, left)

    assert (forward is None) == (backward is None)
    if forward is not None and backward is not None:
        assert 0.0 <= forward.score <= 1.0
        assert math.isclose(forward.score, backward.score, abs_tol=1e-12)
        assert len(forward.shared) <= 3


@settings(max_examples=100, deadline=None)
@given(texts=_texts)
def test_a_text_is_fully_similar_to_itself(texts: list[str]) -> None:
    match = text_similarity(texts, texts)

    assert match is None or math.isclose(match.score, 1.0)
