"""Process settings that every `matchstream` command wants before it loads anything heavy."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Literal

__all__ = ["tune_process", "use_event_loop"]

_YOUNG_COLLECTION_EVERY = 2_000
"""Allocations between collections of the youngest generation (Python's default: 700)."""
_YOUNG_COLLECTIONS_PER_MIDDLE = 10
"""Collections of the youngest generation between two of the middle one (the default)."""
_MIDDLE_COLLECTIONS_PER_FULL = 100
"""Collections of the middle generation before a full one may run (Python's default: 10);
a full one also waits until the heap grew by a quarter since the last."""


def tune_process() -> None:
    """Set BLAS threads and garbage-collector thresholds for a matching worker.

    Call it before numpy is imported: OpenBLAS reads `OPENBLAS_NUM_THREADS` once.
    An operator's own `OPENBLAS_NUM_THREADS` wins.
    """
    # The engine's matrix products share the cores with Kafka clients and the event
    # loop; a second BLAS thread made recommend joins much slower under load.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # A worker keeps every active request, profile and top-K list in memory. With the
    # default thresholds full collections walked that growing heap again and again:
    # half the CPU time of a 20,000-attendee recommend pool (18.0 s -> 12.9 s measured).
    # The young generations stay small: a collection of the middle one visits every
    # object that survived since its last, and at 20,000 allocations per young
    # collection that took 86-150 ms, the worst stall in the stream bench's latency
    # phase (docs/performance.md, "Garbage collection pauses").
    gc.set_threshold(
        _YOUNG_COLLECTION_EVERY, _YOUNG_COLLECTIONS_PER_MIDDLE, _MIDDLE_COLLECTIONS_PER_FULL
    )


def use_event_loop(kind: Literal["uvloop", "asyncio"]) -> None:
    """Make every event loop this process creates from now on a `kind` loop.

    Call it before the first loop exists: Faust's consumer thread and `asyncio.run`
    take theirs from the policy set here.
    """
    if kind == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
