"""The PostgreSQL schema of the sink: migrations, and rows built from output messages.

Three tables mirror the output topics (CONTRACT sections 1.5 and 1.6):

    matches         one row per final match, keyed by match_id
    match_members   one row per member, keyed by (match_id, request_id)
    requests        each request's latest status, keyed by (pool_id, request_id)

Every write is an upsert that changes a row only when its content differs, and
a request row that holds a terminal status is never changed again, so writing
the same messages twice, or an old status after a newer one, leaves the
tables as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import orjson

from models.messages import TERMINAL_STATUSES, MatchFound, MatchStatus

__all__ = [
    "MIGRATIONS",
    "Migration",
    "SchemaError",
    "SinkBatch",
    "migrate",
    "write_batch",
]

log = logging.getLogger(__name__)

# Any fixed 64-bit number works; all writers of this schema must agree on it.
_MIGRATION_LOCK = 0x6D73_5F73_6368_656D  # "ms_schem"


class SchemaError(RuntimeError):
    """The database holds a schema this code does not know how to write to."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema; applied once, in `version` order."""

    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "matches, match_members and requests",
        """
        CREATE TABLE matches (
            match_id    text PRIMARY KEY,
            pool_id     text NOT NULL,
            mode        text NOT NULL,
            score       double precision NOT NULL,
            reasons     jsonb NOT NULL,
            criteria    jsonb NOT NULL,
            created_at  timestamptz NOT NULL
        );
        CREATE INDEX matches_pool_id ON matches (pool_id);
        CREATE TABLE match_members (
            match_id    text NOT NULL REFERENCES matches (match_id) ON DELETE CASCADE,
            request_id  text NOT NULL,
            user_id     text NOT NULL,
            table_no    integer,
            seat_no     integer,
            PRIMARY KEY (match_id, request_id)
        );
        CREATE INDEX match_members_user_id ON match_members (user_id);
        -- No foreign key to matches: a proposed match may never become final.
        -- Request ids are the producer's idempotency keys, unique within a pool only.
        CREATE TABLE requests (
            pool_id     text NOT NULL,
            request_id  text NOT NULL,
            user_id     text NOT NULL,
            status      text NOT NULL,
            reason      text,
            match_id    text,
            updated_at  timestamptz NOT NULL,
            PRIMARY KEY (pool_id, request_id)
        );
        CREATE INDEX requests_pool_id_status ON requests (pool_id, status);
        """,
    ),
)
"""The schema's history. Append only: a released migration is never edited."""

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema up to the newest migration.

    Runs in one transaction under a transaction-scoped advisory lock, so workers
    starting together apply each migration once and never see half of one.

    Args:
        conn: An open connection; its default schema receives the tables.

    Returns:
        The schema version now in the database.

    Raises:
        SchemaError: The database is at a version newer than this code knows.
    """
    latest = MIGRATIONS[-1].version
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(_VERSION_TABLE)
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        if current > latest:
            raise SchemaError(
                f"database schema is at version {current}, this code knows up to {latest}"
            )
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_version (version, description) VALUES ($1, $2)",
                migration.version,
                migration.description,
            )
            log.info(
                "pg_sink.migrated version=%d description=%r",
                migration.version,
                migration.description,
            )
    return latest


def _timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _json(value: object) -> str:
    return orjson.dumps(_without_nul(value)).decode()


def _without_nul(value: object) -> object:
    # jsonb cannot hold U+0000, and criteria and interests (hence reasons) may carry
    # it. Rejected, one such match would stall the sink for good; U+FFFD keeps it.
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


@dataclass
class SinkBatch:
    """Rows for one transaction, folded from output messages in topic order.

    Later messages replace earlier ones for the same key, except that a request
    keeps the first terminal status it reached, and a refused command (a status
    with `about`) changes nothing.

    Example:
        >>> batch = SinkBatch()
        >>> batch.add_status(MatchStatus(request_id="r", pool_id="p", user_id="u",
        ...                              status="expired", at="2026-01-01T00:00:00Z"))
        >>> batch.requests[("p", "r")][3]
        'expired'
    """

    matches: dict[str, tuple[str, str, str, float, str, str, datetime]] = field(
        default_factory=dict
    )
    members: dict[tuple[str, str], tuple[str, str, str, int | None, int | None]] = field(
        default_factory=dict
    )
    requests: dict[tuple[str, str], tuple[str, str, str, str, str | None, str | None, datetime]] = (
        field(default_factory=dict)
    )

    def __len__(self) -> int:
        return len(self.matches) + len(self.members) + len(self.requests)

    def add_found(self, found: MatchFound) -> None:
        """A `match.found` message: the match and one row per member."""
        self.matches[found.match_id] = (
            found.match_id,
            found.pool_id,
            found.mode,
            found.score,
            _json(found.reasons),
            _json(found.criteria),
            _timestamp(found.created_at),
        )
        seats = {seat.user_id: (seat.table_no, seat.seat_no) for seat in found.seats or ()}
        for member in found.members:
            table_no, seat_no = seats.get(member.user_id, (None, None))
            self.members[(found.match_id, member.request_id)] = (
                found.match_id,
                member.request_id,
                member.user_id,
                table_no,
                seat_no,
            )

    def add_status(self, status: MatchStatus) -> None:
        """A `match.status` message: the request's latest status."""
        if status.about is not None:
            return  # a refused cancel or confirm does not change the request it names
        key = (status.pool_id, status.request_id)
        before = self.requests.get(key)
        if before is not None and before[3] in TERMINAL_STATUSES:
            return  # an older status re-emitted after the end
        self.requests[key] = (
            status.request_id,
            status.pool_id,
            status.user_id,
            status.status,
            status.reason,
            status.match_id,
            _timestamp(status.at),
        )


