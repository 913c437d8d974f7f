"""The bench reads the worker's garbage collections from its `/metrics` page."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from streams.bench import Collections
from streams.metrics import COLLECTION_BUCKETS_S, CollectionTimer


def _histogram(registry: CollectorRegistry) -> Histogram:
    """The worker's collection histogram, in a registry of the test's own."""
    return Histogram(
        "matchstream_gc_pause_seconds",
        "Test.",
        ["generation"],
        buckets=COLLECTION_BUCKETS_S,
        registry=registry,
    )


def _exposition(pauses_s: dict[int, list[float]]) -> str:
    registry = CollectorRegistry()
    Counter("matchstream_inputs_total", "Other metrics are skipped.", registry=registry).inc()
    histogram = _histogram(registry)
    for generation, pauses in pauses_s.items():
        for pause in pauses:
            histogram.labels(generation=str(generation)).observe(pause)
    return generate_latest(registry).decode()


def test_collections_are_counted_over_every_generation_with_the_long_ones_apart() -> None:
    collections = Collections.parse(_exposition({0: [0.002, 0.004], 1: [0.02], 2: [0.09]}))

    assert collections.count == 4
    assert collections.seconds == pytest.approx(0.116)
    assert (collections.over_10_ms, collections.over_50_ms) == (2, 1)


def test_a_phase_counts_what_happened_between_two_readings() -> None:
    before = Collections.parse(_exposition({0: [0.002], 1: [0.2]}))
    after = Collections.parse(_exposition({0: [0.002, 0.003], 1: [0.2, 0.06]}))

    phase = after - before

    assert (phase.count, phase.over_10_ms, phase.over_50_ms) == (2, 1, 1)
    assert "2 in 63 ms, 1 over 10 ms, 1 over 50 ms" == phase.cell()


def test_a_worker_without_the_histogram_reads_as_no_collections() -> None:
    assert Collections.parse(_exposition({})) == Collections()


def test_the_timer_and_the_parser_agree_on_the_metric() -> None:
    registry = CollectorRegistry()
    timer = CollectionTimer(_histogram(registry), clock=iter([0.0, 0.02]).__next__)

    timer("start", {"generation": 1})
    timer("stop", {"generation": 1})

    assert Collections.parse(generate_latest(registry).decode()).count == 1
