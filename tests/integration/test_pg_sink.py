"""The Postgres sink against a real broker and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Self

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY

from models.codec import dumps, utc_now_iso
from models.messages import TERMINAL_STATUSES, MatchFound, MatchMember, MatchStatus, Seat
from streams.audit import audit_topics
from streams.pg_schema import MIGRATIONS, migrate
from streams.pg_sink import PostgresSink
from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from streams.workload import Workload
from tests.support.harness import OutputReader, Outputs, send_messages
from tests.support.postgres import LocalPostgres

pytestmark = pytest.mark.integration

_OUTAGE_S = 4.0
_clock = itertools.count(1_795_000_000)
"""Seconds since the epoch for crafted statuses, one later than the last."""


@pytest.fixture
async def database_url(local_postgres: LocalPostgres) -> AsyncIterator[str]:
    """A database of this test's own on the session's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(local_postgres.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield local_postgres.url(name)
    if not local_postgres.running:
        local_postgres.start()  # a failed outage test must not take the server down for good
    admin = await asyncpg.connect(local_postgres.url("postgres"))
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    """This test's settings with the sink enabled, for `worker_factory` too."""
    return settings.model_copy(update={"database_url": database_url})


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str, every_s: float = 0.25
) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(every_s)


async def _table_exists(db: asyncpg.Connection, name: str) -> bool:
    return bool(await db.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def _snapshot(db: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [tuple(row) for row in await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")]
        for table in ("matches", "match_members", "requests")
    }


class SinkProgress:
    """How far a sink consumer group is behind the end of the output topics."""

    def __init__(self, settings: Settings, group: str) -> None:
        names = TopicNames.with_prefix(settings.topic_prefix)
        hosts = ",".join(settings.broker_hosts)
        self.group = group
        self.partitions = [
            TopicPartition(topic, number)
            for topic in (names.found, names.status)
            for number in range(settings.topic_partitions)
        ]
        self._consumer = AIOKafkaConsumer(bootstrap_servers=hosts)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=hosts)

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()
        await self._consumer.stop()

    async def behind(self) -> int:
        """Messages past the group's committed offsets."""
        ends = await self._consumer.end_offsets(self.partitions)
        committed = await self._admin.list_consumer_group_offsets(self.group)
        return sum(
            end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()
        )

    async def wait_caught_up(self, timeout_s: float = 60.0) -> None:
        async def caught_up() -> bool:
            return await self.behind() == 0

        await _eventually(caught_up, timeout_s=timeout_s, what=f"group {self.group} to catch up")


def _terminal(outputs: Outputs) -> dict[str, dict[str, Any]]:
    """The first terminal status of every request that ended, by request_id."""
    ended: dict[str, dict[str, Any]] = {}
    for event in outputs.statuses:
        if event["status"] in TERMINAL_STATUSES and event.get("about") is None:
            ended.setdefault(str(event["request_id"]), event)
    return ended


async def _run_workload(
    settings: Settings, reader: OutputReader, workload: Workload
) -> tuple[set[str], Outputs]:
    """Configure, send and then close every pool; wait until every request ended."""
    names = TopicNames.with_prefix(settings.topic_prefix)
    messages = list(workload.messages())
    requests = {orjson.loads(m.value)["request_id"] for m in messages if m.kind == "request"}
    await send_messages(
        settings, ((names.command, m.key, m.value) for m in messages if m.kind == "configure")
    )
    await wait_until_consumed(settings, names.command, timeout_s=60)
    await send_messages(
        settings, ((names.request, m.key, m.value) for m in messages if m.kind != "configure")
    )
    closes = [
        (names.command, pool.encode(), orjson.dumps({"command": "close", "pool_id": pool}))
        for pool in (workload.pool_id(index) for index in range(workload.pools))
    ]
    await reader.wait_for(
        lambda out: len({e["request_id"] for e in out.statuses}) >= len(requests),
        timeout_s=60,
        what="a status for every request",
    )
    await send_messages(settings, closes)
    outputs = await reader.wait_for(
        lambda out: set(_terminal(out)) >= requests,
        timeout_s=90,
        what="a terminal status for every request",
    )
    return requests, outputs


async def _assert_database_matches_topics(db: asyncpg.Connection, outputs: Outputs) -> None:
    ended = _terminal(outputs)
    rows = {row["request_id"]: row for row in await db.fetch("SELECT * FROM requests")}
    assert set(rows) == {str(e["request_id"]) for e in outputs.statuses if e.get("about") is None}
    for request_id, event in ended.items():
        row = rows[request_id]
        stored = (row["pool_id"], row["user_id"], row["status"], row["reason"], row["match_id"])
        sent = (event["pool_id"], event["user_id"], event["status"], event["reason"])
        assert stored == (*sent, event["match_id"]), request_id

    found = {str(f["match_id"]): f for f in outputs.found}
    matches = {row["match_id"]: row for row in await db.fetch("SELECT * FROM matches")}
    assert set(matches) == set(found)
    for match_id, message in found.items():
        row = matches[match_id]
        assert (row["pool_id"], row["mode"]) == (message["pool_id"], message["mode"])
        assert row["score"] == pytest.approx(message["score"])
        assert orjson.loads(row["reasons"]) == message["reasons"]
    members = {
        (row["match_id"], row["request_id"], row["user_id"])
        for row in await db.fetch("SELECT * FROM match_members")
    }
    assert members == {
        (match_id, m["request_id"], m["user_id"])
        for match_id, message in found.items()
        for m in message["members"]
    }


async def test_worker_sinks_matches_members_and_statuses(
    settings: Settings, worker_factory, db: asyncpg.Connection, local_postgres: LocalPostgres
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    worker = worker_factory()
    worker.start()
    async with (
        OutputReader(settings) as reader,
        SinkProgress(settings, f"{settings.app_id}-pg-sink") as progress,
    ):
        await worker.wait_ready()
        workload = Workload(requests=300, pools=6, seed=11, cancel_ratio=0.1, run_id="pg")
        _, outputs = await _run_workload(settings, reader, workload)
        # A cancel of a request that already ended is refused (`about`), and the
        # refusal must not touch the stored request.
        matched = next(e for e in _terminal(outputs).values() if e["status"] == "matched")
        cancel = {
            "type": "cancel",
            "request_id": matched["request_id"],
            "pool_id": matched["pool_id"],
            "user_id": matched["user_id"],
        }
        await send_messages(
            settings, [(names.request, matched["pool_id"].encode(), orjson.dumps(cancel))]
        )
        await reader.wait_for(
            lambda out: any(
                e.get("about") == "cancel" and e["request_id"] == matched["request_id"]
                for e in out.statuses
            ),
            timeout_s=30,
            what="the refused cancel",
        )
        outputs = await reader.settle()
        await progress.wait_caught_up(timeout_s=60)

    assert outputs.found, "the workload formed no match"
    await _assert_database_matches_topics(db, outputs)
    assert await db.fetchval("SELECT max(version) FROM schema_version") == 1
    log_text = worker.log_text()
    assert "pg_sink.ready" in log_text
    assert local_postgres.password not in log_text

    report = await asyncio.wait_for(audit_topics(settings), 60)
    assert report.ok, report.render()
    assert report.database_compared

    # The audit notices a sink that lost a match or stored another ending.
    lost = str(outputs.found[0]["match_id"])
    await db.execute("DELETE FROM matches WHERE match_id = $1", lost)
    await db.execute(
        "UPDATE requests SET status = 'expired', match_id = NULL WHERE request_id = $1",
        matched["request_id"],
    )
    report = await asyncio.wait_for(audit_topics(settings), 60)
    assert {"match missing in database", "database status differs"} <= set(report.violations)


def _found(match_id: str, score: float, *members: str, seats: bool = False) -> bytes:
    return dumps(
        MatchFound(
            match_id=match_id,
            pool_id="crafted",
            mode="batch" if seats else "pair",
            members=[MatchMember(user_id=f"u-{rid}", request_id=rid) for rid in members],
            score=score,
            reasons=["shared interests: rust"] if score >= 0.5 else [],
            criteria={"topic": "dp\x00"},  # jsonb refuses U+0000; the sink must not stall
            seats=[
                Seat(user_id=f"u-{rid}", table_no=1, seat_no=seat)
                for seat, rid in enumerate(members, 1)
            ]
            if seats
            else None,
            created_at="2026-11-23T10:00:01Z",
        )
    )


def _status(request_id: str, status: str, **extra: Any) -> bytes:
    return dumps(
        MatchStatus(
            request_id=request_id,
            pool_id="crafted",
            user_id=f"u-{request_id}",
            status=status,
            at=utc_now_iso(next(_clock)),
            **extra,
        )
    )


def _crafted(names: TopicNames) -> Iterable[tuple[str, bytes, bytes]]:
    """Five matches with scores 0.2 .. 1.0, refusals, re-emits and one foreign message."""
    key = b"crafted"
    scores = (0.2, 0.4, 0.6, 0.8, 1.0)
    for number, score in enumerate(scores):
        left, right = f"r{2 * number}", f"r{2 * number + 1}"
        match_id = f"m{number}"
        for rid in (left, right):
            yield names.status, key, _status(rid, "queued")
            yield names.status, key, _status(rid, "proposed", match_id=match_id)
            yield names.status, key, _status(rid, "matched", match_id=match_id)
        yield names.found, key, _found(match_id, score, left, right, seats=number == 0)
    yield names.found, key, _found("m0", 0.2, "r0", "r1", seats=True)  # an identical re-emit
    yield names.status, key, _status("r0", "queued")  # a relay replay of the past
    yield names.status, key, _status("r2", "rejected", reason="not_active", about="cancel")
    yield names.status, key, _status("x1", "queued")
    yield names.status, key, _status("x1", "expired", reason="ttl")
    yield names.status, key, _status("x2", "queued")
    yield names.status, key, _status("x3", "cancelled", reason="user")
    yield names.status, key, b'{"not": "a status"}'


def _rows_written() -> float:
    return sum(
        REGISTRY.get_sample_value("matchstream_sink_rows_written_total", {"table": table}) or 0.0
        for table in ("matches", "match_members", "requests")
    )


async def _run_sink(settings: Settings, group: str) -> None:
    """Run an in-process sink in `group` until it committed everything in the topics."""
    sink = PostgresSink(settings=settings, group_id=group, retry_initial_s=0.1, retry_max_s=1.0)
    await sink.start()
    try:
        async with SinkProgress(settings, group) as progress:
            await progress.wait_caught_up(timeout_s=60)

        async def no_lag() -> bool:
            return REGISTRY.get_sample_value("matchstream_sink_lag_messages") == 0

        # The gauge is refreshed about once a second, after the commit it reports.
        await _eventually(no_lag, timeout_s=10, what="the lag gauge to reach 0")
    finally:
        await sink.stop()


async def test_replaying_every_message_changes_nothing(
    settings: Settings, db: asyncpg.Connection
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    await send_messages(settings, _crafted(names))

    await _run_sink(settings, "first")
    first = await _snapshot(db)
    written = _rows_written()
    await _run_sink(settings, "replay")  # a new group reads everything again

    assert await _snapshot(db) == first
    assert _rows_written() == written, "a replay rewrote rows"
    requests = {row["request_id"]: row for row in await db.fetch("SELECT * FROM requests")}
    assert {rid: row["status"] for rid, row in requests.items()} == {
        **{f"r{n}": "matched" for n in range(10)},
        "x1": "expired",
        "x2": "queued",
        "x3": "cancelled",
    }
    assert requests["r0"]["match_id"] == "m0"
    assert orjson.loads(await db.fetchval("SELECT criteria FROM matches LIMIT 1")) == {
        "topic": "dp\ufffd"
    }
    seats = await db.fetch(
        "SELECT request_id, table_no, seat_no FROM match_members WHERE match_id = 'm0' ORDER BY 1"
    )
    assert [tuple(row) for row in seats] == [("r0", 1, 1), ("r1", 1, 2)]
    assert await db.fetchval("SELECT count(*) FROM match_members WHERE table_no IS NULL") == 8


async def test_seed_summary_queries_run_against_the_schema(
    settings: Settings, db: asyncpg.Connection
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    await send_messages(settings, _crafted(names))
    await _run_sink(settings, "summary")

    # The seed's queries (3.2.2 - 3.2.4), with pool_id for job_id and a match that
    # has reasons standing in for one with evidence.
    pool = "crafted"
    matches_found = await db.fetchval("SELECT COUNT(*) FROM matches WHERE pool_id = $1", pool)
    with_evidence = await db.fetchval(
        "SELECT COUNT(*) FROM matches WHERE pool_id = $1 AND jsonb_array_length(reasons) > 0",
        pool,
    )
    scores = await db.fetchrow(
        """
        SELECT AVG(score) AS avg_score,
               PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY score) AS p90_score
        FROM matches WHERE pool_id = $1
        """,
        pool,
    )
    by_status = dict(
        await db.fetch(
            "SELECT status, COUNT(*) FROM requests WHERE pool_id = $1 GROUP BY status", pool
        )
    )

    assert (matches_found, with_evidence) == (5, 3)
    # Linear interpolation between 0.8 and 1.0 at rank 0.9 * (5 - 1) = 3.6.
    assert (round(scores["avg_score"], 2), round(scores["p90_score"], 2)) == (0.6, 0.92)
    assert by_status == {"matched": 10, "expired": 1, "queued": 1, "cancelled": 1}


async def test_sink_catches_up_after_postgres_was_down(
    settings: Settings, worker_factory, local_postgres: LocalPostgres, database_url: str
) -> None:
    worker = worker_factory()
    worker.start()
    group = f"{settings.app_id}-pg-sink"
    async with OutputReader(settings) as reader, SinkProgress(settings, group) as progress:
        await worker.wait_ready()
        await _run_workload(settings, reader, Workload(requests=60, pools=2, seed=1, run_id="a"))
        await progress.wait_caught_up()

        local_postgres.stop()
        outage_began = time.monotonic()
        try:
            await _run_workload(
                settings, reader, Workload(requests=120, pools=3, seed=2, run_id="b")
            )

            async def outage_logged() -> bool:
                return "pg_sink.outage.start" in worker.log_text()

            await _eventually(outage_logged, timeout_s=30, what="the outage to be logged")
            # Nothing written, so nothing committed past what was written before.
            assert await progress.behind() > 0
            # More outputs while the database is still down queue behind the stuck batch.
            await _run_workload(
                settings, reader, Workload(requests=60, pools=2, seed=3, run_id="c")
            )
            # The outage's length is part of the scenario, not a wait for a condition:
            # long enough for several retries with growing pauses.
            await asyncio.sleep(max(0.0, _OUTAGE_S - (time.monotonic() - outage_began)))
            assert await progress.behind() > 0
        finally:
            local_postgres.start()

        await progress.wait_caught_up(timeout_s=90)
        outputs = await reader.settle()

    log_text = worker.log_text()
    assert log_text.count("pg_sink.outage.start") == 1
    ends = re.findall(r"pg_sink\.outage\.end .* attempts=(\d+)", log_text)
    assert len(ends) == 1 and int(ends[0]) >= 3, ends
    assert local_postgres.password not in log_text
    conn = await asyncpg.connect(database_url)
    try:
        await _assert_database_matches_topics(conn, outputs)
    finally:
        await conn.close()
    report = await asyncio.wait_for(audit_topics(settings), 60)
    assert report.ok, report.render()
    assert report.database_compared


async def test_concurrent_migrations_apply_each_step_once(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        versions = await asyncio.gather(*(migrate(conn) for conn in conns))
        applied = await conns[0].fetch("SELECT version FROM schema_version ORDER BY version")
        again = await migrate(conns[0])
    finally:
        for conn in conns:
            await conn.close()
    latest = MIGRATIONS[-1].version
    assert versions == [latest] * 4
    assert [row["version"] for row in applied] == [m.version for m in MIGRATIONS]
    assert again == latest


async def test_sink_started_while_postgres_is_down_writes_once_it_is_up(
    settings: Settings,
    local_postgres: LocalPostgres,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="streams")
    names = TopicNames.with_prefix(settings.topic_prefix)
    await send_messages(settings, _crafted(names))
    sink = PostgresSink(settings=settings, group_id="late", retry_initial_s=0.1, retry_max_s=0.5)
    local_postgres.stop()
    try:
        await sink.start()

        async def outage_logged() -> bool:
            return "pg_sink.outage.start" in caplog.text

        await _eventually(outage_logged, timeout_s=30, what="the outage to be logged")

        async def lag_shown() -> bool:
            return (REGISTRY.get_sample_value("matchstream_sink_lag_messages") or 0) > 0

        await _eventually(lag_shown, timeout_s=10, what="the backlog in the lag gauge")
    finally:
        local_postgres.start()
    try:
        async with SinkProgress(settings, "late") as progress:
            await progress.wait_caught_up(timeout_s=30)
    finally:
        await sink.stop()

    assert "pg_sink.outage.end" in caplog.text
    assert "pg_sink.migrated version=1" in caplog.text
    assert local_postgres.password not in caplog.text
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM requests") == 13
        assert await conn.fetchval("SELECT count(*) FROM matches") == 5
    finally:
        await conn.close()
