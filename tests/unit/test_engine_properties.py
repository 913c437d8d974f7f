"""Invariants of `MatchEngine` under random sequences of inputs (hypothesis).

A `World` drives the engine like the worker does: every input gets `now` and the
pool's partition, and the writes go, in order, into a `table` dict (the state table;
a key keeps only its last record). After every step the table and the writes are
checked against CONTRACT section 1.6:

1. no request is in two matches, and the members of a match are different users;
2. a request record never changes once terminal, and after closing every pool every
   accepted request has exactly one terminal status;
3. members agree on every `match_on` key, unless both had waited `relax_after_s[key]`;
4. `score_pair` is symmetric and in [0, 1], and a pair's match score is its pair score;
5. a crash at any point (a fresh engine `load`-ed from the table) keeps 1-3 true and,
   stronger, is invisible: the recovered engine answers like one that never crashed.

Besides: a duplicate request_id is a no-op, a refused cancel changes nothing, nobody is
matched past their TTL, and the engine's waiting sets always equal the table's active
requests (which is what makes recovery from the table possible at all).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from matching.engine import Effects, MatchEngine
from matching.scoring import score_pair
from models.codec import dumps
from models.messages import (
    TERMINAL_STATUSES,
    MatchFound,
    MatchRequest,
    PoolCommand,
    PoolConfig,
    Profile,
)
from models.state import (
    ACTIVE_STATUSES,
    MatchState,
    PoolState,
    RequestState,
    StateRecord,
    decode_state,
    state_key,
)

PARTITION_OF = {"pool-a": 0, "pool-b": 1}
USERS = ["u-0", "u-1", "u-2", "u-3", "u-4"]
KEYS = ["level", "topic"]
SETTINGS = settings(max_examples=150, deadline=None)

# -- inputs ---------------------------------------------------------------------------

# A small time step set, so that TTLs (20 s) and relax thresholds (10 s, 30 s) are crossed
# often, and sometimes exactly.
_dt = st.sampled_from([0.0, 0.0, 1.0, 5.0, 10.0, 20.0, 30.0])
_pools = st.sampled_from(sorted(PARTITION_OF))
_criteria = st.fixed_dictionaries(
    {},
    optional={
        "level": st.sampled_from(["Easy", "Hard", None]),
        "topic": st.sampled_from(["arrays", "graphs"]),
    },
)
_profiles = st.one_of(
    st.none(),
    st.builds(
        Profile,
        interests=st.lists(st.sampled_from(["rust", "go", "chess"]), max_size=2),
        embedding=st.one_of(
            st.none(), st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0]), min_size=2, max_size=2)
        ),
    ),
)
_configs = st.builds(
    PoolConfig,
    mode=st.sampled_from(["pair", "group"]),
    group_size=st.integers(2, 4),
    match_on=st.lists(st.sampled_from(KEYS), unique=True, max_size=2),
    relax_after_s=st.dictionaries(st.sampled_from(KEYS), st.sampled_from([0.0, 10.0, 30.0])),
    min_score=st.sampled_from([0.0, 0.0, 0.4]),
    chaos=st.sampled_from([0.0, 5.0, 10.0]),
    request_ttl_s=st.sampled_from([None, 20.0, 300.0]),
    max_waiting=st.sampled_from([None, None, 3]),
)


@dataclass(frozen=True)
class Ask:
    pool: str
    user: str
    criteria: dict[str, Any]
    profile: Profile | None
    priority: int
    ttl_s: float | None
    dt: float


@dataclass(frozen=True)
class Resend:
    """The same request message again (an at-least-once redelivery)."""

    pick: int
    dt: float


@dataclass(frozen=True)
class Cancel:
    pick: int
    by_owner: bool
    dt: float


@dataclass(frozen=True)
class Command:
    pool: str
    name: str
    config: PoolConfig | None
    dt: float


@dataclass(frozen=True)
class Tick:
    partition: int
    dt: float


@dataclass(frozen=True)
class Crash:
    """The worker dies; a new one rebuilds the engine from the state table."""


Op = Ask | Resend | Cancel | Command | Tick | Crash

_asks = st.builds(
    Ask,
    pool=_pools,
    user=st.sampled_from(USERS),
    criteria=_criteria,
    profile=_profiles,
    priority=st.integers(0, 3),
    ttl_s=st.sampled_from([None, None, 15.0]),
    dt=_dt,
)
# Close is rare: after it a pool only refuses, which explores nothing new.
_commands = st.builds(
    Command,
    pool=_pools,
    name=st.sampled_from(["pause", "resume", "clear", "start_matching", "rematch"] * 2 + ["close"]),
    config=st.none(),
    dt=_dt,
)
_configures = st.builds(Command, pool=_pools, name=st.just("configure"), config=_configs, dt=_dt)
_ticks = st.builds(Tick, partition=st.sampled_from([0, 1]), dt=_dt)
# How often each kind of input comes: mostly requests and time, some of everything else.
_MIX: list[tuple[int, st.SearchStrategy[Op]]] = [
    (8, _asks),
    (1, st.builds(Resend, pick=st.integers(0, 50), dt=_dt)),
    (2, st.builds(Cancel, pick=st.integers(0, 50), by_owner=st.booleans(), dt=_dt)),
    (2, _commands),
    (1, _configures),
    (4, _ticks),
    (1, st.just(Crash())),
]
_ops: st.SearchStrategy[Op] = st.sampled_from(
    [strategy for weight, strategy in _MIX for _ in range(weight)]
).flatmap(lambda strategy: strategy)
_scenarios = st.lists(_ops, min_size=10, max_size=60)
_setups = st.fixed_dictionaries({pool: st.one_of(st.none(), _configs) for pool in PARTITION_OF})
# Pools where requests disagree and wait long enough to relax: invariant 3 at work.
_relaxing = st.builds(
    PoolConfig,
    mode=st.sampled_from(["pair", "group"]),
    group_size=st.integers(2, 3),
    match_on=st.just(KEYS),
    relax_after_s=st.dictionaries(
        st.sampled_from(KEYS), st.sampled_from([0.0, 10.0, 30.0]), min_size=1
    ),
    chaos=st.sampled_from([0.0, 10.0]),
    request_ttl_s=st.sampled_from([None, 300.0]),
)
_relaxing_setups = st.fixed_dictionaries({pool: _relaxing for pool in PARTITION_OF})


# -- the world ------------------------------------------------------------------------


@dataclass
class World:
    """One engine, its table, and the bookkeeping the invariants need."""

    engine: MatchEngine = field(default_factory=MatchEngine)
    table: dict[str, StateRecord] = field(default_factory=dict)
    now: float = 1_000.0
    sent: list[MatchRequest] = field(default_factory=list)
    match_of: dict[str, str] = field(default_factory=dict)
    """request key -> the match_id it ended in."""
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _touched: set[str] = field(default_factory=set)
    """Pools the current input reached."""

    def step(self, op: Op) -> Effects:
        """Apply one input and check every invariant; returns the effects."""
        self.now += getattr(op, "dt", 0.0)
        before = dict(self.table)
        self._touched = set()
        match op:
            case Ask():
                effects = self._ask(op)
            case Resend():
                effects = self._resend(op)
            case Cancel():
                effects = self._cancel(op, before)
            case Command():
                effects = self._command(op.pool, op.name, op.config)
            case Tick():
                self._touched = {p for p, part in PARTITION_OF.items() if part == op.partition}
                effects = self._apply(self.engine.tick(partition=op.partition, now=self.now))
                self.check_nobody_left_behind(op.partition)
            case Crash():
                self.crash()
                effects = Effects()
        self._check_step(before, effects)
        self._check_table()
        return effects

    def crash(self) -> None:
        # Through bytes, as the changelog holds them, so recovery sees what RocksDB sees.
        self.engine = MatchEngine()
        self.engine.load(decode_state(dumps(record)) for record in self.table.values())

    def finish(self) -> None:
        """Close every pool and let time run out: every request must have ended."""
        for pool in sorted(PARTITION_OF):
            self.step(Command(pool=pool, name="close", config=None, dt=1.0))
        for partition in sorted(set(PARTITION_OF.values())):
            self.step(Tick(partition=partition, dt=10**7))
        for key, record in self.table.items():
            if isinstance(record, RequestState):
                assert record.status in TERMINAL_STATUSES, (key, record.status)
        for pool_id, book in self.engine.pools.items():
            assert book.waiting == {}, pool_id

    # -- inputs ---------------------------------------------------------------------

    def _ask(self, op: Ask) -> Effects:
        message = MatchRequest(
            request_id=f"r-{next(self._ids)}",
            pool_id=op.pool,
            user_id=op.user,
            criteria=op.criteria,
            profile=op.profile,
            priority=op.priority,
            ttl_s=op.ttl_s,
        )
        self.sent.append(message)
        closed = self._pool(op.pool).closed
        effects = self._apply(self._handle(message))
        key = state_key("r", op.pool, message.request_id)
        # Every new request is accepted: written at least once, in the same step.
        assert key in {written for written, _ in _own_writes(effects)}
        if closed:
            record = self.table[key]
            assert isinstance(record, RequestState)
            assert (record.status, record.reason) == ("rejected", "pool_closed")
        return effects

    def _resend(self, op: Resend) -> Effects:
        if not self.sent:
            return Effects()
        effects = self._apply(self._handle(self.sent[op.pick % len(self.sent)]))
        # A duplicate is a no-op (beyond the TTL expiries any input performs first).
        assert _own_writes(effects) == [] and effects.notices == []
        return effects

    def _cancel(self, op: Cancel, before: dict[str, StateRecord]) -> Effects:
        if self.sent:
            target = self.sent[op.pick % len(self.sent)]
            pool, request_id, owner = target.pool_id, target.request_id, target.user_id
        else:
            pool, request_id, owner = "pool-a", "never-sent", "u-0"
        user = owner if op.by_owner else next(u for u in USERS if u != owner)
        message = MatchRequest(type="cancel", request_id=request_id, pool_id=pool, user_id=user)
        effects = self._apply(self._handle(message))

        record = before.get(state_key("r", pool, request_id))
        # A request whose TTL ran out is expired first, so it is no longer active.
        active = isinstance(record, RequestState) and record.active and not _due(record, self.now)
        own = _own_writes(effects)
        if active and op.by_owner:
            assert effects.notices == []
            assert [(key, getattr(r, "status", None)) for key, r in own] == [
                (state_key("r", pool, request_id), "cancelled")
            ]
        else:
            # A refused cancel changes nothing and is answered with a notice.
            assert own == []
            (notice,) = effects.notices
            assert (notice.status, notice.about) == ("rejected", "cancel")
            assert notice.reason == ("not_owner" if active else "not_active")
            assert (notice.request_id, notice.user_id) == (request_id, user)
        return effects

    def _command(self, pool: str, name: str, config: PoolConfig | None) -> Effects:
        command = PoolCommand(command=name, pool_id=pool, config=config)  # type: ignore[arg-type]
        self._touched = {pool}
        effects = self._apply(
            self.engine.handle_command(command, partition=PARTITION_OF[pool], now=self.now)
        )
        _own_writes(effects)  # expiries first
        return effects

    def _handle(self, message: MatchRequest) -> Effects:
        self._touched = {message.pool_id}
        return self.engine.handle_request(
            message, partition=PARTITION_OF[message.pool_id], now=self.now
        )

    def _apply(self, effects: Effects) -> Effects:
        for key, record in effects.writes:
            previous = self.table.get(key)
            if isinstance(previous, RequestState):
                # Invariant 2: once terminal, a request record is final.
                assert previous.status not in TERMINAL_STATUSES, (
                    f"{previous.request_id} rewritten after {previous.status}: {record!r}"
                )
            if isinstance(record, MatchState):
                assert previous is None, f"match {record.found.match_id} formed twice"
            if _is_ttl_expiry(record):
                # Expired for its TTL: it was waiting and its time had come.
                assert isinstance(previous, RequestState) and _due(previous, self.now), key
            assert record.partition == PARTITION_OF[_pool_of(key)]
            self.table[key] = record
        return effects

    # -- invariants -----------------------------------------------------------------

    def _pool(self, pool_id: str) -> PoolState:
        record = self.table.get(state_key("p", pool_id))
        if record is None:
            return PoolState(
                partition=PARTITION_OF[pool_id], changed_at=0, pool_id=pool_id, config=PoolConfig()
            )
        assert isinstance(record, PoolState)
        return record

    def _check_step(self, before: dict[str, StateRecord], effects: Effects) -> None:
        new_matches = [r.found for _, r in effects.writes if isinstance(r, MatchState)]
        for found in new_matches:
            self._check_match(found, before)
        matched_now = {f.match_id for f in new_matches}
        for _, record in effects.writes:
            if isinstance(record, RequestState):
                assert record.changed_at == self.now
                if record.status == "matched":
                    # Nobody is told `matched` without the match record beside it.
                    assert record.match_id in matched_now

    def _check_match(self, found: MatchFound, before: dict[str, StateRecord]) -> None:
        match_record = self.table[state_key("m", found.pool_id, found.match_id)]
        config = self._pool(found.pool_id).config
        assert isinstance(match_record, MatchState)
        members: list[RequestState] = []
        for member in found.members:
            key = state_key("r", found.pool_id, member.request_id)
            # Invariant 1: a request is in at most one match.
            assert key not in self.match_of, (
                f"{member.request_id} in {self.match_of.get(key)} and {found.match_id}"
            )
            self.match_of[key] = found.match_id
            record = self.table[key]
            assert isinstance(record, RequestState)
            assert (record.status, record.match_id) == ("matched", found.match_id)
            assert record.user_id == member.user_id
            earlier = before.get(key)
            # Only waiting requests (or the one arriving now) can be matched, in their time.
            assert earlier is None or (isinstance(earlier, RequestState) and earlier.active)
            assert not _due(record.model_copy(update={"status": "queued"}), self.now), key
            members.append(record)
        assert len({m.user_id for m in members}) == len(members), "a user twice in one match"
        assert len(members) == config.members_per_match
        assert config.mode in ("pair", "group")
        assert 0.0 <= found.score <= 1.0
        waited_at = match_record.changed_at
        # Invariant 3: every pair agrees on every match_on key it has not relaxed.
        for left, right in itertools.combinations(members, 2):
            assert _agree(config, left, right, waited_at), (left.criteria, right.criteria)
        if len(members) == 2:
            # Invariant 4, as the engine uses it: the pair's score, whichever side asked.
            left, right = members
            forward = score_pair(left.profile, right.profile, config.weights).score
            assert forward == score_pair(right.profile, left.profile, config.weights).score
            assert found.score == forward >= config.min_score

    def _check_table(self) -> None:
        """The engine's view agrees with the table (what a recovery would rebuild)."""
        active: dict[str, set[str]] = {pool: set() for pool in PARTITION_OF}
        users: dict[str, list[str]] = {pool: [] for pool in PARTITION_OF}
        for record in self.table.values():
            if isinstance(record, RequestState) and record.status in ACTIVE_STATUSES:
                active[record.pool_id].add(record.request_id)
                users[record.pool_id].append(record.user_id)
        for pool_id, request_ids in active.items():
            book = self.engine.pools.get(pool_id)
            assert set(book.waiting if book else ()) == request_ids, pool_id
            # A user has at most one active request per pool.
            assert len(users[pool_id]) == len(set(users[pool_id])), pool_id
            if self._pool(pool_id).closed:
                assert request_ids == set()
        # Whatever the input, the pools it reached hold nobody past their TTL.
        for record in self.table.values():
            if isinstance(record, RequestState) and record.pool_id in self._touched:
                assert not _due(record, self.now), record.request_id

    def check_nobody_left_behind(self, partition: int) -> None:
        """After a tick, a pair pool holds no two requests that could be matched now.

        Liveness: without it an engine that never matched would pass every other check.
        Only pairs, because group formation is greedy and may miss a possible group.
        """
        for pool_id, pool_partition in PARTITION_OF.items():
            pool = self._pool(pool_id)
            if pool_partition != partition or pool.paused or pool.config.mode != "pair":
                continue
            waiting = [
                record
                for record in self.table.values()
                if isinstance(record, RequestState) and record.pool_id == pool_id and record.active
            ]
            config = pool.config
            for left, right in itertools.combinations(waiting, 2):
                matchable = (
                    left.user_id != right.user_id
                    and _agree(config, left, right, self.now)
                    and score_pair(left.profile, right.profile, config.weights).score
                    >= config.min_score
                )
                assert not matchable, f"{left.request_id} and {right.request_id} left waiting"


