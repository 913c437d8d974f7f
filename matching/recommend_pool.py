"""A `recommend` pool's top-K lists as state records: queued work, priorities, versions.

Joins, profile updates and leaves are queued and applied together (`drain`), so a
burst of messages costs one vectorised pass per chunk of users instead of one per
message. The engine drains at every tick (`MATCHSTREAM_TICK_INTERVAL_S`, 1 s by
default) and as soon as `BACKLOG` changes wait. Queued joins leave highest
`priority` first, then in arrival order, and a backlog drain takes only one chunk,
so when input piles up the higher priorities are applied (and published) first and
the rest follow within a tick. Leaves are applied at every drain, paused or not: a
paused pool takes no one new into its lists but never recommends someone who left.

Every user whose list changed gets a `RecommendationState` with the next `version`;
a user who leaves gets a last, empty list if theirs was not empty. Versions live in
these records, so they keep growing across restarts.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from matching.profile_vectors import TEXT_PARTS
from matching.recommend import TopKIndex
from matching.text_similarity import TfIdfModel
from models.codec import utc_now_iso
from models.messages import MatchRecommendations, PoolConfig, Profile, RecommendedUser
from models.state import RecommendationState, state_key

__all__ = ["BACKLOG", "DRAIN_CHUNK", "RecommendLists", "list_settings"]

DRAIN_CHUNK = 512
"""Users joined per vectorised pass when a backlog is drained."""
BACKLOG = 512
"""Queued changes that make the engine drain before the next tick."""

ListWrite = tuple[str, RecommendationState]


def list_settings(config: PoolConfig) -> tuple[object, ...]:
    """The parts of a pool config that change its lists; another value means a rematch."""
    return config.top_k, config.min_score, sorted(config.weights.items())


class RecommendLists:
    """The lists of one `recommend` pool and the records that publish them.

    Args:
        pool_id: the pool.
        partition: its input partition (every record carries it).
        config: `top_k`, `min_score` and `weights` shape the lists.
        text_model: document frequencies of `facts` and `opinions`.

    Example:
        >>> lists = RecommendLists(pool_id="p", partition=0, config=PoolConfig(mode="recommend"))
        >>> lists.join("ann", Profile(interests=["go"]), priority=0)
        >>> lists.join("bob", Profile(interests=["go"]), priority=0)
        >>> [(key.split("\\x1f")[-1], record.recommendations.version)
        ...  for key, record in lists.drain(now=0.0, paused=False)]
        [('ann', 1), ('bob', 1)]
    """

    def __init__(
        self,
        *,
        pool_id: str,
        partition: int,
        config: PoolConfig,
        text_model: TfIdfModel | None = None,
    ) -> None:
        self.pool_id = pool_id
        self.partition = partition
        self.index = TopKIndex(config=config, text_model=text_model)
        self.versions: dict[str, int] = {}
        """The version of each user's last published list."""
        self._listed: set[str] = set()
        """Users whose last published list is not empty."""
        self._joins: dict[str, tuple[int, int, Profile | None]] = {}
        """user_id -> (priority, arrival number, profile) of a queued join or update."""
        self._queue: list[tuple[int, int, str]] = []
        """(-priority, arrival number, user_id); entries whose join was replaced are skipped."""
        self._leaves: set[str] = set()
        self._stale: dict[str, list[RecommendedUser]] = {}
        """After a recovery: the stored list of each user whose ranking no longer equals it.
        The next drain publishes these users' lists unless they equal the stored ones again."""
        self._arrivals = 0

    @classmethod
    def rebuild(
        cls,
        *,
        pool_id: str,
        partition: int,
        config: PoolConfig,
        active: Iterable[tuple[str, Profile | None, int]],
        stored: Mapping[str, MatchRecommendations],
    ) -> RecommendLists:
        """The lists of a pool recovered from the state table.

        Users with a stored list are joined at once, the others (never published,
        still queued when the worker stopped) are queued again. Lists that now
        differ from their stored version are published at the next drain.

        Args:
            pool_id: the pool.
            partition: its input partition.
            config: its config.
            active: (user_id, profile, priority) of every active request, oldest first.
            stored: the last published list of each user.
        """
        users = list(active)
        model = None
        if any(config.weights.get(part, 0) > 0 for part in TEXT_PARTS):
            # A from-scratch computation: document frequencies are taken anew.
            model = TfIdfModel.fit(
                getattr(profile, part) for _, profile, _ in users if profile for part in TEXT_PARTS
            )
        lists = cls(pool_id=pool_id, partition=partition, config=config, text_model=model)
        lists.versions = {user: record.version for user, record in stored.items()}
        lists._listed = {user for user, record in stored.items() if record.top}
        lists.index.join_many((user, profile) for user, profile, _ in users if user in stored)
        for user, profile, priority in users:
            if user not in stored:
                lists.join(user, profile, priority=priority)
        lists._stale = {
            user: record.top
            for user, record in stored.items()
            if lists._entries(user) != record.top
        }
        return lists

    @property
    def pending(self) -> int:
        """Queued joins, updates and leaves."""
        return len(self._joins) + len(self._leaves)

    def join(self, user_id: str, profile: Profile | None, *, priority: int) -> None:
        """Queue a join or a profile update; a later one for the same user replaces it."""
        self._leaves.discard(user_id)
        queued = self._joins.get(user_id)
        if queued is not None and queued[0] >= priority:
            self._joins[user_id] = (queued[0], queued[1], profile)
            return
        self._arrivals += 1
        self._joins[user_id] = (priority, self._arrivals, profile)
        heapq.heappush(self._queue, (-priority, self._arrivals, user_id))

    def leave(self, user_id: str) -> None:
        """Queue a leave (a join still queued for them is simply dropped)."""
        self._joins.pop(user_id, None)
        if user_id in self.index or user_id in self._listed:
            self._leaves.add(user_id)

    def due(self, now: float, *, paused: bool) -> list[ListWrite]:
        """Drain one chunk, highest priority first, if a backlog waits; else nothing."""
        if self.pending < BACKLOG:
            return []
        return self._drain(now, joins=0 if paused else DRAIN_CHUNK)

    def drain(self, now: float, *, paused: bool) -> list[ListWrite]:
        """Apply every queued leave and, unless paused, every queued join; records of changes."""
        return self._drain(now, joins=0 if paused else len(self._joins))

    def rematch(self, config: PoolConfig, now: float, *, paused: bool) -> list[ListWrite]:
        """Recompute every list from scratch under `config`, refitting document frequencies."""
        writes = self.drain(now, paused=paused)
        return writes + self._publish(self.index.rematch(config, refit_text=True), now)

    def retire(self, now: float) -> list[ListWrite]:
        """Empty lists for everyone who has one: the pool stops recommending."""
        self._joins.clear()
        self._queue.clear()
        self._leaves.clear()
        self.index = TopKIndex(config=self.index.config)
        return self._publish(sorted(self._listed), now)

    def _drain(self, now: float, *, joins: int) -> list[ListWrite]:
        if not (self._leaves or self._stale or (joins and self._joins)):
            return []  # the common tick: nothing queued
        leaving, self._leaves = sorted(self._leaves), set()
        stale, self._stale = self._stale, {}
        chunk = self._take(min(joins, DRAIN_CHUNK))
        changed = set(self.index.apply(leaving=leaving, joining=chunk))
        writes = self._publish(sorted(changed | set(stale) | set(leaving)), now, last_sent=stale)
        joins -= len(chunk)
        while joins > 0 and self._joins:
            chunk = self._take(min(joins, DRAIN_CHUNK))
            joins -= len(chunk)
            writes += self._publish(self.index.apply(joining=chunk), now)
        return writes

    def _take(self, count: int) -> list[tuple[str, Profile | None]]:
        taken: list[tuple[str, Profile | None]] = []
        while len(taken) < count and self._queue:
            _, arrival, user_id = heapq.heappop(self._queue)
            queued = self._joins.get(user_id)
            if queued is not None and queued[1] == arrival:
                del self._joins[user_id]
                taken.append((user_id, queued[2]))
        return taken

    def _entries(self, user_id: str) -> list[RecommendedUser]:
        if user_id not in self.index:
            return []
        return [
            RecommendedUser(user_id=entry.user_id, score=entry.score, reasons=list(entry.reasons))
            for entry in self.index.top(user_id)
        ]

    def _publish(
        self,
        users: Iterable[str],
        now: float,
        *,
        last_sent: Mapping[str, list[RecommendedUser]] | None = None,
    ) -> list[ListWrite]:
        """Records of the users' new lists; `last_sent` holds lists not to send again."""
        writes = []
        for user_id in users:
            top = self._entries(user_id)
            if last_sent is not None and last_sent.get(user_id) == top:
                continue  # a later change brought back the list they were sent
            if not top and user_id not in self._listed and user_id in self.versions:
                continue  # the last list they were sent was empty too
            version = self.versions.get(user_id, 0) + 1
            self.versions[user_id] = version
            if top:
                self._listed.add(user_id)
            else:
                self._listed.discard(user_id)
            lists = MatchRecommendations(
                pool_id=self.pool_id, user_id=user_id, version=version, top=top, at=utc_now_iso(now)
            )
            record = RecommendationState(
                partition=self.partition, changed_at=now, recommendations=lists
            )
            writes.append((state_key("k", self.pool_id, user_id), record))
        return writes
