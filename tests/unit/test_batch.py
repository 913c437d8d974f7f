"""`matching.batch`: pair everyone for the best total, then seat the pairs.

Properties checked on random pools and configs: the result is a valid matching
(nobody twice, at most one trio), seats stay within capacity and are unique, a group
shares a table, every attendee ends either in a group or unseated, and at chaos 0
the total is the optimum. The exact matcher equals brute force on up to 10 vertices;
the approximation stays within `APPROXIMATION_GAP` of it on pools of random profiles.
"""

from __future__ import annotations

import functools
import random
from collections import Counter

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matching.approximate import APPROXIMATION_GAP, approximate_matching
from matching.batch import Attendee, BatchResult, start_matching
from matching.blossom import exact_matching
from matching.profile_vectors import score_matrix
from matching.scoring import DEFAULT_WEIGHTS
from models.messages import PoolConfig, Profile

Weights = npt.NDArray[np.int64]


def _batch(**fields: object) -> PoolConfig:
    return PoolConfig.model_validate({"mode": "batch", **fields})


def _brute_force(weights: Weights) -> int:
    """The best total over all matchings, by trying every partner of the lowest free vertex."""
    count = len(weights)

    @functools.cache
    def best(taken: int) -> int:
        free = [vertex for vertex in range(count) if not taken >> vertex & 1]
        if len(free) < 2:
            return 0
        first, rest = free[0], free[1:]
        taken |= 1 << first
        options = [best(taken)]
        options += [int(weights[first, other]) + best(taken | 1 << other) for other in rest]
        return max(options)

    return best(0)


def _total(weights: Weights, pairs: list[tuple[int, int]]) -> int:
    members = [vertex for pair in pairs for vertex in pair]
    assert len(members) == len(set(members)), "nobody may be in two pairs"
    assert all(left < right for left, right in pairs)
    return sum(int(weights[left, right]) for left, right in pairs)


def _symmetric(upper: Weights) -> Weights:
    upper = np.triu(upper, 1)
    return upper + upper.T


def _random_profiles(count: int, seed: int) -> list[Profile]:
    rng = np.random.default_rng(seed)
    vocabulary = [f"topic-{number}" for number in range(30)]
    return [
        Profile(
            interests=list(rng.choice(vocabulary, int(rng.integers(2, 6)), replace=False)),
            embedding=rng.standard_normal(16).tolist(),
            attributes={"role": str(rng.choice(["dev", "pm", "ops"]))},
        )
        for _ in range(count)
    ]


# -- the matchers ---------------------------------------------------------------------

_matrices = st.integers(0, 10).flatmap(
    lambda count: st.lists(
        st.one_of(st.integers(0, 4), st.integers(0, 10**6)),
        min_size=count * count,
        max_size=count * count,
    ).map(lambda values: _symmetric(np.array(values, np.int64).reshape(count, count)))
)


@settings(max_examples=400, deadline=None)
@given(weights=_matrices)
def test_exact_matching_equals_brute_force(weights: Weights) -> None:
    pairs = exact_matching(weights)

    assert _total(weights, pairs) == _brute_force(weights)
    assert len(pairs) == len(weights) // 2  # zero-weight leftovers are paired too


@settings(max_examples=100, deadline=None)
@given(weights=_matrices)
def test_approximate_matching_is_a_matching_of_everyone_but_one(weights: Weights) -> None:
    pairs = approximate_matching(weights)

    assert _total(weights, pairs) <= _brute_force(weights)
    assert len(pairs) == len(weights) // 2


@pytest.mark.parametrize("seed", range(4))
def test_exact_matching_does_not_depend_on_vertex_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = _symmetric(rng.integers(0, 1000, (41, 41)))
    order = rng.permutation(41)

    shuffled = weights[np.ix_(order, order)]

    assert _total(shuffled, exact_matching(shuffled)) == _total(weights, exact_matching(weights))


