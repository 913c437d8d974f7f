"""`matchstream audit`: read the topics from the beginning and check the invariants.

With a database URL (`--database-url` or MATCHSTREAM_DATABASE_URL) it also checks
that the Postgres sink stored every final match and every request's end.
"""

from __future__ import annotations

import asyncio

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from matching.audit import Auditor, AuditReport
from models.codec import DecodeError, decode
from models.messages import MatchRequest, PoolCommand
from streams.settings import Settings
from streams.topics import TopicNames

__all__ = ["audit_topics", "run_audit"]


def run_audit(settings: Settings, *, timeout_s: float = 300.0) -> int:
    """Print the audit report; exit code 1 when any invariant is broken."""
    report = asyncio.run(asyncio.wait_for(audit_topics(settings), timeout_s))
    print(report.render())
    return 0 if report.ok else 1


async def audit_topics(settings: Settings, *, database_url: str | None = None) -> AuditReport:
    """Read inputs and outputs up to their current end offsets and check them.

    Args:
        settings: Broker, topic prefix and partitions; `database_url` unless given.
        database_url: Compare with this sink database too; None uses the settings'.
    """
    names = TopicNames.with_prefix(settings.topic_prefix)
    auditor = Auditor()

    def on_request(raw: bytes) -> None:
        try:
            auditor.add_request(decode(MatchRequest, raw).model_dump(mode="json"))
        except DecodeError:
            pass  # the DLQ records of the run account for it

    def on_command(raw: bytes) -> None:
        try:
            auditor.add_command(decode(PoolCommand, raw).model_dump(mode="json"))
        except DecodeError:
            pass

    handlers = {
        names.request: on_request,
        names.command: on_command,
        names.status: lambda raw: auditor.add_status(orjson.loads(raw)),
        names.found: lambda raw: auditor.add_found(orjson.loads(raw)),
        names.dlq: lambda raw: auditor.add_dlq(),
    }
    consumer = AIOKafkaConsumer(
        bootstrap_servers=",".join(settings.broker_hosts),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, number)
            for topic in handlers
            for number in range(settings.topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp, end in ends.items() if end > 0}
        # Order across topics does not matter: every check is per request or per match.
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset < ends[tp] and message.value is not None:
                        handlers[tp.topic](message.value)
                if messages and messages[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    report = auditor.report()
    url = database_url or settings.database_url
    if url:
        await _compare_database(auditor, report, url)
    return report


async def _compare_database(auditor: Auditor, report: AuditReport, url: str) -> None:
    import asyncpg  # only an audit with a database needs the driver

    conn = await asyncpg.connect(url, timeout=30)
    try:
        members: dict[str, list[tuple[str, str]]] = {}
        rows = await conn.fetch(
            "SELECT match_id, request_id, user_id FROM match_members"
            " WHERE match_id = ANY($1::text[])",
            auditor.match_ids,
        )
        for row in rows:
            members.setdefault(row["match_id"], []).append((row["request_id"], row["user_id"]))
        # Members are written in the transaction of their match: a match without
        # member rows is a match the sink has not stored.
        rows = await conn.fetch(
            "SELECT request_id, pool_id, status, match_id FROM requests"
            " WHERE request_id = ANY($1::text[])",
            auditor.request_ids,
        )
        requests = {
            (row["pool_id"], row["request_id"]): (row["status"], row["match_id"]) for row in rows
        }
    finally:
        await conn.close()
    auditor.compare_database(report, members=members, requests=requests)
