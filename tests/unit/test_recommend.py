"""`matching.recommend.TopKIndex`: exact top-k lists under joins, leaves and updates.

The property test drives an index with random joins, leaves, updates, bulk joins and
rematches, and after every step checks that

1. every list equals a brute-force top-k over all pair scores (ties by user_id);
2. every list equals that of a fresh index built from scratch in one bulk join;
3. the users reported as changed are exactly those whose list differs from before;
4. scores are symmetric, in [0, 1], and agree with `score_pair` when only its parts
   are weighted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from matching import recommend
from matching.profile_vectors import pair_reasons, score_matrix
from matching.recommend import Recommendation, TopKIndex
from matching.scoring import DEFAULT_WEIGHTS, score_pair
from models.messages import PoolConfig, Profile

TEXT_WEIGHTS = {**DEFAULT_WEIGHTS, "facts": 0.5, "opinions": 1.0}


def _config(**fields: object) -> PoolConfig:
    return PoolConfig.model_validate({"mode": "recommend", "request_ttl_s": None, **fields})


def _lists(index: TopKIndex, users: list[str]) -> dict[str, list[Recommendation]]:
    return {user: index.top(user) for user in users}


def _brute_force(index: TopKIndex, users: list[str]) -> dict[str, list[tuple[str, float]]]:
    config = index.config
    lists = {}
    for user in users:
        scored = sorted((-index.score(user, other), other) for other in users if other != user)
        lists[user] = [
            (other, -negated) for negated, other in scored if -negated >= config.min_score
        ][: config.top_k]
    return lists


# -- examples -------------------------------------------------------------------------


def test_the_docstring_example() -> None:
    index = TopKIndex(config=_config(top_k=1))

    assert index.join("u-1", Profile(interests=["rust"])) == ["u-1"]
    assert index.join("u-2", Profile(interests=["rust", "go"])) == ["u-1", "u-2"]
    assert index.top("u-1") == [Recommendation("u-2", 0.5, ("shared interests: rust",))]


def test_a_newcomer_bumps_only_lists_it_beats() -> None:
    index = TopKIndex(config=_config(top_k=1))
    index.join_many(
        [
            ("ann", Profile(interests=["rust", "go"])),
            ("bob", Profile(interests=["rust", "go"])),
            ("cid", Profile(interests=["golf"])),
            ("dan", Profile(interests=["golf", "chess"])),
        ]
    )

    changed = index.join("eve", Profile(interests=["golf"]))

    # eve (1.0 with cid) beats cid's 0.5 with dan; ann and bob keep each other.
    assert changed == ["cid", "eve"]
    assert index.top("cid")[0].user_id == "eve"
    assert index.top("ann")[0].user_id == "bob"


def test_a_leave_refills_only_the_lists_that_held_the_leaver() -> None:
    index = TopKIndex(config=_config(top_k=1))
    index.join_many(
        [
            ("ann", Profile(interests=["rust", "go"])),
            ("bob", Profile(interests=["rust", "go"])),
            ("cid", Profile(interests=["rust"])),
            ("dan", Profile(interests=["golf"])),
            ("eve", Profile(interests=["golf"])),
        ]
    )

    # cid's tie at 0.5 between ann and bob went to ann, so only ann's list held bob.
    assert index.leave("bob") == ["ann"]
    assert index.top("ann") == [Recommendation("cid", 0.5, ("shared interests: rust",))]
    assert "bob" not in index and len(index) == 4
    assert index.leave("bob") == []


def test_an_update_keeps_identity_and_reports_exactly_the_changed_lists() -> None:
    index = TopKIndex(config=_config(top_k=1))
    index.join_many(
        [
            ("ann", Profile(interests=["rust"])),
            ("bob", Profile(interests=["rust"])),
            ("cid", Profile(interests=["golf"])),
            ("dan", Profile(interests=["golf"])),
        ]
    )

    changed = index.update("bob", Profile(interests=["golf"]))

    # bob now ties with cid and dan at 1.0 and wins their ties by user_id; ann is left
    # with zeros, where "bob" still comes first, but with another score.
    assert changed == ["ann", "bob", "cid", "dan"]
    assert index.top("cid")[0].user_id == "bob"
    assert index.top("bob")[0].user_id == "cid"
    assert index.top("ann") == [Recommendation("bob", 0.0, ())]
    assert index.update("nobody", Profile()) == []


def test_an_update_that_changes_only_reasons_is_reported() -> None:
    index = TopKIndex(config=_config(top_k=1, weights={"attributes": 1.0}))
    index.join_many(
        [
            ("ann", Profile(attributes={"city": "Oslo"})),
            ("bob", Profile(attributes={"city": "Oslo"})),
        ]
    )

    # Same score (1.0), different reason.
    changed = index.update("bob", Profile(attributes={"role": "x"}))

    assert changed == ["ann", "bob"]
    assert index.top("ann") == [Recommendation("bob", 0.0, ())]
    assert index.update("bob", Profile(attributes={"role": "x"})) == []


def test_ties_rank_by_user_id_and_min_score_filters() -> None:
    index = TopKIndex(config=_config(top_k=2, min_score=0.5))
    for user in ["d", "b", "c", "a"]:
        index.join(user, Profile(interests=["rust"]))
    index.join("z", Profile(interests=["golf"]))

    assert [entry.user_id for entry in index.top("c")] == ["a", "b"]
    assert index.top("z") == []


def test_embeddings_of_different_length_are_not_compared() -> None:
    index = TopKIndex(config=_config())
    index.join_many(
        [
            ("ann", Profile(embedding=[1.0, 0.0])),
            ("bob", Profile(embedding=[1.0, 0.0, 0.0])),
            ("cid", Profile(embedding=[2.0, 0.0, 0.0])),
        ]
    )

    assert index.score("ann", "bob") == 0.0
    assert index.score("bob", "cid") == 1.0
    assert index.top("bob")[0].reasons == ("similar profiles (cosine 1.00)",)


def test_text_parts_count_only_when_weighted() -> None:
    remote = Profile(interests=["go"], opinions=["Remote work is great"])
    office = Profile(interests=["go"], opinions=["I love remote work"])
    plain, texts = TopKIndex(config=_config()), TopKIndex(config=_config(weights=TEXT_WEIGHTS))
    for index in (plain, texts):
        index.join_many([("ann", remote), ("bob", office)])

    assert plain.top("ann") == [Recommendation("bob", 1.0, ("shared interests: go",))]
    (entry,) = texts.top("ann")
    assert 0.0 < entry.score < 1.0
    assert entry.reasons == ("shared interests: go", "similar opinions on remote work")
    assert list(entry.reasons) == pair_reasons(remote, office, TEXT_WEIGHTS, texts.text_model)


def test_rematch_changes_nothing_unless_the_config_does() -> None:
    index = TopKIndex(config=_config(top_k=1))
    profiles = [
        (f"u{i}", Profile(interests=["rust", "go", "chess"][: i % 3 + 1])) for i in range(6)
    ]
    index.join_many(profiles)
    before = _lists(index, [user for user, _ in profiles])

    assert index.rematch() == []
    assert _lists(index, list(before)) == before
    assert index.rematch(_config(top_k=2)) == sorted(before)
    assert all(len(entries) == 2 for entries in _lists(index, list(before)).values())


def test_bulk_work_in_chunks_equals_joining_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Big bulk joins and rematches run in chunks; make the chunks tiny to exercise that.
    monkeypatch.setattr(recommend, "_JOIN_CHUNK", 3)
    rng = np.random.default_rng(9)
    users = [
        (f"u{i:02d}", Profile(interests=list(rng.choice(["a", "b", "c", "d"], 2, replace=False))))
        for i in range(11)
    ]
    one_by_one, bulk = TopKIndex(config=_config(top_k=2)), TopKIndex(config=_config(top_k=2))
    for user, profile in users:
        one_by_one.join(user, profile)

    assert bulk.join_many(users) == sorted(user for user, _ in users)
    assert _lists(bulk, sorted(dict(users))) == _lists(one_by_one, sorted(dict(users)))
    assert bulk.rematch() == []
    assert _lists(bulk, sorted(dict(users))) == _lists(one_by_one, sorted(dict(users)))


def test_score_matrix_agrees_with_the_index() -> None:
    rng = np.random.default_rng(5)
    profiles = [
        Profile(
            interests=list(rng.choice(["a", "b", "c", "d"], 2, replace=False)),
            embedding=rng.standard_normal(8).tolist(),
            opinions=[str(rng.choice(["remote work is great", "office life rocks"]))],
        )
        for _ in range(12)
    ]
    index = TopKIndex(config=_config(weights=TEXT_WEIGHTS))
    index.join_many([(f"u{i:02d}", profile) for i, profile in enumerate(profiles)])

    matrix = score_matrix(profiles, TEXT_WEIGHTS, index.text_model)

    assert np.array_equal(matrix, matrix.T)
    for i, j in itertools.combinations(range(12), 2):
        assert matrix[i, j] == pytest.approx(index.score(f"u{i:02d}", f"u{j:02d}"), abs=1e-6)


# -- properties -----------------------------------------------------------------------

USERS = [f"u{number}" for number in range(8)]
_sentences = st.sampled_from(
    ["I live in Berlin", "remote work is great", "I hate remote work", "two cats", ""]
)
_profiles = st.one_of(
    st.none(),
    st.builds(
        Profile,
        interests=st.lists(st.sampled_from(["rust", "Go", "go ", "chess", "golf"]), max_size=3),
        attributes=st.dictionaries(
            st.sampled_from(["role", "city"]), st.sampled_from([1, 1.0, True, "x"]), max_size=2
        ),
        embedding=st.one_of(
            st.none(),
            st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), min_size=3, max_size=3),
            st.lists(st.floats(-1, 1, allow_subnormal=False), min_size=2, max_size=2),
        ),
        facts=st.lists(_sentences, max_size=2),
        opinions=st.lists(_sentences, max_size=2),
    ),
)


@dataclass(frozen=True)
class Join:
    user: str
    profile: Profile | None


@dataclass(frozen=True)
class Leave:
    pick: int


@dataclass(frozen=True)
class Update:
    pick: int
    profile: Profile | None


@dataclass(frozen=True)
class JoinMany:
    users: list[Join]


@dataclass(frozen=True)
class Rematch:
    refit_text: bool


@dataclass(frozen=True)
class Apply:
    leaves: list[int]
    joins: list[Join]


_users = st.sampled_from(USERS)
_joins = st.builds(Join, _users, _profiles)
_ops = st.lists(
    st.one_of(
        _joins,
        st.builds(Leave, st.integers(0, 50)),
        st.builds(Update, st.integers(0, 50), _profiles),
        st.builds(JoinMany, st.lists(_joins, max_size=4)),
        st.builds(Rematch, st.booleans()),
        st.builds(Apply, st.lists(st.integers(0, 50), max_size=3), st.lists(_joins, max_size=3)),
    ),
    max_size=14,
)
_configs = st.builds(
    _config,
    top_k=st.integers(1, 3),
    min_score=st.sampled_from([0.0, 0.0, 0.5]),
    weights=st.sampled_from([dict(DEFAULT_WEIGHTS), TEXT_WEIGHTS, {"interests": 1.0}]),
)


def _step(index: TopKIndex, profiles: dict[str, Profile | None], op: object) -> list[str]:
    if isinstance(op, Join):
        profiles[op.user] = op.profile
        return index.join(op.user, op.profile)
    if isinstance(op, JoinMany):
        profiles.update((join.user, join.profile) for join in op.users)
        return index.join_many((join.user, join.profile) for join in op.users)
    if isinstance(op, Rematch):
        return index.rematch(refit_text=op.refit_text)
    if isinstance(op, Apply):
        present = sorted(profiles)
        leaving = {present[pick % len(present)] for pick in op.leaves} if present else set()
        joining = {join.user: join.profile for join in op.joins}
        leaving -= set(joining)  # a user both leaving and joining is an update
        for user in leaving:
            del profiles[user]
        profiles.update(joining)
        return index.apply(leaving=sorted(leaving), joining=joining.items())
    if not profiles:
        return []
    assert isinstance(op, Leave | Update)
    user = sorted(profiles)[op.pick % len(profiles)]
    if isinstance(op, Leave):
        del profiles[user]
        return index.leave(user)
    profiles[user] = op.profile
    return index.update(user, op.profile)


@settings(max_examples=300, deadline=None)
@given(config=_configs, ops=_ops)
def test_incremental_lists_equal_a_from_scratch_computation(
    config: PoolConfig, ops: list[object]
) -> None:
    index = TopKIndex(config=config)
    profiles: dict[str, Profile | None] = {}
    for op in ops:
        before = _lists(index, sorted(profiles))
        changed = _step(index, profiles, op)
        users = sorted(profiles)
        after = _lists(index, users)

        assert changed == [user for user in users if before.get(user) != after[user]]
        expected = _brute_force(index, users)
        assert {user: [(e.user_id, e.score) for e in after[user]] for user in users} == expected
        fresh = TopKIndex(config=config, text_model=index.text_model)
        fresh.join_many(reversed(list(profiles.items())))
        assert _lists(fresh, users) == after


@settings(max_examples=150, deadline=None)
@given(
    profiles=st.lists(_profiles, min_size=2, max_size=5),
    weights=st.sampled_from([dict(DEFAULT_WEIGHTS), TEXT_WEIGHTS, {"opinions": 1.0}]),
    refit=st.booleans(),
)
# Found by CI: squares of values this small are subnormal, so the norm lost precision.
@example(
    profiles=[Profile(embedding=[1.4413540750392226e-160, 0.0])] * 2,
    weights=dict(DEFAULT_WEIGHTS),
    refit=False,
)
# Found by CI: squares this small underflow to 0, and score_pair must scale as the index does.
@example(
    profiles=[Profile(embedding=[1e-170, 0.0])] * 2, weights=dict(DEFAULT_WEIGHTS), refit=False
)
def test_scores_are_symmetric_and_follow_score_pair(
    profiles: list[Profile | None], weights: dict[str, float], refit: bool
) -> None:
    index = TopKIndex(config=_config(top_k=4, weights=weights))
    index.join_many((f"u{number}", profile) for number, profile in enumerate(profiles))
    if refit:
        index.rematch(refit_text=True)
    model = index.text_model

    for (i, left), (j, right) in itertools.combinations(enumerate(profiles), 2):
        score = index.score(f"u{i}", f"u{j}")
        assert score == index.score(f"u{j}", f"u{i}")
        assert 0.0 <= score <= 1.0
        expected = score_pair(left, right, weights, text_model=model)
        assert score == pytest.approx(expected.score, abs=1.01e-6)
        assert pair_reasons(left, right, weights, model) == expected.reasons
