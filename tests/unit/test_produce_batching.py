"""Produce batching: the backlog linger's switching and restoring, and whole-node drains."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import pytest

from streams.produce_batching import BacklogLinger, send_whole_nodes


@dataclass
class _Accumulator:
    """The setting an aiokafka `MessageAccumulator` reads when it creates a batch."""

    _linger_time: float


@dataclass
class _Producer:
    linger_s: float
    _message_accumulator: _Accumulator = field(init=False)

    def __post_init__(self) -> None:
        self._message_accumulator = _Accumulator(self.linger_s)

    @property
    def linger_ms(self) -> float:
        return round(self._message_accumulator._linger_time * 1000, 3)


def _linger() -> BacklogLinger:
    return BacklogLinger(backlog_linger_ms=25, backlog_messages=500, caught_up_messages=50)


def _in_backlog_after(linger: BacklogLinger, behind: list[int]) -> list[bool]:
    states = []
    for messages in behind:
        linger.observe(messages)
        states.append(linger.in_backlog)
    return states


def test_it_starts_only_past_the_backlog_line_and_ends_only_once_caught_up() -> None:
    linger = _linger()
    assert _in_backlog_after(linger, [0, 400, 500, 501, 300, 51, 50, 300, 499]) == [
        False,
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_each_producer_lingers_long_in_a_backlog_and_gets_its_own_linger_back() -> None:
    linger = _linger()
    changelog, outputs = _Producer(0.005), _Producer(0.002)

    linger.observe(10_000)
    linger.apply(changelog)
    linger.apply(outputs)
    assert (changelog.linger_ms, outputs.linger_ms) == (25, 25)

    linger.apply(changelog)  # applied again in the backlog: its own linger is still known
    linger.observe(0)
    linger.apply(changelog)
    linger.apply(outputs)
    assert (changelog.linger_ms, outputs.linger_ms) == (5, 2)


def test_a_producer_first_seen_in_a_backlog_keeps_the_linger_it_had_then() -> None:
    linger = _linger()
    linger.observe(10_000)
    producer = _Producer(0.005)
    linger.apply(producer)
    linger.observe(0)
    linger.apply(producer)
    assert producer.linger_ms == 5


@pytest.mark.parametrize(("backlog", "caught_up"), [(500, 500), (500, 600), (500, -1)])
def test_the_caught_up_line_must_be_below_the_backlog_line(backlog: int, caught_up: int) -> None:
    with pytest.raises(ValueError, match="caught_up_messages"):
        BacklogLinger(backlog_linger_ms=25, backlog_messages=backlog, caught_up_messages=caught_up)


@dataclass
class _Batch:
    """A partition's lingering batch: due once `_linger_time` seconds have passed since `age_s`."""

    age_s: float
    _linger_time: float = 0.005

    def remaining_linger(self) -> float | None:
        left = self._linger_time - self.age_s
        return left if left > 0 else None


@dataclass
class _Cluster:
    leaders: dict[str, int]

    def leader_for_partition(self, tp: str) -> int:
        return self.leaders[tp]


@dataclass
class _DrainingAccumulator:
    """What `send_whole_nodes` reads of aiokafka's `MessageAccumulator`, and its drain rule."""

    _batches: dict[str, list[_Batch]]
    _cluster: _Cluster

    def drain_by_nodes(
        self, ignore_nodes: Collection[int], muted_partitions: Collection[str] = frozenset()
    ) -> dict[int, list[str]]:
        """Per node, the partitions whose first batch is due (aiokafka's own rule)."""
        nodes: dict[int, list[str]] = {}
        for tp, batches in self._batches.items():
            leader = self._cluster.leader_for_partition(tp)
            if tp in muted_partitions or leader in ignore_nodes:
                continue
            if not batches[0].remaining_linger():
                nodes.setdefault(leader, []).append(tp)
        return nodes


@dataclass
class _LingeringProducer:
    _message_accumulator: _DrainingAccumulator


def _producer_with(batches: dict[str, float], leaders: dict[str, int]) -> _LingeringProducer:
    """Partitions with one batch each, of the given ages in seconds (linger 5 ms)."""
    accumulator = _DrainingAccumulator(
        {tp: [_Batch(age)] for tp, age in batches.items()}, _Cluster(leaders)
    )
    return _LingeringProducer(accumulator)


def test_once_a_batch_is_due_its_node_sends_every_batch_it_leads() -> None:
    producer = _producer_with(
        {"a": 0.006, "b": 0.001, "c": 0.0, "d": 0.002}, {"a": 1, "b": 1, "c": 1, "d": 2}
    )
    accumulator = producer._message_accumulator
    assert accumulator.drain_by_nodes(ignore_nodes=set()) == {1: ["a"]}

    send_whole_nodes(producer)
    assert accumulator.drain_by_nodes(ignore_nodes=set()) == {1: ["a", "b", "c"]}
    assert accumulator._batches["d"][0]._linger_time == 0.005  # node 2 had nothing due


def test_a_node_with_a_request_in_flight_or_muted_partitions_keeps_its_batches_lingering() -> None:
    producer = _producer_with({"a": 0.006, "b": 0.001, "c": 0.001}, {"a": 1, "b": 1, "c": 1})
    send_whole_nodes(producer)
    accumulator = producer._message_accumulator

    assert accumulator.drain_by_nodes(ignore_nodes={1}) == {}
    assert accumulator.drain_by_nodes(ignore_nodes=set(), muted_partitions={"a"}) == {}
    assert [batches[0]._linger_time for batches in accumulator._batches.values()] == [0.005] * 3


def test_sending_whole_nodes_is_set_up_once_however_often_it_is_asked() -> None:
    producer = _producer_with({"a": 0.0}, {"a": 1})
    send_whole_nodes(producer)
    drain = producer._message_accumulator.drain_by_nodes
    send_whole_nodes(producer)
    assert producer._message_accumulator.drain_by_nodes is drain