def _agree(config: PoolConfig, left: RequestState, right: RequestState, now: float) -> bool:
    """CONTRACT 1.4: same value (or a missing one) on every match_on key, unless both
    have waited `relax_after_s[key]` by `now`."""
    for key in config.match_on:
        mine, theirs = left.criteria.get(key), right.criteria.get(key)
        if mine is None or theirs is None or mine == theirs:
            continue
        limit = config.relax_after_s.get(key)
        if limit is None or now - left.queued_at < limit or now - right.queued_at < limit:
            return False
    return True


def _due(record: RequestState, now: float) -> bool:
    """Active, with a TTL that has run out."""
    return record.active and record.expires_at is not None and record.expires_at <= now


def _is_ttl_expiry(record: StateRecord) -> bool:
    return (
        isinstance(record, RequestState) and record.status == "expired" and record.reason == "ttl"
    )


def _own_writes(effects: Effects) -> list[tuple[str, StateRecord]]:
    """The writes an input caused itself, after the TTL expiries every input does first."""
    count = 0
    while count < len(effects.writes) and _is_ttl_expiry(effects.writes[count][1]):
        count += 1
    own = effects.writes[count:]
    assert not any(_is_ttl_expiry(record) for _, record in own), "an expiry after other writes"
    return own


def _outcome(effects: Effects) -> tuple[dict[str, StateRecord], list[Any]]:
    """What an input changed, regardless of the order of independent writes.

    `clear` and `close` end waiting requests in the order of the in-memory dict, which
    a recovery rebuilds by `queued_at`; the table ends up the same either way.
    """
    writes = dict(effects.writes)
    assert len(writes) == len(effects.writes), "a key written twice by one input"
    return writes, effects.notices


