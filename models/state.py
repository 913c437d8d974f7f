"""Records kept in the `state` table and therefore in its changelog topic.

One table holds every kind, so all changes caused by one input event land in one
changelog partition, in order. The output relay turns request, match and
recommendation records into `match.status`, `match.found` and
`match.recommendations`, so an output exists only once the state change behind it
is durable.
"""

from __future__ import annotations

from sys import intern
from typing import Annotated, Any, Literal, TypeVar, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from models.messages import (
    Criteria,
    CriterionValue,
    MatchFound,
    MatchRecommendations,
    MatchStatus,
    PoolConfig,
    Profile,
    Status,
)

__all__ = [
    "ACTIVE_STATUSES",
    "BatchRunSummary",
    "InputMark",
    "MatchState",
    "PoolState",
    "ProfileState",
    "RecommendationState",
    "RequestState",
    "RunStatus",
    "StateRecord",
    "decode_state",
    "kind_prefix",
    "mark_key",
    "parse_state",
    "profile_key",
    "share_repeated_values",
    "state_key",
]

ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "requeued", "proposed"})
_SEPARATOR = "\x1f"  # identifiers cannot contain control characters, so keys never collide


def state_key(kind: Literal["p", "r", "m", "k"], pool_id: str, item_id: str = "") -> str:
    """The table key of a pool (`p`), request (`r`), match (`m`) or top-K list (`k`) record."""
    return f"{kind_prefix(kind)}{pool_id}{_SEPARATOR}{item_id}"


def kind_prefix(kind: Literal["p", "r", "m", "k", "u", "o"]) -> str:
    """What the table keys of one kind of record start with (`u` profiles, `o` input marks)."""
    return f"{kind}{_SEPARATOR}"


def profile_key(partition: int, user_id: str) -> str:
    """The table key of one partition's copy of a user's profile (see `ProfileState`)."""
    return f"{kind_prefix('u')}{partition}{_SEPARATOR}{user_id}"


def mark_key(topic: str, partition: int) -> str:
    """The table key of the `InputMark` of one input topic partition."""
    return f"{kind_prefix('o')}{topic}{_SEPARATOR}{partition}"


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
    profile_only: bool = False
    """The record only changed the profile: the relay emits no status for it."""

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


RunStatus = Literal["pending", "running", "completed", "failed"]


class BatchRunSummary(BaseModel):
    """What the last `start_matching` run of a batch pool did."""

    model_config = ConfigDict(extra="ignore")

    attendees: int
    pairs: int
    """Groups formed: pairs, and the trio when the odd one out joined one."""
    seated: int
    unseated: int
    total_score: float
    method: Literal["exact", "approximate"]
    seconds: float
    """Time spent pairing and seating, off the event loop."""


class PoolState(_Record):
    """A pool's configuration and switches, and its batch runs' progress."""

    kind: Literal["pool"] = "pool"
    pool_id: str
    config: PoolConfig
    paused: bool = False
    closed: bool = False
    status: RunStatus = "pending"
    """Of the latest `start_matching` run (batch pools); `pending` before the first."""
    started_at: float | None = None
    completed_at: float | None = None
    run: int = 0
    """Runs started so far; a run's random draws are seeded by pool and run number."""
    run_requests: list[str] = []
    """While a run is in progress: the request_ids it pairs (those waiting when it started)."""
    last_run: BatchRunSummary | None = None
    refused: str | None = None
    """Why the latest `start_matching` was refused (e.g. a run in progress); None after a start."""


class InputMark(_Record):
    """The offset of the last input message of one topic partition applied to the table.

    Written with the state changes of that message, in the same changelog partition,
    so after a crash or a rebalance a message delivered again is recognised and
    skipped: at-least-once delivery, applied once.
    """

    kind: Literal["mark"] = "mark"
    topic: str
    offset: int


class RecommendationState(_Record):
    """A user's current top-K list in a `recommend` pool; the relay emits it as is."""

    kind: Literal["recommendations"] = "recommendations"
    recommendations: MatchRecommendations


class ProfileState(_Record):
    """One partition's copy of a user's newest profile.

    Every partition keeps one (a request without a profile takes it from there), so
    a partition that moves to another worker brings the profiles its pools need.
    """

    kind: Literal["profile"] = "profile"
    user_id: str
    profile: Profile
    updated_at: float


StateRecord = RequestState | MatchState | PoolState | InputMark | RecommendationState | ProfileState
_ANY_RECORD: TypeAdapter[StateRecord] = TypeAdapter(
    Annotated[StateRecord, Field(discriminator="kind")]
)
_EVERY_FIELD: dict[type[BaseModel], set[str]] = {}
_SHARED_LIMIT = 1 << 16
"""Distinct criteria, attribute and list values kept for sharing (a few MB at most)."""
_SHARED: dict[tuple[object, ...], object] = {}
_Container = TypeVar("_Container", dict[str, CriterionValue], list[str])
_Built = TypeVar("_Built", bound=BaseModel)


def parse_state(raw: bytes) -> StateRecord:
    """Decode a table value that is read once and dropped (the output relay's).

    `decode_state` spends about a third of its time making records it keeps
    share their strings; a record used for one output has nothing to share with.
    """
    return _ANY_RECORD.validate_json(raw)


