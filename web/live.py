"""`GET /pools/{pool_id}/stream`: a caller's status events as Server-Sent Events.

Any worker can serve any pool: a pool's status events all sit in one partition of
`match.status` (keyed by pool_id), so each connection reads that partition with its
own consumer, from the end or from just after the `Last-Event-ID` it names. Event
ids are `<partition>-<offset>`, which makes a reconnect lose nothing and repeat
nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from web.auth import HttpError
from web.event_stream import StreamSlots, serve_from_kafka
from web.routing import Call, QueryParam, Route

__all__ = ["StatusStreams", "partition_of"]

log = logging.getLogger(__name__)

_KEEPALIVE_S = 10.0  # also how soon a vanished client is noticed
_FETCH_WAIT_MS = 20  # bounds the added latency of an idle partition
_EVENT_ID = re.compile(r"(?P<partition>[0-9]{1,6})-(?P<offset>[0-9]{1,18})")


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a key (murmur2, as Java)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class _Start:
    partition: int
    offset: int | None
    """First offset to send; None means the end of the partition at connect time."""


class StatusStreams:
    """Serves live status streams, at most `max_streams` at once per worker.

    Example:
        >>> StatusStreams(bootstrap=["127.0.0.1:9092"], topic="match.status",
        ...               partitions=8).open_streams
        0
    """

    def __init__(
        self,
        *,
        bootstrap: list[str],
        topic: str,
        partitions: int,
        max_streams: int = 500,
        on_count: Callable[[int], None] = lambda count: None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._partitions = partitions
        self._slots = StreamSlots(limit=max_streams, what="streams", on_count=on_count)

    @property
    def open_streams(self) -> int:
        return self._slots.open

    def route(self) -> Route:
        return Route(
            "GET",
            "/pools/{pool_id}/stream",
            self.serve,
            "Live status events of the caller (Server-Sent Events)",
            "user",
            query=(
                QueryParam("user_id", "Admins only: the user whose events to send (default all)."),
                QueryParam("last_event_id", "Resume after this event id (as the header)."),
            ),
            errors=(401, 403, 422, 503),
            streams=True,
        )

    async def serve(self, call: Call) -> web.StreamResponse:
        pool_id = call.params["pool_id"]
        user_filter = call.caller.user_id if not call.caller.admin else call.query.get("user_id")
        start = self._start(pool_id, call)
        tp = TopicPartition(self._topic, start.partition)

        async def from_start(consumer: AIOKafkaConsumer) -> bytes:
            consumer.assign([tp])
            offset = start.offset
            if offset is None:
                offset = (await consumer.end_offsets([tp]))[tp]
            consumer.seek(tp, offset)
            # The comment tells a client the stream is live: events after it are not missed.
            return f"retry: 1000\n: streaming from offset {offset}\n\n".encode()

        async def pump(consumer: AIOKafkaConsumer, response: web.StreamResponse) -> None:
            await self._pump(consumer, tp, response, pool_id, user_filter)

        with self._slots.taken():
            return await serve_from_kafka(
                call,
                bootstrap=self._bootstrap,
                fetch_max_wait_ms=_FETCH_WAIT_MS,
                start=from_start,
                pump=pump,
            )

    async def _pump(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        response: web.StreamResponse,
        pool_id: str,
        user_filter: str | None,
    ) -> None:
        while True:
            batches = await consumer.getmany(tp, timeout_ms=int(_KEEPALIVE_S * 1000))
            records = batches.get(tp, [])
            if not records:
                await response.write(b": keepalive\n\n")
                continue
            chunk = bytearray()
            for record in records:
                if record.key != pool_id.encode() or record.value is None:
                    continue  # another pool hashed to the same partition
                event = orjson.loads(record.value)
                if user_filter is not None and event.get("user_id") != user_filter:
                    continue
                chunk += b"id: %d-%d\nevent: %s\ndata: %s\n\n" % (
                    tp.partition,
                    record.offset,
                    str(event.get("status", "status")).encode(),
                    record.value,
                )
            if chunk:
                await response.write(bytes(chunk))

    def _start(self, pool_id: str, call: Call) -> _Start:
        partition = partition_of(pool_id, self._partitions)
        last = call.request.headers.get("Last-Event-ID") or call.query.get("last_event_id")
        if not last:
            return _Start(partition, None)
        # ASCII digits, bounded: str.isdigit() accepts "²", which int() refuses, and int()
        # refuses more than 4,300 digits; either would have answered 500.
        named = _EVENT_ID.fullmatch(last)
        if named is None:
            raise HttpError(422, "Last-Event-ID: expected <partition>-<offset>")
        if int(named["partition"]) != partition:
            raise HttpError(422, "Last-Event-ID: that event is not from this pool's stream")
        return _Start(partition, int(named["offset"]) + 1)
