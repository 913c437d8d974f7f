"""Fetch sessions: what each request names, and when a session starts over."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v4, FetchRequest_v11

from streams.fetch_sessions import FetchSession, use_sessions

_MAX_BYTES = 1_048_576


def _fetch(positions: dict[tuple[str, int], int]) -> FetchRequest:
    """The fetcher's request for `positions` (partition -> fetch offset)."""
    by_topic: dict[str, list[tuple[int, int, int]]] = {}
    for (topic, partition), offset in positions.items():
        by_topic.setdefault(topic, []).append((partition, offset, _MAX_BYTES))
    return FetchRequest(500, 1, 52_428_800, 1, list(by_topic.items()))


class _Reply:
    def __init__(self, *, session_id: int, error_code: int = 0) -> None:
        self.session_id = session_id
        self.error_code = error_code


def _encoded(request: FetchRequest) -> tuple[Any, dict[tuple[str, int], int], list[Any]]:
    """The v11 request on the wire: its session fields, partitions sent and partitions dropped."""
    struct = request.build(FetchRequest_v11)
    sent = {
        (topic, partition[0]): partition[2]
        for topic, partitions in struct.topics
        for partition in partitions
    }
    return (struct.session_id, struct.session_epoch), sent, struct.forgotten_topics_data


_START = {("in", 0): 10, ("in", 1): 20, ("tick", 0): 5}


def _established(session_id: int = 42) -> FetchSession:
    session = FetchSession()
    first = session.request(_fetch(_START))
    first.build(FetchRequest_v11)
    session.answered(first, _Reply(session_id=session_id))
    return session


def test_the_first_request_starts_a_session_with_every_partition() -> None:
    session = FetchSession()

    request = session.request(_fetch(_START))

    assert _encoded(request) == ((0, 0), _START, [])


def test_later_requests_name_only_moved_and_added_partitions_and_list_the_dropped() -> None:
    session = _established()

    request = session.request(_fetch({("in", 0): 13, ("in", 1): 20, ("in", 2): 0}))

    assert _encoded(request) == ((42, 1), {("in", 0): 13, ("in", 2): 0}, [("tick", [0])])
    # The fetcher maps each partition of the reply to the offset it asked for.
    assert {(topic, p[0]) for topic, parts in request.topics for p in parts} == {
        ("in", 0),
        ("in", 1),
        ("in", 2),
    }


def test_an_unchanged_fetch_names_no_partition_and_epochs_count_up() -> None:
    session = _established()
    for epoch in (1, 2, 3):
        request = session.request(_fetch(_START))
        assert _encoded(request) == ((42, epoch), {}, [])
        session.answered(request, _Reply(session_id=42))
    assert session.incremental == 3


def test_the_epoch_after_the_last_one_is_one() -> None:
    session = _established()
    session.epoch = 2**31 - 1
    request = session.request(_fetch(_START))
    request.build(FetchRequest_v11)

    session.answered(request, _Reply(session_id=42))

    assert session.epoch == 1


@pytest.mark.parametrize("error_code", [70, 71])
def test_a_session_the_broker_lost_starts_over_in_full(error_code: int) -> None:
    session = _established()
    request = session.request(_fetch(_START))
    request.build(FetchRequest_v11)

    session.answered(request, _Reply(session_id=0, error_code=error_code))

    assert _encoded(session.request(_fetch(_START))) == ((0, 0), _START, [])
    assert session.restarted == 1


def test_a_broker_that_keeps_no_session_gets_full_requests() -> None:
    session = FetchSession()
    first = session.request(_fetch(_START))
    first.build(FetchRequest_v11)

    session.answered(first, _Reply(session_id=0))

    assert _encoded(session.request(_fetch(_START))) == ((0, 0), _START, [])


def test_a_broker_without_sessions_gets_the_fetchers_own_request() -> None:
    session = FetchSession()
    request = session.request(_fetch(_START))

    struct = request.build(FetchRequest_v4)
    session.answered(request, _Reply(session_id=99))

    assert struct.encode() == _fetch(_START).build(FetchRequest_v4).encode()
    assert (session.session_id, session.epoch) == (0, 0)


async def test_a_request_that_got_no_reply_starts_the_session_over() -> None:
    sessions: dict[int, FetchSession] = {}
    replies: list[Any] = [_Reply(session_id=42), ConnectionError("broker gone")]

    async def send(node_id: int, request: Any) -> Any:
        request.build(FetchRequest_v11)
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    send_in_session = use_sessions(send, sessions)
    await send_in_session(1, _fetch(_START))
    assert sessions[1].session_id == 42

    with pytest.raises(ConnectionError):
        await send_in_session(1, _fetch(_START))

    assert (sessions[1].session_id, sessions[1].epoch, sessions[1].held) == (0, 0, {})


async def test_requests_other_than_fetches_pass_unchanged() -> None:
    seen: list[Any] = []

    async def send(node_id: int, request: Any, **kwargs: Any) -> str:
        seen.append((node_id, request, kwargs))
        return "reply"

    other = object()
    assert await use_sessions(send, {})(3, other, group=1) == "reply"
    assert seen == [(3, other, {"group": 1})]
