"""Which input offsets the state table has applied, and which ones Kafka skipped.

The matcher writes an `InputMark` (topic, partition, offset) with the state changes
of every input, so after any crash or rebalance it knows the next offset it must
apply. Two things follow: a message delivered again is skipped, and a message
*beyond* the next offset means the fetcher jumped over unapplied input. The
second happens in faust-streaming 0.15.3 after a rebalance: recovery resumes a
partition before seeking it back to the committed offset, messages fetched in
between are delivered, and the offsets they jumped over are counted as done. The
matcher then seeks back to the next offset instead of losing those messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from models.state import InputMark, mark_key

__all__ = ["AppliedOffsets"]

log = logging.getLogger(__name__)

_ACCEPT_HOLE_AFTER_S = 60.0
"""A gap that seeking back has not filled in this long is a real hole (retention)."""


class AppliedOffsets:
    """The last applied offset per input topic partition, mirrored from `InputMark`s.

    Example:
        >>> offsets = AppliedOffsets()
        >>> _ = offsets.mark("match.request", 0, 41)
        >>> offsets.already("match.request", 0, 41), offsets.missing_before("match.request", 0, 45)
        (True, 42)
    """

    def __init__(self, *, accept_hole_after_s: float = _ACCEPT_HOLE_AFTER_S) -> None:
        self._offsets: dict[tuple[str, int], int] = {}
        self._gaps_since: dict[tuple[str, int, int], float] = {}
        self._accept_hole_after_s = accept_hole_after_s

    def load(self, marks: Iterable[InputMark]) -> None:
        self._offsets = {(mark.topic, mark.partition): mark.offset for mark in marks}
        self._gaps_since.clear()

    def already(self, topic: str, partition: int, offset: int) -> bool:
        """Whether this offset was applied before (a redelivery)."""
        return offset <= self._offsets.get((topic, partition), -1)

    def missing_before(
        self, topic: str, partition: int, offset: int, now: float | None = None
    ) -> int | None:
        """The first unapplied offset the fetcher jumped over to deliver `offset`.

        None when `offset` is the next one, when nothing was applied on the
        partition yet, or when the same gap has not filled for a minute of
        seeking back (the messages are gone: retention), which is logged.
        """
        last = self._offsets.get((topic, partition))
        if last is None or offset <= last + 1:
            return None
        expected = last + 1
        moment = time.monotonic() if now is None else now
        since = self._gaps_since.setdefault((topic, partition, expected), moment)
        if moment - since > self._accept_hole_after_s:
            log.error(
                "input hole accepted topic=%s partition=%d missing=%d..%d: not in the log",
                topic,
                partition,
                expected,
                offset - 1,
            )
            return None
        return expected

    def mark(self, topic: str, partition: int, offset: int) -> tuple[str, InputMark]:
        """Record `offset` as applied; returns the table write that makes it durable."""
        self._offsets[(topic, partition)] = offset
        record = InputMark(partition=partition, changed_at=time.time(), topic=topic, offset=offset)
        return mark_key(topic, partition), record
