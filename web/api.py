"""The request, match and pool routes of CONTRACT section 2.

Writes become contract messages produced to the input topics and acknowledged by
every in-sync replica before the 202, so Kafka stays the only source of truth and
an HTTP client sees the same rules as any producer. Reads answer from the state
table of the worker that owns the pool (`Route.owner_key`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from matching.pool import PoolBook
from models.api import (
    Accepted,
    ConfirmBody,
    ConfirmBodyOpen,
    MatchMemberView,
    MatchView,
    MembersView,
    NewRequestBody,
    NewRequestBodyOpen,
    RequestAccepted,
    RequestView,
    StartMatchingAccepted,
)
from models.codec import dumps, utc_now_iso
from models.messages import MatchConfirm, MatchRequest, PoolCommand, PoolConfig
from models.state import MatchState, RequestState, decode_state, state_key
from web.auth import HttpError
from web.routing import Call, QueryParam, Reply, Route

__all__ = ["ApiBackend", "api_routes"]

_MEMBERS_PAGE = QueryParam("limit", "Members per page (default 1000).", "integer", 1, 10_000)
_MEMBERS_AFTER = QueryParam("after", "Return requests whose request_id sorts after this one.")


class ApiBackend:
    """What the routes need from a worker: produce to a topic, read table state.

    Args:
        send: `(topic, key, value)` produced with acks=all; returns once acknowledged.
        read: table key -> stored bytes, or None.
        pools: this worker's pools (`MatchEngine.pools`), for existence and members.
        topics: (request, confirm, command) topic names.
    """

    def __init__(
        self,
        *,
        send: Callable[[str, bytes, bytes], Awaitable[None]],
        read: Callable[[str], bytes | None],
        pools: dict[str, PoolBook],
        topics: tuple[str, str, str],
    ) -> None:
        self.send = send
        self.read = read
        self.pools = pools
        self.request_topic, self.confirm_topic, self.command_topic = topics

    def request(self, pool_id: str, request_id: str) -> RequestState:
        record = self.record(state_key("r", pool_id, request_id))
        if not isinstance(record, RequestState):
            raise HttpError(404, f"request {request_id} not found in pool {pool_id}")
        return record

    def match(self, pool_id: str, match_id: str) -> MatchState:
        record = self.record(state_key("m", pool_id, match_id))
        if not isinstance(record, MatchState):
            raise HttpError(404, f"match {match_id} not found in pool {pool_id}")
        return record

    def pool(self, pool_id: str, *, not_found: str | None = None) -> PoolBook:
        book = self.pools.get(pool_id)
        if book is None:
            raise HttpError(404, not_found or f"pool {pool_id} not found")
        return book

    def record(self, key: str) -> Any:
        raw = self.read(key)
        return None if raw is None else decode_state(raw)

    async def produce(self, topic: str, pool_id: str, message: BaseModel) -> None:
        await self.send(topic, pool_id.encode(), dumps(message))


def api_routes(backend: ApiBackend, *, open_mode: bool) -> list[Route]:
    """Every request, match and pool route, bound to one backend.

    Args:
        backend: where writes go and reads come from.
        open_mode: no auth, so bodies must name their user themselves.
    """
    request_body = NewRequestBodyOpen if open_mode else NewRequestBody
    confirm_body = ConfirmBodyOpen if open_mode else ConfirmBody

    async def create_request(call: Call) -> Reply:
        pool_id, body = call.params["pool_id"], call.body
        assert isinstance(body, NewRequestBody)
        user_id = _acting_user(call, body.user_id)
        request_id = body.request_id or f"r-{uuid.uuid4().hex}"
        message = MatchRequest(
            request_id=request_id,
            pool_id=pool_id,
            user_id=user_id,
            criteria=body.criteria,
            profile=body.profile,
            priority=body.priority,
            ttl_s=body.ttl_s,
            created_at=utc_now_iso(),  # type: ignore[arg-type]  # pydantic parses the string
        )
        await backend.produce(backend.request_topic, pool_id, message)
        return Reply(RequestAccepted(pool_id=pool_id, request_id=request_id), 202)

    async def read_request(call: Call) -> Reply:
        request = backend.request(call.params["pool_id"], call.params["request_id"])
        call.caller.require_user(request.user_id)
        return Reply(_request_view(backend, request))

    async def cancel_request(call: Call) -> Reply:
        pool_id = call.params["pool_id"]
        request = backend.request(pool_id, call.params["request_id"])
        call.caller.require_user(request.user_id)
        cancel = MatchRequest(
            type="cancel",
            request_id=request.request_id,
            pool_id=pool_id,
            user_id=request.user_id,
        )
        await backend.produce(backend.request_topic, pool_id, cancel)
        return Reply(RequestAccepted(pool_id=pool_id, request_id=request.request_id), 202)

    async def read_match(call: Call) -> Reply:
        match = backend.match(call.params["pool_id"], call.params["match_id"])
        if not call.caller.admin and not _is_member(match, call.caller.user_id):
            raise HttpError(403, "only members of a match may read it")
        return Reply(_match_view(match))

    async def confirm_match(call: Call) -> Reply:
        pool_id, match_id, body = call.params["pool_id"], call.params["match_id"], call.body
        assert isinstance(body, ConfirmBody)
        user_id = _acting_user(call, body.user_id)
        match = backend.match(pool_id, match_id)
        if not _is_member(match, user_id):
            raise HttpError(403, f"user {user_id} is not a member of match {match_id}")
        if match.state != "proposed":
            raise HttpError(409, f"match {match_id} is {match.state}; nothing to confirm")
        answer = MatchConfirm(
            match_id=match_id, pool_id=pool_id, user_id=user_id, accept=body.accept
        )
        await backend.produce(backend.confirm_topic, pool_id, answer)
        return Reply(Accepted(pool_id=pool_id, command="accept" if body.accept else "decline"), 202)

    async def members(call: Call) -> Reply:
        pool_id = call.params.get("pool_id") or call.params["event_id"]
        book = backend.pool(pool_id)
        after = call.query.get("after", "")
        page = sorted(rid for rid in book.known_requests if rid > after)
        views = [
            _request_view(backend, backend.request(pool_id, rid))
            for rid in page[: call.query.get("limit", 1000)]
        ]
        return Reply(MembersView(pool_id=pool_id, members=views))

    async def configure(call: Call) -> Reply:
        assert isinstance(call.body, PoolConfig)
        return await _command(call.params["pool_id"], "configure", call.body)

    async def _command(pool_id: str, command: str, config: PoolConfig | None = None) -> Reply:
        message = PoolCommand(command=command, pool_id=pool_id, config=config)  # type: ignore[arg-type]  # one of the literals, from our own route table
        await backend.produce(backend.command_topic, pool_id, message)
        return Reply(Accepted(pool_id=pool_id, command=command), 202)

    def pool_command(command: str) -> Callable[[Call], Awaitable[Reply]]:
        async def handle(call: Call) -> Reply:
            return await _command(call.params["pool_id"], command)

        return handle

    async def start_event_matching(call: Call) -> Reply:
        event_id = call.params["event_id"]
        book = backend.pool(event_id, not_found=f"Event with id {event_id} not found")
        await backend.produce(
            backend.command_topic, event_id, PoolCommand(command="start_matching", pool_id=event_id)
        )
        return Reply(
            StartMatchingAccepted(
                message=f"Matching process started for event {event_id}. Check logs for progress.",
                # isdigit() alone accepts "²", which int() refuses (a 500).
                event_id=int(event_id) if event_id.isascii() and event_id.isdigit() else event_id,
                event_name=book.config.name or event_id,
            ),
            202,
        )

    pool_path = "/pools/{pool_id}"
    request_path = pool_path + "/requests/{request_id}"
    match_path = pool_path + "/matches/{match_id}"
    routes = [
        Route("POST", pool_path + "/requests", create_request, "Join a pool", "user",
              RequestAccepted, 202, request_body, errors=(401, 403, 422)),
        Route("GET", request_path, read_request, "A request's current status", "user",
              RequestView, errors=(401, 403, 404), owner_key="pool_id"),
        Route("DELETE", request_path, cancel_request, "Cancel a request", "user",
              RequestAccepted, 202, errors=(401, 403, 404), owner_key="pool_id"),
        Route("GET", match_path, read_match, "A match with each member's answer", "user",
              MatchView, errors=(401, 403, 404), owner_key="pool_id"),
        Route("POST", match_path + "/confirm", confirm_match, "Accept or decline a proposal",
              "user", Accepted, 202, confirm_body, errors=(401, 403, 404, 409, 422),
              owner_key="pool_id"),
        Route("GET", pool_path + "/members", members, "Every request of a pool", "admin",
              MembersView, query=(_MEMBERS_PAGE, _MEMBERS_AFTER), errors=(401, 403, 404),
              owner_key="pool_id"),
        Route("GET", "/api/events/{event_id}/attendees", members, "Seed alias of members",
              "admin", MembersView, query=(_MEMBERS_PAGE, _MEMBERS_AFTER),
              errors=(401, 403, 404), owner_key="event_id"),
        Route("PUT", pool_path, configure, "Configure a pool", "admin", Accepted, 202,
              PoolConfig, errors=(401, 403, 422)),
        Route("POST", "/api/events/{event_id}/start_matching", start_event_matching,
              "Seed alias of start_matching", "admin", StartMatchingAccepted, 202,
              errors=(401, 403, 404), owner_key="event_id"),
    ]  # fmt: skip
    for command in ("pause", "resume", "start_matching", "clear", "rematch", "close"):
        routes.append(
            Route("POST", f"{pool_path}/{command}", pool_command(command),
                  f"Send the {command} command", "admin", Accepted, 202, errors=(401, 403))
        )  # fmt: skip
    return routes


def _acting_user(call: Call, named: str | None) -> str:
    """The user a write is for: the token's subject, or the body's user_id in open mode."""
    user_id = named or call.caller.user_id
    if user_id is None:
        raise HttpError(422, "user_id: required when the API runs without auth")
    call.caller.require_user(user_id)
    return user_id


def _is_member(match: MatchState, user_id: str | None) -> bool:
    return any(member.user_id == user_id for member in match.found.members)


def _request_view(backend: ApiBackend, request: RequestState) -> RequestView:
    seat = None
    if request.match_id is not None and request.status == "matched":
        match = backend.record(state_key("m", request.pool_id, request.match_id))
        if isinstance(match, MatchState) and match.found.seats:
            seat = next((s for s in match.found.seats if s.user_id == request.user_id), None)
    return RequestView(
        request_id=request.request_id,
        pool_id=request.pool_id,
        user_id=request.user_id,
        status=request.status,
        reason=request.reason,
        match_id=request.match_id,
        criteria=dict(request.criteria),
        priority=request.priority,
        queued_at=utc_now_iso(request.queued_at),
        expires_at=None if request.expires_at is None else utc_now_iso(request.expires_at),
        table_no=None if seat is None else seat.table_no,
        seat_no=None if seat is None else seat.seat_no,
    )


def _match_view(match: MatchState) -> MatchView:
    found = match.found
    return MatchView(
        match_id=found.match_id,
        pool_id=found.pool_id,
        mode=found.mode,
        state=match.state,
        final=match.final,
        members=[
            MatchMemberView(
                user_id=member.user_id,
                request_id=member.request_id,
                answer=match.answers.get(member.request_id),
            )
            for member in found.members
        ],
        score=found.score,
        reasons=found.reasons,
        criteria=found.criteria,
        seats=found.seats,
        deadline=None if match.deadline is None else utc_now_iso(match.deadline),
        created_at=found.created_at,
    )
