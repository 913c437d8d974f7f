"""`models.codec.decode`: every input either becomes a model or a DLQ reason.

The DLQ record's `error` is `str(DecodeError)`, so these tests pin that the reason
names the offending field: an operator reading `match.dlq` must see what to fix
without replaying the message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.codec import MAX_MESSAGE_BYTES, DecodeError, decode, dumps, loads, utc_now_iso
from models.messages import (
    MAX_EMBEDDING_DIMS,
    MatchConfirm,
    MatchRequest,
    PoolCommand,
    PoolConfig,
    Profile,
    ProfileUpdate,
)

_IDS = {"request_id": "r-1", "pool_id": "ai-meetup-2025", "user_id": "u-42"}


def _request(**fields: Any) -> bytes:
    return orjson.dumps({**_IDS, **fields})


def _reason(model: type, raw: bytes | str | None) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(model, raw)
    return str(caught.value)


def _names(reason: str, field: str) -> bool:
    """Whether one of the `location: message` parts of a reason is about `field`."""
    locations = [part.split(": ", 1)[0] for part in reason.split("; ")]
    return any(where == field or where.startswith(f"{field}.") for where in locations)


# -- happy path -----------------------------------------------------------------------


def test_decodes_the_contract_request_example() -> None:
    raw = (
        b'{"type": "request", "request_id": "r-1", "pool_id": "ai-meetup-2025",'
        b' "user_id": "u-42", "criteria": {"difficulty": "Easy", "topic": "arrays"},'
        b' "profile": {"interests": ["hiking", "rust"], "attributes": {"role": "engineer"},'
        b' "embedding": [0.12, -0.03], "facts": ["..."], "opinions": ["..."]},'
        b' "priority": 0, "ttl_s": 60, "created_at": "2026-11-23T10:00:00Z"}'
    )

    message = decode(MatchRequest, raw)

    assert message.type == "request"
    assert (message.request_id, message.pool_id, message.user_id) == (
        "r-1",
        "ai-meetup-2025",
        "u-42",
    )
    assert message.criteria == {"difficulty": "Easy", "topic": "arrays"}
    assert message.profile is not None
    assert message.profile.interests == ["hiking", "rust"]
    assert message.profile.embedding == [0.12, -0.03]
    assert message.ttl_s == 60
    assert message.created_at is not None and message.created_at.year == 2026


def test_optional_fields_default_as_the_contract_says() -> None:
    message = decode(MatchRequest, _request())

    # `type` defaults to `request`; everything else is optional.
    assert message.type == "request"
    assert message.criteria == {}
    assert message.profile is None
    assert message.priority == 0
    assert message.ttl_s is None
    assert message.created_at is None


def test_accepts_str_input_as_well_as_bytes() -> None:
    assert decode(MatchRequest, _request().decode()).user_id == "u-42"


def test_decodes_cancel_confirm_profile_update_and_commands() -> None:
    cancel = decode(MatchRequest, _request(type="cancel"))
    confirm = decode(
        MatchConfirm,
        b'{"match_id": "m-9", "pool_id": "peerprep", "user_id": "u-42", "accept": true}',
    )
    update = decode(
        ProfileUpdate,
        b'{"user_id": "u-42", "profile": {"interests": ["rust"], "embedding": [0.1, 0.2]},'
        b' "updated_at": "2026-11-23T10:05:00Z"}',
    )
    pause = decode(PoolCommand, b'{"command": "pause", "pool_id": "p"}')

    assert cancel.type == "cancel"
    assert confirm.accept is True
    assert update.profile.interests == ["rust"]
    assert pause.command == "pause" and pause.config is None


def test_decodes_the_contract_configure_example() -> None:
    raw = orjson.dumps(
        {
            "command": "configure",
            "pool_id": "ai-meetup-2025",
            "config": {
                "mode": "pair",
                "group_size": 2,
                "match_on": ["difficulty", "topic"],
                "relax_after_s": {"topic": 30},
                "min_score": 0.0,
                "chaos": 5,
                "request_ttl_s": 60,
                "require_confirm": False,
                "confirm_timeout_s": 120,
                "top_k": 3,
                "tables": 3,
                "seats_per_table": 3,
                "weights": {"interests": 1.0, "embedding": 1.0, "attributes": 0.5},
            },
        }
    )

    command = decode(PoolCommand, raw)

    assert command.config is not None
    assert command.config.match_on == ["difficulty", "topic"]
    assert command.config.relax_after_s == {"topic": 30}
    assert command.config.chaos == 5


def test_request_ttl_null_means_never_expire() -> None:
    command = decode(
        PoolCommand,
        b'{"command": "configure", "pool_id": "p", "config": {"request_ttl_s": null}}',
    )

    assert command.config is not None and command.config.request_ttl_s is None


def test_unknown_extra_fields_are_ignored_at_every_level() -> None:
    # Producers may be newer than us: extra fields must never send a message to the DLQ.
    raw = _request(
        future_field={"nested": True},
        profile={"interests": ["rust"], "mood": "sunny"},
    )

    message = decode(MatchRequest, raw)

    assert message.profile is not None and message.profile.interests == ["rust"]
    assert not hasattr(message, "future_field")
    assert not hasattr(message.profile, "mood")


def test_dumps_and_loads_round_trip_a_model() -> None:
    message = decode(MatchRequest, _request(profile={"interests": ["rust"]}, priority=2))

    assert decode(MatchRequest, dumps(message)) == message
    assert loads(dumps({"a": [1, 2]})) == {"a": [1, 2]}


_FINITE = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300)
@given(
    score=_FINITE,
    embedding=st.lists(_FINITE, max_size=8),
    interests=st.lists(st.text(max_size=12), max_size=4),
    user_id=st.text(
        # Lone surrogates cannot arrive in UTF-8 input, and the model refuses them.
        st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="\x7f"),
        min_size=1,
        max_size=20,
    ),
)
def test_dumps_writes_what_orjson_writes_for_the_models_json_dump(
    score: float, embedding: list[float], interests: list[str], user_id: str
) -> None:
    # Stored records and outputs keep their bytes whichever serializer wrote them.
    request = MatchRequest(
        request_id="r-1",
        pool_id="p",
        user_id=user_id,
        profile=Profile(interests=interests, embedding=embedding or None),
    )
    config = PoolConfig(mode="pair", min_score=min(max(score, 0.0), 1.0))
    for model in (request, config):
        assert dumps(model) == orjson.dumps(model.model_dump(mode="json"))


# -- DLQ-worthy input -----------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, b"", ""], ids=["none", "empty-bytes", "empty-str"])
def test_empty_message_is_refused(raw: bytes | str | None) -> None:
    assert "empty" in _reason(MatchRequest, raw)


@pytest.mark.parametrize(
    "raw",
    [b"{bad", b'{"request_id": "r-1",', b"\xff\xfe", b"NaN", b"{'single': 'quotes'}"],
    ids=["truncated-object", "truncated-field", "not-utf8", "nan-literal", "single-quotes"],
)
def test_bad_json_is_refused(raw: bytes) -> None:
    assert _reason(MatchRequest, raw).startswith("invalid JSON")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[1, 2]", "list"), (b'"u-42"', "str"), (b"42", "int"), (b"null", "NoneType")],
)
def test_json_that_is_not_an_object_is_refused(raw: bytes, kind: str) -> None:
    reason = _reason(MatchRequest, raw)

    assert "expected a JSON object" in reason
    assert kind in reason


def test_a_ten_megabyte_profile_is_refused_before_parsing() -> None:
    raw = _request(profile={"interests": ["x" * 10_000_000]})
    assert len(raw) > MAX_MESSAGE_BYTES

    reason = _reason(MatchRequest, raw)

    assert "exceeds" in reason and str(MAX_MESSAGE_BYTES) in reason


def test_a_message_just_under_the_limit_is_parsed() -> None:
    filler = "x" * (MAX_MESSAGE_BYTES - 200)
    raw = _request(ignored=filler)
    assert len(raw) <= MAX_MESSAGE_BYTES

    assert decode(MatchRequest, raw).user_id == "u-42"


def test_the_size_limit_counts_bytes_for_str_input_too() -> None:
    # 600k two-byte characters: 1.2 MB of UTF-8, but only 600k code points, which a
    # len(str) check would let through.
    raw = _request(ignored="é" * 600_000).decode()
    assert len(raw.encode()) > MAX_MESSAGE_BYTES

    assert "exceeds" in _reason(MatchRequest, raw)


@pytest.mark.parametrize("missing", ["request_id", "pool_id", "user_id"])
def test_missing_id_is_refused_and_named(missing: str) -> None:
    fields = {key: value for key, value in _IDS.items() if key != missing}

    reason = _reason(MatchRequest, orjson.dumps(fields))

    assert f"{missing}: Field required" in reason


def test_every_missing_id_is_named_at_once() -> None:
    reason = _reason(MatchRequest, b'{"type": "request"}')

    for name in ("request_id", "pool_id", "user_id"):
        assert name in reason


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"user_id": 42}, "user_id"),
        ({"request_id": ["r-1"]}, "request_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u\n42"}, "user_id"),
        ({"type": "delete"}, "type"),
        ({"criteria": ["Easy"]}, "criteria"),
        ({"criteria": {"difficulty": {"nested": 1}}}, "criteria.difficulty"),
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"profile": "rust"}, "profile"),
        ({"profile": {"interests": "rust"}}, "profile.interests"),
        ({"profile": {"embedding": ["a", "b"]}}, "profile.embedding.0"),
    ],
)
def test_wrong_types_are_refused_and_named(fields: dict[str, Any], named: str) -> None:
    reason = _reason(MatchRequest, _request(**fields))

    assert _names(reason, named), reason


@pytest.mark.parametrize("priority", [4, -1, 100])
def test_priority_out_of_range_is_refused(priority: int) -> None:
    reason = _reason(MatchRequest, _request(priority=priority))

    assert _names(reason, "priority"), reason


@pytest.mark.parametrize("priority", [0, 3])
def test_priority_bounds_are_inclusive(priority: int) -> None:
    assert decode(MatchRequest, _request(priority=priority)).priority == priority


def test_a_100k_element_embedding_is_refused() -> None:
    raw = _request(profile={"embedding": [0.1] * 100_000})
    # Small enough to get past the size check: the field limit is what must stop it.
    assert len(raw) <= MAX_MESSAGE_BYTES

    reason = _reason(MatchRequest, raw)

    assert reason.startswith("profile.embedding: ")
    assert str(MAX_EMBEDDING_DIMS) in reason


def test_more_than_256_interests_are_refused() -> None:
    reason = _reason(MatchRequest, _request(profile={"interests": ["x"] * 257}))

    assert _names(reason, "profile.interests"), reason


def test_an_embedding_at_the_dimension_limit_is_accepted() -> None:
    message = decode(MatchRequest, _request(profile={"embedding": [0.5] * MAX_EMBEDDING_DIMS}))

    assert message.profile is not None and message.profile.embedding is not None
    assert len(message.profile.embedding) == MAX_EMBEDDING_DIMS


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-inf"])
def test_non_finite_embedding_values_are_refused(value: str) -> None:
    # JSON has no NaN literal, but lax float parsing turns these strings into one.
    reason = _reason(MatchRequest, _request(profile={"embedding": [0.1, value]}))

    assert reason.startswith("profile.embedding: ")
    assert "finite" in reason


def test_an_overflowing_embedding_number_is_refused() -> None:
    raw = b'{"request_id": "r", "pool_id": "p", "user_id": "u", "profile": {"embedding": [1e400]}}'

    assert _reason(MatchRequest, raw).startswith("invalid JSON")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_profile_model_refuses_non_finite_values_from_python(value: float) -> None:
    # The HTTP layer builds models from Python objects, bypassing the JSON parser.
    with pytest.raises(ValueError, match="finite"):
        Profile(embedding=[0.0, value])


def test_configure_without_config_is_refused_and_names_config() -> None:
    reason = _reason(PoolCommand, b'{"command": "configure", "pool_id": "p"}')

    assert "config" in reason and "required" in reason


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"chaos": 11}, "config.chaos"),
        ({"mode": "swiss"}, "config.mode"),
        ({"group_size": 1}, "config.group_size"),
        ({"min_score": 1.5}, "config.min_score"),
        ({"max_waiting": 0}, "config.max_waiting"),
        ({"relax_after_s": {"topic": -1}}, "config.relax_after_s"),
        ({"weights": {"interests": -0.5}}, "config.weights"),
    ],
)
def test_bad_config_values_are_refused_and_named(config: dict[str, Any], named: str) -> None:
    raw = orjson.dumps({"command": "configure", "pool_id": "p", "config": config})

    assert _names(_reason(PoolCommand, raw), named)


def test_unknown_command_is_refused_and_named() -> None:
    assert _reason(PoolCommand, b'{"command": "explode", "pool_id": "p"}').startswith("command: ")


def test_confirm_without_a_boolean_answer_is_refused() -> None:
    raw = b'{"match_id": "m", "pool_id": "p", "user_id": "u", "accept": "maybe"}'

    assert _reason(MatchConfirm, raw).startswith("accept: ")


def test_profile_update_without_profile_is_refused() -> None:
    assert _reason(ProfileUpdate, b'{"user_id": "u-42"}').startswith("profile: Field required")


def test_the_reason_lists_at_most_five_errors() -> None:
    # A message wrong everywhere must still give a DLQ reason of bounded size.
    raw = orjson.dumps(
        {"type": 1, "priority": "x", "ttl_s": "x", "criteria": 1, "profile": 1, "created_at": 1}
    )

    assert _reason(MatchRequest, raw).count(": ") == 5


def test_default_pool_config_is_an_unconfigured_pair_pool() -> None:
    config = PoolConfig()

    assert config.mode == "pair" and config.match_on == []
    assert config.members_per_match == 2
    assert PoolConfig(mode="pair", group_size=4).members_per_match == 2
    assert PoolConfig(mode="group", group_size=4).members_per_match == 4


@settings(max_examples=2000)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.integers(0, 4 * 10**9))
def test_utc_now_iso_writes_what_datetime_writes(now: float) -> None:
    expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    assert utc_now_iso(now) == expected.replace("+00:00", "Z")


@pytest.mark.parametrize("fraction", [0.0005, 0.9995, 0.9999995, 0.9999994, 0.0000005])
def test_utc_now_iso_rounds_microseconds_as_datetime_does(fraction: float) -> None:
    now = 1_796_598_000 + fraction
    expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    assert utc_now_iso(now) == expected.replace("+00:00", "Z")
