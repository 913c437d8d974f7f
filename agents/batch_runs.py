"""Batch runs computed off the event loop, and handed back to the engine at a tick.

`start_matching` in a `batch` pool gives the matcher a `BatchJob`: pairing 1,000
attendees exactly takes seconds, which must not stall the stream, the other pools
or the consumer's heartbeats. The job runs in a worker thread; its result is
applied when the matcher next handles a tick of the pool's partition, because
state writes must happen inside stream iteration to land in that partition's
changelog. Operators follow a run in the log, as in the background-matching seed:
`batch.start`, one `batch.pair` per pair at debug level with its reasons and
confidence, and `batch.done` with the totals (or `batch.failed`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from matching.batch import BatchJob, BatchResult
from matching.engine import Effects, MatchEngine
from matching.seating import seatable_people

__all__ = ["BatchRuns"]

log = logging.getLogger(__name__)

RunKey = tuple[str, int]


class BatchRuns:
    """The batch jobs this worker is computing, by pool and run number."""

    def __init__(self) -> None:
        self._running: dict[RunKey, asyncio.Task[tuple[BatchResult, float]]] = {}

    def launch(self, effects: Effects) -> None:
        """Start the jobs of some effects in threads and log their warnings."""
        for warning in effects.warnings:
            log.warning(warning)
        for job in effects.jobs:
            key = (job.pool_id, job.run)
            if key in self._running:
                continue  # recovered as running while this worker still computes it
            config = job.config
            log.info(
                "batch.start pool=%s name=%r run=%d attendees=%d chaos=%.1f tables=%d "
                "seats_per_table=%d seats=%s",
                job.pool_id,
                config.name or job.pool_id,
                job.run,
                len(job.attendees),
                config.chaos,
                config.tables,
                config.seats_per_table,
                seatable_people(config) if seatable_people(config) is not None else "unlimited",
            )
            self._running[key] = asyncio.create_task(asyncio.to_thread(_compute, job))

    def collect(self, engine: MatchEngine, partition: int, now: float) -> Effects:
        """Hand the finished jobs of the pools on `partition` back to the engine."""
        effects = Effects()
        for key, task in list(self._running.items()):
            pool_id, run = key
            book = engine.pools.get(pool_id)
            if book is None:
                if task.done():
                    del self._running[key]  # the pool moved to another worker meanwhile
                continue
            if book.partition != partition or not task.done():
                continue
            del self._running[key]
            try:
                result, seconds = task.result()
            except Exception as exc:  # a bug in the matching must not kill the worker
                log.exception("batch.failed pool=%s run=%d", pool_id, run)
                effects.extend(engine.fail_batch(pool_id, run, repr(exc), now=now))
                continue
            _log_result(pool_id, run, result, seconds)
            effects.extend(engine.finish_batch(pool_id, run, result, seconds=seconds, now=now))
        return effects


def _compute(job: BatchJob) -> tuple[BatchResult, float]:
    started = time.monotonic()
    result = job.compute()
    return result, time.monotonic() - started


def _log_result(pool_id: str, run: int, result: BatchResult, seconds: float) -> None:
    if log.isEnabledFor(logging.DEBUG):
        for pair in result.pairs:
            log.debug(
                "batch.pair pool=%s run=%d members=%s table=%s confidence=%.3f reasoning=%r",
                pool_id,
                run,
                ",".join(pair.members),
                pair.table_no,
                pair.score,
                "; ".join(pair.reasons) or "no shared profile details",
            )
    stats = result.stats
    log.info(
        "batch.done pool=%s run=%d attendees=%d pairs=%d seated=%d unseated=%d "
        "total_score=%.3f method=%s seconds=%.3f",
        pool_id,
        run,
        stats.attendees,
        len(result.pairs),
        stats.seated,
        stats.unseated,
        stats.total_score,
        stats.method,
        seconds,
    )
