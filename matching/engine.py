"""The matchmaker: pure state transitions from input messages to state records.

`MatchEngine` has no I/O and no clock of its own: the caller passes `now` and the
input partition, applies the returned `Effects.writes` to the state table (in
order) and sends `Effects.notices`. Everything it decides is reproducible from
its inputs, which is what lets the property tests drive it directly.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from matching.pool import PoolBook, same_criterion
from matching.scoring import ScoredPair, group_score, score_pair
from models.codec import utc_now_iso
from models.messages import (
    CriterionValue,
    MatchConfirm,
    MatchFound,
    MatchMember,
    MatchRequest,
    MatchStatus,
    PoolCommand,
    PoolConfig,
)
from models.state import MatchState, PoolState, RequestState, StateRecord, state_key

__all__ = ["Effects", "MatchEngine", "MisroutedError"]

_MATCHING_MODES = frozenset({"pair", "group"})


class MisroutedError(ValueError):
    """A message for a pool arrived on another partition than the pool's (bad key)."""


@dataclass
class Effects:
    """What one input caused: durable writes (in order) and stateless replies."""

    writes: list[tuple[str, StateRecord]] = field(default_factory=list)
    notices: list[MatchStatus] = field(default_factory=list)

    def extend(self, other: Effects) -> None:
        self.writes.extend(other.writes)
        self.notices.extend(other.notices)


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

    # -- recovery -----------------------------------------------------------------

    def load(self, records: Iterable[StateRecord]) -> None:
        """Replace all in-memory state with the records of the state table."""
        self.pools.clear()
        self._pools_by_partition.clear()
        requests: list[RequestState] = []
        for record in records:
            if isinstance(record, PoolState):
                book = self._book(record.pool_id, record.partition)
                book.reindex(record.config)
                book.paused, book.closed = record.paused, record.closed
            elif isinstance(record, RequestState):
                requests.append(record)
            elif isinstance(record, MatchState) and record.state == "proposed":
                book = self._book(record.found.pool_id, record.partition)
                book.proposals[record.found.match_id] = record
        for request in sorted(requests, key=lambda item: item.queued_at):
            book = self._book(request.pool_id, request.partition)
            book.known_requests.add(request.request_id)
            if request.status == "proposed":
                book.proposed[request.request_id] = request
                book.active_by_user[request.user_id] = request.request_id
            elif request.active:
                book.add_waiting(request)

    # -- inputs -------------------------------------------------------------------

    def handle_request(self, message: MatchRequest, *, partition: int, now: float) -> Effects:
        """Apply a `match.request` message (a request or a cancel).

        Raises:
            MisroutedError: the pool lives on another partition.
        """
        book = self._book(message.pool_id, partition)
        effects = _expire_due(book, now)
        if message.type == "cancel":
            effects.extend(self._cancel(book, message, now))
            return effects
        if message.request_id in book.known_requests:
            return effects
        request = self._new_request(book, message, now)
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
        return effects

    def handle_command(self, command: PoolCommand, *, partition: int, now: float) -> Effects:
        """Apply a `pool.command` message."""
        book = self._book(command.pool_id, partition)
        effects = _expire_due(book, now)
        match command.command:
            case "configure":
                assert command.config is not None  # the model refuses configure without it
                book.reindex(command.config)
                book.plan_next_sweep(now)
                effects.writes.append(_pool_record(book, now))
                effects.extend(self._sweep(book, now))
            case "pause":
                book.paused = True
                effects.writes.append(_pool_record(book, now))
            case "resume":
                book.paused = False
                effects.writes.append(_pool_record(book, now))
                effects.extend(self._sweep(book, now))
            case "close":
                book.closed = True
                effects.writes.append(_pool_record(book, now))
                effects.extend(self._end_all_waiting(book, "expired", "pool_closed", now))
            case "clear":
                effects.extend(self._end_all_waiting(book, "cancelled", "cleared", now))
            case "start_matching" | "rematch":
                effects.extend(self._sweep(book, now))
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

    def tick(self, *, partition: int, now: float) -> Effects:
        """Time passes on one partition: expire requests, match those that relaxed."""
        effects = Effects()
        for book in self._pools_by_partition.get(partition, []):
            effects.extend(_expire_due(book, now))
            for proposal in list(book.proposals.values()):
                if proposal.deadline is not None and proposal.deadline <= now:
                    effects.extend(self._time_out(book, proposal, now))
            if now >= book.next_sweep_at:
                effects.extend(self._sweep(book, now))
        return effects

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
        return RequestState(
            partition=book.partition,
            changed_at=now,
            request_id=message.request_id,
            pool_id=message.pool_id,
            user_id=message.user_id,
            criteria=message.criteria,
            profile=message.profile,
            priority=message.priority,
            status="queued",
            queued_at=now,
            expires_at=None if ttl is None else now + ttl,
            created_at=None if message.created_at is None else message.created_at.isoformat(),
        )

    def _refuse(self, book: PoolBook, request: RequestState, reason: str, now: float) -> Effects:
        book.known_requests.add(request.request_id)
        return Effects(writes=[_end(request, "rejected", reason, now)])

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
            return Effects(writes=[_end(waiting, status, reason, now)])
        request = book.proposed.pop(request_id, None)
        if request is None:
            return Effects()
        if book.active_by_user.get(request.user_id) == request_id:
            del book.active_by_user[request.user_id]
        assert request.match_id is not None
        proposal = book.proposals.pop(request.match_id)
        effects = Effects(writes=[_cancelled(book, proposal, now)])
        effects.writes.append(_end(request, status, reason, now, match_id=proposal.found.match_id))
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
                request = book.proposed.pop(member.request_id)
                if book.active_by_user.get(request.user_id) == member.request_id:
                    del book.active_by_user[request.user_id]
                effects.writes.append(
                    _end(request, "expired", "confirmation_timeout", now, match_id=request.match_id)
                )
        return effects

    def _requeue(self, book: PoolBook, request_id: str, reason: str, now: float) -> Effects:
        """Back to waiting with the original wait time, so ahead of newer requests."""
        request = book.proposed.pop(request_id)
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
            partners = _find_partners(book, requeued, now)
            if partners is not None:
                effects.extend(_form_match(book, requeued, partners, now))
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
            partners = _find_partners(book, request, now)
            if partners is not None:
                return _form_match(book, request, partners, now)
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
            partners = _find_partners(book, request, now)
            if partners is None:
                book.add_waiting(request)
            else:
                effects.extend(_form_match(book, request, partners, now))
        book.plan_next_sweep(now)
        return effects

    def _end_all_waiting(self, book: PoolBook, status: str, reason: str, now: float) -> Effects:
        """End every active request, those in open proposals included."""
        effects = Effects()
        for request_id in list(book.waiting):
            request = book.remove_waiting(request_id)
            assert request is not None
            effects.writes.append(_end(request, status, reason, now))
        for proposal in list(book.proposals.values()):
            del book.proposals[proposal.found.match_id]
            effects.writes.append(_cancelled(book, proposal, now))
            for member in proposal.found.members:
                request = book.proposed.pop(member.request_id)
                book.active_by_user.pop(request.user_id, None)
                effects.writes.append(_end(request, status, reason, now, match_id=request.match_id))
        return effects


