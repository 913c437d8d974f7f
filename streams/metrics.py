"""Prometheus metrics of a worker, named by Prometheus conventions.

Per-pool labels are capped: the first `POOL_LABEL_LIMIT` pools a worker sees keep
their own label, later ones share `pool="_other"`, so a pool-per-user workload
cannot grow the series count without bound.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "COLLECTION_BUCKETS_S",
    "POOL_LABEL_LIMIT",
    "CollectionTimer",
    "PoolSeries",
    "WorkerMetrics",
    "time_collections",
    "worker_metrics",
]

POOL_LABEL_LIMIT = 100
_OTHER = "_other"
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 900, 3600)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SCORE_BUCKETS = tuple(round(0.1 * step, 1) for step in range(1, 11))
COLLECTION_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
"""Bounds of `matchstream_gc_pause_seconds`; the stream bench counts collections over 10 and
50 ms from two of them."""


@cache
def worker_metrics() -> WorkerMetrics:
    """The process's metrics: the default registry accepts each name once."""
    return WorkerMetrics()


class WorkerMetrics:
    """Every metric a worker exports; use `worker_metrics()` for the process's instance."""

    def __init__(self) -> None:
        self.requests = Counter(
            "matchstream_requests_total",
            "Request status changes applied, by pool and resulting status.",
            ["pool", "outcome"],
        )
        self.matches = Counter(
            "matchstream_matches_total", "Final matches, by pool and mode.", ["pool", "mode"]
        )
        self.dlq = Counter(
            "matchstream_dlq_records_total", "Input messages sent to the DLQ.", ["topic"]
        )
        self.inputs = Counter(
            "matchstream_inputs_total", "Input messages applied, by topic.", ["topic"]
        )
        self.redelivered = Counter(
            "matchstream_redelivered_total",
            "Input messages Kafka delivered again and the worker skipped.",
            ["topic"],
        )
        self.wait = Histogram(
            "matchstream_wait_seconds",
            "How long a matched request waited in its pool.",
            ["pool"],
            buckets=_WAIT_BUCKETS,
        )
        self.latency = Histogram(
            "matchstream_match_latency_seconds",
            "From the input message's timestamp to the match decision.",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
        )
        self.score = Histogram(
            "matchstream_match_score", "Score of final matches.", ["pool"], buckets=_SCORE_BUCKETS
        )
        self.waiting = Gauge(
            "matchstream_waiting_requests", "Active requests per pool on this worker.", ["pool"]
        )
        self.lag = Gauge(
            "matchstream_consumer_lag_messages",
            "Input messages not yet applied, per assigned partition.",
            ["topic", "partition"],
        )
        self.live_streams = Gauge("matchstream_live_streams", "Open live status streams.")
        self.collections = Histogram(
            "matchstream_gc_pause_seconds",
            "Garbage collections, which stop all of the worker's Python code, by generation.",
            ["generation"],
            buckets=COLLECTION_BUCKETS_S,
        )
        self._pool_labels: set[str] = set()
        self._pool_series: dict[str, PoolSeries] = {}
        self._inputs_by_topic: dict[str, Counter] = {}

    def pool_series(self, pool_id: str) -> PoolSeries:
        """The series of the pool's label, looked up once per label rather than per input.

        `labels()` validates and locks on every call; the matcher updates several
        series per input, which cost about 2 % of a backlog's CPU before they were kept.
        """
        label = self.pool_label(pool_id)
        series = self._pool_series.get(label)
        if series is None:
            series = self._pool_series[label] = PoolSeries(self, label)
        return series

    def inputs_of(self, topic: str) -> Counter:
        """`inputs` for one topic, kept like `pool_series`."""
        counter = self._inputs_by_topic.get(topic)
        if counter is None:
            counter = self._inputs_by_topic[topic] = self.inputs.labels(topic)
        return counter

    def pool_label(self, pool_id: str) -> str:
        """The pool's own label while under the cap, else the shared one."""
        if pool_id in self._pool_labels:
            return pool_id
        if len(self._pool_labels) < POOL_LABEL_LIMIT:
            self._pool_labels.add(pool_id)
            return pool_id
        return _OTHER


class PoolSeries:
    """One pool label's children of the per-pool metrics."""

    def __init__(self, metrics: WorkerMetrics, label: str) -> None:
        self._metrics = metrics
        self.label = label
        self.wait = metrics.wait.labels(label)
        self.latency = metrics.latency.labels(label)
        self.score = metrics.score.labels(label)
        self.waiting = metrics.waiting.labels(label)
        self._requests: dict[str, Counter] = {}
        self._matches: dict[str, Counter] = {}

    def requests(self, outcome: str) -> Counter:
        counter = self._requests.get(outcome)
        if counter is None:
            counter = self._requests[outcome] = self._metrics.requests.labels(self.label, outcome)
        return counter

    def matches(self, mode: str) -> Counter:
        counter = self._matches.get(mode)
        if counter is None:
            counter = self._matches[mode] = self._metrics.matches.labels(self.label, mode)
        return counter


class CollectionTimer:
    """A `gc.callbacks` entry that times each collection into `collections` by generation.

    A collection holds the interpreter lock from its start to its stop, so the two
    come in pairs whichever thread triggered it.
    """

    def __init__(
        self, collections: Histogram, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._by_generation = [collections.labels(generation=str(gen)) for gen in range(3)]
        self._clock = clock
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
        elif self._started is not None:
            self._by_generation[info["generation"]].observe(self._clock() - self._started)
            self._started = None


@cache  # once per process: each call would add another callback
def time_collections() -> None:
    """Time the process's garbage collections into the worker's metrics."""
    gc.callbacks.append(CollectionTimer(worker_metrics().collections))
