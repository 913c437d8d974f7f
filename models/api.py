"""Bodies and answers of the HTTP API (CONTRACT section 2).

Write routes turn a body into a contract message and produce it to Kafka, so the
HTTP layer never changes state itself; read routes answer from the state table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.messages import (
    Criteria,
    CriterionValue,
    Identifier,
    PoolConfig,
    Profile,
    Seat,
    Status,
)

__all__ = [
    "Accepted",
    "ConfirmBody",
    "ConfirmBodyOpen",
    "ErrorBody",
    "MatchMemberView",
    "MatchView",
    "MembersView",
    "NewRequestBody",
    "NewRequestBodyOpen",
    "PoolConfig",
    "RequestAccepted",
    "RequestView",
    "StartMatchingAccepted",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewRequestBody(_Body):
    """`POST /pools/{pool_id}/requests`. Fields as in `match.request`."""

    request_id: Identifier | None = Field(
        None, description="Idempotency key; generated when absent. A repeat is a no-op."
    )
    user_id: Identifier | None = Field(
        None,
        description="Required in open mode; with auth it defaults to the token's `sub` "
        "and must equal it.",
    )
    criteria: Criteria = Field(default_factory=dict, max_length=32)
    profile: Profile | None = None
    priority: int = Field(0, ge=0, le=3)
    ttl_s: float | None = Field(None, gt=0, le=30 * 24 * 3600)


class NewRequestBodyOpen(NewRequestBody):
    """`NewRequestBody` on a worker without auth: nobody to default `user_id` to."""

    user_id: Identifier


class ConfirmBody(_Body):
    """`POST /pools/{pool_id}/matches/{match_id}/confirm`."""

    accept: bool
    user_id: Identifier | None = Field(
        None, description="Who answers; required in open mode, the token's `sub` with auth."
    )


class ConfirmBodyOpen(ConfirmBody):
    """`ConfirmBody` on a worker without auth."""

    user_id: Identifier


class Accepted(_Answer):
    """A command was written to Kafka (durably, acks=all); the worker applies it next."""

    status: Literal["accepted"] = "accepted"
    pool_id: str
    command: str


class RequestAccepted(_Answer):
    """A request or cancel was written to `match.request`."""

    status: Literal["accepted"] = "accepted"
    pool_id: str
    request_id: str


class StartMatchingAccepted(_Answer):
    """The background-matching seed's 202 body."""

    status: Literal["accepted"] = "accepted"
    message: str
    event_id: int | str
    event_name: str


class RequestView(_Answer):
    """A request as the owning worker's table holds it now."""

    request_id: str
    pool_id: str
    user_id: str
    status: Status
    reason: str | None
    match_id: str | None
    criteria: dict[str, CriterionValue]
    priority: int
    queued_at: str
    expires_at: str | None
    table_no: int | None = None
    seat_no: int | None = None


class MembersView(_Answer):
    pool_id: str
    members: list[RequestView]


class MatchMemberView(_Answer):
    user_id: str
    request_id: str
    answer: bool | None = Field(description="true accepted, false declined, null not yet")


class MatchView(_Answer):
    """A match, proposed or final, with each member's answer."""

    match_id: str
    pool_id: str
    mode: str
    state: Literal["proposed", "final", "cancelled"]
    final: bool
    members: list[MatchMemberView]
    score: float
    reasons: list[str]
    criteria: dict[str, CriterionValue]
    seats: list[Seat] | None = None
    deadline: str | None = Field(None, description="When an unanswered proposal times out.")
    created_at: str


class ErrorBody(_Answer):
    detail: str