def decode_state(raw: bytes) -> StateRecord:
    """Decode a table value written by `models.codec.dumps`.

    A worker holds every waiting request decoded, so their size is its memory
    (docs/performance.md, "Recovery and memory"). Repeated short strings (pool
    ids, statuses, criteria values, interests) are one object each; and a record
    that carries every field shares one field set per model instead of keeping
    its own.
    """
    request = _request_as_written(raw)
    if request is not None:
        return request
    record = _ANY_RECORD.validate_json(raw)
    _share_field_set(record)
    if isinstance(record, RequestState):
        share_repeated_values(record)
    elif isinstance(record, ProfileState):
        _share_profile_values(record.profile)
    return record


_REQUEST_FIELDS = frozenset(RequestState.model_fields)
_PROFILE_FIELDS = frozenset(Profile.model_fields)
_new_instance = object.__new__
_set_slot = object.__setattr__


def _request_as_written(raw: bytes) -> RequestState | None:
    """A request record built from the JSON `dumps` wrote, without validating it again.

    Most of a rebuild is request records, and pydantic's validation was about half
    of decoding one. The value was a validated `RequestState` when it was written,
    and Kafka and RocksDB checksum what they keep, so a record with exactly the
    model's fields (and a profile with exactly its own) is taken as it is. Anything
    else (another kind, a field added or dropped since it was written, JSON that
    does not parse) returns None and goes through validation, errors included.
    """
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(fields) is not dict or fields.keys() != _REQUEST_FIELDS or fields["kind"] != "request":
        return None
    profile = fields["profile"]
    if profile is not None:
        if type(profile) is not dict or profile.keys() != _PROFILE_FIELDS:
            return None
        # A list built afresh, as `_shared` keeps the first of equal lists.
        profile["interests"] = [intern(interest) for interest in profile["interests"]]
        for name in ("interests", "attributes", "facts", "opinions"):
            profile[name] = _shared(profile[name])
        fields["profile"] = _built(Profile, profile)
    fields["kind"] = "request"
    fields["pool_id"] = intern(fields["pool_id"])
    fields["status"] = intern(fields["status"])
    if fields["reason"] is not None:
        fields["reason"] = intern(fields["reason"])
    fields["criteria"] = _shared(fields["criteria"])
    # Copied: orjson's dicts keep a general key table, a third larger than the
    # string-keyed table a fresh dict of string keys gets.
    return _built(RequestState, dict(fields.items()))


def _built(model: type[_Built], fields: dict[str, Any]) -> _Built:
    # What `model_construct` does for a model without private attributes or a
    # post-init hook (checked below), in a fraction of its time.
    instance = _new_instance(model)
    _set_slot(instance, "__dict__", fields)
    _set_slot(instance, "__pydantic_fields_set__", _every_field(model))
    _set_slot(instance, "__pydantic_extra__", None)
    _set_slot(instance, "__pydantic_private__", None)
    return instance


def share_repeated_values(request: RequestState) -> None:
    """Point a request's criteria and profile lists and dicts at equal ones already held.

    Many requests carry the same criteria, attribute sets, interest lists or none at
    all; one object for each distinct value saves a few hundred bytes per waiting
    request. Nothing changes these containers in place (`model_copy` shares them
    already), so sharing them is safe. At most `_SHARED_LIMIT` distinct values are
    kept; after that, requests keep their own.
    """
    request.__dict__["criteria"] = _shared(request.criteria)
    if request.profile is not None:
        _share_field_set(request.profile)
        _share_profile_values(request.profile)


def _share_profile_values(profile: Profile) -> None:
    fields = profile.__dict__  # the model is frozen; its field values are only replaced by equals
    for name in ("interests", "attributes", "facts", "opinions"):
        fields[name] = _shared(fields[name])


def _shared(value: _Container) -> _Container:
    key: tuple[object, ...]
    if isinstance(value, dict):
        values = value.values()
        # Equal in Python, not in JSON: `1`, `1.0` and `true` (told apart by type), and
        # `0.0` and `-0.0` (by their bits; `0.0 in` also finds `0` and `false`).
        key = (tuple(value.items()), tuple(map(type, values)))
        if 0.0 in values:
            key = (*key, tuple(v.hex() if isinstance(v, float) else None for v in values))
    else:
        key = tuple(value)  # strings only, so never equal to a dict's key of tuples
    found = _SHARED.get(key)
    if found is None:
        if len(_SHARED) < _SHARED_LIMIT:
            _SHARED[key] = value
        return value
    return cast(_Container, found)


def _share_field_set(model: BaseModel) -> None:
    # Pydantic only adds names to a model's field set (on assignment; `model_copy`
    # copies it first), and this one holds every name already, so no model sees a change.
    every = _every_field(type(model))
    # A field set only ever holds the model's own names, so equal size means equal.
    if len(model.__pydantic_fields_set__) == len(every):
        object.__setattr__(model, "__pydantic_fields_set__", every)


def _every_field(model: type[BaseModel]) -> set[str]:
    every = _EVERY_FIELD.get(model)
    if every is None:
        every = _EVERY_FIELD[model] = set(model.model_fields)
    return every


for _model in (RequestState, Profile):
    # `_built` leaves out what `model_construct` does for these.
    assert _model.__pydantic_post_init__ is None and not _model.__private_attributes__
