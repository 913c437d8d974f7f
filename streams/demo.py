"""`matchstream demo`: a local broker, a worker and a generated workload, live, then two
networking events (`streams.demo_events`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from streams.demo_events import reading_from_now, run_event_demos
from streams.kafka_local import LocalKafka
from streams.produce import produce_messages
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics, wait_until_consumed
from streams.worker_process import WorkerProcess
from streams.workload import Workload

__all__ = ["run_demo"]


def run_demo(settings: Settings, *, requests: int, pools: int, keep_running: bool = True) -> int:
    """Start everything, feed a workload, show the outcome as it happens.

    Args:
        settings: broker port, data dir and web port come from here.
        requests: how many match requests to produce.
        pools: over how many pools.
        keep_running: leave the worker running until Ctrl-C (else stop it at the end).
    """
    broker = LocalKafka(
        port=settings.broker_port,
        data_dir=settings.data_dir,
        cache_dir=settings.kafka_cache_dir,
    )
    print(f"starting Kafka on {settings.broker_hosts[0]} (data in {settings.data_dir})")
    broker.start(timeout_s=120)
    asyncio.run(ensure_topics(settings))
    log_path = Path(settings.data_dir) / "demo-worker.log"
    worker = WorkerProcess(settings, log_path)
    worker.start()
    try:
        asyncio.run(worker.wait_ready(timeout_s=120))
        print(f"worker ready (log: {log_path})")
        # Printed before the workload so the pools can be watched filling and emptying.
        print(f"dashboard: http://127.0.0.1:{settings.web_port}/", flush=True)
        # Fresh ids per run: the broker and tables in the data dir outlive a demo, and a
        # request id seen before is a no-op, so a second demo would match nobody.
        workload = Workload(requests=requests, pools=pools, run_id=f"demo-{uuid.uuid4().hex[:6]}")
        asyncio.run(_feed_and_watch(settings, workload))
        asyncio.run(run_event_demos(settings))
        _print_where_to_look(settings, log_path)
        if keep_running and worker.process is not None:
            print("worker keeps running; Ctrl-C stops it (the broker stays up)")
            worker.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()
    return 0


async def _feed_and_watch(settings: Settings, workload: Workload) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    messages = list(workload.messages())
    configure = [m for m in messages if m.kind == "configure"]
    rest = [m for m in messages if m.kind != "configure"]
    await produce_messages(settings, configure, total=len(configure), progress=False)
    await wait_until_consumed(settings, names.command, timeout_s=60)
    async with reading_from_now(settings, names.status, names.found, names.dlq) as consumer:
        producing = asyncio.create_task(
            produce_messages(settings, rest, total=len(rest), progress=False)
        )
        counts = await _watch(consumer, names, producing)
    print("\noutcome:", " ".join(f"{key}={value}" for key, value in sorted(counts.items())))


async def _watch(
    consumer: AIOKafkaConsumer, names: TopicNames, producing: asyncio.Task[Counter[str]]
) -> Counter[str]:
    """Print live counts until production ended and outputs were quiet for 3 s."""
    counts: Counter[str] = Counter()
    started = last_change = last_print = time.monotonic()
    while not producing.done() or time.monotonic() - last_change < 3.0:
        batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
        for tp, messages in batches.items():
            last_change = time.monotonic()
            for message in messages:
                if tp.topic == names.status:
                    counts[orjson.loads(message.value)["status"]] += 1
                elif tp.topic == names.found:
                    counts["match.found"] += 1
                else:
                    counts["dlq"] += 1
        if time.monotonic() - last_print >= 1.0:
            last_print = time.monotonic()
            line = " ".join(f"{key}={value}" for key, value in sorted(counts.items()))
            print(f"[{last_print - started:5.1f}s] {line}", flush=True)
    producing.result()
    return counts


def _print_where_to_look(settings: Settings, log_path: Path) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    print(
        "\nwhere to look:\n"
        f"  dashboard         http://127.0.0.1:{settings.web_port}/\n"
        f"  pools (JSON)      http://127.0.0.1:{settings.web_port}/pools\n"
        f"  API description   http://127.0.0.1:{settings.web_port}/openapi.json\n"
        f"  metrics           http://127.0.0.1:{settings.web_port}/metrics\n"
        f"  worker log        {log_path}\n"
        f"  worker health     http://127.0.0.1:{settings.web_port}/readyz\n"
        f"  output topics     {names.found}, {names.status}, {names.recommendations}, "
        f"{names.dlq} on {settings.broker_hosts[0]}\n"
        "  stop the broker   matchstream kafka stop"
    )