def _pool_of(key: str) -> str:
    return key.split("\x1f")[1]


# -- properties -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(left=_profiles, right=_profiles, config=_configs)
def test_score_pair_is_symmetric_and_in_unit_interval(
    left: Profile | None, right: Profile | None, config: PoolConfig
) -> None:
    forward = score_pair(left, right, config.weights)
    backward = score_pair(right, left, config.weights)

    assert 0.0 <= forward.score <= 1.0
    assert forward.score == backward.score
    assert forward.reasons == backward.reasons


def _start(setup: dict[str, PoolConfig | None]) -> World:
    """A world whose pools start configured (or not: the default pair pool)."""
    world = World()
    for pool, config in setup.items():
        if config is not None:
            world.step(Command(pool=pool, name="configure", config=config, dt=0.0))
    return world


@SETTINGS
@given(setup=_setups, scenario=_scenarios)
def test_invariants_hold_for_any_sequence_of_inputs(
    setup: dict[str, PoolConfig | None], scenario: list[Op]
) -> None:
    world = _start(setup)
    for op in scenario:
        world.step(op)
    _describe(world)
    world.finish()


@SETTINGS
@given(setup=_relaxing_setups, scenario=_scenarios)
def test_invariants_hold_in_pools_that_relax(
    setup: dict[str, PoolConfig | None], scenario: list[Op]
) -> None:
    world = _start(setup)
    for op in scenario:
        # Keep the pools relaxing: a random reconfigure would mostly undo the setup.
        if not (isinstance(op, Command) and op.name == "configure"):
            world.step(op)
    _describe(world)
    world.finish()


