"""Timers that turn the pool ledgers into `match.progress` snapshots and lag gauges.

A snapshot goes out at most once per second per pool and only when the pool
changed, so a busy pool costs one message a second and an idle one nothing; the
last change of a pool that completes or closes is always published. The timer
lets the event loop run between pools: a second of changes in hundreds of pools
would otherwise hold input processing up for the whole round.
"""

from __future__ import annotations

import asyncio
import logging
import time

from models.codec import dumps
from streams.app import Matchstream

__all__ = ["register"]

log = logging.getLogger(__name__)

_PROGRESS_INTERVAL_S = 1.0
_LAG_INTERVAL_S = 5.0


def register(stream: Matchstream) -> None:
    """Add the progress and lag timers to the app."""
    app, watch, names = stream.app, stream.watch, stream.names
    inputs = {names.request, names.confirm, names.command}

    @app.timer(_PROGRESS_INTERVAL_S, name="pool_progress")
    async def publish_progress() -> None:
        for pool_id in watch.changed_since_published():
            await asyncio.sleep(0)  # let waiting input run between summaries
            if app.rebalancing:
                return  # ledgers are about to be rebuilt for the new assignment
            summary = watch.summary(pool_id, stream.engine, recovering=False, now=time.time())
            if summary is None:
                continue
            await app.producer.send(
                names.progress, pool_id.encode(), dumps(summary), None, None, None
            )
            watch.published(pool_id)

    @app.timer(_LAG_INTERVAL_S, name="input_lag")
    async def sample_lag() -> None:
        highwaters: dict[tuple[str, int], int] = {}
        for tp in app.consumer.assignment():
            if tp.topic in inputs:
                highwater = app.consumer.highwater(tp)
                if highwater is not None:
                    highwaters[(tp.topic, tp.partition)] = highwater
        watch.sample_lag(highwaters)
