"""Follows what the matcher writes: pool ledgers for summaries, metrics, input lag.

The matcher calls `applied` after each input's writes and `reload` after every
recovery, so the ledgers cover exactly the pools whose partitions this worker
owns. Timers in `agents.pool_progress` sample lag and publish `match.progress`.
"""

from __future__ import annotations

from collections.abc import Iterable

from matching.engine import MatchEngine
from matching.summary import PartitionView, PoolLedger, summarize
from models.messages import PoolSummary
from models.state import InputMark, MatchState, PoolState, RequestState, StateRecord
from streams.metrics import WorkerMetrics

__all__ = ["PoolWatch"]


def _pool_of(record: StateRecord) -> str | None:
    if isinstance(record, RequestState | PoolState):
        return record.pool_id
    if isinstance(record, MatchState):
        return record.found.pool_id
    return None


class PoolWatch:
    """Per-pool ledgers and the worker's metrics, fed from the matcher's writes."""

    def __init__(self, *, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.ledgers: dict[str, PoolLedger] = {}
        self._lag: dict[int, int] = {}
        self._lag_before: dict[int, int] = {}
        self._published: dict[str, int] = {}
        self._applied: dict[tuple[str, int], int] = {}
        """Offset of the last input applied, per input topic partition."""

    def reload(self, records: Iterable[StateRecord]) -> None:
        """Rebuild every ledger from the state table (after a recovery or rebalance)."""
        self.ledgers = {}
        self._applied = {}
        for record in records:
            if isinstance(record, InputMark):
                self._applied[(record.topic, record.partition)] = record.offset
            pool_id = _pool_of(record)
            if pool_id is not None:
                self._ledger(pool_id).observe(record)
        for pool_id, ledger in self.ledgers.items():
            self.metrics.pool_series(pool_id).waiting.set(ledger.waiting)

    def applied(
        self,
        writes: Iterable[tuple[str, StateRecord]],
        *,
        input_applied: bool,
        topic: str,
        partition: int,
        offset: int,
        input_timestamp: float | None,
        now: float,
    ) -> None:
        """Account for the state writes one input (`input_applied`) or tick caused."""
        metrics = self.metrics
        touched: set[str] = set()
        for _, record in writes:
            pool_id = _pool_of(record)
            if pool_id is None:
                continue
            touched.add(pool_id)
            if not self._ledger(pool_id).observe(record):
                continue
            series = metrics.pool_series(pool_id)
            if isinstance(record, RequestState):
                series.requests(record.status).inc()
                if record.status == "matched":
                    series.wait.observe(record.changed_at - record.queued_at)
            elif isinstance(record, MatchState):
                series.matches(record.found.mode).inc()
                series.score.observe(record.found.score)
                if input_timestamp is not None:
                    series.latency.observe(max(0.0, now - input_timestamp))
        for pool_id in touched:
            metrics.pool_series(pool_id).waiting.set(self.ledgers[pool_id].waiting)
        if input_applied:
            metrics.inputs_of(topic).inc()
            self._applied[(topic, partition)] = offset

    def sample_lag(self, highwaters: dict[tuple[str, int], int]) -> None:
        """Record unapplied input per assigned input partition, from the log end offsets."""
        self._lag_before = self._lag
        self._lag = {}
        for (topic, partition), highwater in highwaters.items():
            lag = max(0, highwater - self._applied.get((topic, partition), -1) - 1)
            self.metrics.lag.labels(topic, str(partition)).set(lag)
            self._lag[partition] = self._lag.get(partition, 0) + lag

    def summary(
        self, pool_id: str, engine: MatchEngine, *, recovering: bool, now: float
    ) -> PoolSummary | None:
        """The live summary of a pool this worker owns, or None if it knows no such pool."""
        ledger = self.ledgers.get(pool_id)
        book = engine.pools.get(pool_id)
        if ledger is None and book is None:
            return None
        if ledger is None:
            ledger = self._ledger(pool_id)
        partition = book.partition if book is not None else -1
        view = PartitionView(
            lag=self._lag.get(partition, 0),
            lag_growing=self._lag.get(partition, 0) > self._lag_before.get(partition, 0),
            recovering=recovering,
        )
        return summarize(ledger, book, view, now=now)

    def changed_since_published(self) -> list[str]:
        """Pools whose ledger moved since their last `match.progress` snapshot."""
        return [
            pool_id
            for pool_id, ledger in self.ledgers.items()
            if self._published.get(pool_id) != ledger.version
        ]

    def published(self, pool_id: str) -> None:
        ledger = self.ledgers.get(pool_id)
        if ledger is not None:  # None: a rebalance took the pool away while it was sent
            self._published[pool_id] = ledger.version

    def _ledger(self, pool_id: str) -> PoolLedger:
        ledger = self.ledgers.get(pool_id)
        if ledger is None:
            ledger = self.ledgers[pool_id] = PoolLedger(pool_id=pool_id)
        return ledger
