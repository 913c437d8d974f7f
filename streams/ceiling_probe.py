"""A Faust worker that does the least a matcher must do per request: `bench --scenario ceiling`.

It reads `match.request` messages from one topic with a Faust agent, validates each
one as the matcher does, writes state records to a second topic and outputs to a
third. It keeps no table, commits nothing but Faust's own offsets and runs no output
relay, so its rate is an upper bound for any matcher built on Faust's agents:

- `per-event`: one event at a time, as the matcher reads its input; one state record
  and two outputs per request (the `queued` and `matched` statuses most requests get).
- `batched`: `take_events` batches; two outputs per request, and one state record
  per partition and batch holding every request of it (the compact, batched state
  design of docs/performance.md, "Faust's per-event ceiling").
- `batched-engine`: the same batches through the real `MatchEngine`; every state
  record it writes is encoded into its partition's batch record, and the outputs the
  output relay would derive from the record are built from it at once and sent.

All three use the most favourable client settings found for a backlog (1 MiB
produce batches, 20 ms linger) and the worker's eager hand-over of fetched messages.

Run as `python -m streams.ceiling_probe --design batched --input T --state T --output T`
with the worker's environment (broker, partitions, app id, event loop).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from faust import Stream
from faust.types import EventT, StreamT

from matching.engine import MatchEngine
from models.codec import decode, dumps
from models.messages import MatchRequest
from streams import eager_handover
from streams.relay import outputs_of
from streams.runtime import tune_process, use_event_loop
from streams.settings import Settings, get_settings
from streams.topics import TopicNames

__all__ = ["DESIGNS", "OUTPUTS_PER_REQUEST", "create_probe", "main"]

DESIGNS = ("per-event", "batched", "batched-engine")
OUTPUTS_PER_REQUEST = 2
"""Outputs a request causes in the designs without the engine."""
_BATCH_EVENTS = 2_000
_BATCH_WITHIN_S = 0.02
_PRODUCE_BATCH_BYTES = 1024**2
_LINGER_S = 0.02

Send = Callable[[str, bytes | None, bytes, int], Awaitable[Any]]


def create_probe(
    settings: Settings, *, design: str, input_topic: str, state_topic: str, output_topic: str
) -> faust.App:
    """The probe's Faust app, its one agent registered for `design`.

    Raises:
        ValueError: `design` is not one of `DESIGNS`.
    """
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}, expected one of {DESIGNS}")
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        store="memory://",
        datadir=str(settings.data_dir / "probe"),
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=_LINGER_S,
        producer_max_batch_size=_PRODUCE_BATCH_BYTES,
        processing_guarantee="at_least_once",
        web_enabled=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    eager_handover.install(app.consumer)

    def send(topic: str, key: bytes | None, value: bytes, partition: int) -> Awaitable[Any]:
        # The producer itself, as `streams.state_writer` writes: Faust's buffer costs more.
        return app.producer.send(topic, key, value, partition, None, None)

    async def per_event(stream: StreamT) -> None:
        async for event in stream.events():
            request = decode(MatchRequest, event.value)
            partition = event.message.partition
            await send(state_topic, request.request_id.encode(), event.value, partition)
            for _ in range(OUTPUTS_PER_REQUEST):
                await send(output_topic, event.message.key, event.value, partition)

    async def batched(stream: StreamT) -> None:
        async for events in _batches(stream):
            batch: defaultdict[int, list[bytes]] = defaultdict(list)
            for event in events:
                decode(MatchRequest, event.value)
                partition = event.message.partition
                batch[partition].append(event.value)
                for _ in range(OUTPUTS_PER_REQUEST):
                    await send(output_topic, event.message.key, event.value, partition)
            await _send_batch(send, state_topic, batch)

    async def batched_engine(stream: StreamT) -> None:
        engine = MatchEngine()
        relay_topics = TopicNames.with_prefix(settings.topic_prefix)
        async for events in _batches(stream):
            batch: defaultdict[int, list[bytes]] = defaultdict(list)
            now = time.time()
            for event in events:
                partition = event.message.partition
                request = decode(MatchRequest, event.value)
                effects = engine.handle_request(request, partition=partition, now=now)
                for _key, record in effects.writes:
                    batch[partition].append(dumps(record))
                    for _topic, out_key, out_value in outputs_of(record, relay_topics):
                        await send(output_topic, out_key, out_value, partition)
                for notice in effects.notices:
                    await send(output_topic, notice.pool_id.encode(), dumps(notice), partition)
            await _send_batch(send, state_topic, batch)

    agents = {"per-event": per_event, "batched": batched, "batched-engine": batched_engine}
    app.agent(app.topic(input_topic), name="probe", concurrency=1)(agents[design])
    return app


def _batches(stream: StreamT) -> AsyncIterator[Sequence[EventT]]:
    # `StreamT` does not declare `take_events`; an agent's stream is a `Stream`.
    return cast(Stream[Any], stream).take_events(_BATCH_EVENTS, within=_BATCH_WITHIN_S)


async def _send_batch(send: Send, topic: str, batch: dict[int, list[bytes]]) -> None:
    for partition, records in batch.items():
        await send(topic, b"batch", b"\n".join(records), partition)


def main(argv: list[str] | None = None) -> None:
    """Run the probe's worker until it is stopped (SIGTERM)."""
    parser = argparse.ArgumentParser(prog="python -m streams.ceiling_probe")
    parser.add_argument("--design", choices=DESIGNS, required=True)
    parser.add_argument("--input", dest="input_topic", required=True)
    parser.add_argument("--state", dest="state_topic", required=True)
    parser.add_argument("--output", dest="output_topic", required=True)
    args = parser.parse_args(argv)
    tune_process()  # the worker's collector settings: they change its CPU per request
    settings = get_settings()
    use_event_loop(settings.event_loop)
    app = create_probe(
        settings,
        design=args.design,
        input_topic=args.input_topic,
        state_topic=args.state_topic,
        output_topic=args.output_topic,
    )
    sys.argv = [sys.argv[0], "worker", "--loglevel", "info"]
    app.main()


if __name__ == "__main__":
    main()