def _expire_due(book: PoolBook, now: float) -> Effects:
    """End requests past their TTL first, so they are never matched late."""
    return Effects(
        writes=[_end(request, "expired", "ttl", now) for request in book.pop_expired(now)]
    )


def _compatible(config: PoolConfig, left: RequestState, right: RequestState, now: float) -> bool:
    """Both agree on every `match_on` key neither of them has relaxed yet.

    A missing value means "any". A differing value is accepted only when both
    have waited at least `relax_after_s[key]`.
    """
    for key in config.match_on:
        mine, theirs = left.criteria.get(key), right.criteria.get(key)
        if mine is None or theirs is None or same_criterion(mine, theirs):
            continue
        limit = config.relax_after_s.get(key)
        if limit is None or now - left.queued_at < limit or now - right.queued_at < limit:
            return False
    return True


def _find_partners(
    book: PoolBook, newcomer: RequestState, now: float
) -> list[tuple[RequestState, ScoredPair]] | None:
    config = book.config
    needed = config.members_per_match - 1
    relaxable = frozenset(
        position for position, key in enumerate(config.match_on) if key in config.relax_after_s
    )
    candidates = []
    for candidate in book.buckets_near(book.bucket_key(newcomer), relaxable):
        if candidate.user_id == newcomer.user_id:
            continue
        if not _compatible(config, newcomer, candidate, now):
            continue
        scored = score_pair(newcomer.profile, candidate.profile, config.weights)
        if scored.score >= config.min_score:
            candidates.append((candidate, scored))
    if len(candidates) < needed:
        return None
    ranked = _rank(candidates, chaos=config.chaos / 10.0, seed=newcomer.request_id)
    chosen: list[tuple[RequestState, ScoredPair]] = []
    for candidate, scored in ranked:
        if all(
            candidate.user_id != member.user_id and _compatible(config, candidate, member, now)
            for member, _ in chosen
        ):
            chosen.append((candidate, scored))
            if len(chosen) == needed:
                return chosen
    return None


