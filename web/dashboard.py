"""`GET /` (the operators' dashboard page) and `GET /dashboard/stream` (its live feed).

The page is one static HTML document (`web/dashboard.html`, package data): it loads `GET /pools` once, then follows
`/dashboard/stream`, which relays every `match.progress` snapshot of every pool.
Each connection reads all partitions of that topic with its own consumer from
the end, so any worker can serve any dashboard.

Summaries are snapshots, not deltas: a client that reconnects re-reads
`GET /pools` instead of replaying what it missed, so the stream starts at the
end every time and ignores `Last-Event-ID`.

Browsers cannot set headers on an `EventSource`, so with auth on this one route
also takes the bearer token as `?access_token=`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.resources import files

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from web.event_stream import StreamSlots, serve_from_kafka
from web.routing import Call, Route

__all__ = ["STREAM_PATH", "TOKEN_PARAM", "Dashboard"]

log = logging.getLogger(__name__)

STREAM_PATH = "/dashboard/stream"
TOKEN_PARAM = "access_token"
_KEEPALIVE_S = 10.0  # also how soon a vanished client is noticed
_FETCH_WAIT_MS = 50  # a summary is at most once a second per pool; latency matters little
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # Everything the page needs is inline or same-origin; nothing else may load.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
    ),
    # The page's own URL may carry `?token=`; never hand it to another site.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class Dashboard:
    """The dashboard page and its stream, at most `max_streams` streams at once per worker.

    Args:
        bootstrap: Kafka bootstrap servers.
        topic: the `match.progress` topic.
        partitions: its partition count.
        max_streams: open streams allowed on this worker; more get a 503.
        on_count: called with the number of open streams whenever it changes.

    Example:
        >>> Dashboard(bootstrap=["127.0.0.1:9092"], topic="match.progress",
        ...           partitions=8).open_streams
        0
    """

    def __init__(
        self,
        *,
        bootstrap: list[str],
        topic: str,
        partitions: int,
        max_streams: int = 100,
        on_count: Callable[[int], None] = lambda count: None,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self._bootstrap = bootstrap
        self._topic = topic
        self._partitions = partitions
        self._slots = StreamSlots(limit=max_streams, what="dashboard streams", on_count=on_count)
        self._page = files("web").joinpath("dashboard.html").read_bytes()

    @property
    def open_streams(self) -> int:
        return self._slots.open

    def routes(self) -> list[Route]:
        """`GET /` and `GET /dashboard/stream`."""
        return [
            Route("GET", "/", self.page, "The dashboard page (HTML)", "public"),
            Route(
                "GET",
                STREAM_PATH,
                self.serve,
                "Every pool's summary as it changes (Server-Sent Events, `event: summary`); "
                f"with auth on, `?{TOKEN_PARAM}=` may stand in for the Authorization header",
                "user",
                errors=(401, 503),
                streams=True,
            ),
        ]

    def install(self, app: web.Application) -> None:
        """Accept `?access_token=` on the stream route of an app that has not started yet."""
        app.middlewares.append(_token_from_query)

    async def page(self, call: Call) -> web.Response:
        # The page holds no data: it asks the API for everything, with the caller's token.
        return web.Response(
            body=self._page, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
        )

    async def serve(self, call: Call) -> web.StreamResponse:
        with self._slots.taken():
            return await serve_from_kafka(
                call,
                bootstrap=self._bootstrap,
                fetch_max_wait_ms=_FETCH_WAIT_MS,
                start=self._from_the_end,
                pump=self._pump,
            )

    async def _from_the_end(self, consumer: AIOKafkaConsumer) -> bytes:
        tps = [TopicPartition(self._topic, p) for p in range(self._partitions)]
        consumer.assign(tps)
        # Explicit offsets rather than seek_to_end, which resolves lazily and could
        # skip summaries written between the "live" comment and the first fetch.
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, ends[tp])
        # The comment tells a client the stream is live: summaries after it are not missed.
        return b"retry: 2000\n: streaming pool summaries from the end\n\n"

    async def _pump(self, consumer: AIOKafkaConsumer, response: web.StreamResponse) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=int(_KEEPALIVE_S * 1000))
            chunk = bytearray()
            for tp, records in batches.items():
                for record in records:
                    data = _one_line_json(record.value)
                    if data is None:
                        log.warning(
                            "dashboard skipped a bad summary partition=%d offset=%d",
                            tp.partition,
                            record.offset,
                        )
                        continue
                    chunk += b"id: %d-%d\nevent: summary\ndata: %s\n\n" % (
                        tp.partition,
                        record.offset,
                        data,
                    )
            await response.write(bytes(chunk) if chunk else b": keepalive\n\n")


def _one_line_json(value: bytes | None) -> bytes | None:
    """The value re-encoded on one line (a newline would end the SSE event), or None."""
    if value is None:
        return None
    try:
        return orjson.dumps(orjson.loads(value))
    except orjson.JSONDecodeError:
        return None


@web.middleware
async def _token_from_query(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Moves `?access_token=` of the dashboard stream into the Authorization header.

    Only that route: elsewhere a token in a URL would end up in proxies' logs and
    browser histories for no gain, since every other client can send the header.
    """
    token = request.query.get(TOKEN_PARAM)
    if request.path != STREAM_PATH or token is None or "Authorization" in request.headers:
        return await handler(request)
    headers = request.headers.copy()
    headers["Authorization"] = f"Bearer {token}"
    query = request.rel_url.query.copy()
    del query[TOKEN_PARAM]
    # The handler never sees the token in the URL, so nothing downstream can log it.
    return await handler(request.clone(headers=headers, rel_url=request.rel_url.with_query(query)))
