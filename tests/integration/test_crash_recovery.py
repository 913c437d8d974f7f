"""A worker killed with SIGKILL comes back with every waiting request."""

from __future__ import annotations

import re
from collections import defaultdict

import orjson
import pytest

from streams.settings import Settings
from streams.topics import TopicNames
from tests.support.harness import OutputReader, Outputs, send_messages

pytestmark = pytest.mark.integration

POOLS = [f"crash-{index}" for index in range(12)]


def _request(pool: str, side: str) -> bytes:
    return orjson.dumps(
        {
            "request_id": f"{pool}-{side}",
            "pool_id": pool,
            "user_id": f"{pool}-user-{side}",
            "criteria": {"level": "x"},
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
