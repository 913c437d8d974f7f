"""InputOrder: Faust's delivery loop gets each input partition in offset order."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

from faust.types import TP

from agents.input_order import AppliedOffsets, InputOrder
from models.state import InputMark

REQUESTS = TP("match.request", 0)
TICKS = TP("matchstream.tick", 0)


@dataclass
class _Message:
    offset: int


class _FakeConsumer:
    """The slice of Faust's consumer InputOrder uses: batches, seeks, read offsets."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[TP, int]]] = []
        self.seeks: list[dict[TP, int]] = []
        self.flow_resumed = 0
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)

    async def getmany(self, timeout: float):
        for tp, offset in self.batches.pop(0):
            yield tp, _Message(offset)

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.append(dict(partitions))

    def resume_flow(self) -> None:
        self.flow_resumed += 1


def _guard(last_applied: int | None = None) -> tuple[_FakeConsumer, InputOrder, AppliedOffsets]:
    consumer = _FakeConsumer()
    applied = AppliedOffsets()
    if last_applied is not None:
        applied.load(
            [InputMark(partition=0, changed_at=0.0, topic=REQUESTS.topic, offset=last_applied)]
        )
    order = InputOrder(consumer=consumer, topics=[REQUESTS.topic], applied=applied)  # type: ignore[arg-type]
    order.install()
    return consumer, order, applied


def _delivered(consumer: _FakeConsumer, batch: list[tuple[TP, int]]) -> list[tuple[TP, int]]:
    consumer.batches.append(batch)

    async def drain() -> list[tuple[TP, int]]:
        return [(tp, message.offset) async for tp, message in consumer.getmany(timeout=1.0)]

    return asyncio.run(drain())


def test_in_order_input_and_redeliveries_pass():
    consumer, _, _ = _guard(last_applied=9)
    batch = [(REQUESTS, 8), (REQUESTS, 9), (REQUESTS, 10), (REQUESTS, 11)]
    assert _delivered(consumer, batch) == batch
    assert consumer.seeks == []


def test_input_fetched_past_the_next_offset_is_held_back_and_sought():
    consumer, order, _ = _guard(last_applied=9)
    assert _delivered(consumer, [(REQUESTS, 40), (REQUESTS, 41), (TICKS, 7)]) == [(TICKS, 7)]
    assert consumer.seeks == [{REQUESTS: 10}]
    assert consumer._read_offset[REQUESTS] == 10
    assert order.held_back == 2
    assert _delivered(consumer, [(REQUESTS, 10), (REQUESTS, 11)]) == [
        (REQUESTS, 10),
        (REQUESTS, 11),
    ]


def test_a_gap_that_every_seek_finds_again_is_accepted():
    consumer, _, _ = _guard(last_applied=9)
    for _ in range(3):
        assert _delivered(consumer, [(REQUESTS, 15)]) == []
    assert _delivered(consumer, [(REQUESTS, 15), (REQUESTS, 16)]) == [
        (REQUESTS, 15),
        (REQUESTS, 16),
    ]
    assert consumer.seeks == [{REQUESTS: 10}] * 3


def test_read_offset_ahead_of_the_fetch_is_lowered():
    consumer, _, _ = _guard(last_applied=9)
    consumer._read_offset[REQUESTS] = 500
    assert _delivered(consumer, [(REQUESTS, 10)]) == [(REQUESTS, 10)]
    assert consumer._read_offset[REQUESTS] == 10


def test_partition_without_mark_takes_whatever_comes_first():
    consumer, _, _ = _guard()
    assert _delivered(consumer, [(REQUESTS, 70)]) == [(REQUESTS, 70)]
    assert _delivered(consumer, [(REQUESTS, 90)]) == []
    assert consumer.seeks == [{REQUESTS: 71}]


def test_resuming_the_flow_expects_the_marks_again():
    consumer, _, applied = _guard(last_applied=9)
    assert _delivered(consumer, [(REQUESTS, 10), (REQUESTS, 11)]) == [
        (REQUESTS, 10),
        (REQUESTS, 11),
    ]
    # A rebalance: nothing after offset 9 was applied, Faust seeks and resumes.
    consumer.resume_flow()
    assert consumer.flow_resumed == 1
    assert _delivered(consumer, [(REQUESTS, 12)]) == []
    assert consumer.seeks == [{REQUESTS: 10}]
    assert applied.next_offset(REQUESTS.topic, 0) == 10


