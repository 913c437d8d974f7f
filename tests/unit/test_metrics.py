"""Per-pool series kept by label: the same samples as `labels()`, and the label cap holds."""

from __future__ import annotations

import gc
import uuid

import pytest
from prometheus_client import REGISTRY, Histogram

from streams.metrics import POOL_LABEL_LIMIT, CollectionTimer, time_collections, worker_metrics


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_pool_series_counts_into_the_pools_labelled_samples() -> None:
    metrics = worker_metrics()
    pool_id = f"series-{uuid.uuid4().hex[:8]}"
    series = metrics.pool_series(pool_id)
    labels = {"pool": series.label, "outcome": "queued"}
    before = _sample("matchstream_requests_total", labels)

    series.requests("queued").inc()
    metrics.pool_series(pool_id).requests("queued").inc()
    metrics.pool_series(pool_id).waiting.set(7)

    assert metrics.pool_series(pool_id) is series
    assert _sample("matchstream_requests_total", labels) == before + 2
    assert _sample("matchstream_waiting_requests", {"pool": series.label}) == 7


def test_pools_past_the_label_cap_share_one_series() -> None:
    metrics = worker_metrics()
    run = uuid.uuid4().hex[:8]
    labels = {metrics.pool_series(f"cap-{run}-{n}").label for n in range(POOL_LABEL_LIMIT + 2)}
    late = [metrics.pool_series(f"cap-{run}-late-{n}") for n in range(3)]

    assert len(labels) <= POOL_LABEL_LIMIT + 1
    assert {series.label for series in late} == {"_other"}
    assert late[0] is late[1] is late[2]


def test_collection_timer_observes_each_collection_by_generation() -> None:
    collections = Histogram(
        "test_gc_pause_seconds", "Test.", ["generation"], buckets=(0.01, 0.1), registry=None
    )
    now = [0.0]
    timer = CollectionTimer(collections, clock=lambda: now[0])

    for generation, seconds in ((0, 0.002), (1, 0.05), (1, 0.2)):
        timer("start", {"generation": generation})
        now[0] += seconds
        timer("stop", {"generation": generation, "collected": 0, "uncollectable": 0})
    timer("stop", {"generation": 2})  # a stop without its start (installed mid-collection)

    samples = {
        (sample.name, sample.labels.get("generation"), sample.labels.get("le")): sample.value
        for metric in collections.collect()
        for sample in metric.samples
    }
    assert samples[("test_gc_pause_seconds_count", "0", None)] == 1
    assert samples[("test_gc_pause_seconds_bucket", "1", "0.1")] == 1
    assert samples[("test_gc_pause_seconds_count", "1", None)] == 2
    assert samples[("test_gc_pause_seconds_sum", "1", None)] == pytest.approx(0.25)
    assert samples[("test_gc_pause_seconds_count", "2", None)] == 0


def test_the_workers_collections_are_timed_once_per_process() -> None:
    time_collections()
    time_collections()

    timers = [callback for callback in gc.callbacks if isinstance(callback, CollectionTimer)]
    before = _sample("matchstream_gc_pause_seconds_count", {"generation": "2"})
    gc.collect()

    assert len(timers) == 1
    assert _sample("matchstream_gc_pause_seconds_count", {"generation": "2"}) == before + 1
