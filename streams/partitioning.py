"""Choosing an output's partition by its key, once per key.

Every output is keyed by its pool id, so a worker sends thousands of messages a second
under a few hundred keys. aiokafka's default partitioner hashes each key again with a
murmur2 written in Python: 3.7-3.9 us per message here, 0.3-0.6 us remembered
(docs/performance.md, "Partitions by key"). `KeyPartitions` gives the same partitions
as the default one (the Java client's), and remembers them.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.partitioner import DefaultPartitioner

__all__ = ["KeyPartitions"]

_DEFAULT_LIMIT = 100_000
"""Keys remembered before the memory starts again: far more pools than a worker holds."""


class KeyPartitions:
    """aiokafka's default partitioner, remembering each key's partition per partition count.

    Args:
        limit: how many (key, partition count) pairs it remembers; past that it forgets
            them all and starts again.

    Example:
        >>> partitions = KeyPartitions()
        >>> partitions(b"lobby", [0, 1, 2, 3], [0, 1, 2, 3]) == partitions(b"lobby", [0, 1, 2, 3], [])
        True
    """

    def __init__(self, *, limit: int = _DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._hashed = DefaultPartitioner()
        self._known: dict[tuple[bytes, int], int] = {}

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return self._hashed(key, all_partitions, available)  # no key: any available one
        # aiokafka passes a topic's partitions sorted by id, so their count decides the choice.
        known = (key, len(all_partitions))
        partition = self._known.get(known)
        if partition is None:
            if len(self._known) >= self._limit:
                self._known.clear()
            partition = self._known[known] = self._hashed(key, all_partitions, available)
        return partition
