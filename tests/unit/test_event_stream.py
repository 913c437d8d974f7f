"""`StreamSlots`: the cap on a route's open event streams."""

from __future__ import annotations

import pytest

from web.auth import HttpError
from web.event_stream import StreamSlots


def test_a_stream_past_the_limit_is_refused_and_a_closed_one_frees_its_slot() -> None:
    counts: list[int] = []
    slots = StreamSlots(limit=1, what="dashboard streams", on_count=counts.append)

    with slots.taken(), pytest.raises(HttpError) as refused, slots.taken():
        pass
    assert refused.value.status == 503
    assert refused.value.detail == "too many open dashboard streams on this worker"
    assert refused.value.headers == {"Retry-After": "5"}

    with slots.taken():
        assert slots.open == 1
    assert slots.open == 0
    assert counts == [1, 0, 1, 0]


def test_a_stream_that_fails_frees_its_slot() -> None:
    slots = StreamSlots(limit=1, what="streams")
    with pytest.raises(ConnectionResetError), slots.taken():
        raise ConnectionResetError
    assert slots.open == 0
