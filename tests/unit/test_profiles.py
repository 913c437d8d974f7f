"""Profile changes in the engine: the partition's copy, stored profiles, and re-scoring."""

from __future__ import annotations

from matching.engine import MatchEngine
from matching.profiles import ProfileDirectory
from models.codec import dumps
from models.messages import MatchRequest, PoolCommand, PoolConfig, Profile, ProfileChange
from models.state import MatchState, ProfileState, RequestState, decode_state


def _change(user: str, interests: list[str], at: float) -> ProfileChange:
    return ProfileChange(user_id=user, profile=Profile(interests=interests), updated_at=at)


def _ask(pool: str, user: str, profile: Profile | None = None) -> MatchRequest:
    return MatchRequest(request_id=f"{pool}-{user}", pool_id=pool, user_id=user, profile=profile)


def test_newest_wins_per_partition() -> None:
    directory = ProfileDirectory()

    assert directory.offer(_change("ann", ["go"], 5.0), partition=0, now=0.0) is not None
    assert directory.offer(_change("ann", ["rust"], 4.0), partition=0, now=0.0) is None
    assert directory.offer(_change("ann", ["go"], 5.0), partition=0, now=0.0) is None
    # The same change is news on another partition, which keeps its own copy.
    assert directory.offer(_change("ann", ["go"], 5.0), partition=1, now=0.0) is not None
    # Equal time, other content: the later message wins, as at the profiles agent.
    assert directory.offer(_change("ann", ["chess"], 5.0), partition=0, now=0.0) is not None
    assert directory.get("ann") == Profile(interests=["chess"])


def test_a_request_without_a_profile_takes_the_stored_one() -> None:
    engine = MatchEngine()
    effects = engine.handle_profile(_change("ann", ["go"], 1.0), partition=0, now=0.0)
    ((_, record),) = effects.writes
    assert isinstance(record, ProfileState) and record.partition == 0

    engine.handle_request(_ask("p", "ann"), partition=0, now=1.0)

    assert engine.pools["p"].waiting["p-ann"].profile == Profile(interests=["go"])
    recovered = MatchEngine()
    recovered.load([decode_state(dumps(record))])
    assert recovered.profiles.get("ann") == Profile(interests=["go"])


def test_a_waiting_request_is_matched_again_with_its_new_profile() -> None:
    engine = MatchEngine()
    config = PoolConfig(min_score=0.5)
    engine.handle_command(
        PoolCommand(command="configure", pool_id="p", config=config), partition=0, now=0.0
    )
    engine.handle_request(_ask("p", "ann", Profile(interests=["go"])), partition=0, now=1.0)
    engine.handle_request(_ask("p", "bob", Profile(interests=["golf"])), partition=0, now=2.0)
    assert len(engine.pools["p"].waiting) == 2  # 0 < min_score: no match

    effects = engine.handle_profile(_change("bob", ["go"], 3.0), partition=0, now=3.0)

    kinds = [(record.kind, getattr(record, "status", None)) for _, record in effects.writes]
    assert kinds == [
        ("profile", None),
        ("request", "queued"),  # the profile-only record: the relay sends no status
        ("match", None),
        ("request", "matched"),
        ("request", "matched"),
    ]
    profile_only = effects.writes[1][1]
    assert isinstance(profile_only, RequestState) and profile_only.profile_only


def test_only_pools_on_the_partition_where_the_user_is_active_are_touched() -> None:
    engine = MatchEngine()
    engine.handle_request(_ask("here", "ann", Profile(interests=["go"])), partition=0, now=1.0)
    engine.handle_request(_ask("there", "ann", Profile(interests=["go"])), partition=1, now=1.0)
    engine.handle_request(_ask("here", "bob", None), partition=0, now=1.0)

    effects = engine.handle_profile(_change("ann", ["rust"], 2.0), partition=0, now=2.0)

    touched = [record.pool_id for _, record in effects.writes if isinstance(record, RequestState)]
    assert touched == []  # ann was matched with bob on arrival: nothing active in "here"
    assert engine.pools["there"].waiting["there-ann"].profile == Profile(interests=["go"])
    assert engine.handle_profile(_change("ann", ["rust"], 2.0), partition=1, now=2.0).writes


def test_a_proposed_request_keeps_its_match_but_takes_the_profile() -> None:
    engine = MatchEngine()
    config = PoolConfig(require_confirm=True)
    engine.handle_command(
        PoolCommand(command="configure", pool_id="p", config=config), partition=0, now=0.0
    )
    engine.handle_request(_ask("p", "ann", Profile(interests=["go"])), partition=0, now=1.0)
    engine.handle_request(_ask("p", "bob", Profile(interests=["go"])), partition=0, now=2.0)

    effects = engine.handle_profile(_change("bob", ["rust"], 3.0), partition=0, now=3.0)

    assert not any(isinstance(record, MatchState) for _, record in effects.writes)
    assert engine.pools["p"].proposed["p-bob"].profile == Profile(interests=["rust"])
