"""A crash that stored only part of one input's writes is reconciled, never re-matched."""

from __future__ import annotations

from matching.engine import MatchEngine
from models.messages import MatchConfirm, MatchRequest, PoolCommand
from models.state import MatchState, RequestState, StateRecord


def _ask(request_id: str, user: str) -> MatchRequest:
    return MatchRequest(request_id=request_id, pool_id="p", user_id=user)


def test_a_match_stored_without_its_members_records_is_completed_not_redone() -> None:
    first = MatchEngine()
    table: dict[str, StateRecord] = {}
    for key, record in first.handle_request(_ask("r-a", "a"), partition=0, now=1.0).writes:
        table[key] = record
    effects = first.handle_request(_ask("r-b", "b"), partition=0, now=2.0)
    # The crash: the match landed, neither member's `matched` record did.
    (match_key, match), *_ = [(k, r) for k, r in effects.writes if isinstance(r, MatchState)]
    table[match_key] = match

    second = MatchEngine()
    second.load(table.values())
    assert not second.pools["p"].waiting, "a is in a stored match, not waiting"

    redelivered = second.handle_request(_ask("r-b", "b"), partition=0, now=3.0)
    repaired = second.tick(partition=0, now=4.0)
    written = [r for _, r in redelivered.writes + repaired.writes]
    assert not any(isinstance(r, MatchState) for r in written), "no second match"
    assert sorted((r.request_id, r.status, r.match_id) for r in written
                  if isinstance(r, RequestState)) == [
        ("r-a", "matched", match.found.match_id),
        ("r-b", "matched", match.found.match_id),
    ]  # fmt: skip
    # Later newcomers do not meet a or b again.
    later = second.handle_request(_ask("r-c", "c"), partition=0, now=5.0)
    assert not any(isinstance(r, MatchState) for _, r in later.writes)


def _proposal_stored_without(member: str) -> tuple[dict[str, StateRecord], MatchState]:
    """A two-member proposal whose crash lost `member`'s request records entirely."""
    engine = MatchEngine()
    table: dict[str, StateRecord] = {}
    configure = PoolCommand(
        command="configure", pool_id="p", config={"require_confirm": True, "confirm_timeout_s": 30}
    )
    for effects in (
        engine.handle_command(configure, partition=0, now=0.0),
        engine.handle_request(_ask("r-a", "a"), partition=0, now=1.0),
        engine.handle_request(_ask("r-b", "b"), partition=0, now=2.0),
    ):
        table.update(effects.writes)
    lost = [
        key for key, r in table.items() if isinstance(r, RequestState) and r.request_id == member
    ]
    for key in lost:
        del table[key]
    (proposal,) = [r for r in table.values() if isinstance(r, MatchState)]
    return table, proposal


def test_a_proposal_timing_out_before_its_unrecorded_member_comes_back() -> None:
    table, _ = _proposal_stored_without("r-b")
    engine = MatchEngine()
    engine.load(table.values())

    timed_out = engine.tick(partition=0, now=100.0)
    ended = {r.request_id: r.status for _, r in timed_out.writes if isinstance(r, RequestState)}
    assert ended == {"r-a": "expired"}
    assert engine.pools["p"].proposals == {}

    # b's request comes again: the proposal is gone, so it simply waits.
    redelivered = engine.handle_request(_ask("r-b", "b"), partition=0, now=101.0)
    (record,) = [r for _, r in redelivered.writes if isinstance(r, RequestState)]
    assert (record.request_id, record.status) == ("r-b", "queued")
    assert record.match_id is None


def test_a_proposal_accepted_before_its_unrecorded_member_comes_back() -> None:
    table, proposal = _proposal_stored_without("r-b")
    engine = MatchEngine()
    engine.load(table.values())
    match_id = proposal.found.match_id
    for user in ("a", "b"):
        answer = MatchConfirm(match_id=match_id, pool_id="p", user_id=user, accept=True)
        engine.handle_confirm(answer, partition=0, now=10.0)

    redelivered = engine.handle_request(_ask("r-b", "b"), partition=0, now=11.0)
    (record,) = [r for _, r in redelivered.writes if isinstance(r, RequestState)]
    assert (record.request_id, record.status, record.match_id) == ("r-b", "matched", match_id)


def test_members_of_a_proposal_that_never_landed_wait_again() -> None:
    table, proposal = _proposal_stored_without("nobody")
    del table[next(key for key, r in table.items() if isinstance(r, MatchState))]
    engine = MatchEngine()
    engine.load(table.values())
    book = engine.pools["p"]
    assert sorted(book.waiting) == ["r-a", "r-b"] and not book.proposed

    repaired = engine.tick(partition=0, now=10.0)
    assert sorted(
        (r.request_id, r.status, r.match_id)
        for _, r in repaired.writes
        if isinstance(r, RequestState)
    ) == [("r-a", "requeued", None), ("r-b", "requeued", None)]
    # A's next request supersedes the old one instead of crashing on the missing proposal.
    superseding = engine.handle_request(_ask("r-a2", "a"), partition=0, now=11.0)
    assert ("r-a", "superseded") in {
        (r.request_id, r.status) for _, r in superseding.writes if isinstance(r, RequestState)
    }
    assert proposal.found.match_id not in book.proposals


def test_members_of_a_cancelled_proposal_whose_requeue_was_lost_wait_again() -> None:
    table, proposal = _proposal_stored_without("nobody")
    key = next(key for key, r in table.items() if isinstance(r, MatchState))
    table[key] = proposal.model_copy(update={"state": "cancelled"})
    engine = MatchEngine()
    engine.load(table.values())
    assert sorted(engine.pools["p"].waiting) == ["r-a", "r-b"]
