"""`batch` pools through `MatchEngine`: runs start, refuse, finish, fail and survive a crash."""

from __future__ import annotations

import pytest

from matching.batch import BatchJob
from matching.engine import Effects, MatchEngine
from models.codec import dumps
from models.messages import MatchRequest, PoolCommand, PoolConfig, Profile
from models.state import MatchState, PoolState, RequestState, StateRecord, decode_state

POOL = "ai-meetup"


def _config(**fields: object) -> PoolConfig:
    return PoolConfig.model_validate(
        {"mode": "batch", "request_ttl_s": None, "tables": 2, "seats_per_table": 2, **fields}
    )


class Event:
    """One batch pool driven like the worker drives it, with its state table."""

    def __init__(self, **config: object) -> None:
        self.engine = MatchEngine()
        self.table: dict[str, StateRecord] = {}
        self.apply(self.command("configure", config=_config(**config)))

    def apply(self, effects: Effects) -> Effects:
        self.table.update((key, decode_state(dumps(record))) for key, record in effects.writes)
        return effects

    def command(self, name: str, *, config: PoolConfig | None = None, now: float = 0.0) -> Effects:
        command = PoolCommand(command=name, pool_id=POOL, config=config)  # type: ignore[arg-type]
        return self.apply(self.engine.handle_command(command, partition=0, now=now))

    def join(self, user: str, interests: list[str], *, priority: int = 0, now: float = 1.0) -> None:
        message = MatchRequest(
            request_id=f"r-{user}",
            pool_id=POOL,
            user_id=user,
            profile=Profile(interests=interests),
            priority=priority,
        )
        self.apply(self.engine.handle_request(message, partition=0, now=now))

    def cancel(self, user: str, *, now: float) -> None:
        cancel = MatchRequest(type="cancel", request_id=f"r-{user}", pool_id=POOL, user_id=user)
        self.apply(self.engine.handle_request(cancel, partition=0, now=now))

    def finish(self, job: BatchJob, *, now: float) -> Effects:
        result = job.compute()
        return self.apply(self.engine.finish_batch(POOL, job.run, result, seconds=0.5, now=now))

    def pool(self) -> PoolState:
        return next(record for record in self.table.values() if isinstance(record, PoolState))

    def statuses(self) -> dict[str, tuple[str, str | None]]:
        return {
            record.user_id: (record.status, record.reason)
            for record in self.table.values()
            if isinstance(record, RequestState)
        }

    def matches(self) -> list[MatchState]:
        return [record for record in self.table.values() if isinstance(record, MatchState)]


def test_a_run_pairs_seats_and_completes() -> None:
    event = Event()
    for user, interests in [("ann", ["go"]), ("bob", ["rust"]), ("cid", ["go"]), ("dan", ["rust"])]:
        event.join(user, interests)

    started = event.command("start_matching", now=10.0)

    assert event.pool().status == "running" and event.pool().started_at == 10.0
    assert event.statuses()["ann"] == ("queued", None)
    (job,) = started.jobs
    assert [attendee.user_id for attendee in job.attendees] == ["ann", "bob", "cid", "dan"]

    event.finish(job, now=12.0)

    pool = event.pool()
    assert (pool.status, pool.completed_at, pool.run_requests) == ("completed", 12.0, [])
    assert pool.last_run is not None and (pool.last_run.pairs, pool.last_run.seated) == (2, 4)
    pairs = sorted(sorted(m.user_id for m in match.found.members) for match in event.matches())
    assert pairs == [["ann", "cid"], ["bob", "dan"]]
    for match in event.matches():
        assert match.final and match.found.mode == "batch"
        assert match.found.reasons and match.found.seats is not None
        assert {seat.table_no for seat in match.found.seats} in ({1}, {2})
    assert {status for status, _ in event.statuses().values()} == {"matched"}


def test_starting_again_while_running_is_refused_with_the_reason() -> None:
    event = Event()
    event.join("ann", ["go"])
    event.join("bob", ["go"])
    (job,) = event.command("start_matching", now=10.0).jobs

    again = event.command("start_matching", now=11.0)

    assert again.jobs == []
    assert again.warnings and "still in progress" in again.warnings[0]
    assert "run 1 (started 1970-01-01T00:00:10.000Z) is still in progress" in str(
        event.pool().refused
    )
    event.finish(job, now=12.0)
    assert event.pool().status == "completed"


@pytest.mark.parametrize("switch", ["pause", "close"])
def test_a_paused_or_closed_pool_refuses_to_start(switch: str) -> None:
    event = Event()
    event.command(switch)

    refused = event.command("start_matching", now=1.0)

    assert refused.jobs == [] and event.pool().status == "pending"
    assert "paused" in str(event.pool().refused) or "closed" in str(event.pool().refused)


def test_who_cannot_sit_ends_unseated_and_latecomers_wait() -> None:
    event = Event(tables=1, seats_per_table=2)
    for number, priority in enumerate([0, 0, 3]):
        event.join(f"u{number}", ["go"], priority=priority, now=float(number))
    (job,) = event.command("start_matching", now=10.0).jobs
    event.join("late", ["go"], now=11.0)

    event.finish(job, now=12.0)

    # priority 3 first, then arrival: u2 and u0 sit, u1 has no seat, late waits.
    assert event.statuses() == {
        "u0": ("matched", None),
        "u1": ("unseated", "no_seat"),
        "u2": ("matched", None),
        "late": ("queued", None),
    }


def test_a_lone_attendee_has_no_partner() -> None:
    event = Event()
    event.join("ann", ["go"])
    (job,) = event.command("start_matching", now=10.0).jobs

    event.finish(job, now=11.0)

    assert event.statuses() == {"ann": ("unseated", "no_partner")}


def test_who_leaves_during_a_run_is_left_out_and_their_partner_waits() -> None:
    event = Event()
    for user, interests in [("ann", ["go"]), ("bob", ["go"]), ("cid", ["rust"]), ("dan", ["rust"])]:
        event.join(user, interests)
    (job,) = event.command("start_matching", now=10.0).jobs
    event.cancel("bob", now=10.5)

    event.finish(job, now=12.0)

    assert event.statuses()["ann"] == ("queued", None)
    assert event.statuses()["bob"] == ("cancelled", None)
    assert [sorted(m.user_id for m in match.found.members) for match in event.matches()] == [
        ["cid", "dan"]
    ]
    assert event.pool().last_run is not None and event.pool().last_run.pairs == 1


def test_a_stale_or_failed_run_changes_nothing_but_its_status() -> None:
    event = Event()
    event.join("ann", ["go"])
    event.join("bob", ["go"])
    (job,) = event.command("start_matching", now=10.0).jobs

    failed = event.apply(event.engine.fail_batch(POOL, job.run, "boom", now=11.0))
    late = event.finish(job, now=12.0)

    assert event.pool().status == "failed" and failed.warnings
    assert late.writes == []
    assert {status for status, _ in event.statuses().values()} == {"queued"}


def test_a_run_interrupted_by_a_crash_is_computed_again_with_the_same_seed() -> None:
    event = Event()
    for user, interests in [("ann", ["go"]), ("bob", ["rust"]), ("cid", ["go"])]:
        event.join(user, interests)
    (job,) = event.command("start_matching", now=10.0).jobs

    recovered = MatchEngine()
    recovered.load(event.table.values())
    (again,) = recovered.tick(partition=0, now=11.0).jobs

    assert again == job
    assert recovered.tick(partition=0, now=12.0).jobs == []  # handed out once
    event.engine = recovered
    event.finish(again, now=13.0)
    assert event.pool().status == "completed"