def _describe(world: World) -> None:
    """Coverage notes for `--hypothesis-show-statistics`: are the interesting cases reached?"""
    found = [r.found for r in world.table.values() if isinstance(r, MatchState)]
    event(f"matches: {min(len(found), 3)}{'+' if len(found) >= 3 else ''}")
    event(f"steps: {len(world.sent) // 10 * 10}+ requests")
    if any(len(f.members) > 2 for f in found):
        event("a group match")
    if any(any(reason.startswith("relaxed") for reason in f.reasons) for f in found):
        event("a relaxed match")
    statuses = {r.status for r in world.table.values() if isinstance(r, RequestState)}
    for status in sorted(statuses):
        event(f"status {status}")


@SETTINGS
@given(setup=_setups, scenario=_scenarios, crash_at=st.integers(0, 60))
def test_a_crash_and_recovery_is_invisible(
    setup: dict[str, PoolConfig | None], scenario: list[Op], crash_at: int
) -> None:
    # Two worlds see the same inputs; one of them crashes and recovers at `crash_at`.
    steady, crashing = _start(setup), _start(setup)
    for index, op in enumerate(scenario):
        if index == crash_at % len(scenario):
            crashing.crash()
        if isinstance(op, Crash):
            crashing.step(op)  # more crashes, on one side only
            continue
        expected, actual = steady.step(op), crashing.step(op)
        assert _outcome(actual) == _outcome(expected), f"diverged at step {index}: {op}"
    assert crashing.table == steady.table
    crashing.finish()


@SETTINGS
@given(setup=_setups, scenario=_scenarios, replay_at=st.integers(0, 60))
def test_a_replay_safe_input_applied_again_after_a_recovery_changes_nothing(
    setup: dict[str, PoolConfig | None], scenario: list[Op], replay_at: int
) -> None:
    # Requests write no `InputMark` of their own, so after a restart the worker applies
    # again those between the last mark and the committed offset (`AppliedOffsets`).
    world = _start(setup)
    replay_safe: list[MatchRequest] = []
    for index, op in enumerate(scenario):
        if index == replay_at % len(scenario):
            world.crash()
            for message in replay_safe:
                effects = world._apply(world._handle(message))
                assert _own_writes(effects) == [] and effects.notices == [], message
        effects = world.step(op)
        if isinstance(op, Ask):
            assert effects.replay_safe
            replay_safe.append(world.sent[-1])
        elif isinstance(op, Resend) and world.sent:
            assert effects.replay_safe
        elif isinstance(op, Cancel | Command | Tick):
            assert not effects.replay_safe
    world.finish()