@pytest.mark.parametrize(("count", "seed"), [(40, 0), (60, 1), (90, 2), (120, 3)])
def test_approximation_stays_within_the_stated_gap(count: int, seed: int) -> None:
    scores = score_matrix(_random_profiles(count, seed), DEFAULT_WEIGHTS)
    weights = np.rint(scores * 1_000_000).astype(np.int64)

    optimum = _total(weights, exact_matching(weights))
    approximation = _total(weights, approximate_matching(weights))

    assert (1 - APPROXIMATION_GAP) * optimum <= approximation <= optimum


# -- start_matching by example --------------------------------------------------------


def _people(*interests: list[str]) -> list[Attendee]:
    return [
        Attendee(f"u{number}", Profile(interests=items)) for number, items in enumerate(interests)
    ]


def test_pairs_maximise_the_total_not_the_first_choice() -> None:
    # The best pair, u0-u1 (0.75), would leave u2-u3 at 0; pairing across gives 2/3 + 1/2.
    people = _people(["a", "b", "c"], ["a", "b", "c", "d"], ["a", "b"], ["c", "d"])

    result = start_matching(people, _batch(tables=2, seats_per_table=2), rng=random.Random(0))

    assert sorted(pair.members for pair in result.pairs) == [("u0", "u2"), ("u1", "u3")]
    assert result.stats.total_score == 1.166667
    assert result.stats.method == "exact"
    assert result.stats.pairs_scored == 6


def test_the_odd_one_out_joins_the_pair_it_fits_best_as_a_trio() -> None:
    people = _people(["a"], ["a"], ["b"], ["b"], ["b", "c"])

    result = start_matching(people, _batch(tables=2, seats_per_table=3), rng=random.Random(0))

    trio = next(pair for pair in result.pairs if len(pair.members) == 3)
    assert set(trio.members) == {"u2", "u3", "u4"}
    assert trio.table_no == 1  # seated first: hardest to place
    assert trio.score == pytest.approx((1.0 + 0.5 + 0.5) / 3, abs=1e-6)
    assert result.unseated == ()


def test_without_a_table_for_three_the_odd_one_out_ends_unseated() -> None:
    people = _people(["a"], ["a"], ["b"])

    result = start_matching(people, _batch(tables=2, seats_per_table=2), rng=random.Random(0))

    assert [pair.members for pair in result.pairs] == [("u0", "u1")]
    assert result.unseated == ("u2",)


def test_when_seats_run_short_the_first_attendees_are_matched() -> None:
    people = _people(["a"], ["b"], ["a"], ["b"], ["a"])

    result = start_matching(people, _batch(tables=1, seats_per_table=2), rng=random.Random(0))

    assert [pair.members for pair in result.pairs] == [("u0", "u1")]
    assert result.unseated == ("u2", "u3", "u4")
    assert [(seat.user_id, seat.table_no, seat.seat_no) for seat in result.seats] == [
        ("u0", 1, 1),
        ("u1", 1, 2),
    ]


def test_a_pool_without_a_seat_plan_matches_everyone_and_seats_nobody() -> None:
    people = _people(["a"], ["a"], ["b"], ["b"], ["c"])

    result = start_matching(people, _batch(), rng=random.Random(0))

    assert sum(len(pair.members) for pair in result.pairs) == 5
    assert result.seats == () and result.unseated == ()
    assert all(pair.table_no is None for pair in result.pairs)


def test_a_lone_attendee_ends_unseated() -> None:
    result = start_matching(_people(["a"]), _batch(), rng=random.Random(0))

    assert result.pairs == () and result.unseated == ("u0",)


def test_reasons_include_shared_text_when_weighted() -> None:
    people = [
        Attendee("ann", Profile(opinions=["Remote work is great"], facts=["I live in Berlin"])),
        Attendee("bob", Profile(opinions=["I love remote work"], facts=["Berlin is home"])),
    ]
    config = _batch(weights={"facts": 1.0, "opinions": 1.0})

    (pair,) = start_matching(people, config, rng=random.Random(0)).pairs

    assert pair.reasons == ("both mention berlin", "similar opinions on remote work")
    assert 0.0 < pair.score <= 1.0


def test_a_user_given_twice_is_rejected() -> None:
    with pytest.raises(ValueError, match="once"):
        start_matching(_people(["a"], ["b"]) * 2, _batch(), rng=random.Random(0))


