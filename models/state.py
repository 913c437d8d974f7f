"""Records kept in the `state` table and therefore in its changelog topic.

One table holds every kind, so all changes caused by one input event land in one
changelog partition, in order. The output relay turns request and match records
into `match.status` and `match.found`, so an output exists only once the state
change behind it is durable.
"""

from __future__ import annotations

from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict

from models.messages import Criteria, MatchFound, MatchStatus, PoolConfig, Profile, Status

__all__ = [
    "ACTIVE_STATUSES",
    "InputMark",
    "MatchState",
    "PoolState",
    "RequestState",
    "StateRecord",
    "decode_state",
    "mark_key",
    "state_key",
]

ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "requeued", "proposed"})
_SEPARATOR = "\x1f"  # identifiers cannot contain control characters, so keys never collide


def state_key(kind: Literal["p", "r", "m"], pool_id: str, item_id: str = "") -> str:
    """The table key of a pool (`p`), request (`r`) or match (`m`) record."""
    return f"{kind}{_SEPARATOR}{pool_id}{_SEPARATOR}{item_id}"


def mark_key(topic: str, partition: int) -> str:
    """The table key of the `InputMark` of one input topic partition."""
    return f"o{_SEPARATOR}{topic}{_SEPARATOR}{partition}"


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")

    partition: int
    """Source partition of the pool; table writes for the pool must go there."""
    changed_at: float


class RequestState(_Record):
    """A request and where it is in its life."""

    kind: Literal["request"] = "request"
    request_id: str
    pool_id: str
    user_id: str
    criteria: Criteria
    profile: Profile | None = None
    priority: int = 0
    status: Status
    reason: str | None = None
    match_id: str | None = None
    queued_at: float
    expires_at: float | None = None
    created_at: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def status_event(self, at: str) -> MatchStatus:
        return MatchStatus(
            request_id=self.request_id,
            pool_id=self.pool_id,
            user_id=self.user_id,
            status=self.status,
            match_id=self.match_id,
            reason=self.reason,
            at=at,
        )


class MatchState(_Record):
    """A match: `proposed` while members confirm, then `final` or `cancelled`."""

    kind: Literal["match"] = "match"
    found: MatchFound
    state: Literal["proposed", "final", "cancelled"] = "final"
    answers: dict[str, bool] = {}
    """request_id -> accepted, for the members who answered a proposal."""
    deadline: float | None = None
    """When an unanswered proposal times out (`confirm_timeout_s` after it was made)."""

    @property
    def final(self) -> bool:
        return self.state == "final"


class PoolState(_Record):
    """A pool's configuration and switches."""

    kind: Literal["pool"] = "pool"
    pool_id: str
    config: PoolConfig
    paused: bool = False
    closed: bool = False


class InputMark(_Record):
    """The offset of the last input message of one topic partition applied to the table.

    Written with the state changes of that message, in the same changelog partition,
    so after a crash or a rebalance a message delivered again is recognised and
    skipped: at-least-once delivery, applied once.
    """

    kind: Literal["mark"] = "mark"
    topic: str
    offset: int


StateRecord = RequestState | MatchState | PoolState | InputMark
_KINDS: dict[str, type[StateRecord]] = {
    "request": RequestState,
    "match": MatchState,
    "pool": PoolState,
    "mark": InputMark,
}


def decode_state(raw: bytes) -> StateRecord:
    """Decode a table value written by `models.codec.dumps`."""
    data = orjson.loads(raw)
    return _KINDS[data["kind"]].model_validate(data)
