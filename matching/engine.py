"""The matchmaker: pure state transitions from input messages to state records.

`MatchEngine` has no I/O and no clock of its own: the caller passes `now` and the
input partition, applies the returned `Effects.writes` to the state table (in
order) and sends `Effects.notices`. Everything it decides is reproducible from
its inputs, which is what lets the property tests drive it directly.

Pools match on arrival (`pair`, `group`: `matching.arrival`), keep top-K lists
(`recommend`: `matching.recommend_pool`) or pair everyone at `start_matching`
(`batch`: `matching.batch_pool`, whose jobs the caller computes off the event loop).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from matching.arrival import find_partners, form_match
from matching.batch import BatchResult
from matching.batch_pool import fail_run, finish_run, resume_run, start_run
from matching.pool import PoolBook, RunProgress
from matching.profiles import ProfileDirectory
from matching.recommend_pool import RecommendLists, list_settings
from matching.records import Effects, end_request, pool_record
from models.codec import utc_now_iso
from models.messages import (
    MatchConfirm,
    MatchRecommendations,
    MatchRequest,
    MatchStatus,
    PoolCommand,
    PoolConfig,
    Profile,
    ProfileChange,
)
from models.state import (
    MatchState,
    PoolState,
    ProfileState,
    RecommendationState,
    RequestState,
    StateRecord,
    share_repeated_values,
    state_key,
)

__all__ = ["Effects", "MatchEngine", "MisroutedError"]

_MATCHING_MODES = frozenset({"pair", "group"})


class MisroutedError(ValueError):
    """A message for a pool arrived on another partition than the pool's (bad key)."""


