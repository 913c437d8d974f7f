"""The confirmation flow of pools with `require_confirm` (CONTRACT 1.2, 1.6)."""

from __future__ import annotations

from matching.engine import Effects, MatchEngine
from models.messages import MatchConfirm, MatchRequest, PoolCommand
from models.state import MatchState, RequestState, StateRecord

POOL = "peerprep"


class ConfirmPool:
    """One pool on partition 0 with a table that keeps the last write per key."""

    def __init__(self, **config: object) -> None:
        self.engine = MatchEngine()
        self.table: dict[str, StateRecord] = {}
        self.now = 1_000.0
        self.apply(
            self.engine.handle_command(
                PoolCommand(
                    command="configure",
                    pool_id=POOL,
                    config={"require_confirm": True, "confirm_timeout_s": 30, **config},
                ),
                partition=0,
                now=self.now,
            )
        )

    def apply(self, effects: Effects) -> Effects:
        for key, record in effects.writes:
            self.table[key] = record
        return effects

    def ask(self, number: int) -> Effects:
        message = MatchRequest(request_id=f"r-{number}", pool_id=POOL, user_id=f"u-{number}")
        return self.apply(self.engine.handle_request(message, partition=0, now=self.now))

    def answer(self, match_id: str, number: int, accept: bool) -> Effects:
        message = MatchConfirm(
            match_id=match_id, pool_id=POOL, user_id=f"u-{number}", accept=accept
        )
        return self.apply(self.engine.handle_confirm(message, partition=0, now=self.now))

    def tick(self, seconds: float) -> Effects:
        self.now += seconds
        return self.apply(self.engine.tick(partition=0, now=self.now))

    def status(self, number: int) -> tuple[str, str | None]:
        record = next(
            r
            for r in self.table.values()
            if isinstance(r, RequestState) and r.request_id == f"r-{number}"
        )
        return record.status, record.reason

    def match(self, match_id: str) -> MatchState:
        return next(
            r
            for r in self.table.values()
            if isinstance(r, MatchState) and r.found.match_id == match_id
        )


def _proposed_match_id(effects: Effects) -> str:
    proposals = [r for _, r in effects.writes if isinstance(r, MatchState)]
    assert len(proposals) == 1 and proposals[0].state == "proposed"
    return proposals[0].found.match_id


def test_a_match_is_final_only_after_every_member_accepts() -> None:
    pool = ConfirmPool()
    pool.ask(1)
    match_id = _proposed_match_id(pool.ask(2))
    assert pool.status(1) == ("proposed", None) and pool.status(2) == ("proposed", None)

    pool.answer(match_id, 1, accept=True)
    assert pool.match(match_id).state == "proposed"
    pool.answer(match_id, 1, accept=True)  # the same answer twice changes nothing
    assert pool.match(match_id).state == "proposed"

    pool.answer(match_id, 2, accept=True)
    assert pool.match(match_id).state == "final"
    assert pool.status(1)[0] == pool.status(2)[0] == "matched"


def test_a_decline_ends_the_decliner_and_requeues_the_partner_ahead_of_newer_requests() -> None:
    pool = ConfirmPool()
    pool.ask(1)
    match_id = _proposed_match_id(pool.ask(2))
    pool.now += 5

    effects = pool.answer(match_id, 2, accept=False)

    assert pool.status(2) == ("declined", None)
    assert pool.status(1) == ("requeued", "partner declined")
    assert pool.match(match_id).state == "cancelled"
    assert not [r for _, r in effects.writes if isinstance(r, MatchState) and r.final]
    requeued = pool.engine.pools[POOL].waiting["r-1"]
    assert requeued.queued_at == 1_000.0, "a requeued request keeps its original wait time"

    # The next newcomer is proposed to the requeued member at once.
    second = _proposed_match_id(pool.ask(3))
    assert {m.request_id for m in pool.match(second).found.members} == {"r-1", "r-3"}


def test_a_timeout_requeues_who_accepted_and_expires_who_did_not_answer() -> None:
    pool = ConfirmPool()
    pool.ask(1)
    match_id = _proposed_match_id(pool.ask(2))
    pool.answer(match_id, 1, accept=True)

    assert not pool.tick(29).writes
    pool.tick(2)

    assert pool.status(1) == ("requeued", "confirmation_timeout")
    assert pool.status(2) == ("expired", "confirmation_timeout")
    assert pool.match(match_id).state == "cancelled"


def test_confirms_for_unknown_or_finished_matches_or_from_strangers_are_refused() -> None:
    pool = ConfirmPool()
    pool.ask(1)
    match_id = _proposed_match_id(pool.ask(2))

    stranger = pool.answer(match_id, 9, accept=True)
    unknown = pool.answer("m-unknown", 1, accept=True)
    pool.answer(match_id, 1, accept=True)
    pool.answer(match_id, 2, accept=True)
    late = pool.answer(match_id, 1, accept=False)

    for effects, reason in (
        (stranger, "not_member"),
        (unknown, "not_proposed"),
        (late, "not_proposed"),
    ):
        assert not effects.writes
        assert [(n.status, n.reason, n.about) for n in effects.notices] == [
            ("rejected", reason, "confirm")
        ]
    assert pool.status(1)[0] == "matched"


def test_cancelling_a_proposed_request_requeues_the_partner() -> None:
    pool = ConfirmPool()
    pool.ask(1)
    match_id = _proposed_match_id(pool.ask(2))

    cancel = MatchRequest(type="cancel", request_id="r-1", pool_id=POOL, user_id="u-1")
    pool.apply(pool.engine.handle_request(cancel, partition=0, now=pool.now))

    assert pool.status(1) == ("cancelled", None)
    assert pool.status(2) == ("requeued", "partner cancelled")
    assert pool.match(match_id).state == "cancelled"


def test_pending_proposals_survive_a_rebuild_from_the_table() -> None:
    pool = ConfirmPool()
    pool.ask(1)
    match_id = _proposed_match_id(pool.ask(2))
    pool.answer(match_id, 1, accept=True)

    pool.engine = MatchEngine()
    pool.engine.load(pool.table.values())
    pool.answer(match_id, 2, accept=True)

    assert pool.match(match_id).state == "final"
    assert pool.status(1)[0] == pool.status(2)[0] == "matched"


def test_closing_a_pool_ends_open_proposals() -> None:
    pool = ConfirmPool()
    pool.ask(1)
    match_id = _proposed_match_id(pool.ask(2))

    pool.apply(
        pool.engine.handle_command(
            PoolCommand(command="close", pool_id=POOL), partition=0, now=pool.now
        )
    )

    assert pool.status(1) == pool.status(2) == ("expired", "pool_closed")
    assert pool.match(match_id).state == "cancelled"
