"""`MatchEngine` by example: one rule of CONTRACT section 1 per test.

The engine is driven exactly as the worker drives it: every call gets the input
partition and `now`, and its `Effects.writes` are applied to a table dict in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from matching.engine import Effects, MatchEngine, MisroutedError
from models.codec import dumps
from models.messages import TERMINAL_STATUSES, MatchFound, MatchRequest, PoolCommand, PoolConfig
from models.state import MatchState, PoolState, RequestState, StateRecord, decode_state, state_key

POOL = "peerprep"


class Harness:
    """An engine plus the state table its writes build, as the worker keeps it."""

    def __init__(self, engine: MatchEngine | None = None) -> None:
        self.engine = engine or MatchEngine()
        self.table: dict[str, StateRecord] = {}

    def ask(
        self,
        request_id: str,
        user_id: str,
        *,
        now: float = 0.0,
        pool: str = POOL,
        partition: int = 0,
        **fields: Any,
    ) -> Effects:
        message = MatchRequest(request_id=request_id, pool_id=pool, user_id=user_id, **fields)
        return self._apply(self.engine.handle_request(message, partition=partition, now=now))

    def cancel(
        self, request_id: str, user_id: str, *, now: float = 0.0, pool: str = POOL
    ) -> Effects:
        message = MatchRequest(type="cancel", request_id=request_id, pool_id=pool, user_id=user_id)
        return self._apply(self.engine.handle_request(message, partition=0, now=now))

    def command(
        self, name: str, *, now: float = 0.0, pool: str = POOL, partition: int = 0, **config: Any
    ) -> Effects:
        command = PoolCommand(
            command=name,  # type: ignore[arg-type]  # tests pass literal command names
            pool_id=pool,
            config=PoolConfig(**config) if name == "configure" else None,
        )
        return self._apply(self.engine.handle_command(command, partition=partition, now=now))

    def tick(self, now: float, *, partition: int = 0) -> Effects:
        return self._apply(self.engine.tick(partition=partition, now=now))

    def record(self, request_id: str, pool: str = POOL) -> RequestState:
        record = self.table[state_key("r", pool, request_id)]
        assert isinstance(record, RequestState)
        return record

    def status(self, request_id: str, pool: str = POOL) -> str:
        return self.record(request_id, pool).status

    def waiting(self, pool: str = POOL) -> set[str]:
        return set(self.engine.pools[pool].waiting)

    def _apply(self, effects: Effects) -> Effects:
        for key, record in effects.writes:
            previous = self.table.get(key)
            # The engine must never rewrite a request that already ended.
            assert not (
                isinstance(previous, RequestState) and previous.status in TERMINAL_STATUSES
            ), f"{key!r} rewritten after {previous.status}"
            self.table[key] = record
        return effects


def matches(effects: Effects) -> list[MatchFound]:
    return [record.found for _, record in effects.writes if isinstance(record, MatchState)]


def only_match(effects: Effects) -> MatchFound:
    found = matches(effects)
    assert len(found) == 1, found
    return found[0]


def member_ids(found: MatchFound) -> set[str]:
    return {member.request_id for member in found.members}


def statuses(effects: Effects) -> dict[str, str]:
    return {
        record.request_id: record.status
        for _, record in effects.writes
        if isinstance(record, RequestState)
    }


def partner_of(effects: Effects, request_id: str) -> str:
    (other,) = member_ids(only_match(effects)) - {request_id}
    return other


# -- pair and group matching ----------------------------------------------------------


def test_first_request_waits_and_second_makes_a_pair() -> None:
    pool = Harness()

    first = pool.ask("r-1", "u-1", now=0.0)
    second = pool.ask("r-2", "u-2", now=1.0)

    assert statuses(first) == {"r-1": "queued"}
    found = only_match(second)
    assert found.mode == "pair"
    assert {(m.user_id, m.request_id) for m in found.members} == {("u-1", "r-1"), ("u-2", "r-2")}
    assert found.created_at == "1970-01-01T00:00:01.000Z"
    # The match record comes first so a relay never sees `matched` for an unknown match.
    assert [type(record) for _, record in second.writes] == [MatchState, RequestState, RequestState]
    for request_id in ("r-1", "r-2"):
        assert pool.record(request_id).status == "matched"
        assert pool.record(request_id).match_id == found.match_id
    assert pool.table[state_key("m", POOL, found.match_id)] == second.writes[0][1]
    assert pool.waiting() == set()


def test_a_user_is_never_paired_with_themselves() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1")

    # Same user, new request: the first is superseded, not matched.
    effects = pool.ask("r-2", "u-1")

    assert matches(effects) == []
    assert statuses(effects) == {"r-1": "superseded", "r-2": "queued"}


def test_group_of_three_forms_on_the_third_arrival() -> None:
    pool = Harness()
    pool.command("configure", mode="group", group_size=3, match_on=["topic"])

    pool.ask("r-1", "u-1", criteria={"topic": "arrays"})
    second = pool.ask("r-2", "u-2", criteria={"topic": "arrays"})
    third = pool.ask("r-3", "u-3", criteria={"topic": "arrays"}, now=2.0)

    assert matches(second) == []
    found = only_match(third)
    assert found.mode == "group"
    assert member_ids(found) == {"r-1", "r-2", "r-3"}
    assert found.reasons[0] == "all chose arrays"
    assert found.criteria == {"topic": "arrays"}
    assert {pool.status(rid) for rid in ("r-1", "r-2", "r-3")} == {"matched"}


def test_group_score_is_the_mean_of_its_pairs() -> None:
    pool = Harness()
    pool.command("configure", mode="group", group_size=3, weights={"interests": 1.0})

    pool.ask("r-1", "u-1", profile={"interests": ["rust"]})
    pool.ask("r-2", "u-2", profile={"interests": ["rust"]})
    found = only_match(pool.ask("r-3", "u-3", profile={"interests": ["golf"]}))

    # Pairs: (1,2)=1.0, (1,3)=0.0, (2,3)=0.0.
    assert found.score == pytest.approx(1 / 3, abs=1e-6)
    assert "shared interests: rust" in found.reasons


def test_pair_mode_ignores_group_size() -> None:
    pool = Harness()
    pool.command("configure", mode="pair", group_size=4)

    pool.ask("r-1", "u-1")

    assert len(only_match(pool.ask("r-2", "u-2")).members) == 2


def test_group_members_must_all_agree_not_just_with_the_newcomer() -> None:
    pool = Harness()
    pool.command("configure", mode="group", group_size=3, match_on=["topic"])
    pool.ask("r-1", "u-1", criteria={"topic": "arrays"})
    pool.ask("r-2", "u-2", criteria={"topic": "graphs"})

    # The newcomer takes anything, but r-1 and r-2 disagree with each other.
    effects = pool.ask("r-3", "u-3", criteria={})

    assert matches(effects) == []
    assert pool.waiting() == {"r-1", "r-2", "r-3"}


# -- criteria -------------------------------------------------------------------------


def test_match_on_keeps_differing_criteria_apart() -> None:
    pool = Harness()
    pool.command("configure", match_on=["difficulty", "topic"])

    pool.ask("r-1", "u-1", criteria={"difficulty": "Easy", "topic": "arrays"})
    hard = pool.ask("r-2", "u-2", criteria={"difficulty": "Hard", "topic": "arrays"})
    other_topic = pool.ask("r-3", "u-3", criteria={"difficulty": "Easy", "topic": "graphs"})
    same = pool.ask("r-4", "u-4", criteria={"difficulty": "Easy", "topic": "arrays"})

    assert matches(hard) == [] and matches(other_topic) == []
    found = only_match(same)
    assert member_ids(found) == {"r-1", "r-4"}
    assert found.criteria == {"difficulty": "Easy", "topic": "arrays"}
    assert found.reasons[0] == "both chose Easy/arrays"
    assert pool.waiting() == {"r-2", "r-3"}


def test_criteria_not_in_match_on_do_not_matter() -> None:
    pool = Harness()
    pool.command("configure", match_on=["difficulty"])

    pool.ask("r-1", "u-1", criteria={"difficulty": "Easy", "language": "go"})
    found = only_match(pool.ask("r-2", "u-2", criteria={"difficulty": "Easy", "language": "py"}))

    # A key both did not agree on is reported as None, not as one side's value.
    assert found.criteria == {"difficulty": "Easy", "language": None}


def test_a_missing_criterion_means_any() -> None:
    pool = Harness()
    pool.command("configure", match_on=["difficulty", "topic"])

    pool.ask("r-1", "u-1", criteria={"difficulty": "Hard", "topic": "arrays"})
    found = only_match(pool.ask("r-2", "u-2", criteria={"topic": "arrays"}))

    assert member_ids(found) == {"r-1", "r-2"}
    assert found.criteria == {"difficulty": "Hard", "topic": "arrays"}


def test_an_explicit_null_criterion_means_any() -> None:
    pool = Harness()
    pool.command("configure", match_on=["difficulty"])

    pool.ask("r-1", "u-1", criteria={"difficulty": None})

    assert member_ids(only_match(pool.ask("r-2", "u-2", criteria={"difficulty": "Hard"}))) == {
        "r-1",
        "r-2",
    }


def test_boolean_and_number_criteria_do_not_agree() -> None:
    # Python says True == 1; JSON (and a producer) says they differ.
    pool = Harness()
    pool.command("configure", match_on=["level"])

    pool.ask("r-1", "u-1", criteria={"level": 1})
    boolean = pool.ask("r-2", "u-2", criteria={"level": True})
    number = pool.ask("r-3", "u-3", criteria={"level": 1.0})

    assert matches(boolean) == []
    # 1 and 1.0 are the same JSON number.
    assert member_ids(only_match(number)) == {"r-1", "r-3"}
    assert pool.waiting() == {"r-2"}
    assert member_ids(only_match(pool.ask("r-4", "u-4", criteria={"level": True}))) == {
        "r-2",
        "r-4",
    }


# -- relaxation -----------------------------------------------------------------------


def test_relax_after_s_matches_differing_criteria_once_both_have_waited() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"], relax_after_s={"topic": 30})

    pool.ask("r-1", "u-1", criteria={"topic": "arrays"}, now=0.0)
    pool.ask("r-2", "u-2", criteria={"topic": "graphs"}, now=20.0)

    # r-1 has waited long enough at 30, r-2 only at 50.
    assert matches(pool.tick(29.0)) == []
    assert matches(pool.tick(30.0)) == []
    assert matches(pool.tick(49.9)) == []
    found = only_match(pool.tick(50.0))
    assert member_ids(found) == {"r-1", "r-2"}
    assert found.criteria == {"topic": None}
    assert "relaxed after waiting: topic" in found.reasons


def test_a_fresh_newcomer_does_not_relax_with_a_long_waiting_request() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"], relax_after_s={"topic": 30})
    pool.ask("r-1", "u-1", criteria={"topic": "arrays"}, now=0.0)
    pool.tick(100.0)

    effects = pool.ask("r-2", "u-2", criteria={"topic": "graphs"}, now=100.0)

    assert matches(effects) == []
    assert member_ids(only_match(pool.tick(130.0))) == {"r-1", "r-2"}


def test_relaxing_one_key_keeps_the_others_required() -> None:
    pool = Harness()
    pool.command("configure", match_on=["difficulty", "topic"], relax_after_s={"topic": 10})
    pool.ask("r-1", "u-1", criteria={"difficulty": "Easy", "topic": "arrays"}, now=0.0)
    pool.ask("r-2", "u-2", criteria={"difficulty": "Hard", "topic": "graphs"}, now=0.0)
    pool.ask("r-3", "u-3", criteria={"difficulty": "Easy", "topic": "graphs"}, now=0.0)

    found = only_match(pool.tick(10.0))

    # Difficulty is never relaxed, so Easy can only pair with Easy.
    assert member_ids(found) == {"r-1", "r-3"}
    assert found.criteria == {"difficulty": "Easy", "topic": None}
    assert found.reasons[:2] == ["both chose Easy", "relaxed after waiting: topic"]
    assert pool.waiting() == {"r-2"}


def test_each_key_relaxes_at_its_own_time() -> None:
    pool = Harness()
    pool.command(
        "configure",
        match_on=["difficulty", "topic"],
        relax_after_s={"topic": 10, "difficulty": 40},
    )
    pool.ask("r-1", "u-1", criteria={"difficulty": "Easy", "topic": "arrays"}, now=0.0)
    pool.ask("r-2", "u-2", criteria={"difficulty": "Hard", "topic": "graphs"}, now=0.0)

    assert matches(pool.tick(10.0)) == []
    assert matches(pool.tick(39.0)) == []
    assert member_ids(only_match(pool.tick(40.0))) == {"r-1", "r-2"}


# -- scores, chaos and priority -------------------------------------------------------


def test_min_score_keeps_poor_fits_apart() -> None:
    pool = Harness()
    pool.command("configure", min_score=0.5)

    pool.ask("r-1", "u-1", profile={"interests": ["rust"]})
    poor = pool.ask("r-2", "u-2", profile={"interests": ["golf"]})
    good = pool.ask("r-3", "u-3", profile={"interests": ["rust", "go"]})

    assert matches(poor) == []
    found = only_match(good)
    assert member_ids(found) == {"r-1", "r-3"}
    assert found.score == 0.5  # exactly min_score is good enough
    assert "shared interests: rust" in found.reasons


def _three_waiting(pool: Harness, **config: Any) -> None:
    """Three requests that cannot match each other (different topics), best fit first."""
    pool.command("configure", match_on=["topic"], **config)
    pool.ask("best", "u-1", criteria={"topic": "a"}, profile={"interests": ["x", "y"]})
    pool.ask("mid", "u-2", criteria={"topic": "b"}, profile={"interests": ["x", "z"]})
    pool.ask("worst", "u-3", criteria={"topic": "c"}, profile={"interests": ["q"]})


def test_chaos_zero_picks_the_best_score() -> None:
    for index in range(20):
        pool = Harness()
        _three_waiting(pool, chaos=0)

        # No topic: the newcomer may pair with any of them.
        effects = pool.ask(f"n-{index}", "u-9", profile={"interests": ["x", "y"]})

        assert partner_of(effects, f"n-{index}") == "best"
        assert only_match(effects).score == 1.0


def test_chaos_ten_still_gives_valid_but_varied_matches() -> None:
    partners = set()
    for index in range(30):
        pool = Harness()
        _three_waiting(pool, chaos=10)

        effects = pool.ask(f"n-{index}", "u-9", profile={"interests": ["x", "y"]})

        found = only_match(effects)
        assert len(found.members) == 2
        assert len({member.user_id for member in found.members}) == 2
        partner = partner_of(effects, f"n-{index}")
        assert pool.status(partner) == "matched"
        assert pool.waiting() == {"best", "mid", "worst"} - {partner}
        partners.add(partner)
    # Uniformly random over three candidates: 30 draws all alike would be a broken blend.
    assert partners == {"best", "mid", "worst"}


def test_chaos_is_reproducible_for_the_same_input() -> None:
    picks = []
    for _ in range(2):
        pool = Harness()
        _three_waiting(pool, chaos=7)
        picks.append(partner_of(pool.ask("n-1", "u-9"), "n-1"))

    assert picks[0] == picks[1]


def test_chaos_respects_min_score() -> None:
    for index in range(20):
        pool = Harness()
        _three_waiting(pool, chaos=10, min_score=0.3)

        effects = pool.ask(f"n-{index}", "u-9", profile={"interests": ["x", "y"]})

        # "worst" shares nothing (score 0) so chaos may never pick it.
        assert partner_of(effects, f"n-{index}") in {"best", "mid"}


def test_equal_scores_go_to_the_higher_priority() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"])
    pool.ask("low", "u-1", criteria={"topic": "a"}, priority=0, now=0.0)
    pool.ask("high", "u-2", criteria={"topic": "b"}, priority=3, now=5.0)

    effects = pool.ask("n", "u-9", now=10.0)

    assert partner_of(effects, "n") == "high"


def test_equal_scores_and_priority_go_to_the_longest_waiting() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"])
    pool.ask("later", "u-1", criteria={"topic": "a"}, now=5.0)
    pool.ask("earlier", "u-2", criteria={"topic": "b"}, now=1.0)

    assert partner_of(pool.ask("n", "u-9", now=10.0), "n") == "earlier"


def test_score_beats_priority() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"])
    pool.ask("urgent", "u-1", criteria={"topic": "a"}, priority=3)
    pool.ask("fitting", "u-2", criteria={"topic": "b"}, profile={"interests": ["rust"]})

    assert partner_of(pool.ask("n", "u-9", profile={"interests": ["rust"]}), "n") == "fitting"


# -- time -----------------------------------------------------------------------------


def test_ttl_expires_on_tick_and_not_before() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1", ttl_s=10, now=0.0)

    assert pool.tick(9.999).writes == []
    assert pool.status("r-1") == "queued"
    effects = pool.tick(10.0)

    assert statuses(effects) == {"r-1": "expired"}
    assert pool.record("r-1").reason == "ttl"
    assert pool.waiting() == set()
    assert pool.tick(20.0).writes == []  # ends once


def test_request_ttl_defaults_to_the_pool_config() -> None:
    pool = Harness()
    pool.command("configure", request_ttl_s=60)

    pool.ask("r-1", "u-1", now=0.0)

    assert pool.record("r-1").expires_at == 60.0
    assert pool.tick(59.0).writes == []
    assert statuses(pool.tick(60.0)) == {"r-1": "expired"}


def test_ttl_null_never_expires() -> None:
    pool = Harness()
    pool.command("configure", request_ttl_s=None)
    pool.ask("r-1", "u-1", now=0.0)

    assert pool.record("r-1").expires_at is None
    assert pool.tick(10.0 * 365 * 24 * 3600).writes == []


def test_an_expired_request_is_no_longer_matched() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1", ttl_s=10, now=0.0)
    pool.tick(10.0)

    effects = pool.ask("r-2", "u-2", now=11.0)

    assert statuses(effects) == {"r-2": "queued"}


def test_a_request_past_its_ttl_is_not_matched_before_the_tick() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1", ttl_s=10, now=0.0)

    # No tick between 10 and 100, e.g. a worker that just restarted or lags.
    effects = pool.ask("r-2", "u-2", now=100.0)

    assert matches(effects) == []
    # The late expiry is written first, so the status stream stays in order.
    assert [(key, getattr(record, "status", None)) for key, record in effects.writes] == [
        (state_key("r", POOL, "r-1"), "expired"),
        (state_key("r", POOL, "r-2"), "queued"),
    ]
    assert pool.record("r-1").reason == "ttl"


def test_resume_does_not_match_requests_past_their_ttl() -> None:
    pool = Harness()
    pool.command("pause")
    pool.ask("r-1", "u-1", ttl_s=10, now=0.0)
    pool.ask("r-2", "u-2", now=0.0)

    effects = pool.command("resume", now=50.0)

    assert matches(effects) == []
    assert pool.status("r-1") == "expired"
    assert pool.waiting() == {"r-2"}


def test_configure_does_not_match_requests_past_their_ttl() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"])
    pool.ask("r-1", "u-1", criteria={"topic": "a"}, ttl_s=10, now=0.0)
    pool.ask("r-2", "u-2", criteria={"topic": "b"}, now=0.0)

    # Dropping match_on would pair them, but r-1 ran out of time first.
    effects = pool.command("configure", match_on=[], now=50.0)

    assert matches(effects) == []
    assert pool.status("r-1") == "expired"
    assert pool.waiting() == {"r-2"}


def test_a_cancel_after_the_ttl_finds_the_request_expired() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1", ttl_s=10, now=0.0)

    effects = pool.cancel("r-1", "u-1", now=30.0)

    assert statuses(effects) == {"r-1": "expired"}
    (notice,) = effects.notices
    assert notice.reason == "not_active"


def test_tick_only_touches_pools_of_its_partition() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1", ttl_s=10, now=0.0, pool="zero", partition=0)
    pool.ask("r-2", "u-2", ttl_s=10, now=0.0, pool="one", partition=1)

    effects = pool.tick(50.0, partition=1)

    assert statuses(effects) == {"r-2": "expired"}
    assert pool.status("r-1", pool="zero") == "queued"


# -- cancel, supersede, duplicates ----------------------------------------------------


def test_cancel_ends_a_waiting_request() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1")

    effects = pool.cancel("r-1", "u-1", now=3.0)

    assert statuses(effects) == {"r-1": "cancelled"}
    assert effects.notices == []
    assert pool.record("r-1").changed_at == 3.0
    assert pool.waiting() == set()
    # Cancelled means gone: the next request does not match it.
    assert statuses(pool.ask("r-2", "u-2")) == {"r-2": "queued"}


@pytest.mark.parametrize("history", ["never-seen", "cancelled", "matched", "expired"])
def test_cancel_of_a_request_that_is_not_active_is_a_rejected_notice(history: str) -> None:
    pool = Harness()
    if history != "never-seen":
        pool.ask("r-1", "u-1", ttl_s=10)
    if history == "cancelled":
        pool.cancel("r-1", "u-1")
    elif history == "matched":
        pool.ask("r-2", "u-2")
    elif history == "expired":
        pool.tick(10.0)
    table_before = dict(pool.table)

    effects = pool.cancel("r-1", "u-1", now=20.0)

    assert effects.writes == []
    (notice,) = effects.notices
    assert (notice.request_id, notice.user_id, notice.pool_id) == ("r-1", "u-1", POOL)
    assert (notice.status, notice.about, notice.reason) == ("rejected", "cancel", "not_active")
    assert notice.at == "1970-01-01T00:00:20.000Z"
    assert pool.table == table_before


def test_cancel_by_another_user_is_refused_and_changes_nothing() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1")

    effects = pool.cancel("r-1", "u-2")

    assert effects.writes == []
    (notice,) = effects.notices
    assert (notice.status, notice.about, notice.reason) == ("rejected", "cancel", "not_owner")
    assert notice.user_id == "u-2"
    assert pool.status("r-1") == "queued"
    assert pool.waiting() == {"r-1"}


def test_a_new_request_of_the_same_user_supersedes_the_old_one() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1", criteria={"topic": "arrays"}, now=0.0)

    effects = pool.ask("r-2", "u-1", criteria={"topic": "graphs"}, now=5.0)

    assert [key for key, _ in effects.writes] == [
        state_key("r", POOL, "r-1"),
        state_key("r", POOL, "r-2"),
    ]
    assert pool.status("r-1") == "superseded"
    assert pool.record("r-1").reason == "replaced by r-2"
    assert pool.status("r-2") == "queued"
    assert pool.waiting() == {"r-2"}
    assert pool.engine.pools[POOL].active_by_user == {"u-1": "r-2"}


def test_a_superseding_request_can_match_at_once() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"])
    pool.ask("r-1", "u-1", criteria={"topic": "arrays"})
    pool.ask("r-2", "u-2", criteria={"topic": "graphs"})

    effects = pool.ask("r-3", "u-1", criteria={"topic": "graphs"})

    assert statuses(effects) == {"r-1": "superseded", "r-2": "matched", "r-3": "matched"}


def test_supersede_happens_per_pool() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1", pool="one")

    effects = pool.ask("r-2", "u-1", pool="two")

    assert statuses(effects) == {"r-2": "queued"}
    assert pool.status("r-1", pool="one") == "queued"


@pytest.mark.parametrize("history", ["queued", "matched", "cancelled", "superseded", "rejected"])
def test_a_duplicate_request_id_has_no_effects(history: str) -> None:
    pool = Harness()
    pool.ask("r-1", "u-1")
    if history == "matched":
        pool.ask("r-2", "u-2")
    elif history == "cancelled":
        pool.cancel("r-1", "u-1")
    elif history == "superseded":
        pool.ask("r-2", "u-1")
    elif history == "rejected":
        pool = Harness()
        pool.command("close")
        pool.ask("r-1", "u-1")
    table_before = dict(pool.table)

    # Even a changed body under the same request_id is the same request.
    effects = pool.ask("r-1", "u-1", criteria={"topic": "new"}, now=9.0)

    assert effects == Effects(replay_safe=True)
    assert pool.table == table_before


# -- pool commands --------------------------------------------------------------------


def test_a_closed_pool_refuses_new_requests() -> None:
    pool = Harness()
    closing = pool.command("close", now=1.0)

    effects = pool.ask("r-1", "u-1", now=2.0)

    (key, record) = closing.writes[0]
    assert key == state_key("p", POOL) and isinstance(record, PoolState) and record.closed
    assert statuses(effects) == {"r-1": "rejected"}
    assert pool.record("r-1").reason == "pool_closed"
    assert pool.waiting() == set()


def test_close_expires_every_waiting_request() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"])
    pool.ask("r-1", "u-1", criteria={"topic": "a"})
    pool.ask("r-2", "u-2", criteria={"topic": "b"})

    effects = pool.command("close", now=5.0)

    assert statuses(effects) == {"r-1": "expired", "r-2": "expired"}
    assert {pool.record(rid).reason for rid in ("r-1", "r-2")} == {"pool_closed"}
    assert pool.waiting() == set()


def test_clear_cancels_every_waiting_request_but_keeps_the_pool_open() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"])
    pool.ask("r-1", "u-1", criteria={"topic": "a"})
    pool.ask("r-2", "u-2", criteria={"topic": "b"})

    effects = pool.command("clear")

    assert statuses(effects) == {"r-1": "cancelled", "r-2": "cancelled"}
    assert {pool.record(rid).reason for rid in ("r-1", "r-2")} == {"cleared"}
    assert pool.waiting() == set()
    assert statuses(pool.ask("r-3", "u-1", criteria={"topic": "a"})) == {"r-3": "queued"}


def test_pause_queues_without_matching_and_resume_matches() -> None:
    pool = Harness()
    pausing = pool.command("pause")

    first = pool.ask("r-1", "u-1")
    second = pool.ask("r-2", "u-2")
    resuming = pool.command("resume", now=3.0)

    assert isinstance(pausing.writes[0][1], PoolState) and pausing.writes[0][1].paused
    assert statuses(first) == {"r-1": "queued"} and statuses(second) == {"r-2": "queued"}
    assert member_ids(only_match(resuming)) == {"r-1", "r-2"}
    assert pool.waiting() == set()


def test_a_paused_pool_still_expires_and_cancels() -> None:
    pool = Harness()
    pool.command("pause")
    pool.ask("r-1", "u-1", ttl_s=5)
    pool.ask("r-2", "u-2")

    assert statuses(pool.tick(5.0)) == {"r-1": "expired"}
    assert statuses(pool.cancel("r-2", "u-2")) == {"r-2": "cancelled"}


def test_configure_changes_matching_for_waiting_requests() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"])
    pool.ask("r-1", "u-1", criteria={"topic": "a"})
    pool.ask("r-2", "u-2", criteria={"topic": "b"})

    effects = pool.command("configure", match_on=[], now=1.0)

    assert isinstance(effects.writes[0][1], PoolState)
    assert effects.writes[0][1].config.match_on == []
    assert member_ids(only_match(effects)) == {"r-1", "r-2"}


def test_configure_group_size_changes_how_many_are_needed() -> None:
    pool = Harness()
    pool.command("configure", mode="group", group_size=4)
    for index in range(3):
        pool.ask(f"r-{index}", f"u-{index}")
    assert pool.waiting() == {"r-0", "r-1", "r-2"}

    effects = pool.command("configure", mode="group", group_size=3)

    assert member_ids(only_match(effects)) == {"r-0", "r-1", "r-2"}


def test_recommend_and_batch_modes_do_not_match_on_arrival() -> None:
    for mode in ("recommend", "batch"):
        pool = Harness()
        pool.command("configure", mode=mode)

        pool.ask("r-1", "u-1")
        effects = pool.ask("r-2", "u-2")

        assert statuses(effects) == {"r-2": "queued"}


def test_max_waiting_rejects_requests_beyond_it() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"], max_waiting=2)
    pool.ask("r-1", "u-1", criteria={"topic": "a"})
    pool.ask("r-2", "u-2", criteria={"topic": "b"})

    effects = pool.ask("r-3", "u-3", criteria={"topic": "c"})

    assert statuses(effects) == {"r-3": "rejected"}
    assert pool.record("r-3").reason == "pool_full"
    assert pool.waiting() == {"r-1", "r-2"}
    # Refused is final: the same request_id again is a duplicate.
    assert pool.ask("r-3", "u-3", criteria={"topic": "c"}) == Effects(replay_safe=True)


def test_a_full_pool_still_matches_a_request_that_finds_a_partner() -> None:
    pool = Harness()
    pool.command("configure", max_waiting=1)
    pool.ask("r-1", "u-1")

    effects = pool.ask("r-2", "u-2")

    assert statuses(effects) == {"r-1": "matched", "r-2": "matched"}


def test_a_full_pool_still_lets_a_user_replace_their_request() -> None:
    pool = Harness()
    pool.command("configure", match_on=["topic"], max_waiting=2)
    pool.ask("r-1", "u-1", criteria={"topic": "a"})
    pool.ask("r-2", "u-2", criteria={"topic": "b"})

    effects = pool.ask("r-3", "u-1", criteria={"topic": "c"})

    assert statuses(effects) == {"r-1": "superseded", "r-3": "queued"}


def test_a_pool_lives_on_one_partition() -> None:
    pool = Harness()
    pool.ask("r-1", "u-1", partition=3)
    table_before = dict(pool.table)

    with pytest.raises(MisroutedError, match="partition 3"):
        pool.ask("r-2", "u-2", partition=4)
    with pytest.raises(MisroutedError):
        pool.command("pause", partition=4)

    assert pool.table == table_before
    assert pool.waiting() == {"r-1"}
    assert pool.engine.pools[POOL].paused is False


# -- recovery and identity ------------------------------------------------------------


def _recover(table: dict[str, StateRecord]) -> Harness:
    """A fresh engine loaded from the table, through the bytes the changelog holds."""
    engine = MatchEngine()
    engine.load(decode_state(dumps(record)) for record in table.values())
    recovered = Harness(engine)
    recovered.table = dict(table)
    return recovered


def _script(pool: Harness, start: float) -> Iterable[Effects]:
    """Inputs after the crash; both engines must answer them identically."""
    yield pool.ask("late-1", "u-5", criteria={"topic": "graphs"}, now=start)
    yield pool.ask("r-2", "u-2", now=start)  # duplicate of a request before the crash
    yield pool.command("resume", now=start + 1)
    yield pool.tick(start + 5)
    yield pool.ask("late-2", "u-6", criteria={"topic": "trees"}, now=start + 6)
    yield pool.tick(start + 40)
    yield pool.ask("late-3", "u-7", criteria={"topic": "arrays"}, now=start + 41)
    yield pool.cancel("r-4", "u-4", now=start + 42)
    yield pool.tick(start + 500)


def test_load_rebuilds_an_equivalent_engine() -> None:
    original = Harness()
    original.command(
        "configure",
        match_on=["topic"],
        relax_after_s={"topic": 30},
        request_ttl_s=120,
        weights={"interests": 1.0},
    )
    original.ask("r-1", "u-1", criteria={"topic": "arrays"}, profile={"interests": ["rust"]})
    original.ask("r-2", "u-2", criteria={"topic": "arrays"}, now=1.0)  # matches r-1
    original.ask("r-3", "u-3", criteria={"topic": "graphs"}, now=2.0, priority=2)
    original.ask("r-4", "u-4", criteria={"topic": "trees"}, now=3.0, ttl_s=1000)
    original.ask("r-5", "u-5", criteria={"topic": "heaps"}, now=4.0)
    original.ask("r-6", "u-6", criteria={"topic": "lists"}, now=4.0)
    original.cancel("r-6", "u-6", now=5.0)
    original.command("pause", now=6.0)
    original.ask("r-7", "u-7", criteria={"topic": "graphs"}, now=7.0)
    original.command("close", pool="other", now=7.0)

    recovered = _recover(original.table)

    for pool_id, book in original.engine.pools.items():
        twin = recovered.engine.pools[pool_id]
        assert set(twin.waiting) == set(book.waiting)
        assert twin.known_requests == book.known_requests
        assert twin.active_by_user == book.active_by_user
        assert (twin.paused, twin.closed, twin.config) == (book.paused, book.closed, book.config)
        assert twin.partition == book.partition
    assert recovered.waiting() == {"r-3", "r-4", "r-5", "r-7"}

    after_original = list(_script(original, start=10.0))
    after_recovered = list(_script(recovered, start=10.0))

    assert after_recovered == after_original
    assert recovered.table == original.table
    # The script exercised matching, relaxing, expiry and cancelling after recovery.
    assert any(matches(effects) for effects in after_original)
    assert "expired" in {record.status for record in _requests(original.table)}
    assert "cancelled" in {record.status for record in _requests(original.table)}


def test_load_keeps_a_closed_pool_closed() -> None:
    original = Harness()
    original.ask("r-1", "u-1")
    original.command("close")

    recovered = _recover(original.table)

    assert statuses(recovered.ask("r-2", "u-2")) == {"r-2": "rejected"}


def test_load_replaces_previous_state() -> None:
    engine = MatchEngine()
    engine.handle_request(
        MatchRequest(request_id="r", pool_id="p", user_id="u"), partition=0, now=0
    )

    engine.load([])

    assert engine.pools == {}


def _requests(table: dict[str, StateRecord]) -> list[RequestState]:
    return [record for record in table.values() if isinstance(record, RequestState)]


def test_match_id_is_stable_for_the_same_members() -> None:
    forward, backward = Harness(), Harness()
    forward.ask("r-1", "u-1", now=0.0)
    backward.ask("r-2", "u-2", now=0.0)

    one = only_match(forward.ask("r-2", "u-2", now=1.0))
    other = only_match(backward.ask("r-1", "u-1", now=7.0))

    assert one.match_id == other.match_id
    assert one.match_id.startswith("m-")


def test_match_id_differs_for_other_members_or_pools() -> None:
    ids = set()
    for pool_id, second in [("a", "r-2"), ("a", "r-3"), ("b", "r-2")]:
        pool = Harness()
        pool.ask("r-1", "u-1", pool=pool_id)
        ids.add(only_match(pool.ask(second, "u-2", pool=pool_id)).match_id)

    assert len(ids) == 3
