"""Hostile HTTP input that once answered 500: bad input must be a 4xx (CONTRACT 2)."""

from __future__ import annotations

from urllib.parse import urlencode

import jwt
import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from web.auth import Authenticator, Caller, HttpError
from web.live import StatusStreams
from web.routing import (
    Call,
    QueryParam,
    Reply,
    Route,
    _integral_floats_as_ints,
    _path_params,
    _query_params,
)


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


# A `$`-anchored pattern let "p\n" through to the models, which refused it: a 500.
_NOT_IDENTIFIERS = ["p\n", "\u00fcis(Tp\n", "a\x00b", "\x7f", "x" * 201, ""]


def _route(*, query: tuple[QueryParam, ...] = ()) -> Route:
    async def handler(call: Call) -> Reply:
        raise AssertionError("never called: only the parameters are checked")

    return Route("POST", "/pools/{pool_id}/rematch", handler, "rematch", "admin", query=query)


@pytest.mark.parametrize("pool_id", _NOT_IDENTIFIERS)
def test_a_path_value_that_is_no_identifier_is_422(pool_id: str) -> None:
    request = make_mocked_request("POST", "/pools/x/rematch", match_info={"pool_id": pool_id})

    with pytest.raises(HttpError) as refused:
        _path_params(_route(), request)

    assert refused.value.status == 422


@pytest.mark.parametrize("after", _NOT_IDENTIFIERS)
def test_a_query_value_that_is_no_identifier_is_422(after: str) -> None:
    request = make_mocked_request("POST", "/pools/p/rematch?" + urlencode({"after": after}))

    with pytest.raises(HttpError) as refused:
        _query_params(_route(query=(QueryParam("after", "a cursor"),)), request)

    assert refused.value.status == 422


def test_an_ordinary_path_value_passes() -> None:
    request = make_mocked_request("POST", "/pools/x/rematch", match_info={"pool_id": "pool-7"})

    assert _path_params(_route(), request) == {"pool_id": "pool-7"}
