"""`PartnerIndex`: the vectorised partner search answers exactly as the Python loop.

The reference is `scan_partners` (the loop over every candidate); `find_partners`
with the index must choose the same partners with the same `ScoredPair`, whatever
the criteria, relax thresholds, scores, priorities, group sizes and chaos.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import matching.arrival
import matching.partner_index
import matching.pool
from matching.arrival import find_partners, scan_partners
from matching.engine import MatchEngine
from matching.partner_index import PartnerIndex
from matching.pool import PoolBook
from models.messages import MatchRequest, PoolConfig, Profile
from models.state import PoolState, RequestState

SETTINGS = settings(max_examples=200, deadline=None)
NOW = 40.0
TAGS = ["rust", "go", "chess", "golf", "jazz", "tea"]
TEXTS = ["remote work is great", "I love chess openings", "golf and tea", "static typing"]


@contextmanager
def indexed_always() -> Iterator[None]:
    """Index every pool and search with the index whatever the number of candidates."""
    saved = matching.pool.INDEX_FROM, matching.arrival.SCAN_BELOW
    matching.pool.INDEX_FROM, matching.arrival.SCAN_BELOW = 1, 0
    try:
        yield
    finally:
        matching.pool.INDEX_FROM, matching.arrival.SCAN_BELOW = saved


def request(
    number: int,
    *,
    user: str | None = None,
    criteria: dict[str, Any] | None = None,
    profile: Profile | None = None,
    priority: int = 0,
    queued_at: float = 0.0,
) -> RequestState:
    return RequestState(
        request_id=f"r-{number:04d}",
        pool_id="pool",
        user_id=user or f"u-{number}",
        criteria=criteria or {},
        profile=profile,
        priority=priority,
        status="queued",
        queued_at=queued_at,
        partition=0,
        changed_at=queued_at,
    )


def answer(partners: Any) -> Any:
    if partners is None:
        return None
    return [(partner.request_id, scored.score, scored.reasons) for partner, scored in partners]


def book_of(config: PoolConfig, requests: list[RequestState]) -> PoolBook:
    book = PoolBook(pool_id="pool", partition=0, config=config)
    for item in requests:
        book.add_waiting(item)
    return book


# -- strategies ------------------------------------------------------------------------

_values = st.sampled_from(["a", "b", 1, 1.0, True, None])
_criteria = st.fixed_dictionaries({}, optional={"level": _values, "topic": _values})
_embedding = st.one_of(
    st.none(),
    st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0]), min_size=3, max_size=3),
    st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3),
    st.lists(st.floats(-1.0, 1.0), min_size=5, max_size=5),
)
_profiles = st.one_of(
    st.none(),
    st.builds(
        Profile,
        interests=st.lists(st.sampled_from(TAGS), max_size=3),
        attributes=st.dictionaries(st.sampled_from(["x", "y"]), _values, max_size=2),
        embedding=_embedding,
        facts=st.lists(st.sampled_from(TEXTS), max_size=2),
    ),
)
_requests: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    user=st.sampled_from([f"u-{n}" for n in range(12)]),
    criteria=_criteria,
    profile=_profiles,
    priority=st.integers(0, 3),
    queued_at=st.sampled_from([0.0, 10.0, 20.0, 30.0, NOW]),
)
_weights = st.sampled_from(
    [
        {"interests": 1.0, "embedding": 1.0, "attributes": 0.5},
        {"interests": 1.0},
        {"embedding": 2.0, "facts": 1.0},
        {"interests": 0.3, "attributes": 1.0, "facts": 0.7, "opinions": 1.0, "embedding": 0.0},
    ]
)
_configs = st.builds(
    PoolConfig,
    mode=st.sampled_from(["pair", "group"]),
    group_size=st.integers(2, 4),
    match_on=st.sampled_from([[], ["level"], ["level", "topic"]]),
    relax_after_s=st.sampled_from([{}, {"level": 10.0}, {"level": 0.0, "topic": 30.0}]),
    min_score=st.sampled_from([0.0, 0.0, 0.3, 0.5, 0.8]),
    chaos=st.sampled_from([0.0, 0.0, 2.5, 10.0]),
    weights=_weights,
)


@SETTINGS
@given(
    config=_configs,
    waiting=st.lists(_requests, max_size=60),
    newcomer=_requests,
    newcomer_at=st.sampled_from([0.0, 20.0, NOW]),
)
def test_index_answers_as_the_loop(
    config: PoolConfig, waiting: list[dict[str, Any]], newcomer: dict[str, Any], newcomer_at: float
) -> None:
    requests = [request(number, **fields) for number, fields in enumerate(waiting)]
    asking = request(9999, **{**newcomer, "queued_at": newcomer_at})
    with indexed_always():
        book = book_of(config, requests)
        assert book.partners is not None or not requests
        reference = answer(scan_partners(book, asking, NOW))
        assert answer(find_partners(book, asking, NOW)) == reference


@SETTINGS
@given(
    config=_configs,
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 30), _requests), max_size=80),
    newcomer=_requests,
)
def test_index_follows_adds_and_removes(
    config: PoolConfig, steps: list[tuple[bool, int, dict[str, Any]]], newcomer: dict[str, Any]
) -> None:
    with indexed_always():
        book = book_of(config, [])
        for adding, number, fields in steps:
            if adding:
                book.remove_waiting(f"r-{number:04d}")
                book.add_waiting(request(number, **fields))
            else:
                book.remove_waiting(f"r-{number:04d}")
        asking = request(9999, **newcomer)
        reference = answer(scan_partners(book, asking, NOW))
        assert answer(find_partners(book, asking, NOW)) == reference
        if book.partners is not None:
            assert len(book.partners) == len(book.waiting)


@SETTINGS
@given(
    config=_configs,
    waiting=st.lists(_requests, max_size=60),
    later=st.lists(st.tuples(st.booleans(), st.integers(0, 70), _requests), max_size=20),
    newcomer=_requests,
)
def test_a_pool_indexed_at_once_answers_as_one_indexed_request_by_request(
    config: PoolConfig,
    waiting: list[dict[str, Any]],
    later: list[tuple[bool, int, dict[str, Any]]],
    newcomer: dict[str, Any],
) -> None:
    requests = [request(number, **fields) for number, fields in enumerate(waiting)]
    asking = request(9999, **newcomer)
    with indexed_always():
        one_by_one = book_of(config, requests)
        at_once = PoolBook(pool_id="pool", partition=0, config=config)
        at_once.index_deferred = True
        lazily = PoolBook(pool_id="pool", partition=0, config=config)
        lazily.index_deferred = True
        for item in requests:
            at_once.add_waiting(item)
            lazily.add_waiting(item)
        assert at_once.partners is None
        at_once.index_now()
        # Slots freed and taken again after the bulk fill behave as any others; the
        # lazy book changes before it is indexed, by its first search.
        for book in (one_by_one, at_once, lazily):
            for adding, number, fields in later:
                book.remove_waiting(f"r-{number:04d}")
                if adding:
                    book.add_waiting(request(number, **fields))
        assert (at_once.partners is None) == (one_by_one.partners is None)
        assert lazily.partners is None
        expected = answer(find_partners(one_by_one, asking, NOW))
        assert answer(find_partners(at_once, asking, NOW)) == expected
        assert answer(scan_partners(at_once, asking, NOW)) == expected
        assert answer(find_partners(lazily, asking, NOW)) == expected
        assert not lazily.index_deferred


# -- examples -----------------------------------------------------------------------


def embedded(rng: random.Random, dimension: int = 16) -> Profile:
    return Profile(
        interests=rng.sample(TAGS, 2), embedding=[rng.gauss(0, 1) for _ in range(dimension)]
    )


def test_large_pool_matches_the_loop_for_many_newcomers() -> None:
    rng = random.Random(7)
    config = PoolConfig(mode="group", group_size=3, match_on=["level"], chaos=0.0)
    requests = [
        request(n, criteria={"level": rng.choice("ab")}, profile=embedded(rng), priority=n % 2)
        for n in range(400)
    ]
    book = book_of(config, requests)
    assert book.partners is not None and len(book.partners) == 400
    for number in range(1000, 1040):
        asking = request(number, criteria={"level": rng.choice("ab")}, profile=embedded(rng))
        assert answer(find_partners(book, asking, NOW)) == answer(scan_partners(book, asking, NOW))


def test_chaos_draws_follow_random_random() -> None:
    rng = random.Random(3)
    config = PoolConfig(chaos=7.0)
    book = book_of(config, [request(n, profile=embedded(rng)) for n in range(200)])
    for number in range(1000, 1020):
        asking = request(number, profile=embedded(rng))
        assert answer(find_partners(book, asking, NOW)) == answer(scan_partners(book, asking, NOW))


def test_work_counts_the_requests_that_can_agree() -> None:
    rng = random.Random(5)
    config = PoolConfig(match_on=["level"], min_score=1.0)
    requests = [
        request(n, criteria={"level": "ab"[n % 2]}, profile=embedded(rng)) for n in range(100)
    ]
    book = book_of(config, requests)
    asking = request(1000, user="u-0", criteria={"level": "a"}, profile=embedded(rng))
    assert find_partners(book, asking, NOW) is None
    # 50 wait at level "a"; one of them is the newcomer's own user, who is not scored.
    assert (book.work.considered, book.work.scored) == (50, 49)


def test_the_index_comes_and_goes_with_the_pool_size() -> None:
    config = PoolConfig()
    book = book_of(config, [request(n) for n in range(matching.pool.INDEX_FROM - 1)])
    assert book.partners is None
    book.add_waiting(request(500))
    assert book.partners is not None
    for number in range(matching.pool.INDEX_FROM // 2 + 1):
        book.remove_waiting(f"r-{number:04d}")
    assert book.partners is None


def test_reindex_rebuilds_for_the_new_config() -> None:
    rng = random.Random(9)
    requests = [
        request(n, criteria={"level": "ab"[n % 2]}, profile=embedded(rng)) for n in range(100)
    ]
    book = book_of(PoolConfig(), requests)
    book.reindex(PoolConfig(match_on=["level"], weights={"interests": 1.0}))
    assert book.partners is not None and book.partners.config is book.config
    asking = request(1000, criteria={"level": "b"}, profile=embedded(rng))
    with indexed_always():
        assert answer(find_partners(book, asking, NOW)) == answer(scan_partners(book, asking, NOW))
    book.reindex(PoolConfig(mode="batch"))
    assert book.partners is None


def test_unsafe_values_fall_back_to_the_loop() -> None:
    config = PoolConfig()
    huge = Profile(embedding=[1e200, 1.0])
    index = PartnerIndex(config=config)
    index.add(request(1, profile=Profile(embedding=[1.0, 0.0])))
    assert index.search(request(2, profile=huge), NOW) is None
    index.add(request(3, profile=huge))
    assert index.search(request(2, profile=Profile(embedding=[1.0, 1.0])), NOW) is None
    index.remove("r-0003")
    assert index.search(request(2, profile=Profile(embedding=[1.0, 1.0])), NOW) is not None


def test_a_score_on_a_rounding_midpoint_is_score_pairs() -> None:
    # Jaccard 1/128 = 0.0078125 sits exactly between two 6-decimal values.
    mine = [f"m{n}" for n in range(64)] + ["shared"]
    theirs = [f"t{n}" for n in range(63)] + ["shared"]
    config = PoolConfig(weights={"interests": 1.0})
    waiting = [request(n, profile=Profile(interests=theirs)) for n in range(3)]
    asking = request(1000, profile=Profile(interests=mine))
    with indexed_always():
        book = book_of(config, waiting)
        found = find_partners(book, asking, NOW)
        assert answer(found) == answer(scan_partners(book, asking, NOW))
    assert found is not None and found[0][1].score == round(1 / 128, 6)


def test_draws_equal_random_random() -> None:
    for count in (0, 3, matching.partner_index._PYTHON_DRAWS + 1000):
        expected = random.Random("r-0042")
        draws = matching.partner_index._draws("r-0042", count)
        assert draws.tolist() == [expected.random() for _ in range(count)]


def test_buckets_rebuild_after_many_newcomers(monkeypatch: Any) -> None:
    monkeypatch.setattr(matching.partner_index, "_REBUILD_AFTER", 1)
    rng = random.Random(11)
    config = PoolConfig(weights={"interests": 1.0, "embedding": 1.0, "facts": 1.0})
    book = book_of(config, [request(n, profile=embedded(rng)) for n in range(100)])
    assert book.partners is not None
    (bucket,) = book.partners._buckets.values()
    vectors = bucket.vectors
    for number in range(1000, 1300):
        novel = Profile(
            interests=[f"novel-{number}"],
            facts=[f"word{number} other{number}"],
            embedding=[1.0] * 16,
        )
        asking = request(number, profile=novel)
        assert answer(find_partners(book, asking, NOW)) == answer(scan_partners(book, asking, NOW))
    assert bucket.vectors is not vectors
    assert bucket.scratch_uses < 300


def test_scores_closer_than_float32_rank_as_the_loop() -> None:
    # Cosines a few 1e-7 apart: float32 cannot order them, rounding makes some tie.
    rng = random.Random(13)
    base = [rng.gauss(0, 1) for _ in range(384)]
    near = [
        request(
            n,
            profile=Profile(embedding=[x + rng.gauss(0, 5e-3 * (1 + n % 4)) for x in base]),
            priority=rng.randint(0, 3),
            queued_at=rng.choice([0.0, 10.0]),
        )
        for n in range(120)
    ]
    for config in (PoolConfig(), PoolConfig(mode="group", group_size=4), PoolConfig(chaos=0.01)):
        book = book_of(config, near)
        assert book.partners is not None
        for number in range(1000, 1010):
            asking = request(number, profile=Profile(embedding=base))
            found = find_partners(book, asking, NOW)
            assert answer(found) == answer(scan_partners(book, asking, NOW))


def test_a_recovery_leaves_partner_indexes_to_the_first_search_or_the_worker() -> None:
    config = PoolConfig(mode="pair", match_on=["level"], min_score=0.0)
    records: list[Any] = [
        PoolState(pool_id=pool, config=config, partition=0, changed_at=0.0)
        for pool in ("searched", "background", "small")
    ]
    for pool, waiting in (("searched", 100), ("background", 100), ("small", 3)):
        records += [
            request(number, criteria={"level": "b"}).model_copy(update={"pool_id": pool})
            for number in range(waiting)
        ]
    engine = MatchEngine()
    engine.load(records)
    assert [book.partners for book in engine.pools.values()] == [None, None, None]
    assert engine.unindexed_pools == 3

    asking = MatchRequest(
        request_id="new", pool_id="searched", user_id="u-new", criteria={"level": "b"}
    )
    effects = engine.handle_request(asking, partition=0, now=NOW)

    assert [record.kind for _, record in effects.writes] == ["match", "request", "request"]
    assert engine.pools["searched"].partners is not None
    assert engine.index_next_pool()  # "background"; "searched" is done already
    assert engine.pools["background"].partners is not None
    assert engine.index_next_pool()  # "small": too few waiting for an index
    assert engine.pools["small"].partners is None
    assert not engine.pools["small"].index_deferred
    assert not engine.index_next_pool()
    assert engine.unindexed_pools == 0
