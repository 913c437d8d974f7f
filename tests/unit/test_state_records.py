"""`models.state.decode_state`: table values decode to what was written, compactly."""

from __future__ import annotations

import sys
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from models.codec import dumps
from models.messages import MatchFound, MatchMember, PoolConfig, Profile
from models.state import (
    InputMark,
    MatchState,
    PoolState,
    RequestState,
    decode_state,
    parse_state,
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


_texts = st.text(max_size=12)
_criterion_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _texts,
)
_profiles = st.builds(
    Profile,
    interests=st.lists(_texts, max_size=4),
    attributes=st.dictionaries(_texts, _criterion_values, max_size=3),
    embedding=st.none() | st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=4),
    facts=st.lists(_texts, max_size=2),
    opinions=st.lists(_texts, max_size=2),
)
_requests = st.builds(
    RequestState,
    request_id=_texts,
    pool_id=_texts,
    user_id=_texts,
    criteria=st.dictionaries(_texts, _criterion_values, max_size=3),
    profile=st.none() | _profiles,
    priority=st.integers(0, 3),
    status=st.sampled_from(["queued", "requeued", "proposed", "matched", "expired"]),
    reason=st.none() | _texts,
    match_id=st.none() | _texts,
    queued_at=st.floats(0, 2e9),
    expires_at=st.none() | st.floats(0, 2e9),
    created_at=st.none() | _texts,
    profile_only=st.booleans(),
    partition=st.integers(0, 63),
    changed_at=st.floats(0, 2e9),
)


def _typed(value: object) -> object:
    """`value` with the type of every part, so `1 == 1.0 == True` do not pass for each other."""
    if isinstance(value, BaseModel):
        return (type(value), {name: _typed(part) for name, part in value.__dict__.items()})
    if isinstance(value, dict):
        return {key: _typed(part) for key, part in value.items()}
    if isinstance(value, list):
        return [_typed(part) for part in value]
    return (type(value), value.hex() if isinstance(value, float) else value)


@given(_requests)
def test_a_request_record_decodes_as_validation_would_have_made_it(request: RequestState) -> None:
    raw = dumps(request)

    decoded = decode_state(raw)

    assert _typed(decoded) == _typed(parse_state(raw)) == _typed(request)
    assert decoded.model_fields_set == set(RequestState.model_fields)
    assert dumps(decoded) == raw
    # Held by the million: no larger than the validated record.
    assert sys.getsizeof(decoded.__dict__) <= sys.getsizeof(parse_state(raw).__dict__)


def _request_fields() -> dict[str, Any]:
    fields: dict[str, Any] = orjson.loads(dumps(_request(1)))
    return fields


def test_a_request_record_not_exactly_as_written_is_validated() -> None:
    extra = _request_fields() | {"note": "from a later version"}
    assert decode_state(orjson.dumps(extra)) == _request(1)

    with_defaults = _request_fields()
    del with_defaults["profile_only"], with_defaults["profile"]["facts"]
    assert decode_state(orjson.dumps(with_defaults)) == _request(1)

    missing = _request_fields()
    del missing["queued_at"]
    with pytest.raises(ValidationError):
        decode_state(orjson.dumps(missing))
    with pytest.raises(ValidationError):
        decode_state(b'{"kind": "request", ')
