"""The Faust application: one factory that wires topics, the state table and agents.

A request's walk: `match.request` -> `agents.matcher` (decode, `MatchEngine`) ->
`state` table (RocksDB + changelog) -> `streams.relay` -> `match.status` /
`match.found`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faust
from faust.types import TableT, TopicT

from matching.engine import MatchEngine
from streams.durable_producer import DurableApp
from streams.metrics import worker_metrics
from streams.partitioning import KeyPartitions
from streams.pool_watch import PoolWatch
from streams.settings import Settings
from streams.state_writer import StateWriter
from streams.table_recovery import StandbySafeTableManager
from streams.topics import TopicNames, replication_for

__all__ = ["Matchstream", "create_app"]

log = logging.getLogger(__name__)


@dataclass
class Matchstream:
    """Everything a worker runs, built once per process by `create_app`."""

    app: faust.App
    settings: Settings
    names: TopicNames
    inputs: TopicT
    status: TopicT
    dlq: TopicT
    tick: TopicT
    state: TableT
    state_writer: StateWriter
    engine: MatchEngine
    watch: PoolWatch


def _raw_topic(app: faust.App, *names: str, partitions: int) -> TopicT:
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


def create_app(settings: Settings, *, store: str = "rocksdb-unlogged://") -> Matchstream:
    """Build the Faust app with every agent registered.

    Args:
        settings: process settings (broker, data dir, partitions, prefix, app id).
        store: table store URL: RocksDB without its write-ahead log (`streams.table_store`)
            by default, `memory://` for functional tests.

    Example:
        >>> stream = create_app(Settings(), store="memory://")
        >>> stream.state.name
        'state'
    """
    names = TopicNames.with_prefix(settings.topic_prefix)
    partitions = settings.topic_partitions
    # Faust creates the changelogs once running; building the app must not need a broker,
    # so unless MATCHSTREAM_REPLICATION_FACTOR says, the bootstrap hosts are counted.
    replication = replication_for(settings, brokers=len(settings.broker_hosts))
    # Faust's own producer flush can return with writes unsent (streams.durable_producer).
    app = DurableApp(
        settings.app_id,
        broker=settings.broker,
        store=store,
        datadir=str(Path(settings.data_dir) / "worker"),
        topic_partitions=partitions,
        topic_replication_factor=replication.factor,
        # A new consumer group must not skip requests produced before it started.
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Batch changelog and output writes: one produce request per write was the
        # largest cost in a profile (socket writes), see docs/performance.md.
        producer_linger=0.005,
        producer_partitioner=KeyPartitions(),
        # A killed worker's partitions stay orphaned until its session times out;
        # Faust's default of 60 s would stall every restart after a crash that long.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        # A standby keeps a table partition current, so taking it over after a worker
        # leaves is a catch-up on the changelog's tail rather than a full recovery.
        table_standby_replicas=settings.standby_replicas,
        # Faust's own manager drops standby records fetched while a recovery
        # completes, and then trusts the standby copy (streams.table_recovery).
        TableManager=StandbySafeTableManager,
        processing_guarantee="at_least_once",
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_in_thread=False,
        autodiscover=False,
        # Tables and topics carry bytes we encode ourselves (models.codec).
        key_serializer="raw",
        value_serializer="raw",
    )
    state = app.Table(
        "state",
        key_type=str,
        value_type=bytes,
        partitions=partitions,
        extra_topic_configs={"min.insync.replicas": str(replication.min_insync)},
    )
    stream = Matchstream(
        app=app,
        settings=settings,
        names=names,
        inputs=_raw_topic(app, *names.inputs, partitions=partitions),
        status=_raw_topic(app, names.status, partitions=partitions),
        dlq=_raw_topic(app, names.dlq, partitions=partitions),
        tick=_raw_topic(app, names.tick, partitions=partitions),
        state=state,
        state_writer=StateWriter(app=app, table=state),
        engine=MatchEngine(),
        watch=PoolWatch(metrics=worker_metrics()),
    )
    # Imported here because agents register themselves on the app being built.
    from agents import matcher, pool_progress, profiles, ticker
    from streams import eager_handover, fetch_window, produce_batching, relay
    from web import health, server

    matcher.register(stream)
    profiles.register(stream)
    ticker.register(stream)
    pool_progress.register(stream)
    output_relay = relay.register(stream)
    fetch_window.register(stream)
    eager_handover.install(app.consumer)
    produce_batching.register(stream, relay_producer=lambda: output_relay.producer)
    if settings.database_url:
        from streams import pg_sink  # asyncpg is loaded only by workers that sink

        pg_sink.register(stream)
    health.register(stream)
    server.register(stream)
    return stream
