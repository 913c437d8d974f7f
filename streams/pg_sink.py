"""The PostgreSQL sink: `match.found` and `match.status` -> tables (streams.pg_schema).

Like the output relay, the sink consumes in its own consumer group and commits
its offsets only after the work behind them is durable, here once the database
transaction holding a batch has committed. After a crash or an outage it
re-reads from the last commit; the upserts make that replay harmless.

While Postgres is unreachable the sink keeps its current batch, retries with
capped exponential backoff and logs one line when the outage starts and one
when it ends. Kafka keeps the backlog; `matchstream_sink_lag_messages` shows it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from mode import Service
from prometheus_client import Counter, Gauge

from models.codec import decode
from models.messages import MatchFound, MatchStatus
from streams.app import Matchstream
from streams.pg_schema import SinkBatch, migrate, write_batch
from streams.settings import Settings
from streams.topics import TopicNames

__all__ = ["SINK_LAG", "SINK_ROWS", "PostgresSink", "redact_url", "register"]

log = logging.getLogger(__name__)

SINK_LAG = Gauge(
    "matchstream_sink_lag_messages",
    "Messages in match.found and match.status not yet written to PostgreSQL "
    "(partitions assigned to this worker's sink).",
)
SINK_ROWS = Counter(
    "matchstream_sink_rows_written",
    "Rows the PostgreSQL sink inserted or changed; identical replays are not counted.",
    ["table"],
)

_BATCH_RECORDS = 2_000
_LAG_INTERVAL_S = 1.0
_LAG_TIMEOUT_S = 5.0
_CONNECT_TIMEOUT_S = 10.0
_COMMAND_TIMEOUT_S = 60.0
_CLOSE_TIMEOUT_S = 5.0
# Failures that mean "the database cannot take writes right now": retried, never fatal.
_RETRIED = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def redact_url(url: str) -> str:
    """The database URL without its password, for logs.

    Example:
        >>> redact_url("postgresql://app:secret@db:5432/matches")
        'postgresql://app:***@db:5432/matches'
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable database url>"
    user = parts.username or ""
    credentials = f"{user}:***@" if parts.password is not None else (f"{user}@" if user else "")
    return f"{parts.scheme}://{credentials}{host}{port}{parts.path}"