class MatchEngine:
    """Every pool owned by this worker, with the rules of CONTRACT section 1.

    Example:
        >>> engine = MatchEngine()
        >>> ask = lambda rid, uid: MatchRequest(request_id=rid, pool_id="p", user_id=uid)
        >>> _ = engine.handle_request(ask("r-1", "u-1"), partition=0, now=0.0)
        >>> effects = engine.handle_request(ask("r-2", "u-2"), partition=0, now=1.0)
        >>> [record.kind for _, record in effects.writes]
        ['match', 'request', 'request']
    """

    def __init__(self) -> None:
        self.pools: dict[str, PoolBook] = {}
        self._pools_by_partition: dict[int, list[PoolBook]] = {}
        """Ticks arrive per partition; this spares each one a walk over every pool."""
        self.profiles = ProfileDirectory()
        self._unindexed: deque[str] = deque()
        """Pools a recovery left to index later (`index_next_pool`), by pool_id."""

    # -- recovery -----------------------------------------------------------------

    def load(self, records: Iterable[StateRecord]) -> None:
        """Replace all in-memory state with the records of the state table."""
        self.pools.clear()
        self._pools_by_partition.clear()
        self._unindexed.clear()
        requests: list[RequestState] = []
        profiles: list[ProfileState] = []
        lists: dict[str, dict[str, MatchRecommendations]] = {}
        # A crash can land part of one input's writes: a match, but not every member's
        # record. The match is the decision; members are reconciled to it below.
        taken: dict[tuple[str, str], MatchState] = {}
        for record in records:
            if isinstance(record, PoolState):
                book = self._book(record.pool_id, record.partition)
                book.reindex(record.config)
                book.paused, book.closed = record.paused, record.closed
                book.run = _run_of(record)
            elif isinstance(record, RequestState):
                requests.append(record)
            elif isinstance(record, MatchState) and record.state != "cancelled":
                if record.state == "proposed":
                    book = self._book(record.found.pool_id, record.partition)
                    book.proposals[record.found.match_id] = record
                for member in record.found.members:
                    taken[(record.found.pool_id, member.request_id)] = record
            elif isinstance(record, RecommendationState):
                stored = record.recommendations
                lists.setdefault(stored.pool_id, {})[stored.user_id] = stored
            elif isinstance(record, ProfileState):
                profiles.append(record)
        self.profiles.load(profiles)
        for request in sorted(requests, key=lambda item: item.queued_at):
            book = self._book(request.pool_id, request.partition)
            book.index_deferred = True
            book.known_requests.add(request.request_id)
            if request.profile_only:
                request = request.model_copy(update={"profile_only": False})
            if request.active:
                repaired = _reconciled(request, taken.get((request.pool_id, request.request_id)))
                if repaired is not request:
                    request = repaired
                    book.repairs.append(request)
            if request.status == "proposed":
                book.proposed[request.request_id] = request
                book.active_by_user[request.user_id] = request.request_id
            elif request.active:
                book.add_waiting(request)
        for (pool_id, request_id), match in taken.items():
            # The books were emptied above, so a book knows exactly the requests loaded.
            known = self.pools.get(pool_id)
            if known is None or request_id not in known.known_requests:
                self._book(pool_id, match.partition).unrecorded[request_id] = match
        for book in self.pools.values():
            if book.index_deferred:
                self._unindexed.append(book.pool_id)
            if book.config.mode == "recommend":
                book.lists = RecommendLists.rebuild(
                    pool_id=book.pool_id,
                    partition=book.partition,
                    config=book.config,
                    active=[(r.user_id, r.profile, r.priority) for r in book.waiting.values()],
                    stored=lists.get(book.pool_id, {}),
                )

    @property
    def unindexed_pools(self) -> int:
        """Pools a recovery left to index; some may have been indexed by a search since."""
        return len(self._unindexed)

    def index_next_pool(self) -> bool:
        """Index the partners of one pool a recovery left unindexed; False once none is left.

        Building the partner indexes was about a third of a rebuild, so `load` leaves
        it out and the worker takes input sooner: a pool's first search indexes it,
        and the worker calls this between inputs until every pool is done.
        """
        while self._unindexed:
            book = self.pools.get(self._unindexed.popleft())
            if book is not None and book.index_deferred:
                book.index_now()
                return True
        return False

    # -- inputs -------------------------------------------------------------------

    def handle_request(self, message: MatchRequest, *, partition: int, now: float) -> Effects:
        """Apply a `match.request` message (a request or a cancel).

        Raises:
            MisroutedError: the pool lives on another partition.
        """
        effects = self._apply_request(message, partition, now)
        if message.type == "request":
            effects.replay_safe = message.request_id in self.pools[message.pool_id].known_requests
        return effects

    def _apply_request(self, message: MatchRequest, partition: int, now: float) -> Effects:
        book = self._book(message.pool_id, partition)
        effects = _expire_due(book, now)
        if message.type == "cancel":
            effects.extend(self._cancel(book, message, now))
            return effects
        if message.request_id in book.known_requests:
            return effects
        request = self._new_request(book, message, now)
        match = book.unrecorded.pop(message.request_id, None)
        if match is not None:
            # Redelivered after a crash that stored its match but not its own record.
            settled = _settled(request, match)
            book.known_requests.add(settled.request_id)
            if settled.status == "proposed":
                book.proposed[settled.request_id] = settled
                book.active_by_user[settled.user_id] = settled.request_id
            effects.writes.append((state_key("r", book.pool_id, settled.request_id), settled))
            return effects
        if book.closed:
            effects.extend(self._refuse(book, request, "pool_closed", now))
            return effects
        previous_id = book.active_by_user.get(message.user_id)
        if previous_id is not None:
            effects.extend(
                self._leave(
                    book, previous_id, "superseded", f"replaced by {message.request_id}", now
                )
            )
        effects.extend(self._place(book, request, now))
        effects.writes.extend(_lists_due(book, now))
        return effects

    def handle_command(self, command: PoolCommand, *, partition: int, now: float) -> Effects:
        """Apply a `pool.command` message."""
        book = self._book(command.pool_id, partition)
        effects = _expire_due(book, now)
        match command.command:
            case "configure":
                assert command.config is not None  # the model refuses configure without it
                before = book.config
                book.reindex(command.config)
                book.plan_next_sweep(now)
                effects.writes.append(pool_record(book, now))
                effects.writes.extend(_follow_mode(book, before, now))
                effects.extend(self._sweep(book, now))
            case "pause":
                book.paused = True
                effects.writes.append(pool_record(book, now))
            case "resume":
                book.paused = False
                effects.writes.append(pool_record(book, now))
                effects.extend(self._sweep(book, now))
            case "close":
                book.closed = True
                effects.writes.append(pool_record(book, now))
                effects.extend(self._end_all_waiting(book, "expired", "pool_closed", now))
            case "clear":
                effects.extend(self._end_all_waiting(book, "cancelled", "cleared", now))
            case "start_matching" if book.config.mode == "batch":
                effects.extend(start_run(book, now))
            case "rematch" if book.lists is not None:
                effects.writes.extend(book.lists.rematch(book.config, now, paused=book.paused))
            case "start_matching" | "rematch":
                effects.extend(self._sweep(book, now))
        if book.lists is not None:
            effects.writes.extend(book.lists.drain(now, paused=book.paused))
        return effects

    def handle_confirm(self, message: MatchConfirm, *, partition: int, now: float) -> Effects:
        """Apply a `match.confirm` message: a member accepts or declines a proposal."""
        book = self._book(message.pool_id, partition)
        effects = _expire_due(book, now)
        proposal = book.proposals.get(message.match_id)
        member = None
        if proposal is not None:
            member = next((m for m in proposal.found.members if m.user_id == message.user_id), None)
        if proposal is None or member is None:
            effects.notices.append(
                MatchStatus(
                    request_id=member.request_id if member is not None else "",
                    pool_id=message.pool_id,
                    user_id=message.user_id,
                    status="rejected",
                    match_id=message.match_id,
                    reason="not_proposed" if proposal is None else "not_member",
                    about="confirm",
                    at=utc_now_iso(now),
                )
            )
            return effects
        if not message.accept:
            effects.extend(self._leave(book, member.request_id, "declined", None, now))
            return effects
        if proposal.answers.get(member.request_id) is True:
            return effects  # the same answer again changes nothing
        answers = {**proposal.answers, member.request_id: True}
        if len(answers) < len(proposal.found.members):
            updated = proposal.model_copy(update={"answers": answers, "changed_at": now})
            book.proposals[message.match_id] = updated
            effects.writes.append((state_key("m", book.pool_id, message.match_id), updated))
            return effects
        effects.extend(_finish_proposal(book, proposal, answers, now))
        return effects

    def handle_profile(self, change: ProfileChange, *, partition: int, now: float) -> Effects:
        """Apply a profile change to this partition: its copy, and the user's active requests.

        A waiting request in a `pair`/`group` pool is matched again with the new
        profile; in a `recommend` pool the user's list and the lists that rank them
        are redone at the next drain; proposals and batch runs keep the profile they
        started with.
        """
        record = self.profiles.offer(change, partition=partition, now=now)
        if record is None:
            return Effects()
        effects = Effects(writes=[record])
        for book in self._pools_by_partition.get(partition, []):
            request_id = book.active_by_user.get(change.user_id)
            if request_id is not None:
                effects.extend(_expire_due(book, now))
                effects.extend(self._reprofile(book, request_id, change.profile, now))
                effects.writes.extend(_lists_due(book, now))
        return effects

    def tick(self, *, partition: int, now: float) -> Effects:
        """Time passes on one partition: expire requests, match those that relaxed,
        apply queued list changes, hand out batch runs recovered mid-way.

        Every pool the partition ever had is visited, most of them with nothing due,
        so each step is checked before anything is built for it: with an empty result
        built for every pool, ticking each of 8 partitions once took 6.6 ms for 5,200
        idle pools, and 1.2 ms with the checks.
        """
        effects = Effects()
        for book in self._pools_by_partition.get(partition, []):
            if book.repairs:
                effects.writes.extend(
                    (state_key("r", book.pool_id, r.request_id), r) for r in book.repairs
                )
                book.repairs.clear()
            if book.expiry_due(now):
                effects.extend(_expire_due(book, now))
            if book.proposals:
                for proposal in list(book.proposals.values()):
                    if proposal.deadline is not None and proposal.deadline <= now:
                        effects.extend(self._time_out(book, proposal, now))
            if now >= book.next_sweep_at:
                effects.extend(self._sweep(book, now))
            if book.lists is not None:
                effects.writes.extend(book.lists.drain(now, paused=book.paused))
            job = resume_run(book)
            if job is not None:
                effects.jobs.append(job)
        return effects

    def finish_batch(
        self, pool_id: str, run: int, result: BatchResult, *, seconds: float, now: float
    ) -> Effects:
        """Apply a computed `start_matching` run; call it while handling an input of the
        pool's partition (a tick), so its writes land in that partition's changelog."""
        book = self.pools.get(pool_id)
        if book is None:
            return Effects()
        return finish_run(book, run, result, seconds=seconds, now=now)

    def fail_batch(self, pool_id: str, run: int, error: str, *, now: float) -> Effects:
        """Record that computing a run failed; its requests keep waiting."""
        book = self.pools.get(pool_id)
        return Effects() if book is None else fail_run(book, run, error, now)

    # -- rules --------------------------------------------------------------------

    def _book(self, pool_id: str, partition: int) -> PoolBook:
        book = self.pools.get(pool_id)
        if book is None:
            book = self.pools[pool_id] = PoolBook(
                pool_id=pool_id, partition=partition, config=PoolConfig()
            )
            self._pools_by_partition.setdefault(partition, []).append(book)
        elif book.partition != partition:
            raise MisroutedError(
                f"pool {pool_id!r} lives on partition {book.partition}, message arrived on "
                f"{partition}: input messages must be keyed by pool_id"
            )
        return book

    def _new_request(self, book: PoolBook, message: MatchRequest, now: float) -> RequestState:
        ttl = message.ttl_s if message.ttl_s is not None else book.config.request_ttl_s
        request = RequestState(
            partition=book.partition,
            changed_at=now,
            request_id=message.request_id,
            pool_id=message.pool_id,
            user_id=message.user_id,
            criteria=message.criteria,
            # Without a profile of its own, a request takes the user's stored one.
            profile=message.profile or self.profiles.get(message.user_id),
            priority=message.priority,
            status="queued",
            queued_at=now,
            expires_at=None if ttl is None else now + ttl,
            created_at=None if message.created_at is None else message.created_at.isoformat(),
        )
        share_repeated_values(request)
        return request

    def _refuse(self, book: PoolBook, request: RequestState, reason: str, now: float) -> Effects:
        book.known_requests.add(request.request_id)
        return Effects(writes=[end_request(request, "rejected", reason, now)])

    def _cancel(self, book: PoolBook, message: MatchRequest, now: float) -> Effects:
        request = book.waiting.get(message.request_id) or book.proposed.get(message.request_id)
        reason = None
        if request is None:
            reason = "not_active"
        elif request.user_id != message.user_id:
            reason = "not_owner"
        if reason is not None:
            notice = MatchStatus(
                request_id=message.request_id,
                pool_id=message.pool_id,
                user_id=message.user_id,
                status="rejected",
                reason=reason,
                about="cancel",
                at=utc_now_iso(now),
            )
            return Effects(notices=[notice])
        return self._leave(book, message.request_id, "cancelled", None, now)

    def _leave(
        self, book: PoolBook, request_id: str, status: str, reason: str | None, now: float
    ) -> Effects:
        """End an active request; if it was in a proposal, requeue the other members."""
        waiting = book.remove_waiting(request_id)
        if waiting is not None:
            return Effects(writes=[end_request(waiting, status, reason, now)])
        request = book.proposed.pop(request_id, None)
        if request is None:
            return Effects()
        if book.active_by_user.get(request.user_id) == request_id:
            del book.active_by_user[request.user_id]
        assert request.match_id is not None
        proposal = book.proposals.pop(request.match_id, None)
        if proposal is None:
            # Reconciled at load, so only a bug gets here; end the request all the same.
            return Effects(writes=[end_request(request, status, reason, now)])
        effects = Effects(writes=[_cancelled(book, proposal, now)])
        effects.writes.append(
            end_request(request, status, reason, now, match_id=proposal.found.match_id)
        )
        for member in proposal.found.members:
            if member.request_id != request_id:
                effects.extend(self._requeue(book, member.request_id, f"partner {status}", now))
        return effects

    def _time_out(self, book: PoolBook, proposal: MatchState, now: float) -> Effects:
        """Who accepted waits again; who did not answer ends `expired`."""
        del book.proposals[proposal.found.match_id]
        effects = Effects(writes=[_cancelled(book, proposal, now)])
        for member in proposal.found.members:
            if proposal.answers.get(member.request_id):
                effects.extend(self._requeue(book, member.request_id, "confirmation_timeout", now))
            else:
                request = _withdraw(book, member.request_id)
                if request is None:
                    continue
                if book.active_by_user.get(request.user_id) == member.request_id:
                    del book.active_by_user[request.user_id]
                effects.writes.append(
                    end_request(
                        request, "expired", "confirmation_timeout", now, match_id=request.match_id
                    )
                )
        return effects

    def _requeue(self, book: PoolBook, request_id: str, reason: str, now: float) -> Effects:
        """Back to waiting with the original wait time, so ahead of newer requests."""
        request = _withdraw(book, request_id)
        if request is None:
            return Effects()
        lifetime = None if request.expires_at is None else request.expires_at - request.queued_at
        expires_at = request.expires_at
        if expires_at is not None and lifetime is not None and expires_at <= now:
            expires_at = now + lifetime  # the proposal used up their time; give it back
        requeued = request.model_copy(
            update={
                "status": "requeued",
                "reason": reason,
                "match_id": None,
                "expires_at": expires_at,
                "changed_at": now,
            }
        )
        effects = Effects(writes=[(state_key("r", book.pool_id, request_id), requeued)])
        if not book.paused and book.config.mode in _MATCHING_MODES:
            partners = find_partners(book, requeued, now)
            if partners is not None:
                effects.extend(form_match(book, requeued, partners, now))
                return effects
        book.add_waiting(requeued)
        return effects

    def _place(self, book: PoolBook, request: RequestState, now: float) -> Effects:
        """Match `request` now if the pool allows, else queue it if there is room.

        `max_waiting` caps the requests that wait, so one that matches on
        arrival is never refused for a full pool.
        """
        book.known_requests.add(request.request_id)
        if not book.paused and book.config.mode in _MATCHING_MODES:
            partners = find_partners(book, request, now)
            if partners is not None:
                return form_match(book, request, partners, now)
        limit = book.config.max_waiting
        if limit is not None and len(book.waiting) >= limit:
            return self._refuse(book, request, "pool_full", now)
        book.add_waiting(request)
        return Effects(writes=[(state_key("r", book.pool_id, request.request_id), request)])

    def _sweep(self, book: PoolBook, now: float) -> Effects:
        """Try to match every waiting request, longest-waiting and most urgent first."""
        effects = Effects()
        if book.paused or book.config.mode not in _MATCHING_MODES:
            return effects
        order = sorted(book.waiting.values(), key=lambda item: (-item.priority, item.queued_at))
        for request in order:
            if request.request_id not in book.waiting:
                continue  # already taken as someone's partner in this sweep
            book.remove_waiting(request.request_id)
            partners = find_partners(book, request, now)
            if partners is None:
                book.add_waiting(request)
            else:
                effects.extend(form_match(book, request, partners, now))
        book.plan_next_sweep(now)
        return effects

    def _reprofile(self, book: PoolBook, request_id: str, profile: Profile, now: float) -> Effects:
        request = book.waiting.get(request_id) or book.proposed.get(request_id)
        if request is None or request.profile == profile:
            return Effects()
        updated = request.model_copy(update={"profile": profile, "changed_at": now})
        key = state_key("r", book.pool_id, request_id)
        effects = Effects(writes=[(key, updated.model_copy(update={"profile_only": True}))])
        if request_id in book.proposed:
            book.proposed[request_id] = updated
            return effects
        book.remove_waiting(request_id)
        if not book.paused and book.config.mode in _MATCHING_MODES:
            partners = find_partners(book, updated, now)
            if partners is not None:
                effects.extend(form_match(book, updated, partners, now))
                return effects
        book.add_waiting(updated)
        return effects

    def _end_all_waiting(self, book: PoolBook, status: str, reason: str, now: float) -> Effects:
        """End every active request, those in open proposals included."""
        effects = Effects()
        for request_id in list(book.waiting):
            request = book.remove_waiting(request_id)
            assert request is not None
            effects.writes.append(end_request(request, status, reason, now))
        for proposal in list(book.proposals.values()):
            del book.proposals[proposal.found.match_id]
            effects.writes.append(_cancelled(book, proposal, now))
            for member in proposal.found.members:
                request = _withdraw(book, member.request_id)
                if request is None:
                    continue
                book.active_by_user.pop(request.user_id, None)
                effects.writes.append(
                    end_request(request, status, reason, now, match_id=request.match_id)
                )
        return effects


