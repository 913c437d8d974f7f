"""Faust's own recovery completion, run in memory: standby records queued meanwhile survive it.

The consumer and fetcher are stand-ins (nothing is assigned, nothing fetched); the
recovery service, flow control, queue and table callbacks are Faust's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from streams.table_recovery import StandbySafeTableManager


class _IdleConsumer:
    def assignment(self) -> set[Any]:
        return set()

    def resume_partitions(self, tps: Any) -> None:
        pass

    def resume_flow(self) -> None:
        pass


class _IdleFetcher:
    async def maybe_start(self) -> None:
        pass


def _app(**options: Any) -> faust.App:
    app = faust.App("recovery-test", broker="kafka://127.0.0.1:9", store="memory://", **options)
    app._consumer = _IdleConsumer()
    app._fetcher = _IdleFetcher()
    return app


def _record(app: faust.App, *, generation_id: int | None = None) -> Any:
    """What the fetcher queues for the recovery: an event whose message has a generation."""
    fetched_in = app.consumer_generation_id if generation_id is None else generation_id
    return SimpleNamespace(message=SimpleNamespace(generation_id=fetched_in))


async def _complete_recovery(app: faust.App, while_callbacks_run: Callable[[], None]) -> int:
    """Run Faust's recovery completion; return how many changelog events it left queued."""
    table = app.Table("state", partitions=2)

    @table.on_recover
    async def callback() -> None:
        while_callbacks_run()

    await app.tables.recovery.on_recovery_completed(app.consumer_generation_id)
    assert app.tables.recovery.completed.is_set()
    return app.tables.changelog_queue.qsize()


@pytest.mark.parametrize("faust_default", [False, True], ids=["standby-safe", "faust-default"])
async def test_a_standby_record_queued_while_recovery_completes_is_kept(
    faust_default: bool,
) -> None:
    app = _app() if faust_default else _app(TableManager=StandbySafeTableManager)

    def standby_record_arrives() -> None:
        app.tables.changelog_queue.put_nowait(_record(app))

    left = await _complete_recovery(app, standby_record_arrives)
    # Faust's own manager shows what this module fixes: the record is gone, while
    # the consumer has moved past it.
    assert left == (0 if faust_default else 1)


async def test_a_rebalance_during_recovery_completion_still_empties_the_queue() -> None:
    app = _app(TableManager=StandbySafeTableManager)

    def record_then_rebalance() -> None:
        app.tables.changelog_queue.put_nowait(_record(app))  # of a partition it may lose
        app.tables.on_partitions_revoked(set())

    assert await _complete_recovery(app, record_then_rebalance) == 0
    assert not app.tables.changelog_queue.held


async def test_the_recovery_is_not_handed_a_record_of_an_earlier_generation() -> None:
    app = _app(TableManager=StandbySafeTableManager)
    app.consumer_generation_id = 7
    app.flow_control.resume()
    queue = app.tables.changelog_queue
    stale, current = _record(app, generation_id=6), _record(app)
    queue.put_nowait(stale)
    queue.put_nowait(current)
    assert await asyncio.wait_for(queue.get(), 5) is current


async def test_the_recovery_is_not_handed_a_record_queued_while_flow_is_suspended() -> None:
    app = _app(TableManager=StandbySafeTableManager)
    queue = app.tables.changelog_queue
    app.flow_control.suspend()
    queue.put_nowait(_record(app))  # the fetcher was waiting when the rebalance began
    taking = asyncio.create_task(queue.get())
    for _ in range(100):  # the get drops the record within a few loop turns
        if queue.empty():
            break
        await asyncio.sleep(0)
    assert queue.empty() and not taking.done()
    app.flow_control.resume()
    after = _record(app)
    queue.put_nowait(after)
    assert await asyncio.wait_for(taking, 5) is after
