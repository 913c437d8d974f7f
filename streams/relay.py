"""The output relay: state changelog -> `match.status`, `match.found`, `match.recommendations`.

Outputs are a projection of durable state. The matcher only writes the state
table; this relay reads the table's changelog topic and emits one status event
per request record (but those that only changed a profile), one `match.found` per
final match record and one `match.recommendations` per top-K list record,
committing its offsets only after the broker acknowledged what it sent. So after
any crash an output exists if and only if the state change behind it is in the
changelog; re-emits after a crash are identical messages that consumers
de-duplicate by `match_id`, `(request_id, status)` and `(pool_id, user_id, version)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from mode import Service

from models.codec import dumps, loads, utc_now_iso
from models.state import (
    MatchState,
    RecommendationState,
    RequestState,
    StateRecord,
    kind_prefix,
    parse_state,
)
from streams.app import Matchstream
from streams.partitioning import KeyPartitions
from streams.topics import TopicNames

__all__ = [
    "AcknowledgedOffsets",
    "OutputRelay",
    "outputs_for",
    "outputs_of",
    "register",
    "table_key",
]

log = logging.getLogger(__name__)

_BATCH_RECORDS = 5_000
_COMMIT_INTERVAL_S = 1.0
"""Longest acknowledged outputs wait for their commit while changelog records keep
coming; a crash re-emits up to this much more (identical outputs)."""
# Requests, matches and top-K lists have outputs. The rest (pool settings, profiles,
# and input marks) are skipped before they are decoded.
_OUTPUT_KINDS = tuple(kind_prefix(kind) for kind in ("r", "m", "k"))


def table_key(raw_key: bytes | None) -> str | None:
    """The state table's key of a changelog record (Faust writes a `str` key as JSON)."""
    return None if raw_key is None else loads(raw_key)


def outputs_for(
    key: str | None, raw_record: bytes | None, names: TopicNames
) -> Iterator[tuple[str, bytes, bytes]]:
    """The (topic, key, value) outputs one state-table write stands for."""
    if raw_record is None or (key is not None and not key.startswith(_OUTPUT_KINDS)):
        return
    yield from outputs_of(parse_state(raw_record), names)


def outputs_of(record: StateRecord, names: TopicNames) -> Iterator[tuple[str, bytes, bytes]]:
    """The (topic, key, value) outputs of a state record already decoded."""
    if isinstance(record, RequestState) and not record.profile_only:
        event = record.status_event(at=utc_now_iso(record.changed_at))
        yield names.status, record.pool_id.encode(), dumps(event)
    elif isinstance(record, MatchState) and record.final:
        yield names.found, record.found.pool_id.encode(), dumps(record.found)
    elif isinstance(record, RecommendationState):
        lists = record.recommendations
        yield names.recommendations, lists.pool_id.encode(), dumps(lists)


class OutputRelay(Service):
    """Consumes the state changelog in its own consumer group and produces outputs."""

    def __init__(self, stream: Matchstream, **kwargs: object) -> None:
        self.stream = stream
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        super().__init__(**kwargs)  # type: ignore[arg-type]  # mode passes loop/beacon

    async def on_start(self) -> None:
        settings = self.stream.settings
        hosts = ",".join(settings.broker_hosts)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=hosts,
            acks="all",
            linger_ms=2,
            enable_idempotence=True,
            partitioner=KeyPartitions(),
        )
        self._consumer = AIOKafkaConsumer(
            self.stream.state.changelog_topic.get_topic_name(),
            bootstrap_servers=hosts,
            group_id=f"{settings.app_id}-relay",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The broker answers a waiting fetch as soon as a record is appended, so the
            # wait only sets how often a quiet changelog is asked again (every 20 ms
            # doubled an idle worker's CPU).
            fetch_max_wait_ms=500,
            isolation_level="read_committed",
        )
        await self._producer.start()
        await self._consumer.start()

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The outputs' producer, once the relay started."""
        return self._producer

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    @Service.task
    async def _relay(self) -> None:
        assert self._consumer is not None and self._producer is not None
        consumer, producer = self._consumer, self._producer
        names = self.stream.names
        commits = AcknowledgedOffsets(consumer, interval_s=_COMMIT_INTERVAL_S)
        # The previous batch's acknowledgements, awaited only after the next batch is
        # sent: outputs do not queue behind a round trip to the broker.
        settling: asyncio.Task[None] | None = None
        try:
            while not self.should_stop:
                batches = await consumer.getmany(timeout_ms=200, max_records=_BATCH_RECORDS)
                if not batches:
                    if settling is not None and settling.done():
                        await settling  # raises here what failed while the topic was quiet
                        settling = None
                    if settling is None:
                        await commits.commit()  # quiet: no later batch will carry it
                    continue
                pending: list[asyncio.Future[object]] = []
                for messages in batches.values():
                    for message in messages:
                        for topic, key, value in outputs_for(
                            table_key(message.key), message.value, names
                        ):
                            pending.append(await producer.send(topic, value=value, key=key))
                if settling is not None:
                    await settling  # offsets stay in order, one batch in flight at most
                offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batches.items()}
                settling = asyncio.ensure_future(commits.settle(pending, offsets))
        finally:
            if settling is not None and not settling.done():
                settling.cancel()  # not committed: the next owner re-emits identical outputs
                await asyncio.gather(settling, return_exceptions=True)


class AcknowledgedOffsets:
    """Acknowledged changelog offsets, committed at most every `interval_s` while batches come.

    Only acknowledged outputs are committed, so a crash re-emits and never drops.
    A commit per fetched batch cost the relay a round trip to the broker per changelog
    append when input came at a pace rather than in a backlog.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._interval_s = interval_s
        self._clock = clock
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = clock()

    async def settle(
        self, pending: list[asyncio.Future[object]], offsets: dict[TopicPartition, int]
    ) -> None:
        """Wait until a batch's outputs are acknowledged; commit if the interval has passed.

        Raises what a send raised; the batch's offsets are then not recorded.
        """
        await asyncio.gather(*pending)
        self._uncommitted.update(offsets)
        if self._clock() - self._committed_at >= self._interval_s:
            await self.commit()

    async def commit(self) -> None:
        """Commit every acknowledged offset now."""
        if not self._uncommitted:
            return
        offsets, self._uncommitted = self._uncommitted, {}
        self._committed_at = self._clock()
        await _commit(self._consumer, offsets)


async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
    """Commit what was relayed, unless a rebalance gave the partitions to another member.

    A worker that joins or dies rebalances the relay's group, possibly while a batch
    is in flight; the commit then fails. That must not stop the relay (and with it the
    worker): the partitions' new owner re-reads from the last commit and re-emits
    identical outputs, which consumers de-duplicate. Found by the crash drill.
    """
    owned = consumer.assignment()
    mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
    if not mine:
        return
    try:
        await consumer.commit(mine)
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("relay.commit_skipped reason=%r", str(exc).split("\n", 1)[0][:200])


def register(stream: Matchstream) -> OutputRelay:
    """Start the relay with the app, once tables have recovered."""
    relay = OutputRelay(stream)
    stream.app.service(relay)  # type: ignore[arg-type]  # instances are accepted
    return relay
