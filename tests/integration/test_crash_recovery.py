"""A worker killed with SIGKILL comes back with every waiting request, and nothing twice."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import Settings
from streams.topics import TopicNames
from tests.support.harness import OutputReader, Outputs, send_messages

pytestmark = pytest.mark.integration

POOLS = [f"crash-{index}" for index in range(12)]


def _request(pool: str, side: str, level: str = "x") -> bytes:
    return orjson.dumps(
        {
            "request_id": f"{pool}-{side}",
            "pool_id": pool,
            "user_id": f"{pool}-user-{side}",
            "criteria": {"level": level},
        }
    )


async def test_waiting_requests_survive_sigkill(settings: Settings, worker_factory) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        await worker.wait_ready()
        await send_messages(
            settings, [(names.request, p.encode(), _request(p, "a")) for p in POOLS]
        )
        await reader.wait_for(
            lambda out: sum(e["status"] == "queued" for e in out.statuses) >= len(POOLS),
            timeout_s=60,
            what="every first request queued",
        )
        worker.kill()

        # Partners arrive while the worker is down; nothing may be lost either way.
        await send_messages(
            settings, [(names.request, p.encode(), _request(p, "b")) for p in POOLS]
        )
        worker.start()
        await worker.wait_ready()
        outputs = await reader.wait_for(
            lambda out: len({f["match_id"] for f in out.found}) >= len(POOLS),
            timeout_s=120,
            what="a match in every pool after the restart",
        )
        outputs = await reader.settle()

    _assert_one_match_per_pool(outputs)
    assert "did not stop cleanly" in worker.log_text()
    assert "engine rebuilt" in worker.log_text()
    # Input waits while the group coordinator may have expired the worker (agents.membership).
    assert "group membership watch attached" in worker.log_text()
    # The discarded tables were copied back from the changelog before Faust's recovery.
    prefills = re.findall(r"changelog prefill records=(\d+)", worker.log_text())
    assert prefills and int(prefills[-1]) > 0, prefills


def _assert_one_match_per_pool(outputs: Outputs) -> None:
    by_match: dict[str, set[bytes]] = defaultdict(set)
    for found in outputs.found:
        by_match[str(found["match_id"])].add(orjson.dumps(found, option=orjson.OPT_SORT_KEYS))
    assert all(len(bodies) == 1 for bodies in by_match.values()), "match_id re-used differently"
    members = {
        m["request_id"]
        for found in outputs.found
        for m in found["members"]  # type: ignore[index]
    }
    assert members == {f"{p}-{side}" for p in POOLS for side in "ab"}
    assert len(by_match) == len(POOLS)
    matches_per_request: dict[str, set[object]] = defaultdict(set)
    for event in outputs.statuses:
        if event["status"] == "matched":
            matches_per_request[str(event["request_id"])].add(event["match_id"])
    assert all(len(ids) == 1 for ids in matches_per_request.values())


async def test_requests_after_the_last_input_mark_are_applied_again_as_no_ops(
    settings: Settings, worker_factory
) -> None:
    # Requests write no input mark of their own (agents.input_order.AppliedOffsets), so
    # after a crash the worker seeks back to the last mark and applies them again.
    names = TopicNames.with_prefix(settings.topic_prefix)
    configure = {"command": "configure", "config": {"match_on": ["level"]}}
    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        await worker.wait_ready()
        await send_messages(
            settings,
            [(names.command, p.encode(), orjson.dumps({**configure, "pool_id": p})) for p in POOLS],
        )
        # Two requests per pool that cannot match each other; each partition marks
        # only its first, so the others trail the mark.
        await send_messages(
            settings,
            [(names.request, p.encode(), _request(p, "a")) for p in POOLS]
            + [(names.request, p.encode(), _request(p, "c", level="y")) for p in POOLS],
        )
        await reader.wait_for(
            lambda out: sum(e["status"] == "queued" for e in out.statuses) >= 2 * len(POOLS),
            timeout_s=60,
            what="every request queued",
        )
        # Faust's committed offsets pass the trailing requests: only the seek back to
        # the mark brings them again.
        await _wait_committed(settings, names.request, timeout_s=60)
        worker.kill()

        await send_messages(
            settings, [(names.request, p.encode(), _request(p, "b")) for p in POOLS]
        )
        worker.start()
        await worker.wait_ready()
        await reader.wait_for(
            lambda out: len({f["match_id"] for f in out.found}) >= len(POOLS),
            timeout_s=120,
            what="a match in every pool after the restart",
        )
        outputs = await reader.settle()

    assert "after the last input mark" in worker.log_text(), "no seek back to a mark"
    bodies: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    for event in outputs.statuses:
        key = (str(event["request_id"]), str(event["status"]))
        bodies[key].add(orjson.dumps(event, option=orjson.OPT_SORT_KEYS))
    # Applied again, a request changed nothing: one body per status (re-emits are identical).
    assert all(len(found) == 1 for found in bodies.values()), bodies
    assert set(bodies) == {
        *((f"{p}-a", status) for p in POOLS for status in ("queued", "matched")),
        *((f"{p}-c", "queued") for p in POOLS),
        *((f"{p}-b", "matched") for p in POOLS),
    }


async def _wait_committed(settings: Settings, topic: str, *, timeout_s: float) -> None:
    """Wait until the worker's group has committed the end of every partition of `topic`."""
    hosts = ",".join(settings.broker_hosts)
    partitions = [TopicPartition(topic, number) for number in range(settings.topic_partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=hosts)
    admin = AIOKafkaAdminClient(bootstrap_servers=hosts)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(partitions)

        async def until_committed() -> None:
            while True:
                committed = await admin.list_consumer_group_offsets(settings.app_id)
                if all(tp in committed and committed[tp].offset >= end for tp, end in ends.items()):
                    return
                await asyncio.sleep(0.2)

        await asyncio.wait_for(until_committed(), timeout_s)
    finally:
        await admin.close()
        await consumer.stop()
