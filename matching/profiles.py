"""Users' newest profiles as the matcher's partitions know them.

`profile-update` is keyed by user and pools by pool, so a profile cannot simply be
read where a pool needs it. The profiles agent stores each accepted update and sends
it to every partition of the internal `matchstream.profile-change` topic; each
partition keeps its own copy (a `ProfileState` record), so a request without a
profile finds one, and a partition that moves to another worker takes its copies
along. In memory the copies of one worker share one newest profile per user.
"""

from __future__ import annotations

from collections.abc import Iterable

from models.messages import Profile, ProfileChange
from models.state import ProfileState, profile_key

__all__ = ["ProfileDirectory"]


class ProfileDirectory:
    """Newest profile per user, and per partition the `updated_at` it has stored.

    Example:
        >>> directory = ProfileDirectory()
        >>> change = ProfileChange(user_id="u", profile=Profile(interests=["go"]), updated_at=5.0)
        >>> directory.offer(change, partition=0, now=9.0)[1].updated_at
        5.0
        >>> directory.offer(change, partition=0, now=9.5) is None  # already applied there
        True
        >>> directory.get("u").interests
        ['go']
    """

    def __init__(self) -> None:
        self._stored_at: dict[int, dict[str, float]] = {}
        self._newest: dict[str, tuple[float, Profile]] = {}

    def load(self, records: Iterable[ProfileState]) -> None:
        """Replace everything with the profile records of the state table."""
        self._stored_at.clear()
        self._newest.clear()
        for record in records:
            self._stored_at.setdefault(record.partition, {})[record.user_id] = record.updated_at
            self._remember(record.user_id, record.updated_at, record.profile)

    def get(self, user_id: str) -> Profile | None:
        """The newest profile of a user, or None if they never sent one."""
        newest = self._newest.get(user_id)
        return None if newest is None else newest[1]

    def offer(
        self, change: ProfileChange, *, partition: int, now: float
    ) -> tuple[str, ProfileState] | None:
        """Take a change on one partition, unless that partition already has it or a newer one.

        Returns:
            The partition's new profile record, or None when the change is not news there.
        """
        stored = self._stored_at.setdefault(partition, {})
        known = stored.get(change.user_id)
        if known is not None and (
            change.updated_at < known
            or (change.updated_at == known and self.get(change.user_id) == change.profile)
        ):
            return None
        stored[change.user_id] = change.updated_at
        self._remember(change.user_id, change.updated_at, change.profile)
        record = ProfileState(
            partition=partition,
            changed_at=now,
            user_id=change.user_id,
            profile=change.profile,
            updated_at=change.updated_at,
        )
        return profile_key(partition, change.user_id), record

    def _remember(self, user_id: str, updated_at: float, profile: Profile) -> None:
        newest = self._newest.get(user_id)
        if newest is None or updated_at >= newest[0]:
            self._newest[user_id] = (updated_at, profile)
