"""Topic names of the contract (section 1), with the optional prefix."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, fields

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import Settings

__all__ = [
    "Replication",
    "TopicLayoutError",
    "TopicNames",
    "ensure_topics",
    "replication_for",
    "state_changelog",
    "wait_until_consumed",
]

log = logging.getLogger(__name__)

_MAX_AUTO_REPLICATION = 3


@dataclass(frozen=True)
class Replication:
    """How many copies a topic keeps and how many must have a write before it counts.

    Example:
        >>> Replication.for_brokers(5)
        Replication(factor=3, min_insync=2)
    """

    factor: int
    min_insync: int

    @classmethod
    def of(cls, factor: int) -> Replication:
        """`factor` copies; two must acknowledge once there are three or more."""
        # With three copies and two required, one broker may be down and every acks=all
        # write still lands on two; with fewer copies, requiring two would stop all writes.
        return cls(factor=factor, min_insync=2 if factor >= 3 else 1)

    @classmethod
    def for_brokers(cls, brokers: int) -> Replication:
        """One copy per broker, at most three (more copies cost more than they protect)."""
        return cls.of(max(1, min(brokers, _MAX_AUTO_REPLICATION)))


def replication_for(settings: Settings, *, brokers: int) -> Replication:
    """`MATCHSTREAM_REPLICATION_FACTOR` if set, else `Replication.for_brokers(brokers)`."""
    if settings.replication_factor is not None:
        return Replication.of(settings.replication_factor)
    return Replication.for_brokers(brokers)


class TopicLayoutError(RuntimeError):
    """Existing topics do not have the layout Matchstream needs."""


@dataclass(frozen=True, kw_only=True)
class TopicNames:
    """Every topic Matchstream reads or writes.

    Example:
        >>> TopicNames.with_prefix("test-").request
        'test-match.request'
    """

    request: str
    confirm: str
    profile: str
    command: str
    found: str
    status: str
    recommendations: str
    progress: str
    dlq: str
    tick: str
    """Internal: timer ticks, one per partition, so that expiry runs inside the stream."""
    profile_changes: str
    """Internal: accepted profile updates, sent to every partition (agents.profiles)."""

    @classmethod
    def with_prefix(cls, prefix: str = "") -> TopicNames:
        return cls(
            request=f"{prefix}match.request",
            confirm=f"{prefix}match.confirm",
            profile=f"{prefix}profile-update",
            command=f"{prefix}pool.command",
            found=f"{prefix}match.found",
            status=f"{prefix}match.status",
            recommendations=f"{prefix}match.recommendations",
            progress=f"{prefix}match.progress",
            dlq=f"{prefix}match.dlq",
            tick=f"{prefix}matchstream.tick",
            profile_changes=f"{prefix}matchstream.profile-change",
        )

    @property
    def inputs(self) -> tuple[str, ...]:
        """Co-partitioned topics the matcher consumes."""
        return (self.request, self.confirm, self.command, self.tick, self.profile_changes)


def state_changelog(settings: Settings) -> str:
    """The changelog topic Faust keeps for the `state` table (`<app_id>-state-changelog`)."""
    return f"{settings.app_id}-state-changelog"


async def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> None:
    """Create every contract topic with the configured partitions if missing.

    Input topics must be co-partitioned, so an existing topic with another
    partition count is an error the operator has to fix, not something to guess.
    New topics get `replication_for(settings, brokers=<live brokers>)` copies and
    its `min.insync.replicas`.

    Raises:
        TopicLayoutError: a topic exists with a different partition count.
    """
    names = TopicNames.with_prefix(settings.topic_prefix)
    changelog = state_changelog(settings)
    # The changelog too: the relay subscribes to it early, and a topic that springs
    # into existence on a broker's defaults would not be co-partitioned.
    wanted = [*(getattr(names, field.name) for field in fields(names)), changelog]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=",".join(settings.broker_hosts), request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = replication_for(settings, brokers=brokers)
        _warn_if_changelogs_differ(settings, replication, brokers)
        # Describe only topics that exist: describing a missing one can auto-create it
        # with the broker's default partition count.
        present = set(await admin.list_topics()) & set(wanted)
        existing = await _partition_counts(admin, sorted(present))
        wrong = {
            name: count for name, count in existing.items() if count != settings.topic_partitions
        }
        if wrong:
            raise TopicLayoutError(
                f"topics {wrong} exist with a partition count other than "
                f"MATCHSTREAM_TOPIC_PARTITIONS={settings.topic_partitions}"
            )
        missing = [
            NewTopic(
                name,
                num_partitions=settings.topic_partitions,
                replication_factor=replication.factor,
                topic_configs={
                    "min.insync.replicas": str(replication.min_insync),
                    **({"cleanup.policy": "compact"} if name == changelog else {}),
                },
            )
            for name in wanted
            if name not in present
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker created them first
            log.info(
                "topics created names=%s replication_factor=%d min_insync_replicas=%d",
                ",".join(topic.name for topic in missing),
                replication.factor,
                replication.min_insync,
            )
        await _wait_for_leaders(admin, wanted, settings.topic_partitions, timeout_s)
    finally:
        await admin.close()


def _warn_if_changelogs_differ(settings: Settings, topics: Replication, brokers: int) -> None:
    # Faust creates its changelogs itself, later, from a factor fixed when the app is
    # built (streams.app), which can only count the bootstrap hosts.
    changelogs = replication_for(settings, brokers=len(settings.broker_hosts))
    if changelogs != topics:
        log.warning(
            "replication.mismatch brokers=%d topics_factor=%d changelog_factor=%d "
            "hint=list every broker in MATCHSTREAM_BROKER or set MATCHSTREAM_REPLICATION_FACTOR",
            brokers,
            topics.factor,
            changelogs.factor,
        )


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    if not topics:
        return {}
    return {item["topic"]: len(item["partitions"]) for item in await admin.describe_topics(topics)}


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, topics: list[str], partitions: int, timeout_s: float
) -> None:
    """New topics answer NotLeaderForPartition until every partition has a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(topics)
        ready = [
            item
            for item in described
            if item["error_code"] == 0
            and len(item["partitions"]) == partitions
            and all(part["leader"] >= 0 for part in item["partitions"])
        ]
        if len(ready) == len(topics):
            return
        if time.monotonic() > deadline:
            raise TopicLayoutError(f"topics have no leaders after {timeout_s}s: {topics}")
        await asyncio.sleep(0.1)


async def wait_until_consumed(settings: Settings, topic: str, *, timeout_s: float) -> None:
    """Wait until the worker group has committed offsets at the end of `topic`.

    Input topics are not ordered with each other, so a producer that needs its
    pool commands applied before its requests waits for this in between.

    Raises:
        TimeoutError: the workers did not catch up in time.
    """
    hosts = ",".join(settings.broker_hosts)
    consumer = AIOKafkaConsumer(bootstrap_servers=hosts)
    admin = AIOKafkaAdminClient(bootstrap_servers=hosts)
    await consumer.start()
    await admin.start()
    try:
        partitions = [TopicPartition(topic, number) for number in range(settings.topic_partitions)]
        ends = await consumer.end_offsets(partitions)

        async def caught_up() -> None:
            while True:
                committed = await admin.list_consumer_group_offsets(settings.app_id)
                if all(
                    end == 0 or (tp in committed and committed[tp].offset >= end)
                    for tp, end in ends.items()
                ):
                    return
                await asyncio.sleep(0.2)

        try:
            await asyncio.wait_for(caught_up(), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"workers did not consume {topic} within {timeout_s}s") from None
    finally:
        await admin.close()
        await consumer.stop()
