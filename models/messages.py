"""Every message of the public contract (CONTRACT.md section 1) as a pydantic model.

Input models validate and bound what producers send; unknown fields are ignored.
Output models are what Matchstream emits; their field lists are binding.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

__all__ = [
    "TERMINAL_STATUSES",
    "Criteria",
    "DlqRecord",
    "Identifier",
    "MatchConfirm",
    "MatchFound",
    "MatchMember",
    "MatchRecommendations",
    "MatchRequest",
    "MatchStatus",
    "PoolCommand",
    "PoolConfig",
    "PoolSummary",
    "Profile",
    "ProfileChange",
    "ProfileUpdate",
    "RecommendedUser",
    "Seat",
    "Status",
    "identifier_schema",
    "is_identifier",
]

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]
_IDENTIFIER = TypeAdapter(Identifier)


def is_identifier(value: object) -> bool:
    """Whether `value` is an `Identifier`: the one rule for ids in messages, URL paths
    and query strings, and token subjects.

    Example:
        >>> is_identifier("pool-7"), is_identifier("pool-7\\n")
        (True, False)
    """
    try:
        _IDENTIFIER.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


def identifier_schema() -> dict[str, Any]:
    """The JSON schema of an `Identifier`, for the OpenAPI document."""
    return _IDENTIFIER.json_schema()


ShortText = Annotated[str, StringConstraints(max_length=200)]
NonNegative = Annotated[float, Field(ge=0)]
LongText = Annotated[str, StringConstraints(max_length=2000)]
CriterionValue = str | int | float | bool | None
Criteria = dict[ShortText, CriterionValue]

MAX_EMBEDDING_DIMS = 4096
MAX_LIST_ITEMS = 256

Status = Literal[
    "queued",
    "proposed",
    "matched",
    "expired",
    "cancelled",
    "declined",
    "requeued",
    "superseded",
    "unseated",
    "rejected",
]
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"matched", "expired", "cancelled", "declined", "superseded", "unseated", "rejected"}
)


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Profile(_Input):
    """What a user tells about themselves; every part is optional."""

    interests: list[ShortText] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    attributes: dict[ShortText, CriterionValue] = Field(default_factory=dict, max_length=64)
    embedding: list[float] | None = Field(None, max_length=MAX_EMBEDDING_DIMS)
    facts: list[LongText] = Field(default_factory=list, max_length=64)
    opinions: list[LongText] = Field(default_factory=list, max_length=64)

    @field_validator("embedding")
    @classmethod
    def _finite(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(math.isfinite(x) for x in value):
            raise ValueError("embedding values must be finite numbers")
        return value


class MatchRequest(_Input):
    """`match.request`: join a pool (`type=request`) or leave it (`type=cancel`)."""

    type: Literal["request", "cancel"] = "request"
    request_id: Identifier
    pool_id: Identifier
    user_id: Identifier
    criteria: Criteria = Field(default_factory=dict, max_length=32)
    profile: Profile | None = None
    priority: int = Field(0, ge=0, le=3)
    ttl_s: float | None = Field(None, gt=0, le=30 * 24 * 3600)
    created_at: datetime | None = None


class MatchConfirm(_Input):
    """`match.confirm`: a member accepts or declines a proposed match."""

    match_id: Identifier
    pool_id: Identifier
    user_id: Identifier
    accept: bool


class ProfileUpdate(_Input):
    """`profile-update`: replaces a user's stored profile unless older."""

    user_id: Identifier
    profile: Profile
    updated_at: datetime | None = None


class ProfileChange(_Input):
    """Internal topic `matchstream.profile-change`: a stored profile, sent to every partition.

    The profiles agent writes one per accepted `profile-update`, with `updated_at`
    resolved (the update's own, or when the agent accepted it), so every partition
    applies the same value.
    """

    user_id: Identifier
    profile: Profile
    updated_at: float
    """Seconds since the epoch; the newest wins."""


