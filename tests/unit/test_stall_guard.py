"""The stall guard revives an input partition with a backlog and no progress, only that."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from faust.types import TP

from agents import stall_guard
from agents.stall_guard import StallGuard

STUCK, BUSY, IDLE = TP("in", 0), TP("in", 1), TP("in", 2)


class FakeConsumer:
    def __init__(self) -> None:
        self.ends = {STUCK: 10, BUSY: 10, IDLE: 4}
        self.resumed: list[TP] = []
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return {STUCK, BUSY, IDLE, TP("other", 0)}

    async def highwaters(self, *partitions: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in partitions}

    def resume_partitions(self, tps: list[TP]) -> None:
        self.resumed.extend(tps)

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.extend(partitions.items())


class FakeApp:
    rebalancing = False
    in_recovery = False

    def __init__(self) -> None:
        self.consumer = FakeConsumer()


async def test_only_the_partition_without_progress_is_revived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = FakeApp()
    clock = [100.0]
    monkeypatch.setattr(stall_guard.time, "monotonic", lambda: clock[0])
    guard = StallGuard(
        app=app,  # type: ignore[arg-type]
        group_id="g",
        bootstrap_servers="unused",
        input_topics=["in"],
        stall_after_s=15,
    )

    async def committed() -> dict[Any, int]:
        return {STUCK: 3, BUSY: 3, IDLE: 4}

    monkeypatch.setattr(guard, "_committed", committed)

    await guard.check()
    guard.processed(BUSY, 5)
    clock[0] += 10
    await guard.check()
    assert app.consumer.seeks == [], "nothing is stalled after 10 s"

    guard.processed(BUSY, 7)
    clock[0] += 10
    await guard.check()

    assert app.consumer.resumed == [STUCK]
    assert app.consumer.seeks == [(STUCK, 3)]


async def test_nothing_is_touched_while_rebalancing(monkeypatch: pytest.MonkeyPatch) -> None:
    app = FakeApp()
    app.rebalancing = True
    guard = StallGuard(
        app=app,  # type: ignore[arg-type]
        group_id="g",
        bootstrap_servers="unused",
        input_topics=["in"],
        stall_after_s=0,
    )

    await guard.check()

    assert app.consumer.seeks == [] and app.consumer.resumed == []


async def test_a_broker_outage_skips_a_round_instead_of_stopping_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = FakeApp()
    guard = StallGuard(
        app=app,  # type: ignore[arg-type]
        group_id="g",
        bootstrap_servers="unused",
        input_topics=["in"],
        stall_after_s=0,
    )

    async def broker_gone() -> dict[Any, int]:
        raise KafkaConnectionError("Connection at 127.0.0.1:9092 closed")

    monkeypatch.setattr(guard, "_committed", broker_gone)

    await guard.check()  # must not raise: a Faust timer that raises stops the worker

    assert app.consumer.seeks == []
