"""Matching on arrival (`pair` and `group` pools): candidates, ranking with chaos, forming a match.

A newcomer is compared with the waiting requests whose `match_on` buckets can agree
with theirs; the best-scoring compatible ones (blended with chance by `chaos`) become
its partners, and the match is final at once or, with `require_confirm`, a proposal.

When many requests wait, `PoolBook.partners` (`matching.partner_index`) scores them
all at once and ranks exactly only the few that can come first; `scan_partners`, the
Python loop over every candidate, remains for small pools and for the values the
index declines, and defines the answer the index must give.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TypeVar

from matching.pool import PoolBook, same_criterion
from matching.records import (
    Effects,
    agreed_criteria,
    criteria_reasons,
    end_request,
    match_id_of,
)
from matching.scoring import ScoredPair, group_score, score_pair
from models.codec import utc_now_iso
from models.messages import MatchFound, MatchMember, PoolConfig
from models.state import MatchState, RequestState, state_key

__all__ = [
    "SCAN_BELOW",
    "compatible",
    "find_partners",
    "form_match",
    "rank_candidates",
    "scan_partners",
]

_Score = TypeVar("_Score", float, ScoredPair)

SCAN_BELOW = 16
"""Candidates below which the Python loop beats the vectorised search."""


def compatible(config: PoolConfig, left: RequestState, right: RequestState, now: float) -> bool:
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


def find_partners(
    book: PoolBook, newcomer: RequestState, now: float
) -> list[tuple[RequestState, ScoredPair]] | None:
    """The newcomer's partners, best first, or None when not enough of them agree.

    Args:
        book: the pool; the newcomer is not among its waiting requests.
        newcomer: the request looking for partners.
        now: decides who has waited long enough to relax a `match_on` key.

    Returns:
        `members_per_match - 1` waiting requests, each with its `score_pair` with
        the newcomer, as `scan_partners` picks them.
    """
    if book.index_deferred:
        book.index_now()  # the first search since a recovery: index once rather than scan
    search = None
    if book.partners is not None:
        search = book.partners.search(newcomer, now, at_least=SCAN_BELOW)
    if search is None:
        return scan_partners(book, newcomer, now)
    chosen = _pick(book.config, search.ranked(), now)
    book.work.considered += search.considered
    book.work.scored += search.scored
    if chosen is None:
        return None
    return [(candidate, search.scored_pair(candidate, score)) for candidate, score in chosen]


def _pick(
    config: PoolConfig, ranked: Iterable[tuple[RequestState, _Score]], now: float
) -> list[tuple[RequestState, _Score]] | None:
    """Greedily the first candidates, best first, that agree with each other."""
    needed = config.members_per_match - 1
    chosen: list[tuple[RequestState, _Score]] = []
    for candidate, score in ranked:
        if all(
            candidate.user_id != member.user_id and compatible(config, candidate, member, now)
            for member, _ in chosen
        ):
            chosen.append((candidate, score))
            if len(chosen) == needed:
                return chosen
    return None


def scan_partners(
    book: PoolBook, newcomer: RequestState, now: float
) -> list[tuple[RequestState, ScoredPair]] | None:
    """`find_partners` by a Python loop over every candidate: the reference answer."""
    config = book.config
    needed = config.members_per_match - 1
    relaxable = frozenset(
        position for position, key in enumerate(config.match_on) if key in config.relax_after_s
    )
    candidates = []
    for candidate in book.buckets_near(book.bucket_key(newcomer), relaxable):
        book.work.considered += 1
        if candidate.user_id == newcomer.user_id:
            continue
        if not compatible(config, newcomer, candidate, now):
            continue
        book.work.scored += 1
        scored = score_pair(newcomer.profile, candidate.profile, config.weights)
        if scored.score >= config.min_score:
            candidates.append((candidate, scored))
    if len(candidates) < needed:
        return None
    ranked = rank_candidates(candidates, chaos=config.chaos / 10.0, seed=newcomer.request_id)
    return _pick(config, ranked, now)


def rank_candidates(
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


def form_match(
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
    match_id = match_id_of(book.pool_id, [member.request_id for member in members])
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
    criteria = agreed_criteria(members)
    found = MatchFound(
        match_id=match_id,
        pool_id=book.pool_id,
        mode=book.config.mode,
        members=[MatchMember(user_id=m.user_id, request_id=m.request_id) for m in members],
        score=score,
        reasons=criteria_reasons(book.config, criteria, len(members)) + reasons,
        criteria=criteria,
        created_at=utc_now_iso(now),
    )
    key = state_key("m", book.pool_id, match_id)
    if not book.config.require_confirm:
        match = MatchState(partition=book.partition, changed_at=now, found=found)
        effects = Effects(writes=[(key, match)])
        effects.writes.extend(
            end_request(m, "matched", None, now, match_id=match_id) for m in members
        )
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