# Rows arrive as parallel arrays: one statement and one round trip per table and
# batch. `IS DISTINCT FROM` keeps identical replays from rewriting rows.
_UPSERT_MATCHES = """
INSERT INTO matches AS t (match_id, pool_id, mode, score, reasons, criteria, created_at)
SELECT match_id, pool_id, mode, score, reasons::jsonb, criteria::jsonb, created_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[], $6::text[],
            $7::timestamptz[])
     AS row (match_id, pool_id, mode, score, reasons, criteria, created_at)
ON CONFLICT (match_id) DO UPDATE SET
    pool_id = EXCLUDED.pool_id, mode = EXCLUDED.mode, score = EXCLUDED.score,
    reasons = EXCLUDED.reasons, criteria = EXCLUDED.criteria, created_at = EXCLUDED.created_at
WHERE (t.pool_id, t.mode, t.score, t.reasons, t.criteria, t.created_at)
      IS DISTINCT FROM
      (EXCLUDED.pool_id, EXCLUDED.mode, EXCLUDED.score, EXCLUDED.reasons, EXCLUDED.criteria,
       EXCLUDED.created_at)
"""

_UPSERT_MEMBERS = """
INSERT INTO match_members AS t (match_id, request_id, user_id, table_no, seat_no)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[])
ON CONFLICT (match_id, request_id) DO UPDATE SET
    user_id = EXCLUDED.user_id, table_no = EXCLUDED.table_no, seat_no = EXCLUDED.seat_no
WHERE (t.user_id, t.table_no, t.seat_no)
      IS DISTINCT FROM (EXCLUDED.user_id, EXCLUDED.table_no, EXCLUDED.seat_no)
"""

_UPSERT_REQUESTS = """
INSERT INTO requests AS t (request_id, pool_id, user_id, status, reason, match_id, updated_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[])
ON CONFLICT (pool_id, request_id) DO UPDATE SET
    pool_id = EXCLUDED.pool_id, user_id = EXCLUDED.user_id, status = EXCLUDED.status,
    reason = EXCLUDED.reason, match_id = EXCLUDED.match_id, updated_at = EXCLUDED.updated_at
WHERE t.status <> ALL ($8::text[])
  AND (t.pool_id, t.user_id, t.status, t.reason, t.match_id, t.updated_at)
      IS DISTINCT FROM
      (EXCLUDED.pool_id, EXCLUDED.user_id, EXCLUDED.status, EXCLUDED.reason, EXCLUDED.match_id,
       EXCLUDED.updated_at)
"""

_TERMINAL = sorted(TERMINAL_STATUSES)


async def write_batch(conn: asyncpg.Connection, batch: SinkBatch) -> dict[str, int]:
    """Upsert a batch in one transaction.

    Args:
        conn: An open connection to a migrated database.
        batch: The rows to write.

    Returns:
        Rows inserted or changed, per table; identical rows are not counted.
    """
    written: dict[str, int] = {}
    async with conn.transaction():
        # Matches before members: members reference them.
        for table, sql, rows, extra in (
            ("matches", _UPSERT_MATCHES, batch.matches, ()),
            ("match_members", _UPSERT_MEMBERS, batch.members, ()),
            ("requests", _UPSERT_REQUESTS, batch.requests, (_TERMINAL,)),
        ):
            if rows:
                written[table] = _row_count(
                    await conn.execute(sql, *_columns(rows.values()), *extra)
                )
    return written


def _columns(rows: Iterable[tuple[object, ...]]) -> list[list[object]]:
    return [list(column) for column in zip(*rows, strict=True)]


def _row_count(command_tag: str) -> int:
    # "INSERT 0 <rows>": the last word is the number of rows inserted or updated.
    return int(command_tag.rsplit(" ", 1)[-1])
