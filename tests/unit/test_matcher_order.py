"""The matcher applies each input partition's inputs in offset order, or not at all.

An input that reaches the agent while an earlier one of its partition is unapplied
(dropped around a rebalance while this one waited) is left unapplied, and the
partition is fetched again from the first unapplied offset.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from agents.batch_runs import BatchRuns
from agents.input_order import AppliedOffsets, InputOrder
from agents.matcher import _process, _Progress
from agents.tick_backoff import TickBackoff
from matching.engine import Effects, MatchEngine
from models.state import InputMark

REQUESTS = TP("t.match.request", 0)


class _Consumer:
    def __init__(self) -> None:
        self.seeks: list[dict[TP, int]] = []
        self._read_offset: dict[TP, int] = {}

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.append(dict(partitions))


class _Writer:
    def __init__(self) -> None:
        self.written: list[tuple[str, bytes]] = []

    async def write(self, entries: Any) -> None:
        self.written.extend(entries)


def _setup(last_applied: int) -> tuple[Any, AppliedOffsets, InputOrder, _Consumer, list[int]]:
    applied = AppliedOffsets()
    applied.load(
        [InputMark(partition=0, changed_at=0.0, topic=REQUESTS.topic, offset=last_applied)]
    )
    consumer = _Consumer()
    order = InputOrder(consumer=consumer, topics=[REQUESTS.topic], applied=applied)  # type: ignore[arg-type]
    stream = SimpleNamespace(
        names=SimpleNamespace(tick="t.matchstream.tick"),
        engine=MatchEngine(),
        state_writer=_Writer(),
        watch=SimpleNamespace(
            applied=lambda *args, **kwargs: None,
            metrics=SimpleNamespace(
                redelivered=SimpleNamespace(labels=lambda topic: SimpleNamespace(inc=lambda: None))
            ),
        ),
    )
    handled: list[int] = []
    return stream, applied, order, consumer, handled


def _handlers(handled: list[int]) -> dict[str, Any]:
    def on_request(engine: MatchEngine, raw: bytes | None, partition: int, now: float) -> Effects:
        handled.append(int(raw or b"-1"))
        return Effects()

    return {REQUESTS.topic: on_request}


def _event(offset: int) -> Any:
    message = SimpleNamespace(
        topic=REQUESTS.topic, partition=0, offset=offset, tp=REQUESTS, timestamp=1.0
    )
    return SimpleNamespace(value=str(offset).encode(), message=message)


def _run(
    stream: Any, applied: AppliedOffsets, order: InputOrder, handled: list[int], offsets: list[int]
) -> _Progress:
    progress = _Progress()

    async def process_all() -> None:
        for offset in offsets:
            await _process(
                stream,
                _handlers(handled),
                _event(offset),
                progress,
                applied,
                order,
                BatchRuns(),
                TickBackoff(first_delay_s=1.0, max_delay_s=2.0),
                lambda: None,
            )

    asyncio.run(process_all())
    return progress


def test_inputs_in_order_are_applied_and_redeliveries_skipped() -> None:
    stream, applied, order, consumer, handled = _setup(last_applied=9)
    progress = _run(stream, applied, order, handled, [8, 9, 10, 11])
    assert handled == [10, 11]
    assert progress.redelivered == 2 and progress.out_of_order == 0
    assert consumer.seeks == []


def test_an_input_past_an_unapplied_one_is_left_and_its_partition_fetched_again() -> None:
    stream, applied, order, consumer, handled = _setup(last_applied=9)
    # 10..12 were dropped before the agent got them; 13 and 14 waited through a rebalance.
    progress = _run(stream, applied, order, handled, [13, 14])
    assert handled == []
    assert progress.out_of_order == 2
    assert consumer.seeks == [{REQUESTS: 10}]
    assert applied.next_offset(REQUESTS.topic, 0) == 10
    # Fetched again from 10: every input is applied, none counted as applied before.
    _run(stream, applied, order, handled, [10, 11, 12, 13, 14])
    assert handled == [10, 11, 12, 13, 14]
