"""Summaries, `match.progress`, `/metrics` and `GET /pools` from real workers."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from tests.support.http import Api
from web.live import partition_of

pytestmark = pytest.mark.integration


def _base(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.web_port}"


async def _until(api: Api, path: str, check, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    """GET `path` until `check(body)` holds."""

    async def poll():  # type: ignore[no-untyped-def]
        while True:
            answer = await api.call("GET", path)
            if answer.status == 200 and check(answer.body):
                return answer.body
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), timeout_s)


async def test_summary_progress_and_metrics_follow_a_scripted_pool(
    settings: Settings, worker_factory
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    async with Api(_base(settings)) as api:
        assert (await api.call("PUT", "/pools/obs", json={"match_on": ["level"]})).status == 202
        await wait_until_consumed(settings, names.command, timeout_s=60)
        for user, level in [("a", 1), ("b", 1), ("c", 2), ("d", 2), ("e", 3)]:
            body = {"user_id": user, "criteria": {"level": level}}
            assert (await api.call("POST", "/pools/obs/requests", json=body)).status == 202
        summary = await _until(api, "/pools/obs/summary", lambda b: b["requests_total"] == 5)
        alias = await api.call("GET", "/jobs/obs/matching/summary?force_refresh=true")
        missing = await api.call("GET", "/jobs/nope/matching/summary")
        scraped = await api.session.get(api.base_url + "/metrics")
        metrics_text = await scraped.text()
        await api.call("POST", "/pools/obs/close")
        await _until(api, "/pools/obs/summary", lambda b: b["status"] == "completed")

    assert (summary["matches_found"], summary["waiting"], summary["status"]) == (2, 1, "running")
    assert summary["wait_p50_s"] is not None and summary["queue_depth"] >= 1
    assert alias.status == 200 and alias.body["job_id"] == "obs"
    assert missing.status == 404 and missing.body == {"detail": "Job not found"}

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
    }
    assert samples[("matchstream_matches_total", (("mode", "pair"), ("pool", "obs")))] == 2
    assert samples[("matchstream_requests_total", (("outcome", "matched"), ("pool", "obs")))] == 4
    assert samples[("matchstream_waiting_requests", (("pool", "obs"),))] == 1
    assert samples[("matchstream_wait_seconds_count", (("pool", "obs"),))] == 4
    assert samples[("matchstream_match_latency_seconds_count", (("pool", "obs"),))] == 2

    snapshots = await _read_progress(settings, "obs", until_status="completed")
    assert snapshots[-1]["status"] == "completed" and snapshots[-1]["expired"] == 1
    stamps = [snapshot["at"] for snapshot in snapshots]
    assert stamps == sorted(stamps)
    # At most one snapshot per second: the workload above took a few seconds at most.
    assert len(snapshots) <= 2 + _seconds_between(stamps[0], stamps[-1])


async def test_two_workers_list_and_summarize_each_others_pools(
    settings: Settings, worker_factory, tmp_path: Path
) -> None:
    pools: dict[int, str] = {}
    for n in range(1000):
        pools.setdefault(partition_of(f"room-{n}", settings.topic_partitions), f"room-{n}")
    workers = [worker_factory(tmp_path / "w0"), worker_factory(tmp_path / "w1")]
    for worker in workers:
        worker.start()
    for worker in workers:
        await worker.wait_ready()
    async with Api(_base(workers[0].settings)) as first, Api(_base(workers[1].settings)) as second:
        for pool in pools.values():
            await first.call("POST", f"/pools/{pool}/requests", json={"user_id": "solo"})
        everyone = sorted(pools.values())
        lists = [
            await _until(
                api,
                "/pools",
                lambda b: [p["pool_id"] for p in b["pools"]] == everyone and not b["unreachable"],
                timeout_s=60,
            )
            for api in (first, second)
        ]
        summaries = [
            (await api.call("GET", f"/pools/{pool}/summary")).body["requests_total"]
            for pool in everyone
            for api in (first, second)
        ]
    assert [p["waiting"] for p in lists[0]["pools"]] == [1] * len(everyone)
    assert summaries == [1] * (2 * len(everyone))


async def _read_progress(settings: Settings, pool_id: str, *, until_status: str) -> list[dict]:
    names = TopicNames.with_prefix(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        names.progress,
        bootstrap_servers=",".join(settings.broker_hosts),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    snapshots: list[dict] = []

    async def read() -> None:
        while not snapshots or snapshots[-1]["status"] != until_status:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                snapshots.extend(
                    body
                    for body in (orjson.loads(m.value) for m in messages)
                    if body["pool_id"] == pool_id
                )

    await consumer.start()
    try:
        await asyncio.wait_for(read(), 30)
    finally:
        await consumer.stop()
    return snapshots


def _seconds_between(first: str, last: str) -> int:
    return int((datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds())
