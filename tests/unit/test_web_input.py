"""Hostile HTTP input that once answered 500: bad input must be a 4xx (CONTRACT 2)."""

from __future__ import annotations

import jwt
import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from web.auth import Authenticator, Caller, HttpError
from web.live import StatusStreams
from web.routing import Call, _integral_floats_as_ints


def _call(last_event_id: str) -> Call:
    request = make_mocked_request(
        "GET", "/pools/p/stream", headers={"Last-Event-ID": last_event_id}
    )
    return Call(request=request, caller=Caller(user_id="u", admin=False), params={"pool_id": "p"})


@pytest.mark.parametrize(
    "last_event_id",
    ["\u00b2-1", "1-\u00b3", "\u0663-1", "9" * 5_000 + "-1", "1-" + "9" * 19, "-1", "1-", "a-b"],
)
def test_a_malformed_last_event_id_is_422(last_event_id: str) -> None:
    streams = StatusStreams(bootstrap=["127.0.0.1:9"], topic="match.status", partitions=1)

    with pytest.raises(HttpError) as refused:
        streams._start("p", _call(last_event_id))

    assert refused.value.status == 422


def test_a_well_formed_last_event_id_resumes_after_it() -> None:
    streams = StatusStreams(bootstrap=["127.0.0.1:9"], topic="match.status", partitions=1)

    start = streams._start("p", _call("0-41"))

    assert (start.partition, start.offset) == (0, 42)


def test_a_body_nested_deeper_than_any_route_needs_is_422() -> None:
    # orjson parses 1,024 levels; converting them recursively would exceed Python's limit.
    body = orjson.loads(b'{"criteria": {"k": ' + b"[" * 1_000 + b"]" * 1_000 + b"}}")

    with pytest.raises(HttpError) as refused:
        _integral_floats_as_ints(body)

    assert refused.value.status == 422


def test_integral_floats_become_ints_at_ordinary_depths() -> None:
    assert _integral_floats_as_ints({"a": [1.0, {"b": 2.5}]}) == {"a": [1, {"b": 2.5}]}


@pytest.mark.parametrize("subject", ["x" * 201, "ann\x00", "bob\n", ""])
def test_a_token_whose_subject_cannot_be_a_user_id_is_401(subject: str) -> None:
    secret = "s" * 32
    authenticator = Authenticator(secret=secret)
    token = jwt.encode({"sub": subject}, secret, algorithm="HS256")

    with pytest.raises(HttpError) as refused:
        authenticator.authenticate(f"Bearer {token}")

    assert refused.value.status == 401


def test_a_token_with_an_ordinary_subject_names_the_caller() -> None:
    secret = "s" * 32
    token = jwt.encode({"sub": "ann", "role": "admin"}, secret, algorithm="HS256")

    caller = Authenticator(secret=secret).authenticate(f"Bearer {token}")

    assert (caller.user_id, caller.admin) == ("ann", True)