class PoolConfig(_Input):
    """How a pool matches (CONTRACT section 1.4). Defaults describe an unconfigured pool."""

    mode: Literal["pair", "group", "recommend", "batch"] = "pair"
    name: ShortText | None = None
    """Display name (the seed's `event_name`); the pool_id when unset."""
    group_size: int = Field(2, ge=2, le=64)
    match_on: list[ShortText] = Field(default_factory=list, max_length=32)
    relax_after_s: dict[ShortText, NonNegative] = Field(default_factory=dict, max_length=32)
    min_score: float = Field(0.0, ge=0.0, le=1.0)
    chaos: float = Field(0.0, ge=0.0, le=10.0)
    request_ttl_s: float | None = Field(300.0, gt=0, le=30 * 24 * 3600)
    require_confirm: bool = False
    confirm_timeout_s: float = Field(120.0, gt=0, le=24 * 3600)
    top_k: int = Field(3, ge=1, le=100)
    tables: int = Field(0, ge=0, le=10_000)
    seats_per_table: int = Field(0, ge=0, le=1_000)
    max_waiting: int | None = Field(None, ge=1, le=1_000_000_000)
    weights: dict[ShortText, NonNegative] = Field(
        default_factory=lambda: {"interests": 1.0, "embedding": 1.0, "attributes": 0.5},
        max_length=16,
    )

    @field_validator("relax_after_s", "weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, number in value.items():
            if not (math.isfinite(number) and number >= 0):
                raise ValueError(f"{key!r} must be a finite number >= 0")
        return value

    @property
    def members_per_match(self) -> int:
        """`pair` always means two, whatever `group_size` says."""
        return 2 if self.mode == "pair" else self.group_size


class PoolCommand(_Input):
    """`pool.command`: configure or steer a pool."""

    command: Literal["configure", "pause", "resume", "start_matching", "clear", "rematch", "close"]
    pool_id: Identifier
    config: PoolConfig | None = None

    def model_post_init(self, context: Any) -> None:
        if self.command == "configure" and self.config is None:
            raise ValueError("config: required for the configure command")


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MatchMember(_Output):
    user_id: str
    request_id: str


class Seat(_Output):
    user_id: str
    table_no: int
    seat_no: int


class MatchFound(_Output):
    """`match.found`: one final match. `match_id` is stable across re-emits."""

    match_id: str
    pool_id: str
    mode: str
    members: list[MatchMember]
    score: float
    reasons: list[str]
    criteria: dict[str, CriterionValue]
    seats: list[Seat] | None = None
    created_at: str


class MatchStatus(_Output):
    """`match.status`: one step of a request's life, or a refused command (`about`)."""

    request_id: str
    pool_id: str
    user_id: str
    status: Status
    match_id: str | None = None
    reason: str | None = None
    at: str
    about: Literal["cancel", "confirm"] | None = None


class PoolSummary(_Output):
    """`match.progress` and the HTTP summary: one pool's figures (CONTRACT section 1.8).

    README.md ("Pool summaries") defines how each figure is measured.
    """

    pool_id: str
    job_id: str
    status: Literal["pending", "running", "completed", "failed", "paused"]
    mode: str
    started_at: str | None
    completed_at: str | None
    last_event_at: str | None
    candidates_total: int
    candidates_processed: int
    vector_pass_total: int
    vector_pass_done: int
    ransac_checked: int
    matches_found: int
    matches_with_evidence: int
    avg_score: float | None
    p90_score: float | None
    queue_depth: int
    eta_seconds: float | None
    blockers: list[str]
    requests_total: int
    waiting: int
    expired: int
    cancelled: int
    wait_p50_s: float | None
    wait_p90_s: float | None
    at: str


class RecommendedUser(_Output):
    """One entry of a user's top-K list."""

    user_id: str
    score: float
    reasons: list[str]


class MatchRecommendations(_Output):
    """`match.recommendations`: a user's current top-K list; `version` grows with every change."""

    pool_id: str
    user_id: str
    version: int
    top: list[RecommendedUser]
    at: str


class DlqRecord(_Output):
    """`match.dlq`: an input message that was rejected, with why."""

    topic: str
    partition: int
    offset: int
    key: str | None
    error: str
    raw: str
    at: str
