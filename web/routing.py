"""A small declarative route table on the worker's aiohttp server.

Each `Route` says who may call it, what body it takes, what it answers and whether
it must run on the worker that owns the pool's partition. The same table drives
request handling and the OpenAPI document, so the two cannot drift apart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from yarl import URL

from models.messages import is_identifier
from web.auth import Authenticator, Caller, HttpError

__all__ = ["Call", "OwnerLocator", "QueryParam", "Reply", "Route", "mount"]

log = logging.getLogger(__name__)

Access = Literal["public", "user", "admin"]
_FORWARDED_HEADER = "X-Matchstream-Forwarded-By"
_WORKER_HEADER = "X-Matchstream-Worker"
"""Names the worker whose state answered, so operators can see routing at work."""
_MAX_BODY_BYTES = 1_000_000  # the same bound as a Kafka input message
_EXACT_FLOAT_INTS = 2**53  # beyond this a float is no exact integer, and orjson refuses it
_MAX_BODY_DEPTH = 32  # the deepest body (a pool config) nests three levels
_PUBLIC = Caller(user_id=None, admin=False)
_FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=15)


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    kind: Literal["string", "integer", "boolean"] = "string"
    minimum: int | None = None
    maximum: int | None = None


@dataclass
class Call:
    """One validated request, as a handler sees it."""

    request: web.Request
    caller: Caller
    params: dict[str, str]
    body: Any = None
    query: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    body: BaseModel
    status: int = 200


Handler = Callable[[Call], Awaitable[Reply | web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One HTTP route; see the module docstring."""

    method: str
    path: str
    handler: Handler
    summary: str
    access: Access
    answer: type[BaseModel] | None = None
    status: int = 200
    body: type[BaseModel] | None = None
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = ()
    owner_key: str | None = None
    """Path parameter naming the pool: the route runs on the worker owning its partition."""
    streams: bool = False
    """Answers `text/event-stream` instead of JSON."""

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


class OwnerLocator:
    """Which worker owns a pool's partition, from the Faust assignor's table metadata.

    Args:
        owner_url: pool_id -> base URL of the owning worker; raises KeyError while
            the assignment is unknown (before the first rebalance completes).
        own_url: this worker's advertised URL.
        ready: whether this worker's tables are recovered and stable.
    """

    def __init__(
        self,
        *,
        owner_url: Callable[[str], URL],
        own_url: URL,
        ready: Callable[[], bool],
        client: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self._owner_url = owner_url
        self._own = (own_url.host, own_url.port)
        self.label = f"{own_url.host}:{own_url.port}"
        self._ready = ready
        self._client = client

    async def forward_if_remote(self, request: web.Request, pool_id: str) -> web.Response | None:
        """Answer by proxying to the owner, or None when this worker is the owner."""
        try:
            owner = self._owner_url(pool_id)
        except KeyError:
            raise _unavailable("partition assignment not known yet") from None
        if (owner.host, owner.port) == self._own:
            if not self._ready():
                raise _unavailable("this worker is rebalancing or recovering its tables")
            return None
        if request.headers.get(_FORWARDED_HEADER):
            # The sender thought we own the pool; one of us has a stale assignment.
            raise _unavailable("pool ownership is moving between workers")
        return await self._forward(request, owner)

    async def _forward(self, request: web.Request, owner: URL) -> web.Response:
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in {"authorization", "content-type", "accept"}
        }
        headers[_FORWARDED_HEADER] = self.label
        target = owner.with_path(request.rel_url.path).with_query(request.rel_url.query)
        try:
            async with self._client().request(
                request.method,
                target,
                headers=headers,
                data=await request.read(),
                timeout=_FORWARD_TIMEOUT,
            ) as answer:
                return web.Response(
                    body=await answer.read(),
                    status=answer.status,
                    content_type=answer.content_type,
                    headers={_WORKER_HEADER: answer.headers.get(_WORKER_HEADER, str(owner))},
                )
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("forward failed owner=%s error=%r", owner, error)
            raise _unavailable(f"the owning worker at {owner} did not answer") from None


def _unavailable(detail: str) -> HttpError:
    return HttpError(503, detail, headers={"Retry-After": "1"})


def _json_body(value: Any) -> bytes:
    # The newline keeps answers readable in a terminal (`curl`), and JSON ignores it.
    return orjson.dumps(value) + b"\n"


