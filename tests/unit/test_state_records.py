"""`models.state.decode_state`: table values decode to what was written, compactly."""

from __future__ import annotations

from models.codec import dumps
from models.messages import MatchFound, MatchMember, PoolConfig, Profile
from models.state import (
    InputMark,
    MatchState,
    PoolState,
    RequestState,
    decode_state,
)


def _request(number: int) -> RequestState:
    return RequestState(
        request_id=f"r-{number}",
        pool_id="pool",
        user_id=f"u-{number}",
        criteria={"city": "Lyon", "level": 3},
        profile=Profile(
            interests=["go", "rust"], attributes={"remote": True}, embedding=[0.5, 1.0]
        ),
        status="queued",
        queued_at=10.0 + number,
        partition=2,
        changed_at=11.0,
    )


def test_every_kind_decodes_to_the_record_written() -> None:
    found = MatchFound(
        match_id="m-1",
        pool_id="pool",
        mode="pair",
        members=[MatchMember(request_id="r-1", user_id="u-1")],
        score=0.5,
        reasons=["same city"],
        criteria={"city": "Lyon"},
        created_at="2026-01-01T00:00:00Z",
    )
    records = [
        _request(1),
        PoolState(pool_id="pool", config=PoolConfig(mode="group"), partition=2, changed_at=1.0),
        MatchState(
            found=found, state="proposed", answers={"r-1": True}, partition=2, changed_at=1.0
        ),
        InputMark(topic="match.request", offset=41, partition=2, changed_at=1.0),
    ]
    for record in records:
        assert decode_state(dumps(record)) == record


def test_decoded_requests_share_a_field_set_that_no_change_leaks_through() -> None:
    first, second = decode_state(dumps(_request(1))), decode_state(dumps(_request(2)))
    assert isinstance(first, RequestState) and isinstance(second, RequestState)
    assert first.__pydantic_fields_set__ is second.__pydantic_fields_set__
    assert first.profile is not None and second.profile is not None
    assert first.profile.__pydantic_fields_set__ is second.profile.__pydantic_fields_set__

    changed = first.model_copy(update={"status": "cancelled", "reason": "user"})

    assert changed.model_fields_set == set(RequestState.model_fields)
    assert first.model_fields_set == set(RequestState.model_fields)
    assert dumps(first) == dumps(_request(1))
    assert decode_state(dumps(changed)).status == "cancelled"


def test_decoded_requests_share_equal_criteria_and_profile_values_only() -> None:
    first, second = (decode_state(dumps(_request(number))) for number in (1, 2))

    assert first.criteria is second.criteria
    assert first.profile is not None and second.profile is not None
    assert first.profile.interests is second.profile.interests
    assert first.profile.attributes is second.profile.attributes
    assert first.profile.facts is second.profile.facts
    assert decode_state(dumps(first)) == first

    # Equal in Python, different in JSON: each keeps its own value.
    values: list[object] = [1, 1.0, True, 0.0, -0.0]
    decoded = [
        decode_state(dumps(_request(3).model_copy(update={"criteria": {"k": value}})))
        for value in values
    ]
    assert [request.criteria["k"] for request in decoded] == values
    assert [type(request.criteria["k"]) for request in decoded] == [int, float, bool, float, float]
    assert str(decoded[4].criteria["k"]) == "-0.0"