def _expire_due(book: PoolBook, now: float) -> Effects:
    """End requests past their TTL first, so they are never matched late."""
    return Effects(
        writes=[end_request(request, "expired", "ttl", now) for request in book.pop_expired(now)]
    )


def _lists_due(book: PoolBook, now: float) -> list[tuple[str, RecommendationState]]:
    """A recommend pool's backlog, drained before the next tick when it is large."""
    return [] if book.lists is None else book.lists.due(now, paused=book.paused)


def _follow_mode(
    book: PoolBook, before: PoolConfig, now: float
) -> list[tuple[str, RecommendationState]]:
    """Start, redo or retire the top-K lists when a configure changes what they depend on."""
    config = book.config
    if config.mode != "recommend":
        if book.lists is None:
            return []
        writes = book.lists.retire(now)
        book.lists = None
        return writes
    if book.lists is None:
        book.lists = RecommendLists(pool_id=book.pool_id, partition=book.partition, config=config)
        for request in sorted(book.waiting.values(), key=lambda item: item.queued_at):
            book.lists.join(request.user_id, request.profile, priority=request.priority)
        return []  # the command's drain publishes them
    if list_settings(before) != list_settings(config):
        return book.lists.rematch(config, now, paused=book.paused)
    return []


def _run_of(record: PoolState) -> RunProgress:
    return RunProgress(
        status=record.status,
        started_at=record.started_at,
        completed_at=record.completed_at,
        number=record.run,
        requests=list(record.run_requests),
        last=record.last_run,
        refused=record.refused,
    )