def test_the_same_seed_gives_the_same_result() -> None:
    people = _people(*[[str(number % 3), str(number % 5)] for number in range(12)])
    config = _batch(chaos=5, tables=3, seats_per_table=4)

    first = start_matching(people, config, rng=random.Random(42))
    second = start_matching(people, config, rng=random.Random(42))

    assert first == second


def test_full_chaos_makes_every_pairing_about_equally_likely() -> None:
    # Four people pair up in three ways; profiles strongly prefer one of them.
    people = _people(["a"], ["a"], ["b"], ["b"])
    config = _batch(chaos=10)
    rng = random.Random(7)

    seen = Counter(
        tuple(sorted(pair.members for pair in start_matching(people, config, rng=rng).pairs))
        for _ in range(600)
    )

    assert len(seen) == 3
    assert all(150 <= count <= 250 for count in seen.values())


# -- start_matching properties --------------------------------------------------------

_profiles = st.one_of(
    st.none(),
    st.builds(
        Profile,
        interests=st.lists(st.sampled_from(["rust", "go", "chess", "golf"]), max_size=3),
        embedding=st.one_of(
            st.none(), st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0]), min_size=2, max_size=2)
        ),
    ),
)
_configs = st.builds(
    _batch,
    tables=st.integers(0, 4),
    seats_per_table=st.integers(0, 5),
    chaos=st.sampled_from([0.0, 3.0, 10.0]),
)


def _check_result(result: BatchResult, attendees: list[Attendee], config: PoolConfig) -> None:
    grouped = [member for pair in result.pairs for member in pair.members]
    assert len(grouped) == len(set(grouped)), "nobody is in two groups"
    assert sum(len(pair.members) == 3 for pair in result.pairs) <= 1
    assert all(len(pair.members) in (2, 3) for pair in result.pairs)
    assert sorted(grouped + list(result.unseated)) == sorted(a.user_id for a in attendees)
    assert all(0.0 <= pair.score <= 1.0 for pair in result.pairs)
    assert result.stats.total_score == pytest.approx(sum(p.score for p in result.pairs))
    if config.tables == 0 or config.seats_per_table == 0:
        assert result.seats == ()
        assert len(result.unseated) == (1 if len(attendees) == 1 else 0)
        return
    places = [(seat.table_no, seat.seat_no) for seat in result.seats]
    assert len(places) == len(set(places)), "seats are unique"
    assert all(1 <= table <= config.tables for table, _ in places)
    assert all(1 <= seat <= config.seats_per_table for _, seat in places)
    assert sorted(seat.user_id for seat in result.seats) == sorted(grouped)
    table_of = {seat.user_id: seat.table_no for seat in result.seats}
    for pair in result.pairs:
        assert {table_of[member] for member in pair.members} == {pair.table_no}


@settings(max_examples=200, deadline=None)
@given(
    profiles=st.lists(_profiles, max_size=11),
    config=_configs,
    seed=st.integers(0, 2**32 - 1),
)
def test_any_pool_gives_a_valid_matching_and_seating(
    profiles: list[Profile | None], config: PoolConfig, seed: int
) -> None:
    attendees = [Attendee(f"u{number:02d}", profile) for number, profile in enumerate(profiles)]

    result = start_matching(attendees, config, rng=random.Random(seed))

    _check_result(result, attendees, config)
    approximate = start_matching(attendees, config, rng=random.Random(seed), exact_limit=1)
    _check_result(approximate, attendees, config)
    assert approximate.stats.method == ("approximate" if approximate.stats.matched else "exact")


@settings(max_examples=100, deadline=None)
@given(profiles=st.lists(_profiles, min_size=2, max_size=10))
def test_without_chaos_the_pairs_are_optimal(profiles: list[Profile | None]) -> None:
    even = profiles[: len(profiles) // 2 * 2]
    attendees = [Attendee(f"u{number}", profile) for number, profile in enumerate(even)]

    result = start_matching(attendees, _batch(), rng=random.Random(0))

    weights = np.rint(score_matrix(even, DEFAULT_WEIGHTS) * 1_000_000).astype(np.int64)
    assert round(result.stats.total_score * 1_000_000) == _brute_force(weights)
