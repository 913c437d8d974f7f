"""The auditor must flag every broken invariant and accept identical re-emits."""

from __future__ import annotations

from typing import Any

from matching.audit import Auditor


def _status(request_id: str, status: str, match_id: str | None = None) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "pool_id": "p",
        "user_id": f"u-{request_id}",
        "status": status,
        "match_id": match_id,
    }


def _found(match_id: str, *request_ids: str, score: float = 0.5) -> dict[str, Any]:
    return {
        "match_id": match_id,
        "pool_id": "p",
        "mode": "pair",
        "members": [{"user_id": f"u-{rid}", "request_id": rid} for rid in request_ids],
        "score": score,
    }


def _matched_pair(auditor: Auditor, match_id: str, left: str, right: str) -> None:
    auditor.add_found(_found(match_id, left, right))
    auditor.add_status(_status(left, "matched", match_id))
    auditor.add_status(_status(right, "matched", match_id))


def test_a_clean_run_with_identical_re_emits_passes() -> None:
    auditor = Auditor()
    auditor.add_status(_status("a", "queued"))
    _matched_pair(auditor, "m-1", "a", "b")
    _matched_pair(auditor, "m-1", "a", "b")  # a relay re-emit after a crash
    auditor.add_status(_status("c", "expired"))

    report = auditor.report()

    assert report.ok, report.render()
    assert (report.requests, report.terminal, report.matches) == (3, 3, 1)
    assert report.duplicate_outputs == 3


def test_two_different_endings_are_a_violation() -> None:
    auditor = Auditor()
    auditor.add_status(_status("a", "expired"))
    auditor.add_status(_status("a", "cancelled"))

    assert set(auditor.report().violations) == {"two terminal statuses"}


def test_a_status_after_the_end_is_a_violation() -> None:
    auditor = Auditor()
    auditor.add_status(_status("a", "expired"))
    auditor.add_status(_status("a", "queued"))

    assert set(auditor.report().violations) == {"status after the end"}


def test_a_request_in_two_matches_is_a_violation() -> None:
    auditor = Auditor()
    _matched_pair(auditor, "m-1", "a", "b")
    _matched_pair(auditor, "m-2", "a", "c")

    assert "request in two matches" in auditor.report().violations


def test_a_match_id_with_two_bodies_is_a_violation() -> None:
    auditor = Auditor()
    auditor.add_found(_found("m-1", "a", "b", score=0.5))
    auditor.add_found(_found("m-1", "a", "b", score=0.9))

    assert "match_id re-used with other content" in auditor.report().violations


def test_matches_must_follow_the_pool_rules() -> None:
    auditor = Auditor()
    auditor.add_command({"command": "configure", "pool_id": "p", "config": {"match_on": ["t"]}})
    for rid, topic in (("a", "x"), ("b", "y")):
        auditor.add_request(
            {"request_id": rid, "pool_id": "p", "user_id": f"u-{rid}", "criteria": {"t": topic}}
        )
    _matched_pair(auditor, "m-1", "a", "b")

    assert "criteria disagree" in auditor.report().violations


def test_a_member_without_its_matched_status_is_a_violation() -> None:
    auditor = Auditor()
    auditor.add_found(_found("m-1", "a", "b"))
    auditor.add_status(_status("a", "matched", "m-1"))

    report = auditor.report()

    assert "member without matched status" in report.violations
    assert "VIOLATION member without matched status: 1" in report.render()


def test_a_replayed_earlier_status_after_the_end_is_a_re_emit() -> None:
    # The relay re-reads from its last commit after a rebalance: `queued` comes again
    # after `matched`, identical to the first one, `at` included.
    auditor = Auditor()
    queued = {**_status("a", "queued"), "at": "2026-11-23T10:00:00.000Z"}
    auditor.add_status(queued)
    _matched_pair(auditor, "m-1", "a", "b")
    auditor.add_status(queued)
    auditor.add_status(_status("a", "matched", "m-1"))

    report = auditor.report()

    assert report.ok, report.render()
    assert report.duplicate_outputs == 2


def test_a_new_status_after_the_end_is_a_violation_even_if_seen_before() -> None:
    auditor = Auditor()
    auditor.add_status({**_status("a", "queued"), "at": "2026-11-23T10:00:00.000Z"})
    auditor.add_status(_status("a", "expired"))
    auditor.add_status({**_status("a", "queued"), "at": "2026-11-23T10:05:00.000Z"})

    assert set(auditor.report().violations) == {"status after the end"}
