"""A crash that stored only part of one input's writes is reconciled, never re-matched."""

from __future__ import annotations

from matching.engine import MatchEngine
from models.messages import MatchRequest
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
