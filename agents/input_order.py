"""Keeping Faust's delivery of each input partition in offset order.

Around a rebalance faust-streaming 0.15.3 can hand the agent a batch fetched
from a position ahead of where processing stands (a partition is resumed before
it is seeked back to its committed offset). Faust then records the offsets in
between as a gap, that is as done, and drops them when they are fetched again:
that input is never applied. It can also keep a read offset above the position
it fetches from, and then drops everything it fetches for that partition (a
stalled partition).

The matcher knows the next offset it must apply on every input partition: the
`InputMark`s in its table say which offset was applied last (or a little before
it: see `AppliedOffsets`). `InputOrder` sits
between the Kafka fetch and Faust's delivery loop and admits a message only if
it is that next offset, or an earlier one (a redelivery, which the matcher
skips). A later one is held back and the partition is sought back to the
expected offset. When the log really has no record there (retention deleted
it, or it was a transaction marker) the same gap comes back after every seek;
after `max_seeks` seeks it is accepted and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from faust.types import TP, ConsumerT, Message

from models.state import InputMark, mark_key

__all__ = ["AppliedOffsets", "InputOrder"]

log = logging.getLogger(__name__)


class AppliedOffsets:
    """The last applied offset per input topic partition, and when to write an `InputMark`.

    An input whose own records make it a no-op when applied again (`Effects.replay_safe`:
    a request, once its record is stored) needs no mark of its own; skipping it saves
    one changelog record per request. The durable mark then trails the applied offset,
    and after a restart `InputOrder` seeks back to it and the requests in between are
    applied again as the no-ops they are. `unmarked_limit` bounds that trail, and the
    first input of a partition without a mark is always marked, so `InputOrder` knows
    where every partition stands once it has seen any input.
    """

    def __init__(self, *, unmarked_limit: int = 100) -> None:
        if unmarked_limit < 0:
            raise ValueError(f"unmarked_limit must not be negative, got {unmarked_limit}")
        self.unmarked_limit = unmarked_limit
        self._offsets: dict[tuple[str, int], int] = {}
        self._unmarked: dict[tuple[str, int], int] = {}
        """Per partition with a mark: inputs applied since the mark."""
        self._absent: dict[tuple[str, int], dict[int, int]] = {}
        """Per partition: runs of offsets `InputOrder` found absent from the log, first -> last,
        until the input after a run is applied. `InputOrder` can run ahead of the agent by
        several runs (a transactional producer leaves one marker per transaction)."""

    def load(self, marks: Iterable[InputMark]) -> None:
        self._offsets = {(mark.topic, mark.partition): mark.offset for mark in marks}
        self._unmarked = dict.fromkeys(self._offsets, 0)
        self._absent = {}

    def already(self, topic: str, partition: int, offset: int) -> bool:
        return offset <= self._offsets.get((topic, partition), -1)

    def in_order(self, topic: str, partition: int, offset: int) -> bool:
        """Whether `offset` may be applied now: nothing before it is left unapplied.

        True for the offset after the last applied one, for any offset of a partition
        where nothing was applied yet, and for the offset after a run the log does not
        have (`absent`). A later offset means an earlier input never reached the agent
        (dropped around a rebalance while this one waited): applying it would count
        the earlier ones as applied, since `already` compares with the last offset.
        """
        where = (topic, partition)
        last = self._offsets.get(where)
        if last is None or offset == last + 1:
            return True
        last_absent = self._absent.get(where, {}).get(last + 1)
        return last_absent is not None and offset == last_absent + 1

    def absent(self, topic: str, partition: int, first: int, last: int) -> None:
        """Note offsets `first..last` as missing from the log (retention, transaction markers)."""
        self._absent.setdefault((topic, partition), {})[first] = last

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The offset to apply next, or None when nothing was applied here yet."""
        last = self._offsets.get((topic, partition))
        return None if last is None else last + 1

    def applied(
        self, topic: str, partition: int, offset: int, *, replay_safe: bool
    ) -> tuple[str, InputMark] | None:
        """Note an applied input; the mark to write with its changes, or None if it needs none."""
        where = (topic, partition)
        if self._absent:
            previous = self._offsets.get(where)
            if previous is not None and offset > previous + 1:
                self._absent.get(where, {}).pop(previous + 1, None)  # the run is behind us
        self._offsets[where] = offset
        unmarked = self._unmarked.get(where)
        if replay_safe and unmarked is not None and unmarked < self.unmarked_limit:
            self._unmarked[where] = unmarked + 1
            return None
        self._unmarked[where] = 0
        record = InputMark(partition=partition, changed_at=time.time(), topic=topic, offset=offset)
        return mark_key(topic, partition), record


