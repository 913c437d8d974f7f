"""Producing a workload to the input topics."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from streams.settings import Settings
from streams.topics import TopicNames
from streams.workload import WorkloadMessage

__all__ = ["produce_messages"]


async def produce_messages(
    settings: Settings, messages: Iterable[WorkloadMessage], *, total: int, progress: bool = True
) -> Counter[str]:
    """Send `messages` keyed by pool_id and wait until the broker acknowledged all.

    Returns:
        How many messages of each kind were sent.
    """
    names = TopicNames.with_prefix(settings.topic_prefix)
    topics = {"request": names.request, "command": names.command}
    counts: Counter[str] = Counter()
    producer = AIOKafkaProducer(
        bootstrap_servers=",".join(settings.broker_hosts), acks="all", linger_ms=5
    )
    await producer.start()
    try:
        for number, message in enumerate(messages, start=1):
            await producer.send(topics[message.topic_kind], value=message.value, key=message.key)
            counts[message.kind] += 1
            if progress and (number % 500 == 0 or number == total):
                _draw_progress(number, total)
        await producer.flush()
    finally:
        await producer.stop()
    if progress:
        sys.stderr.write("\n")
    return counts


def _draw_progress(done: int, total: int) -> None:
    width = 30
    filled = min(width, int(width * done / max(total, 1)))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} messages")
    sys.stderr.flush()
