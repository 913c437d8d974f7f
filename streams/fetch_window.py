"""Holding the worker's input fetches open for a few milliseconds while input comes fast.

aiokafka has no incremental fetch sessions: every fetch request names all of the
worker's input partitions (48 with 8 per topic), and encoding it and decoding the
reply costs the consumer thread about 0.9 ms here, even when the reply is empty.
Faust asks the broker to answer a fetch on its first byte, so input that comes at a
pace rather than in a backlog is fetched one message at a time: at 480 requests/s
the fetches took 35 % of a core, on the core the matcher needs (docs/performance.md,
"Fetching paced input").

So while messages arrive at `busy_per_s` or more and the worker keeps up with them,
each fetch asks the broker to wait up to `window_ms` for `window_bytes`, and one fetch
brings several messages. Otherwise the consumer's own settings apply:
- a quiet worker does not poll every few milliseconds, and a lone request does not
  wait for a window;
- a worker behind a backlog gets full replies without a window, and its partitions
  that have nothing new (in a backlog, most of them) are not asked again every
  window, which cost about a tenth of the backlog's rate here.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from streams.app import Matchstream

__all__ = ["FetchWindow", "messages_behind", "register"]

log = logging.getLogger(__name__)

_WINDOW_MS = 10
_WINDOW_BYTES = 64 * 1024
"""A burst fills this at once, so a held fetch does not delay one."""
_BUSY_PER_S = 200.0
"""Two messages per window on average: below that a window saves little and only delays."""
_QUIET_PER_S = 100.0
_BACKLOG_MESSAGES = 500
"""Behind by more than this, the worker is in a backlog: paced input at the busy rate
is a few messages behind at most, those of one window."""
_CHECK_INTERVAL_S = 0.5


class FetchWindow:
    """Decides, from the count of messages received, whether fetches wait for a window.

    Args:
        window_ms: how long the broker may hold a fetch while input is busy.
        window_bytes: the bytes that answer a held fetch before its time is up.
        busy_per_s: the receive rate at which the window opens.
        quiet_per_s: the rate under which it closes again (below `busy_per_s`, so
            that a rate between the two does not switch it at every check).
        backlog_messages: the consumer is in a backlog, and the window closed, when it
            is behind its partitions' ends by more messages than this.
    """

    def __init__(
        self,
        *,
        window_ms: int,
        window_bytes: int,
        busy_per_s: float,
        quiet_per_s: float,
        backlog_messages: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < quiet_per_s < busy_per_s:
            raise ValueError(f"need 0 < quiet_per_s < busy_per_s, got {quiet_per_s}, {busy_per_s}")
        self.window_ms = window_ms
        self.window_bytes = window_bytes
        self._busy_per_s = busy_per_s
        self._quiet_per_s = quiet_per_s
        self._backlog_messages = backlog_messages
        self._clock = clock
        self.open = False
        self._counted: tuple[float, int] | None = None
        """(when, the received total then) at the previous check."""
        self._own_settings: dict[int, tuple[int, int]] = {}
        """Per fetcher (by id): its (max wait ms, min bytes) before any window."""

    def observe(self, received_total: int, *, behind: int) -> None:
        """Open or close the window.

        Args:
            received_total: messages received since the start; the rate is taken
                from the previous call's.
            behind: messages between the consumer's positions and its partitions' ends.
        """
        now = self._clock()
        previous, self._counted = self._counted, (now, received_total)
        if previous is None or now <= previous[0]:
            return
        rate = (received_total - previous[1]) / (now - previous[0])
        if behind > self._backlog_messages:
            opened = False
        else:
            opened = rate >= (self._quiet_per_s if self.open else self._busy_per_s)
        if opened != self.open:
            self.open = opened
            log.info(
                "fetch window %s rate_per_s=%.0f behind=%d window_ms=%d",
                "opened" if opened else "closed",
                rate,
                behind,
                self.window_ms,
            )

    def apply(self, fetcher: Any) -> None:
        """Set `fetcher`'s wait and size for its next fetch request (an aiokafka `Fetcher`)."""
        own = self._own_settings.setdefault(
            id(fetcher), (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes)
        )
        # Read by the fetcher each time it builds a request, so the next request has them.
        fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes = (
            (self.window_ms, self.window_bytes) if self.open else own
        )


@functools.cache  # once per process: the timer asks twice a second
def _warn_unsupported() -> None:
    log.warning("fetch window off: this aiokafka's fetcher has no wait settings")


def _consumer_fetcher(stream: Matchstream) -> Any | None:
    """The aiokafka `Fetcher` behind Faust's consumer, or None before the consumer started.

    Faust keeps the aiokafka consumer in its consumer thread; none of these is public,
    so their absence (another Faust or aiokafka) is reported once (`_warn_unsupported`).
    """
    thread = getattr(stream.app.consumer, "_thread", None)
    consumer = getattr(thread, "_consumer", None)
    return getattr(consumer, "_fetcher", None)


def messages_behind(stream: Matchstream) -> int:
    """Messages between what the worker's streams read and the ends the consumer last saw."""
    consumer = stream.app.consumer
    read = stream.app.monitor.tp_read_offsets
    behind = 0
    for tp in consumer.assignment():
        offset = read.get(tp)
        if offset is None:
            continue  # nothing read from it yet
        end = consumer.highwater(tp)
        if end is not None:
            behind += max(0, end - offset - 1)
    return behind


def register(stream: Matchstream) -> None:
    """Check the worker's receive rate twice a second and set its consumer's fetches."""
    window = FetchWindow(
        window_ms=_WINDOW_MS,
        window_bytes=_WINDOW_BYTES,
        busy_per_s=_BUSY_PER_S,
        quiet_per_s=_QUIET_PER_S,
        backlog_messages=_BACKLOG_MESSAGES,
    )

    @stream.app.timer(_CHECK_INTERVAL_S, name="fetch_window")
    async def set_fetch_window() -> None:
        fetcher = _consumer_fetcher(stream)
        if fetcher is None:
            return  # the consumer has not started
        if not hasattr(fetcher, "_fetch_max_wait_ms") or not hasattr(fetcher, "_fetch_min_bytes"):
            _warn_unsupported()
            return
        window.observe(stream.app.monitor.messages_received_total, behind=messages_behind(stream))
        window.apply(fetcher)
