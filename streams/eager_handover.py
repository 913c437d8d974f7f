"""Handing each fetched message to the streams without four tasks per message.

Faust's fetch loop hands every message to the agents' streams with
`consumer.wait_first(callback(message), suspend_flow.wait())`. mode's `wait_first`
makes a task of each of the two and of the consumer's `stopped` and `crashed` events,
waits for the first to finish and cancels the other three: four tasks, a wait and three
cancellations per input message. Most messages go into a stream buffer with room, so
the callback is done at its first step and the tasks change nothing
(docs/performance.md, "Handing messages to the streams").

`EagerWaitFirst` runs the first awaitable, when it is a coroutine, up to its first
suspension before anything else. If it finished there, its result is returned as
`wait_first` would return it, and the other awaitables are never started. If it
suspended (a full stream buffer), the rest of it and the others go to mode's own
`wait_first`: a suspension of the flow or a stop still interrupts it, as before.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from mode.services import WaitResults

__all__ = ["EagerWaitFirst", "install"]

WaitFirst = Callable[..., Awaitable[WaitResults]]


class _Resumed:
    """The rest of a coroutine that ran up to its first suspension, as an awaitable.

    A task awaiting it sees what the coroutine is waiting on, and sends, throws and
    cancels into the coroutine as if it had run the coroutine from its start.
    """

    def __init__(self, coro: types.CoroutineType[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                try:
                    sent = yield waiting_on
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as thrown:  # noqa: BLE001  # a cancellation too: the coroutine's
                    waiting_on = coro.throw(thrown)
                else:
                    waiting_on = coro.send(sent)
            except StopIteration as finished:
                return finished.value


class EagerWaitFirst:
    """A service's `wait_first` that skips the tasks when the first awaitable is done at once.

    Args:
        wait_first: the service's own (mode's) `wait_first`, for everything else.
        stopped: whether the service is stopping or has crashed; mode's answer for a
            stopped service is its own, so then `wait_first` is not bypassed.

    Attributes:
        eager: calls answered at the first step.
        waited: calls that went to `wait_first`.
    """

    def __init__(self, wait_first: WaitFirst, *, stopped: Callable[[], bool]) -> None:
        self._wait_first = wait_first
        self._stopped = stopped
        self.eager = 0
        self.waited = 0

    async def __call__(self, *coros: Any, timeout: Any = None) -> WaitResults:
        first = coros[0] if coros else None
        if not isinstance(first, types.CoroutineType) or self._stopped():
            self.waited += 1
            return await self._wait_first(*coros, timeout=timeout)
        others = coros[1:]
        try:
            waiting_on = first.send(None)
        except StopIteration as finished:
            self.eager += 1
            _close_unstarted(others)
            if self._stopped():  # as mode answers when the stop came while it waited
                return WaitResults([], [], True)
            return WaitResults([first], [finished.value], False)
        except BaseException:
            _close_unstarted(others)
            raise
        self.waited += 1
        return await self._wait_first(_Resumed(first, waiting_on), *others, timeout=timeout)


def _close_unstarted(coros: tuple[Any, ...]) -> None:
    # A coroutine object never awaited warns when collected; these were made for the call.
    for coro in coros:
        if isinstance(coro, types.CoroutineType):
            coro.close()


def install(consumer: Any) -> EagerWaitFirst:
    """Give Faust's consumer the eager `wait_first`; its fetch loop looks it up per message."""
    eager = EagerWaitFirst(
        consumer.wait_first, stopped=lambda: bool(consumer.should_stop or consumer.crashed)
    )
    consumer.wait_first = eager
    return eager
