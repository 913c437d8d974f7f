"""An HTTP client for the worker's API in tests: tokens, retries on 503, SSE reading."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
import jwt
import orjson

SECRET = "integration-secret-0123456789abcdef"


def token(user_id: str, *, admin: bool = False, secret: str = SECRET) -> str:
    claims: dict[str, Any] = {"sub": user_id, "exp": int(time.time()) + 600}
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class Answer:
    status: int
    body: Any
    worker: str | None


class Api:
    """Calls one worker; `call` retries a 503 (rebalancing) until `timeout_s`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Api in `async with`"
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        *,
        as_user: str | None = None,
        json: Any = None,
        timeout_s: float = 30.0,
    ) -> Answer:
        headers = {} if as_user is None else {"Authorization": f"Bearer {as_user}"}
        deadline = time.monotonic() + timeout_s
        while True:
            async with self.session.request(
                method,
                self.base_url + path,
                headers=headers,
                data=None if json is None else orjson.dumps(json),
            ) as response:
                raw = await response.read()
                answer = Answer(
                    response.status,
                    orjson.loads(raw) if raw else None,
                    response.headers.get("X-Matchstream-Worker"),
                )
            if answer.status != 503 or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.2)  # the documented client behaviour: Retry-After


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: dict[str, Any]
    received_at: float = field(default_factory=time.time)


class SseStream:
    """Reads `text/event-stream` from an open response, one event at a time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def wait_live(self, timeout_s: float = 15.0) -> None:
        """Until the server's first comment: events after this are not missed."""
        while not self.comments:
            await asyncio.wait_for(self._read_one(), timeout_s)

    async def next_event(self, timeout_s: float = 30.0) -> SseEvent:
        while True:
            event = await asyncio.wait_for(self._read_one(), timeout_s)
            if event is not None:
                return event

    async def _read_one(self) -> SseEvent | None:
        fields: dict[str, str] = {}
        while True:
            line = (await self.response.content.readline()).decode().rstrip("\n")
            if not line:
                if not fields:
                    if self.response.content.at_eof():
                        raise ConnectionError("the stream ended")
                    continue
                if "data" not in fields:
                    return None
                return SseEvent(fields.get("id"), fields.get("event"), orjson.loads(fields["data"]))
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                return None
            name, _, value = line.partition(":")
            fields[name] = value.lstrip(" ")
