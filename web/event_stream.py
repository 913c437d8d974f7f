"""What every Server-Sent Events route shares: a cap on its open streams, and a
Kafka consumer of its own per connection, stopped however the connection ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from aiokafka import AIOKafkaConsumer

from web.auth import HttpError
from web.routing import Call

__all__ = ["StreamSlots", "serve_from_kafka"]

log = logging.getLogger(__name__)


class StreamSlots:
    """Open streams of one route on this worker; past `limit`, a new one gets a 503.

    Example:
        >>> slots = StreamSlots(limit=1, what="dashboard streams")
        >>> with slots.taken():
        ...     slots.open
        1
    """

    def __init__(
        self, *, limit: int, what: str, on_count: Callable[[int], None] = lambda count: None
    ) -> None:
        self.open = 0
        self._limit = limit
        self._what = what
        self._on_count = on_count

    @contextlib.contextmanager
    def taken(self) -> Iterator[None]:
        """Hold one slot for the body, or refuse with 503 when none is free."""
        if self.open >= self._limit:
            raise HttpError(
                503, f"too many open {self._what} on this worker", headers={"Retry-After": "5"}
            )
        self.open += 1
        self._on_count(self.open)
        try:
            yield
        finally:
            self.open -= 1
            self._on_count(self.open)


async def serve_from_kafka(
    call: Call,
    *,
    bootstrap: list[str],
    fetch_max_wait_ms: int,
    start: Callable[[AIOKafkaConsumer], Awaitable[bytes]],
    pump: Callable[[AIOKafkaConsumer, web.StreamResponse], Awaitable[None]],
) -> web.StreamResponse:
    """Answer `call` with an event stream that `pump` writes from a consumer of its own.

    `start` assigns and positions the started consumer and returns the stream's
    opening lines (a retry hint and a comment saying where the stream begins),
    written before anything `pump` sends.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    try:
        await consumer.start()
        opening = await start(consumer)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(call.request)
        await response.write(opening)
        await pump(consumer, response)
        return response
    except (ConnectionResetError, ConnectionError):
        log.debug("event stream closed by client path=%s", call.request.path)
        return web.Response(status=499)
    finally:
        await consumer.stop()