def error_response(
    status: int, detail: object, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_json_body({"detail": detail}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def mount(
    app: web.Application,
    routes: list[Route],
    *,
    authenticator: Authenticator,
    owners: OwnerLocator,
) -> None:
    """Add every route to an aiohttp application that has not started yet."""
    for route in routes:
        app.router.add_route(route.method, route.path, _dispatcher(route, authenticator, owners))
    app.middlewares.append(_json_errors)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown paths and methods answer `{"detail": ...}` like every other error."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {k: v for k, v in error.headers.items() if k.lower() != "content-type"}
        return error_response(error.status, error.reason, headers)


def _dispatcher(
    route: Route, authenticator: Authenticator, owners: OwnerLocator
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def dispatch(request: web.Request) -> web.StreamResponse:
        try:
            params = _path_params(route, request)
            caller = (
                _PUBLIC
                if route.access == "public"
                else authenticator.authenticate(request.headers.get("Authorization"))
            )
            if route.access == "admin":
                caller.require_admin()
            query = _query_params(route, request)
            if route.owner_key is not None:
                forwarded = await owners.forward_if_remote(request, params[route.owner_key])
                if forwarded is not None:
                    return forwarded
            body = await _read_body(route, request)
            outcome = await route.handler(
                Call(request=request, caller=caller, params=params, body=body, query=query)
            )
        except HttpError as error:
            return error_response(error.status, error.detail, error.headers)
        if isinstance(outcome, Reply):
            return web.Response(
                body=_json_body(outcome.body.model_dump(mode="json")),
                status=outcome.status,
                content_type="application/json",
                headers={_WORKER_HEADER: owners.label},
            )
        return outcome

    return dispatch


def _path_params(route: Route, request: web.Request) -> dict[str, str]:
    params = dict(request.match_info)
    for name, value in params.items():
        if not is_identifier(value):
            raise HttpError(422, f"{name}: 1 to 200 characters, no control characters")
    return params


def _query_params(route: Route, request: web.Request) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for param in route.query:
        raw = request.query.get(param.name)
        if raw is None:
            continue
        if param.kind == "integer":
            try:
                number = int(raw)
            except ValueError:
                raise HttpError(422, f"{param.name}: expected an integer") from None
            if (param.minimum is not None and number < param.minimum) or (
                param.maximum is not None and number > param.maximum
            ):
                raise HttpError(
                    422, f"{param.name}: must be between {param.minimum} and {param.maximum}"
                )
            values[param.name] = number
        elif param.kind == "boolean":
            if raw.lower() not in {"true", "false", "1", "0"}:
                raise HttpError(422, f"{param.name}: expected true or false")
            values[param.name] = raw.lower() in {"true", "1"}
        else:
            if not is_identifier(raw):
                raise HttpError(422, f"{param.name}: 1 to 200 characters, no control characters")
            values[param.name] = raw
    return values


async def _read_body(route: Route, request: web.Request) -> Any:
    if route.body is None:
        return None
    if request.content_length is not None and request.content_length > _MAX_BODY_BYTES:
        raise HttpError(413, f"body larger than {_MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if not raw:
        raise HttpError(400, "a JSON body is required")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise HttpError(400, f"invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise HttpError(422, f"expected a JSON object, got {type(data).__name__}")
    try:
        # Strict: `true` or "3" is not a number here, as the OpenAPI document says.
        return route.body.model_validate(_integral_floats_as_ints(data), strict=True)
    except ValidationError as error:
        raise _validation_error(error) from None


def _integral_floats_as_ints(value: Any, depth: int = 0) -> Any:
    """JSON Schema counts 3.0 as an integer; pydantic's strict mode does not.

    Raises:
        HttpError: 422 for nesting deeper than any body needs; the parser allows 1024
            levels, more than Python's recursion limit, which would answer 500.
    """
    if depth > _MAX_BODY_DEPTH:
        raise HttpError(422, f"body: nested deeper than {_MAX_BODY_DEPTH} levels")
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_INTS:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item, depth + 1) for item in value]
    return value


def _validation_error(error: ValidationError) -> HttpError:
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    detail = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
        for problem in problems[:10]
    )
    return HttpError(422, detail)
