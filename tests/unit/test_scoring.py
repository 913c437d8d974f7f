"""`matching.scoring`: a score in [0, 1] from the parts both profiles have, with reasons."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from matching.scoring import DEFAULT_WEIGHTS, group_score, score_pair
from models.messages import Profile

# -- examples -------------------------------------------------------------------------


def test_the_docstring_example() -> None:
    assert score_pair(Profile(interests=["rust"]), Profile(interests=["rust", "go"])).score == 0.5


def test_shared_interests_are_named_in_a_readable_reason() -> None:
    left = Profile(interests=["hiking", "Rust", "chess"])
    right = Profile(interests=["rust ", "chess", "golf"])

    scored = score_pair(left, right)

    # Case and surrounding blanks do not make interests different.
    assert scored.reasons == ["shared interests: chess, rust"]
    assert scored.score == pytest.approx(2 / 4)


def test_at_most_three_shared_interests_are_listed() -> None:
    interests = ["a", "b", "c", "d", "e"]

    scored = score_pair(Profile(interests=interests), Profile(interests=interests))

    assert scored.reasons == ["shared interests: a, b, c"]
    assert scored.score == 1.0


def test_no_shared_interest_scores_zero_without_a_reason() -> None:
    scored = score_pair(Profile(interests=["rust"]), Profile(interests=["golf"]))

    assert scored.score == 0.0
    assert scored.reasons == []


def test_same_attributes_are_named() -> None:
    left = Profile(attributes={"role": "engineer", "city": "Oslo"})
    right = Profile(attributes={"role": "engineer", "city": "Bergen", "age": 30})

    scored = score_pair(left, right)

    # Only keys both have are compared: role agrees, city does not.
    assert scored.score == 0.5
    assert scored.reasons == ["same role: engineer"]


def test_identical_embeddings_score_one() -> None:
    profile = Profile(embedding=[0.12, -0.03, 0.5])

    scored = score_pair(profile, profile)

    assert scored.score == 1.0
    assert scored.reasons == ["similar profiles (cosine 1.00)"]


def test_parallel_embeddings_of_different_length_score_one() -> None:
    # Cosine ignores magnitude.
    assert score_pair(Profile(embedding=[1.0, 2.0]), Profile(embedding=[3.0, 6.0])).score == 1.0


def test_opposite_embeddings_score_zero() -> None:
    scored = score_pair(Profile(embedding=[0.3, -0.4]), Profile(embedding=[-0.3, 0.4]))

    assert scored.score == 0.0
    assert scored.reasons == []


def test_orthogonal_embeddings_score_one_half() -> None:
    assert score_pair(Profile(embedding=[1.0, 0.0]), Profile(embedding=[0.0, 1.0])).score == 0.5


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0]),  # different dimensions cannot be compared
        ([0.0, 0.0], [1.0, 2.0]),  # a zero vector has no direction
        ([], [1.0]),
    ],
)
def test_incomparable_embeddings_are_ignored(left: list[float], right: list[float]) -> None:
    both_interested = {"interests": ["rust"]}

    scored = score_pair(
        Profile(embedding=left, **both_interested), Profile(embedding=right, **both_interested)
    )

    # Only the interests count, so the unusable embedding neither helps nor hurts.
    assert scored.score == 1.0


def test_missing_parts_are_ignored_not_counted_as_zero() -> None:
    # Left has no embedding: the score is the interests part alone, not dragged to 0.5.
    left = Profile(interests=["rust"])
    right = Profile(interests=["rust"], embedding=[1.0, 0.0])

    assert score_pair(left, right).score == 1.0


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (None, Profile(interests=["rust"])),
        (Profile(interests=["rust"]), None),
        (None, None),
        (Profile(), Profile()),
        (Profile(interests=["rust"]), Profile(embedding=[1.0])),
    ],
)
def test_nothing_comparable_scores_zero(left: Profile | None, right: Profile | None) -> None:
    scored = score_pair(left, right)

    assert scored.score == 0.0
    assert scored.reasons == []


def test_weights_set_the_blend_of_parts() -> None:
    # Interests agree fully (1.0), embeddings are opposite (0.0).
    left = Profile(interests=["rust"], embedding=[1.0, 0.0])
    right = Profile(interests=["rust"], embedding=[-1.0, 0.0])

    assert score_pair(left, right, {"interests": 1.0, "embedding": 1.0}).score == 0.5
    assert score_pair(left, right, {"interests": 3.0, "embedding": 1.0}).score == 0.75
    assert score_pair(left, right, {"interests": 1.0, "embedding": 3.0}).score == 0.25


def test_zero_and_missing_weights_switch_a_part_off() -> None:
    left = Profile(interests=["rust"], embedding=[1.0, 0.0])
    right = Profile(interests=["rust"], embedding=[-1.0, 0.0])

    assert score_pair(left, right, {"interests": 1.0, "embedding": 0.0}).score == 1.0
    assert score_pair(left, right, {"embedding": 1.0}).score == 0.0
    assert score_pair(left, right, {}).score == 0.0


def test_unknown_weight_names_are_ignored() -> None:
    left, right = Profile(interests=["rust"]), Profile(interests=["rust"])

    assert score_pair(left, right, {"interests": 1.0, "astrology": 5.0}).score == 1.0


def test_default_weights_count_attributes_half() -> None:
    left = Profile(interests=["rust"], attributes={"role": "engineer"})
    right = Profile(interests=["rust"], attributes={"role": "designer"})

    assert DEFAULT_WEIGHTS["attributes"] == 0.5
    assert score_pair(left, right).score == pytest.approx(1.0 / 1.5, abs=1e-6)


def test_reasons_follow_the_order_of_the_weights() -> None:
    left = Profile(interests=["rust"], attributes={"role": "engineer"}, embedding=[1.0, 0.1])
    right = Profile(interests=["rust"], attributes={"role": "engineer"}, embedding=[1.0, 0.0])

    reasons = score_pair(left, right).reasons

    assert reasons[0] == "shared interests: rust"
    assert reasons[1].startswith("similar profiles (cosine ")
    assert reasons[2] == "same role: engineer"


def test_texts_count_when_weighted_with_a_readable_reason() -> None:
    left = Profile(interests=["go"], opinions=["Remote work is great"], facts=["I live in Berlin"])
    right = Profile(interests=["go"], opinions=["I love remote work"], facts=["Berlin is home"])

    plain = score_pair(left, right)
    texts = score_pair(left, right, {"interests": 1.0, "facts": 1.0, "opinions": 1.0})

    assert plain.score == 1.0 and plain.reasons == ["shared interests: go"]
    assert 0.0 < texts.score < 1.0
    assert texts.reasons == [
        "shared interests: go",
        "both mention berlin",
        "similar opinions on remote work",
    ]


def test_group_score_is_the_mean_of_pair_scores() -> None:
    assert group_score([1.0, 0.5, 0.0]) == 0.5
    assert group_score([]) == 0.0


# -- properties -----------------------------------------------------------------------

_words = st.sampled_from(["rust", "go", "Rust ", "chess", "hiking", "jazz", ""])
_values = st.one_of(st.sampled_from(["engineer", "designer", "Oslo"]), st.integers(0, 3))
_finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e150, max_value=1e150)
profiles = st.builds(
    Profile,
    interests=st.lists(_words, max_size=5),
    attributes=st.dictionaries(st.sampled_from(["role", "city", "level"]), _values, max_size=3),
    embedding=st.one_of(st.none(), st.lists(_finite, min_size=1, max_size=3)),
)
weights = st.dictionaries(
    st.sampled_from(["interests", "embedding", "attributes", "unknown"]),
    st.floats(min_value=0.0, max_value=10.0),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(left=st.one_of(st.none(), profiles), right=st.one_of(st.none(), profiles), weights=weights)
def test_score_is_symmetric_and_in_unit_interval(
    left: Profile | None, right: Profile | None, weights: dict[str, float]
) -> None:
    forward = score_pair(left, right, weights)
    backward = score_pair(right, left, weights)

    assert 0.0 <= forward.score <= 1.0
    assert not math.isnan(forward.score)
    assert forward.score == backward.score
    assert forward.reasons == backward.reasons


@settings(max_examples=100, deadline=None)
@given(profile=profiles)
@example(profile=Profile(embedding=[1e-170, 0.0]))
def test_a_profile_fits_itself_perfectly_in_every_part_it_has(profile: Profile) -> None:
    # However tiny, a non-zero vector is scaled before its norm, so it counts.
    usable_embedding = profile.embedding is not None and any(profile.embedding)
    comparable = any(item.strip() for item in profile.interests) or usable_embedding
    scored = score_pair(profile, profile, {"interests": 1.0, "embedding": 1.0})

    assert scored.score == (1.0 if comparable else 0.0)