class PostgresSink(Service):
    """Consumes the output topics in group `<app_id>-pg-sink` and upserts into Postgres.

    Example:
        >>> sink = PostgresSink(settings=Settings(database_url="postgresql://localhost/ms"))
        >>> sink.group_id
        'matchstream-pg-sink'
    """

    def __init__(
        self,
        *,
        settings: Settings,
        group_id: str | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 15.0,
        **kwargs: object,
    ) -> None:
        """Describe a sink; nothing connects until the service starts.

        Args:
            settings: Broker, topic prefix, app id and `database_url` (required).
            group_id: Consumer group; defaults to `<app_id>-pg-sink`.
            retry_initial_s: First wait after a failed write.
            retry_max_s: Longest wait between retries; waits double up to it.
            **kwargs: Passed to `mode.Service`.

        Raises:
            ValueError: Without a database URL, or with retry waits out of order.
        """
        if not settings.database_url:
            raise ValueError("PostgresSink needs settings.database_url (MATCHSTREAM_DATABASE_URL)")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError(
                f"need 0 < retry_initial_s <= retry_max_s, got {retry_initial_s}, {retry_max_s}"
            )
        self.settings = settings
        self.names = TopicNames.with_prefix(settings.topic_prefix)
        self.group_id = group_id or f"{settings.app_id}-pg-sink"
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._url = settings.database_url
        self._target = redact_url(settings.database_url)
        self._consumer: AIOKafkaConsumer | None = None
        self._conn: asyncpg.Connection | None = None
        self._migrated = False
        # First offset of each partition's batch not yet committed: lag counts from there.
        self._inflight: dict[TopicPartition, int] = {}
        self._lag_checked = 0.0
        super().__init__(**kwargs)  # type: ignore[arg-type]  # mode passes loop/beacon

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.names.found,
            self.names.status,
            bootstrap_servers=",".join(self.settings.broker_hosts),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        await self._consumer.start()

    async def on_shutdown(self) -> None:
        # Here rather than in on_stop: tasks are cancelled by now, so closing the
        # connection cannot fail a write in flight and read as an outage.
        if self._consumer is not None:
            await self._consumer.stop()
        await self._disconnect(graceful=True)

    @Service.task
    async def _sink(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=200, max_records=_BATCH_RECORDS)
            if not batches:
                await self._update_lag(force=False)
                continue
            self._inflight = {tp: messages[0].offset for tp, messages in batches.items()}
            batch = self._fold(batches)
            if not await self._write(batch):
                return  # stopping; the uncommitted batch is read again next time
            await self._commit({tp: messages[-1].offset + 1 for tp, messages in batches.items()})
            self._inflight = {}
            await self._update_lag(force=False)

    def _fold(self, batches: Mapping[TopicPartition, list[ConsumerRecord]]) -> SinkBatch:
        batch = SinkBatch()
        for tp, messages in batches.items():
            for message in messages:
                try:
                    if tp.topic == self.names.found:
                        batch.add_found(decode(MatchFound, message.value))
                    else:
                        batch.add_status(decode(MatchStatus, message.value))
                except ValueError as exc:  # DecodeError, or a timestamp that is not RFC 3339
                    # Outputs are written by Matchstream itself; a foreign message must
                    # not stop the sink, so it is reported and left out.
                    log.warning(
                        "pg_sink.skipped topic=%s partition=%d offset=%d error=%r",
                        tp.topic,
                        tp.partition,
                        message.offset,
                        str(exc)[:200],
                    )
        return batch

    async def _write(self, batch: SinkBatch) -> bool:
        """Write the batch, retrying until it is committed; False when stopping first."""
        failures = 0
        outage_started = 0.0
        while not self.should_stop:
            try:
                conn = await self._connection()
                written = await write_batch(conn, batch)
            except _RETRIED as exc:
                await self._disconnect()
                if failures == 0:
                    outage_started = time.monotonic()
                    log.warning(
                        "pg_sink.outage.start target=%s pending_rows=%d error=%r",
                        self._target,
                        len(batch),
                        f"{type(exc).__name__}: {exc}"[:300],
                    )
                failures += 1
                await self._update_lag(force=True)
                await self.sleep(self._backoff(failures))
                continue
            if failures:
                log.warning(
                    "pg_sink.outage.end target=%s duration_s=%.1f attempts=%d",
                    self._target,
                    time.monotonic() - outage_started,
                    failures + 1,
                )
            for table, rows in written.items():
                SINK_ROWS.labels(table=table).inc(rows)
            return True
        return False

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.retry_max_s, self.retry_initial_s * 2 ** min(failures - 1, 30))
        # Jitter keeps several workers' sinks from reconnecting in lockstep.
        return ceiling * random.uniform(0.8, 1.0)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._url, timeout=_CONNECT_TIMEOUT_S, command_timeout=_COMMAND_TIMEOUT_S
            )
            if not self._migrated:
                version = await migrate(self._conn)
                self._migrated = True
                log.info(
                    "pg_sink.ready target=%s schema_version=%d group=%s",
                    self._target,
                    version,
                    self.group_id,
                )
        return self._conn

    async def _disconnect(self, *, graceful: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        if not graceful:
            # After a failure the server may be gone, and close() would wait for it.
            conn.terminate()
            return
        try:
            await conn.close(timeout=_CLOSE_TIMEOUT_S)
        except _RETRIED:
            pass  # close() has aborted the connection instead

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        owned = self._consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in owned}
        if not mine:
            return
        try:
            await self._consumer.commit(mine)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another member during a long write; it re-reads
            # from the last commit, which the upserts make harmless.
            log.warning("pg_sink.commit_skipped reason=%r", str(exc)[:200])

    async def _update_lag(self, *, force: bool) -> None:
        """Refresh the lag gauge, at most once a second unless `force`d."""
        assert self._consumer is not None
        now = time.monotonic()
        if not force and now - self._lag_checked < _LAG_INTERVAL_S:
            return
        self._lag_checked = now
        assigned = list(self._consumer.assignment())
        if not assigned:
            SINK_LAG.set(0)
            return
        try:
            lag = await asyncio.wait_for(self._lag(assigned), _LAG_TIMEOUT_S)
        except (KafkaError, IllegalStateError, KeyError, TimeoutError):
            # A rebalance moved partitions meanwhile, or the broker is slow: the gauge
            # keeps its last value until the next refresh.
            return
        SINK_LAG.set(lag)

    async def _lag(self, assigned: list[TopicPartition]) -> int:
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(assigned)
        lag = 0
        for tp in assigned:
            done = self._inflight.get(tp)
            if done is None:
                done = await self._consumer.position(tp)
            lag += max(0, ends[tp] - done)
        return lag


def register(stream: Matchstream) -> None:
    """Run the sink in this worker (only when `settings.database_url` is set)."""
    sink = PostgresSink(settings=stream.settings)
    stream.app.service(sink)  # type: ignore[arg-type]  # faust types a class; instances work
