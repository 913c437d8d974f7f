"""What the engine hands back (`Effects`) and the state records every pool mode writes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from matching.batch import BatchJob
from models.messages import CriterionValue, MatchStatus, PoolConfig
from models.state import PoolState, RequestState, StateRecord, state_key

if TYPE_CHECKING:
    from matching.pool import PoolBook

__all__ = [
    "Effects",
    "agreed_criteria",
    "criteria_reasons",
    "end_request",
    "match_id_of",
    "pool_record",
]


@dataclass
class Effects:
    """What one input caused: durable writes (in order), stateless replies, and work to start.

    `jobs` are batch runs the caller computes off the event loop and hands back with
    `MatchEngine.finish_batch`; `warnings` are operator-facing lines to log.
    """

    writes: list[tuple[str, StateRecord]] = field(default_factory=list)
    notices: list[MatchStatus] = field(default_factory=list)
    jobs: list[BatchJob] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    replay_safe: bool = False
    """Applying the input again changes nothing: a request whose id the pool now knows.
    Its id stays known through any recovery that keeps these writes (a request record
    is never deleted), and a known id is a no-op, so the input needs no `InputMark`."""

    def extend(self, other: Effects) -> None:
        self.writes.extend(other.writes)
        self.notices.extend(other.notices)
        self.jobs.extend(other.jobs)
        self.warnings.extend(other.warnings)


def end_request(
    request: RequestState,
    status: str,
    reason: str | None,
    now: float,
    *,
    match_id: str | None = None,
) -> tuple[str, RequestState]:
    """The record of `request` moved to `status` (terminal or not)."""
    ended = request.model_copy(
        update={"status": status, "reason": reason, "match_id": match_id, "changed_at": now}
    )
    return state_key("r", request.pool_id, request.request_id), ended


def pool_record(book: PoolBook, now: float) -> tuple[str, PoolState]:
    """The pool's configuration, switches and batch run progress as they are now."""
    run = book.run
    record = PoolState(
        partition=book.partition,
        changed_at=now,
        pool_id=book.pool_id,
        config=book.config,
        paused=book.paused,
        closed=book.closed,
        status=run.status,
        started_at=run.started_at,
        completed_at=run.completed_at,
        run=run.number,
        run_requests=list(run.requests),
        last_run=run.last,
        refused=run.refused,
    )
    return state_key("p", book.pool_id), record


def agreed_criteria(members: list[RequestState]) -> dict[str, CriterionValue]:
    """Each criterion all members share; None where a relaxed key differed."""
    keys = dict.fromkeys(key for member in members for key in member.criteria)
    agreed: dict[str, CriterionValue] = {}
    for key in keys:
        values = {member.criteria.get(key) for member in members} - {None}
        agreed[key] = values.pop() if len(values) == 1 else None
    return agreed


def criteria_reasons(
    config: PoolConfig, criteria: dict[str, CriterionValue], size: int
) -> list[str]:
    """Readable reasons from the `match_on` criteria the members agreed on or relaxed."""
    if not config.match_on:
        return []
    shared = [str(criteria[key]) for key in config.match_on if criteria.get(key) is not None]
    relaxed = [key for key in config.match_on if key in criteria and criteria[key] is None]
    reasons = []
    if shared:
        reasons.append(f"{'both' if size == 2 else 'all'} chose {'/'.join(shared)}")
    if relaxed:
        reasons.append(f"relaxed after waiting: {', '.join(relaxed)}")
    return reasons


def match_id_of(pool_id: str, request_ids: list[str]) -> str:
    """A match_id derived from pool and members, so a replayed input makes the same one."""
    digest = hashlib.sha256("\x1f".join([pool_id, *sorted(request_ids)]).encode()).hexdigest()
    return f"m-{digest[:20]}"