def _finish_proposal(
    book: PoolBook, proposal: MatchState, answers: dict[str, bool], now: float
) -> Effects:
    """Everyone accepted: the match is final and its members matched."""
    match_id = proposal.found.match_id
    del book.proposals[match_id]
    final = proposal.model_copy(
        update={"state": "final", "answers": answers, "deadline": None, "changed_at": now}
    )
    effects = Effects(writes=[(state_key("m", book.pool_id, match_id), final)])
    for member in proposal.found.members:
        if member.request_id in book.unrecorded:
            # Its own record is still to come (redelivered): it is settled as matched then.
            book.unrecorded[member.request_id] = final
            continue
        request = book.proposed.pop(member.request_id, None)
        if request is None:
            continue
        if book.active_by_user.get(request.user_id) == member.request_id:
            del book.active_by_user[request.user_id]
        effects.writes.append(end_request(request, "matched", None, now, match_id=match_id))
    return effects


def _withdraw(book: PoolBook, request_id: str) -> RequestState | None:
    """Take a member out of a proposal that ends without a match.

    None when the member is not waiting on it: a crash stored the proposal but not
    the member's own record (its input is redelivered and must now be placed
    afresh), or ended the member without ending the proposal.
    """
    book.unrecorded.pop(request_id, None)
    return book.proposed.pop(request_id, None)


def _cancelled(book: PoolBook, proposal: MatchState, now: float) -> tuple[str, MatchState]:
    cancelled = proposal.model_copy(update={"state": "cancelled", "changed_at": now})
    return state_key("m", book.pool_id, proposal.found.match_id), cancelled


def _reconciled(request: RequestState, match: MatchState | None) -> RequestState:
    """An active request as the stored matches say it is (`request` itself if it agrees).

    A crash can store some writes of one input and not others: a match without
    its members' records, or a member proposed in a match whose record never
    landed or was cancelled without the member's requeue.
    """
    if match is not None:
        settled = _settled(request, match)
        if (settled.status, settled.match_id) == (request.status, request.match_id):
            return request
        return settled
    if request.status == "proposed":
        return request.model_copy(
            update={"status": "requeued", "reason": "proposal_cancelled", "match_id": None}
        )
    return request


def _settled(request: RequestState, match: MatchState) -> RequestState:
    """`request` as the stored `match` says it is: proposed in it, or matched by it."""
    return request.model_copy(
        update={
            "status": "matched" if match.final else "proposed",
            "match_id": match.found.match_id,
            "reason": None,
            "expires_at": None if match.final else request.expires_at,
            "changed_at": match.changed_at,
        }
    )