class InputOrder:
    """Admits input messages to Faust's delivery loop only in offset order.

    Args:
        consumer: the app's consumer; `install` wraps its `getmany` and `resume_flow`.
        topics: the input topics carrying `InputMark`s.
        applied: the matcher's applied offsets.
        max_seeks: seeks back to one missing offset before it is taken as absent from the log.
    """

    def __init__(
        self,
        *,
        consumer: ConsumerT,
        topics: Iterable[str],
        applied: AppliedOffsets,
        max_seeks: int = 3,
    ) -> None:
        if max_seeks < 1:
            raise ValueError(f"max_seeks must be at least 1, got {max_seeks}")
        self._consumer: Any = consumer  # Faust's read offsets are not part of ConsumerT
        self._topics = frozenset(topics)
        self._applied = applied
        self._max_seeks = max_seeks
        self._next: dict[TP, int] = {}
        """Per partition: the offset to admit next, once one was admitted since the last reset."""
        self._seeks: dict[TP, tuple[int, int, int]] = {}
        """Per partition held back: (offset sought to, seeks so far, batch of the last seek)."""
        self._rewound: dict[TP, int] = {}
        """Per partition: the offset `rewind` last sought to."""
        self._batch = 0
        self.held_back = 0
        """Messages not admitted because they came after a missing offset."""

    def install(self) -> None:
        """Wrap the consumer; must run before Faust's fetcher starts."""
        fetch_batch = self._consumer.getmany
        resume_flow = self._consumer.resume_flow

        async def getmany_in_order(timeout: float) -> AsyncIterator[tuple[TP, Message]]:
            self._batch += 1
            async for tp, message in fetch_batch(timeout=timeout):
                if tp.topic not in self._topics or await self._admit(tp, message.offset):
                    yield tp, message

        def resume_flow_from_marks() -> None:
            self.reset()
            resume_flow()

        self._consumer.getmany = getmany_in_order
        self._consumer.resume_flow = resume_flow_from_marks

    def reset(self) -> None:
        """Expect the next offset after each `InputMark` again (after a rebalance)."""
        self._next.clear()
        self._seeks.clear()
        self._rewound.clear()

    async def rewind(self, tp: TP) -> None:
        """Fetch `tp` again from the offset after its last applied input.

        For the agent, when an input reaches it with an earlier one unapplied
        (`AppliedOffsets.in_order` is False). The inputs queued behind that one are
        as late, and all of them ask for the same offset: it is sought once.
        """
        expected = self._applied.next_offset(tp.topic, tp.partition)
        if expected is None or self._rewound.get(tp) == expected:
            return
        self._rewound[tp] = expected
        self._next.pop(tp, None)  # the next admitted message must be `expected` again
        log.info(
            "input reached the matcher past an unapplied offset topic=%s partition=%d "
            "expected=%d; fetching again from there",
            tp.topic,
            tp.partition,
            expected,
        )
        if not await self._seek(tp, expected):
            del self._rewound[tp]  # the fetcher seeks when it sees the gap

    async def _admit(self, tp: TP, offset: int) -> bool:
        expected = self._next.get(tp)
        if expected is None:
            expected = self._applied.next_offset(tp.topic, tp.partition)
        if expected is None or offset == expected:
            self._admit_next(tp, offset)
            return True
        if offset < expected:
            return True
        sought_to, seeks, batch = self._seeks.get(tp, (expected, 0, -1))
        if batch == self._batch:
            # The rest of a batch whose earlier message was already held back.
            self.held_back += 1
            return False
        if seeks >= self._max_seeks:
            log.warning(
                "input offsets absent from the log topic=%s partition=%d offsets=%d..%d seeks=%d",
                tp.topic,
                tp.partition,
                expected,
                offset - 1,
                seeks,
            )
            self._applied.absent(tp.topic, tp.partition, expected, offset - 1)
            self._admit_next(tp, offset)
            return True
        # Routine after a restart or a rebalance when requests trail the durable mark
        # (`AppliedOffsets`); any other time, Faust fetched ahead of the processing.
        log.info(
            "input fetched past the offset after the last input mark topic=%s partition=%d "
            "expected=%d fetched=%d; seeking back",
            tp.topic,
            tp.partition,
            expected,
            offset,
        )
        self.held_back += 1
        self._seeks[tp] = (expected, seeks + 1 if sought_to == expected else 1, self._batch)
        await self._seek(tp, expected)
        return False

    async def _seek(self, tp: TP, offset: int) -> bool:
        """Fetch `tp` from `offset` next, without Faust dropping it as read; False if it failed."""
        try:
            await self._consumer.seek_wait({tp: offset})
        except Exception as exc:  # noqa: BLE001 - a failed seek must not stop the fetcher
            # The partition may have been revoked meanwhile; the next batch tries again.
            log.warning(
                "input seek failed topic=%s partition=%d error=%r", tp.topic, tp.partition, exc
            )
            return False
        self._consumer._read_offset[tp] = offset
        return True

    def _admit_next(self, tp: TP, offset: int) -> None:
        self._next[tp] = offset + 1
        self._seeks.pop(tp, None)
        read_offsets = self._consumer._read_offset
        if (read_offsets.get(tp) or 0) > offset:
            # Faust would drop this message as already read.
            log.warning(
                "input read offset ahead of the fetch topic=%s partition=%d read_offset=%d "
                "offset=%d; lowering it",
                tp.topic,
                tp.partition,
                read_offsets[tp],
                offset,
            )
            read_offsets[tp] = offset
