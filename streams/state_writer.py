"""Writes to the state table that go straight to its store and the Kafka client.

`table[key] = value` in Faust puts each changelog message in the producer's buffer,
and a background task hands them to the Kafka client one by one through the topic's
publish path. In the stream bench, going around that buffer cut the worker's CPU per
request by a tenth to a fifth, and a decision no longer waits in the buffer (up to
tens of milliseconds at the 99th percentile) before it reaches the client
(docs/performance.md, "Table writes without Faust's buffer").

`StateWriter.write` does what that path does, without the buffer: the value goes to
the table's store, and the changelog record to the app's producer with the same key
bytes, in the partition of the event being processed; once the broker has
acknowledged the record, its offset is stored as the store's persisted offset. The
records are sent before the input's processing ends, so the producer's flush before a
commit or a hand-over waits for them (`streams.durable_producer`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from typing import cast

import faust
from faust.streams import current_event
from faust.types import TP, TableT
from faust.types.stores import StoreT
from faust.types.tuples import RecordMetadata

__all__ = ["StateWriter"]


class StateWriter:
    """Writes (key, value) entries of one table from inside stream processing.

    Example:
        >>> writer = StateWriter(app=stream.app, table=stream.state)
        >>> await writer.write([("p/lobby", b"{...}")])  # inside an agent's iteration
    """

    def __init__(self, *, app: faust.App, table: TableT) -> None:
        self._app = app
        self._table = table
        self._topic = table.changelog_topic.get_topic_name()

    def changelog_key(self, key: str) -> bytes | None:
        """The key bytes of `key`'s changelog records, as Faust's table writes them."""
        schema = self._table.changelog_topic.schema
        return self._app.serializers.dumps_key(
            schema.key_type, key, serializer=schema.key_serializer
        )

    async def write(self, entries: Iterable[tuple[str, bytes]]) -> None:
        """Store each entry and send it to the changelog, in order.

        As with Faust's table writes, the changelog partition (and the store's
        partition) is the partition of the event being processed.

        Raises:
            RuntimeError: called outside stream processing.
            Exception: whatever the producer's send raised; the producer keeps it as
                its send failure, so no offset is committed after it.
        """
        event = current_event()
        if event is None:
            raise RuntimeError("state writes happen inside stream processing")
        partition = event.message.partition
        # The store and the producer exist once the app runs, not when it is built.
        # (`TableT` types its store as a mapping; a table's `data` is its `StoreT`.)
        store = cast(StoreT, self._table.data)
        producer = self._app.producer
        remember_offset = functools.partial(_remember_offset, store, TP(self._topic, partition))
        for key, value in entries:
            # The store encodes the key itself: only some stores take encoded keys.
            store[key] = value
            raw_key = self.changelog_key(key)
            acknowledged = await producer.send(self._topic, raw_key, value, partition, None, None)
            asyncio.ensure_future(acknowledged).add_done_callback(remember_offset)


def _remember_offset(store: StoreT, tp: TP, acknowledged: asyncio.Future[RecordMetadata]) -> None:
    # A failed send is the producer's to report (DurableProducer.send_failure).
    if acknowledged.cancelled() or acknowledged.exception() is not None:
        return
    store.set_persisted_offset(tp, acknowledged.result().offset)
