"""`EagerWaitFirst` answers as mode's `wait_first` does, without tasks when the first is done at once.

The fallback is the `wait_first` of a real mode service, as on Faust's consumer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service
from mode.utils.locks import Event

from streams.eager_handover import EagerWaitFirst

_WAIT_S = 5.0


class _Service(Service):
    """A mode service that is never started: only its `wait_first` is used."""


def _eager(service: Service) -> EagerWaitFirst:
    return EagerWaitFirst(service.wait_first, stopped=lambda: service.should_stop)


async def _deliver(into: list[str], message: str) -> str:
    into.append(message)
    return f"delivered {message}"


async def test_a_callback_done_at_once_is_answered_without_the_fallback() -> None:
    delivered: list[str] = []
    suspend_flow = Event()
    eager = _eager(_Service())

    results = await eager(_deliver(delivered, "m1"), suspend_flow.wait())

    assert delivered == ["m1"]
    assert results.results == ["delivered m1"] and not results.stopped
    assert (eager.eager, eager.waited) == (1, 0)


async def test_a_callback_that_waits_finishes_through_the_fallback() -> None:
    room = asyncio.get_running_loop().create_future()
    delivered: list[str] = []

    async def deliver_when_there_is_room() -> str:
        await room
        return await _deliver(delivered, "m2")

    eager = _eager(_Service())
    waiting = asyncio.ensure_future(eager(deliver_when_there_is_room(), Event().wait()))
    await asyncio.sleep(0)
    assert delivered == [] and not waiting.done()
    room.set_result(None)
    results = await asyncio.wait_for(waiting, _WAIT_S)

    assert delivered == ["m2"] and results.results[0] == "delivered m2"
    assert (eager.eager, eager.waited) == (0, 1)


async def test_a_suspended_flow_cancels_a_callback_that_waits() -> None:
    cancelled = asyncio.Event()

    async def deliver_into_a_full_buffer() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # never room
        except asyncio.CancelledError:
            cancelled.set()
            raise

    suspend_flow = Event()
    eager = _eager(_Service())
    waiting = asyncio.ensure_future(eager(deliver_into_a_full_buffer(), suspend_flow.wait()))
    await asyncio.sleep(0)
    suspend_flow.set()
    results = await asyncio.wait_for(waiting, _WAIT_S)

    await asyncio.wait_for(cancelled.wait(), _WAIT_S)
    assert results.results == [True] and not results.stopped


async def test_a_callback_that_fails_at_once_raises() -> None:
    async def fail() -> None:
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        await _eager(_Service())(fail(), Event().wait())


async def test_a_stopped_service_is_answered_by_the_fallback() -> None:
    service = _Service()
    service._stopped.set()
    delivered: list[str] = []
    eager = _eager(service)

    results = await eager(_deliver(delivered, "m3"))

    assert results.stopped
    assert (eager.eager, eager.waited) == (0, 1)


async def test_an_event_is_waited_for_as_mode_does() -> None:
    ready = Event()
    ready.set()
    eager = _eager(_Service())
    results: Any = await eager(ready)
    assert results.results == [True]
    assert (eager.eager, eager.waited) == (0, 1)
