"""Faust's own recovery completion, run in memory: standby records queued meanwhile survive it.

The consumer and fetcher are stand-ins (nothing is assigned, nothing fetched); the
recovery service, flow control, queue and table callbacks are Faust's.
"""

from __future__ import annotations

from collections.abc import Callable
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
        app.tables.changelog_queue.put_nowait("standby record")

    left = await _complete_recovery(app, standby_record_arrives)
    # Faust's own manager shows what this module fixes: the record is gone, while
    # the consumer has moved past it.
    assert left == (0 if faust_default else 1)


async def test_a_rebalance_during_recovery_completion_still_empties_the_queue() -> None:
    app = _app(TableManager=StandbySafeTableManager)

    def record_then_rebalance() -> None:
        app.tables.changelog_queue.put_nowait("record of a partition this worker may lose")
        app.tables.on_partitions_revoked(set())

    assert await _complete_recovery(app, record_then_rebalance) == 0
    assert not app.tables.changelog_queue.held