def test_replay_safe_inputs_skip_their_mark_up_to_the_limit():
    applied = AppliedOffsets(unmarked_limit=2)
    marks = [applied.applied(REQUESTS.topic, 0, offset, replay_safe=True) for offset in range(7)]
    # The partition's first input is marked: InputOrder then knows where it stands.
    assert [mark is not None for mark in marks] == [True, False, False, True, False, False, True]
    # Every input counts as applied, marked or not.
    assert applied.already(REQUESTS.topic, 0, 6) and not applied.already(REQUESTS.topic, 0, 7)
    assert marks[3] is not None and marks[3][1].offset == 3


def test_an_input_that_is_not_replay_safe_is_always_marked_and_restarts_the_count():
    applied = AppliedOffsets(unmarked_limit=2)
    applied.load([InputMark(partition=0, changed_at=0.0, topic=REQUESTS.topic, offset=9)])
    assert applied.applied(REQUESTS.topic, 0, 10, replay_safe=True) is None
    mark = applied.applied(REQUESTS.topic, 0, 11, replay_safe=False)
    assert mark is not None and mark[1].offset == 11
    assert applied.applied(REQUESTS.topic, 0, 12, replay_safe=True) is None
    assert applied.applied(REQUESTS.topic, 0, 13, replay_safe=True) is None
    assert applied.applied(REQUESTS.topic, 0, 14, replay_safe=True) is not None
    # Counted per partition: another one has no mark yet.
    assert applied.applied(REQUESTS.topic, 1, 0, replay_safe=True) is not None


def test_an_input_after_an_unapplied_one_is_out_of_order():
    applied = AppliedOffsets()
    applied.load([InputMark(partition=0, changed_at=0.0, topic=REQUESTS.topic, offset=9)])
    assert applied.in_order(REQUESTS.topic, 0, 10)
    assert not applied.in_order(REQUESTS.topic, 0, 11)
    # Nothing applied on a partition yet: whatever comes first is in order.
    assert applied.in_order(REQUESTS.topic, 1, 500)
    applied.applied(REQUESTS.topic, 0, 10, replay_safe=True)
    assert applied.in_order(REQUESTS.topic, 0, 11)


def test_an_input_after_offsets_absent_from_the_log_is_in_order():
    consumer, _, applied = _guard(last_applied=9)
    for _ in range(3):
        assert _delivered(consumer, [(REQUESTS, 15)]) == []
    assert _delivered(consumer, [(REQUESTS, 15)]) == [(REQUESTS, 15)]
    assert applied.in_order(REQUESTS.topic, 0, 15)
    assert not applied.in_order(REQUESTS.topic, 0, 16)


def test_rewind_seeks_once_to_the_offset_after_the_last_applied():
    consumer, order, applied = _guard(last_applied=9)
    # Offsets 10 and 11 were admitted, then dropped before the agent applied them.
    assert _delivered(consumer, [(REQUESTS, 10), (REQUESTS, 11)]) == [
        (REQUESTS, 10),
        (REQUESTS, 11),
    ]
    consumer._read_offset[REQUESTS] = 12

    async def rewind_for_two_late_inputs() -> None:
        await order.rewind(REQUESTS)
        await order.rewind(REQUESTS)

    asyncio.run(rewind_for_two_late_inputs())
    assert consumer.seeks == [{REQUESTS: 10}]
    assert consumer._read_offset[REQUESTS] == 10
    # Fetched again from 10: admitted as the next offset, not passed as a redelivery.
    assert _delivered(consumer, [(REQUESTS, 10), (REQUESTS, 11)]) == [
        (REQUESTS, 10),
        (REQUESTS, 11),
    ]
    applied.applied(REQUESTS.topic, 0, 10, replay_safe=True)
    asyncio.run(order.rewind(REQUESTS))
    assert consumer.seeks == [{REQUESTS: 10}, {REQUESTS: 11}]


def test_several_absent_runs_ahead_of_the_agent_are_each_in_order():
    applied = AppliedOffsets()
    applied.load([InputMark(partition=0, changed_at=0.0, topic=REQUESTS.topic, offset=9)])
    # InputOrder accepted two runs (say transaction markers) before the agent got there.
    applied.absent(REQUESTS.topic, 0, 10, 10)
    applied.absent(REQUESTS.topic, 0, 13, 13)
    assert applied.in_order(REQUESTS.topic, 0, 11)
    applied.applied(REQUESTS.topic, 0, 11, replay_safe=True)
    assert applied.in_order(REQUESTS.topic, 0, 12)
    applied.applied(REQUESTS.topic, 0, 12, replay_safe=True)
    assert not applied.in_order(REQUESTS.topic, 0, 15)
    assert applied.in_order(REQUESTS.topic, 0, 14)
    applied.applied(REQUESTS.topic, 0, 14, replay_safe=True)
    assert applied._absent[(REQUESTS.topic, 0)] == {}
