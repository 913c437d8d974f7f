"""`KeyPartitions` picks the partitions aiokafka's default partitioner picks, hashing each key once."""

from __future__ import annotations

import aiokafka.partitioner
import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.partitioning import KeyPartitions

_KEYS = [f"pool-{index}".encode() for index in range(500)] + [b"", "lobby-ö".encode()]


@pytest.mark.parametrize("count", [1, 8, 16, 48])
def test_the_same_partition_as_the_default_partitioner(count: int) -> None:
    partitions = list(range(count))
    remembered = KeyPartitions()
    for _ in range(2):  # hashed, then remembered
        for key in _KEYS:
            assert remembered(key, partitions, partitions) == DefaultPartitioner()(
                key, partitions, partitions
            )


def test_a_key_is_hashed_once_per_partition_count(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[bytes] = []

    def counted(data: bytes) -> int:
        hashed.append(data)
        return 12345

    monkeypatch.setattr(aiokafka.partitioner, "murmur2", counted)
    remembered = KeyPartitions()
    for _ in range(3):
        remembered(b"lobby", [0, 1, 2], [])
    remembered(b"lobby", [0, 1, 2, 3], [])
    assert hashed == [b"lobby", b"lobby"]


def test_past_its_limit_it_starts_again_and_still_answers_the_same() -> None:
    partitions = list(range(16))
    remembered = KeyPartitions(limit=3)
    for key in _KEYS * 2:
        assert remembered(key, partitions, []) == DefaultPartitioner()(key, partitions, [])


def test_without_a_key_an_available_partition_is_chosen() -> None:
    remembered = KeyPartitions()
    assert {remembered(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
