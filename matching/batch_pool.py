"""A `batch` pool's `start_matching` runs: start, finish, fail, and refusals.

A run has two steps, so that pairing a large event never blocks the stream:

1. `start_run` (the `start_matching` command) takes everyone waiting, highest
   priority first and then by arrival, records the pool as `running` with the run's
   request_ids, and hands out a `BatchJob`. The caller computes it off the event loop.
2. `finish_run` (at a tick after the job is done) writes the matches, with their
   seats, ends who got no seat `unseated`, and records the pool `completed`.

While a run is `running`, another `start_matching` is refused: nothing changes but
the pool record's `refused`, which says why, and a warning line for the operator.
A paused or closed pool refuses too. Requests that arrive during a run wait for
the next one. Whoever leaves during a run (cancel, expiry, clear) is left out when
it finishes: their partner keeps waiting and their seat stays empty. If the worker
stops mid-run, the pool is still `running` after recovery and the run is computed
again, with the same random seed, for those of its requests still waiting.
"""

from __future__ import annotations

from matching.batch import Attendee, BatchJob, BatchResult
from matching.pool import PoolBook
from matching.records import (
    Effects,
    agreed_criteria,
    criteria_reasons,
    end_request,
    match_id_of,
    pool_record,
)
from models.codec import utc_now_iso
from models.messages import MatchFound, MatchMember
from models.state import BatchRunSummary, MatchState, RequestState, state_key

__all__ = ["fail_run", "finish_run", "resume_run", "start_run"]


def start_run(book: PoolBook, now: float) -> Effects:
    """Start pairing everyone waiting, or refuse with the reason in the pool record."""
    run = book.run
    reason = None
    if run.status == "running":
        started = utc_now_iso(run.started_at)
        reason = f"run {run.number} (started {started}) is still in progress"
    elif book.closed:
        reason = "the pool is closed"
    elif book.paused:
        reason = "the pool is paused; resume it first"
    if reason is not None:
        run.refused = f"start_matching refused at {utc_now_iso(now)}: {reason}"
        warning = f"batch.refused pool={book.pool_id} run={run.number} reason={reason!r}"
        return Effects(writes=[pool_record(book, now)], warnings=[warning])
    attendees = sorted(
        book.waiting.values(), key=lambda item: (-item.priority, item.queued_at, item.request_id)
    )
    run.number += 1
    run.status, run.started_at, run.completed_at = "running", now, None
    run.requests = [request.request_id for request in attendees]
    run.refused = None
    run.launched = True
    return Effects(writes=[pool_record(book, now)], jobs=[_job(book, attendees)])


def resume_run(book: PoolBook) -> BatchJob | None:
    """The job of a run recovered as `running` that this worker has not handed out yet."""
    run = book.run
    if run.status != "running" or run.launched:
        return None
    run.launched = True
    attendees = [book.waiting[rid] for rid in run.requests if rid in book.waiting]
    return _job(book, attendees)


def finish_run(
    book: PoolBook, number: int, result: BatchResult, *, seconds: float, now: float
) -> Effects:
    """Write a computed run's matches and unseated requests; a stale result changes nothing."""
    run = book.run
    if run.status != "running" or run.number != number:
        return Effects()
    still_waiting = [book.waiting[rid] for rid in run.requests if rid in book.waiting]
    by_user = {request.user_id: request for request in still_waiting}
    seat_of = {seat.user_id: seat for seat in result.seats}
    effects = Effects()
    groups = seated = unseated = 0
    total = 0.0
    for pair in result.pairs:
        found = [by_user.get(user_id) for user_id in pair.members]
        members = [member for member in found if member is not None]
        if len(members) < len(found):
            continue  # someone left during the run; the rest wait for the next one
        match_id = match_id_of(book.pool_id, [member.request_id for member in members])
        criteria = agreed_criteria(members)
        seats = [seat_of[user_id] for user_id in pair.members if user_id in seat_of]
        match = MatchFound(
            match_id=match_id,
            pool_id=book.pool_id,
            mode="batch",
            members=[MatchMember(user_id=m.user_id, request_id=m.request_id) for m in members],
            score=pair.score,
            reasons=criteria_reasons(book.config, criteria, len(members)) + list(pair.reasons),
            criteria=criteria,
            seats=seats,
            created_at=utc_now_iso(now),
        )
        effects.writes.append((state_key("m", book.pool_id, match_id), _final(book, match, now)))
        for member in members:
            book.remove_waiting(member.request_id)
            effects.writes.append(end_request(member, "matched", None, now, match_id=match_id))
        groups += 1
        seated += len(seats)
        total += pair.score
    reason = "no_partner" if result.stats.attendees < 2 else "no_seat"
    for user_id in result.unseated:
        request = by_user.get(user_id)
        if request is not None:
            book.remove_waiting(request.request_id)
            effects.writes.append(end_request(request, "unseated", reason, now))
            unseated += 1
    run.last = BatchRunSummary(
        attendees=len(still_waiting),
        pairs=groups,
        seated=seated,
        unseated=unseated,
        total_score=round(total, 6),
        method=result.stats.method,
        seconds=round(seconds, 3),
    )
    _close(book, "completed", now)
    effects.writes.append(pool_record(book, now))
    return effects


def fail_run(book: PoolBook, number: int, error: str, now: float) -> Effects:
    """A run's computation failed: record `failed`; its requests keep waiting."""
    run = book.run
    if run.status != "running" or run.number != number:
        return Effects()
    _close(book, "failed", now)
    warning = f"batch.failed pool={book.pool_id} run={number} error={error!r}"
    return Effects(writes=[pool_record(book, now)], warnings=[warning])


def _job(book: PoolBook, attendees: list[RequestState]) -> BatchJob:
    return BatchJob(
        pool_id=book.pool_id,
        run=book.run.number,
        attendees=tuple(Attendee(request.user_id, request.profile) for request in attendees),
        config=book.config,
        seed=f"{book.pool_id}\x1f{book.run.number}",
    )


def _final(book: PoolBook, found: MatchFound, now: float) -> MatchState:
    return MatchState(partition=book.partition, changed_at=now, found=found)


def _close(book: PoolBook, status: str, now: float) -> None:
    run = book.run
    run.status = "completed" if status == "completed" else "failed"
    run.completed_at = now
    run.requests = []
    run.launched = False