def _rank(
    candidates: list[tuple[RequestState, ScoredPair]], *, chaos: float, seed: str
) -> list[tuple[RequestState, ScoredPair]]:
    """Best first. `chaos` in [0, 1] blends each score with a uniform draw.

    The draw is seeded by the newcomer's request_id so that the same input over
    the same state picks the same partners.
    """
    candidates.sort(key=lambda item: item[0].request_id)
    draws = random.Random(seed)
    keyed = [
        ((1.0 - chaos) * scored.score + chaos * draws.random(), candidate, scored)
        for candidate, scored in candidates
    ]
    keyed.sort(key=lambda item: (-item[0], -item[1].priority, item[1].queued_at))
    return [(candidate, scored) for _, candidate, scored in keyed]


def _form_match(
    book: PoolBook,
    newcomer: RequestState,
    partners: list[tuple[RequestState, ScoredPair]],
    now: float,
) -> Effects:
    members = sorted(
        [newcomer, *(partner for partner, _ in partners)], key=lambda item: item.queued_at
    )
    for member in members:
        book.remove_waiting(member.request_id)
    match_id = _match_id(book.pool_id, [member.request_id for member in members])
    if len(members) == 2:
        score = partners[0][1].score
        reasons = list(partners[0][1].reasons)
    else:
        pair_scores = [
            score_pair(a.profile, b.profile, book.config.weights)
            for index, a in enumerate(members)
            for b in members[index + 1 :]
        ]
        score = group_score([pair.score for pair in pair_scores])
        reasons = list(dict.fromkeys(reason for pair in pair_scores for reason in pair.reasons))
    criteria = _agreed_criteria(book.config, members)
    found = MatchFound(
        match_id=match_id,
        pool_id=book.pool_id,
        mode=book.config.mode,
        members=[MatchMember(user_id=m.user_id, request_id=m.request_id) for m in members],
        score=score,
        reasons=_criteria_reasons(book.config, criteria, len(members)) + reasons,
        criteria=criteria,
        created_at=utc_now_iso(now),
    )
    key = state_key("m", book.pool_id, match_id)
    if not book.config.require_confirm:
        match = MatchState(partition=book.partition, changed_at=now, found=found)
        effects = Effects(writes=[(key, match)])
        effects.writes.extend(_end(m, "matched", None, now, match_id=match_id) for m in members)
        return effects
    proposal = MatchState(
        partition=book.partition,
        changed_at=now,
        found=found,
        state="proposed",
        deadline=now + book.config.confirm_timeout_s,
    )
    book.proposals[match_id] = proposal
    effects = Effects(writes=[(key, proposal)])
    for member in members:
        proposed = member.model_copy(
            update={"status": "proposed", "reason": None, "match_id": match_id, "changed_at": now}
        )
        book.proposed[member.request_id] = proposed
        book.active_by_user[member.user_id] = member.request_id
        effects.writes.append((state_key("r", book.pool_id, member.request_id), proposed))
    return effects


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
        request = book.proposed.pop(member.request_id)
        if book.active_by_user.get(request.user_id) == member.request_id:
            del book.active_by_user[request.user_id]
        effects.writes.append(_end(request, "matched", None, now, match_id=match_id))
    return effects


def _cancelled(book: PoolBook, proposal: MatchState, now: float) -> tuple[str, MatchState]:
    cancelled = proposal.model_copy(update={"state": "cancelled", "changed_at": now})
    return state_key("m", book.pool_id, proposal.found.match_id), cancelled


def _agreed_criteria(config: PoolConfig, members: list[RequestState]) -> dict[str, CriterionValue]:
    """Each criterion all members share; None where a relaxed key differed."""
    keys = dict.fromkeys(key for member in members for key in member.criteria)
    agreed: dict[str, CriterionValue] = {}
    for key in keys:
        values = {member.criteria.get(key) for member in members} - {None}
        agreed[key] = values.pop() if len(values) == 1 else None
    return agreed


def _criteria_reasons(
    config: PoolConfig, criteria: dict[str, CriterionValue], size: int
) -> list[str]:
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


def _match_id(pool_id: str, request_ids: list[str]) -> str:
    digest = hashlib.sha256("\x1f".join([pool_id, *sorted(request_ids)]).encode()).hexdigest()
    return f"m-{digest[:20]}"


def _end(
    request: RequestState,
    status: str,
    reason: str | None,
    now: float,
    *,
    match_id: str | None = None,
) -> tuple[str, RequestState]:
    ended = request.model_copy(
        update={"status": status, "reason": reason, "match_id": match_id, "changed_at": now}
    )
    return state_key("r", request.pool_id, request.request_id), ended


def _pool_record(book: PoolBook, now: float) -> tuple[str, PoolState]:
    record = PoolState(
        partition=book.partition,
        changed_at=now,
        pool_id=book.pool_id,
        config=book.config,
        paused=book.paused,
        closed=book.closed,
    )
    return state_key("p", book.pool_id), record
