"""Against a real broker: the fetch window changes how aiokafka fetches, and a worker opens and closes it.

The window sets two private settings of aiokafka's fetcher, so these tests are what
notices another aiokafka (or Faust) that no longer reads them.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.fetch_window import FetchWindow
from streams.settings import Settings
from streams.topics import TopicNames
from tests.support.clock import ManualClock
from tests.support.harness import logged

pytestmark = pytest.mark.integration

_WINDOW_MS = 5_000
_RECORDS = 5
_SPACING_S = 0.1


def _set_rate(window: FetchWindow, clock: ManualClock, per_s: int) -> None:
    """Two checks one second apart with `per_s` messages between them."""
    window.observe(0, behind=0)
    clock.now += 1.0
    window.observe(per_s, behind=0)


async def _first_batch_of_spaced_records(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, topic: str
) -> int:
    """Send `_RECORDS` records `_SPACING_S` apart; how many the first fetch that has any brings."""
    first = asyncio.ensure_future(consumer.getmany(timeout_ms=30_000))
    for number in range(_RECORDS):
        await producer.send_and_wait(topic, value=b"record %d" % number)
        await asyncio.sleep(_SPACING_S)  # the records' spacing is the workload, not a wait
    batches = await asyncio.wait_for(first, 30)
    return sum(len(records) for records in batches.values())


async def test_an_open_window_brings_spaced_records_in_one_fetch_and_a_closed_one_does_not(
    kafka_bootstrap: str,
) -> None:
    topic = f"fetch-window-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await producer.start()
    await consumer.start()
    try:
        clock = ManualClock()
        window = FetchWindow(
            window_ms=_WINDOW_MS,
            window_bytes=64 * 1024,
            busy_per_s=200.0,
            quiet_per_s=100.0,
            backlog_messages=500,
            clock=clock,
        )
        fetcher = consumer._fetcher

        _set_rate(window, clock, 1_000)
        window.apply(fetcher)
        # A fetch sent before the window may still be waiting: a first record ends it.
        await producer.send_and_wait(topic, value=b"before the window")
        await asyncio.wait_for(consumer.getone(), 30)
        assert await _first_batch_of_spaced_records(consumer, producer, topic) == _RECORDS

        _set_rate(window, clock, 0)
        window.apply(fetcher)
        await producer.send_and_wait(topic, value=b"after the window")  # ends the held fetch
        await asyncio.wait_for(consumer.getone(), 30)
        assert await _first_batch_of_spaced_records(consumer, producer, topic) < _RECORDS
        assert fetcher._fetch_max_wait_ms == 100 and fetcher._fetch_min_bytes == 1
    finally:
        await consumer.stop()
        await producer.stop()


async def test_a_worker_opens_the_window_under_paced_input_and_closes_it_when_input_stops(
    settings: Settings, worker_factory
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()

    producer = AIOKafkaProducer(bootstrap_servers=",".join(settings.broker_hosts), acks="all")
    await producer.start()

    async def paced_requests() -> None:
        """About 400 requests/s, in steps of 4 every 10 ms, until cancelled."""
        sent = 0
        while True:
            for _ in range(4):
                body = {"request_id": f"r{sent}", "pool_id": f"p{sent % 50}", "user_id": f"u{sent}"}
                await producer.send(
                    names.request, value=orjson.dumps(body), key=b"p%d" % (sent % 50)
                )
                sent += 1
            await asyncio.sleep(0.01)  # the pace is the workload, not a wait

    pacing = asyncio.ensure_future(paced_requests())
    try:
        opened = await logged(worker, r"fetch window opened rate_per_s=(\d+) behind=(\d+)")
    finally:
        pacing.cancel()
        await asyncio.gather(pacing, return_exceptions=True)
        await producer.flush()
        await producer.stop()
    assert int(opened.group(1)) >= 200 and int(opened.group(2)) <= 500
    closed = await logged(worker, r"fetch window closed rate_per_s=(\d+)", after=opened.end())
    assert int(closed.group(1)) < 100
    assert "fetch window off" not in worker.log_text()
