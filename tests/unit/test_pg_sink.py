"""The Postgres sink's pure parts: folding messages into rows, redaction, the audit check."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from matching.audit import Auditor
from models.messages import MatchFound, MatchMember, MatchStatus, Seat
from streams.pg_schema import MIGRATIONS, SinkBatch
from streams.pg_sink import PostgresSink, redact_url
from streams.settings import Settings


def _status(request_id: str, status: str, **extra: object) -> MatchStatus:
    fields: dict[str, object] = {
        "request_id": request_id,
        "pool_id": "p",
        "user_id": f"u-{request_id}",
        "status": status,
        "at": "2026-11-23T10:00:01.250Z",
        **extra,
    }
    return MatchStatus.model_validate(fields)


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_latest_status_wins_until_a_terminal_one() -> None:
    batch = SinkBatch()
    batch.add_status(_status("r", "queued"))
    batch.add_status(_status("r", "matched", match_id="m"))
    batch.add_status(_status("r", "queued"))  # a relay re-emit of the past

    row = batch.requests[("p", "r")]
    assert row[3:6] == ("matched", None, "m")
    assert row[6] == datetime(2026, 11, 23, 10, 0, 1, 250_000, tzinfo=UTC)


def test_a_refused_command_changes_nothing() -> None:
    batch = SinkBatch()
    batch.add_status(_status("r", "queued"))
    batch.add_status(_status("r", "rejected", reason="not_active", about="cancel"))
    batch.add_status(_status("other", "rejected", reason="not_member", about="confirm"))

    assert batch.requests[("p", "r")][3] == "queued"
    assert ("p", "other") not in batch.requests


def test_members_take_their_seats_by_user() -> None:
    found = MatchFound(
        match_id="m",
        pool_id="p",
        mode="batch",
        members=[
            MatchMember(user_id="a", request_id="ra"),
            MatchMember(user_id="b", request_id="rb"),
        ],
        score=0.5,
        reasons=["shared interests: rust"],
        criteria={"topic": "dp"},
        seats=[Seat(user_id="b", table_no=2, seat_no=1)],
        created_at="2026-11-23T10:00:01Z",
    )
    batch = SinkBatch()
    batch.add_found(found)
    batch.add_found(found)  # a re-emit: the same keys, so the same rows

    assert len(batch) == 3
    assert batch.members[("m", "ra")] == ("m", "ra", "a", None, None)
    assert batch.members[("m", "rb")] == ("m", "rb", "b", 2, 1)
    assert batch.matches["m"][4:6] == ('["shared interests: rust"]', '{"topic":"dp"}')


def test_nul_characters_cannot_reach_jsonb() -> None:
    found = MatchFound(
        match_id="m",
        pool_id="p",
        mode="pair",
        members=[MatchMember(user_id="a", request_id="ra")],
        score=0.5,
        reasons=["both chose d\x00p"],
        criteria={"to\x00pic": "d\x00p"},
        created_at="2026-11-23T10:00:01Z",
    )
    batch = SinkBatch()
    batch.add_found(found)

    reasons, criteria = batch.matches["m"][4:6]
    assert "\\u0000" not in reasons + criteria
    assert criteria == '{"to\ufffdpic":"d\ufffdp"}'


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/ms", "postgresql://app:***@db:5432/ms"),
        ("postgresql://app@db/ms", "postgresql://app@db/ms"),
        ("postgres://:s3cret@db/ms", "postgres://:***@db/ms"),
        ("postgresql://app:s3cret@db:notaport/ms", "<unparseable database url>"),
    ],
)
def test_the_password_never_shows(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_the_sink_refuses_to_exist_without_a_database() -> None:
    with pytest.raises(ValueError, match="database_url"):
        PostgresSink(settings=Settings())
    with pytest.raises(ValueError, match="retry"):
        PostgresSink(settings=Settings(database_url="postgresql://db/ms"), retry_initial_s=0)


def _auditor_with_one_match() -> Auditor:
    auditor = Auditor()
    auditor.add_found(
        {
            "match_id": "m",
            "pool_id": "p",
            "mode": "pair",
            "members": [{"user_id": "ua", "request_id": "a"}, {"user_id": "ub", "request_id": "b"}],
        }
    )
    for request_id in ("a", "b"):
        auditor.add_status(_status(request_id, "matched", match_id="m").model_dump())
    auditor.add_status(_status("c", "expired", reason="ttl").model_dump())
    auditor.add_status(_status("d", "queued").model_dump())
    return auditor


def test_a_faithful_database_passes_the_audit() -> None:
    auditor = _auditor_with_one_match()
    report = auditor.report()
    auditor.compare_database(
        report,
        members={"m": [("a", "ua"), ("b", "ub")]},
        requests={
            ("p", "a"): ("matched", "m"),
            ("p", "b"): ("matched", "m"),
            ("p", "c"): ("expired", None),
        },
    )
    assert report.ok, report.render()
    assert "database" in report.render()
    assert set(auditor.request_ids) == {"a", "b", "c", "d"}


def test_a_database_that_differs_is_reported() -> None:
    auditor = _auditor_with_one_match()
    report = auditor.report()
    auditor.compare_database(
        report,
        members={"m": [("a", "ua")]},
        requests={("p", "a"): ("matched", "m"), ("p", "b"): ("queued", None)},
    )
    assert set(report.violations) == {
        "database members differ",
        "database status differs",
        "request missing in database",
    }

    report = auditor.report()
    auditor.compare_database(report, members={}, requests={})
    assert "match missing in database" in report.violations
