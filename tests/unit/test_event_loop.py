"""The worker's event loop is the one `MATCHSTREAM_EVENT_LOOP` names."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop
from pydantic import ValidationError

from streams.runtime import use_event_loop
from streams.settings import Settings


@pytest.fixture(autouse=True)
def _restore_policy() -> Iterator[None]:
    before = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(before)


@pytest.mark.parametrize(("kind", "loop_type"), [("uvloop", uvloop.Loop), ("asyncio", None)])
def test_loops_made_after_the_choice_are_of_that_kind(kind: str, loop_type: type | None) -> None:
    use_event_loop(Settings.model_validate({"event_loop": kind}).event_loop)
    loop = asyncio.new_event_loop()
    try:
        if loop_type is None:
            assert not isinstance(loop, uvloop.Loop)
            assert type(loop).__module__.startswith("asyncio")
        else:
            assert isinstance(loop, loop_type)
    finally:
        loop.close()


def test_uvloop_is_the_default_and_unknown_loops_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MATCHSTREAM_EVENT_LOOP", raising=False)
    assert Settings().event_loop == "uvloop"
    monkeypatch.setenv("MATCHSTREAM_EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="event_loop"):
        Settings()
