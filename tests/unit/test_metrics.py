"""Per-pool series kept by label: the same samples as `labels()`, and the label cap holds."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from streams.metrics import POOL_LABEL_LIMIT, worker_metrics


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
