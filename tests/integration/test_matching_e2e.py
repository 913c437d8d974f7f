"""Black-box tests: a worker driven only through the contract's topics."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import orjson
import pytest

from models.messages import TERMINAL_STATUSES
from streams.audit import audit_topics
from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from streams.workload import Workload
from tests.support.harness import OutputReader, Outputs, send_messages

pytestmark = pytest.mark.integration


def _terminal_by_request(outputs: Outputs) -> dict[str, set[tuple[object, ...]]]:
    """Distinct terminal outcomes per request; identical re-emits count once."""
    ended: dict[str, set[tuple[object, ...]]] = defaultdict(set)
    for event in outputs.statuses:
        if event["status"] in TERMINAL_STATUSES and event.get("about") is None:
            ended[str(event["request_id"])].add((event["status"], event["match_id"]))
    return ended


def _request(pool: str, number: int, **extra: object) -> bytes:
    return orjson.dumps(
        {"request_id": f"{pool}-r{number}", "pool_id": pool, "user_id": f"u{number}", **extra}
    )


async def test_workload_every_request_ends_once_and_matches_follow_rules(
    settings: Settings, worker_factory
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    workload = Workload(requests=2_000, pools=40, malformed=50, seed=7, run_id="e2e")
    topics = {"request": names.request, "command": names.command}
    messages = list(workload.messages())
    requests = {
        orjson.loads(m.value)["request_id"]: orjson.loads(m.value)
        for m in messages
        if m.kind == "request"
    }
    configs = {
        orjson.loads(m.value)["pool_id"]: orjson.loads(m.value)["config"]
        for m in messages
        if m.kind == "configure"
    }
    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        # Topics are not ordered with each other: configure the pools first.
        await send_messages(
            settings, ((names.command, m.key, m.value) for m in messages if m.kind == "configure")
        )
        await worker.wait_ready()
        await wait_until_consumed(settings, names.command, timeout_s=60)
        await send_messages(
            settings,
            ((topics[m.topic_kind], m.key, m.value) for m in messages if m.kind != "configure"),
        )
        await reader.wait_for(lambda out: len(out.dlq) >= 50, timeout_s=120, what="50 DLQ records")
        # Close every pool so that requests still waiting for a partner end too.
        closes = (
            (names.command, pool.encode(), orjson.dumps({"command": "close", "pool_id": pool}))
            for pool in configs
        )
        await send_messages(settings, closes)
        outputs = await reader.wait_for(
            lambda out: set(_terminal_by_request(out)) >= set(requests),
            timeout_s=120,
            what="a terminal status for every request",
        )
        outputs = await reader.settle()

    ended = _terminal_by_request(outputs)
    assert not {rid: outcomes for rid, outcomes in ended.items() if len(outcomes) != 1}
    assert set(ended) == set(requests)
    assert len(outputs.dlq) == 50
    assert all(record["error"] for record in outputs.dlq)

    matches = {str(found["match_id"]): found for found in outputs.found}
    matched_requests = [m["request_id"] for found in matches.values() for m in found["members"]]
    assert len(matched_requests) == len(set(matched_requests)), "a request is in two matches"
    matched_status = {
        rid for rid, outcomes in ended.items() if next(iter(outcomes))[0] == "matched"
    }
    assert matched_status == set(matched_requests)
    assert len(matches) > 300
    for found in matches.values():
        config = configs[str(found["pool_id"])]
        members = [requests[m["request_id"]] for m in found["members"]]
        expected_size = 3 if config["mode"] == "group" else 2
        assert len(members) == expected_size, found
        assert len({member["user_id"] for member in members}) == expected_size
        for key in config.get("match_on", []):
            assert len({member["criteria"][key] for member in members}) == 1, found
        assert 0.0 <= float(found["score"]) <= 1.0

    report = await asyncio.wait_for(audit_topics(settings), 120)
    assert report.ok, report.render()
    assert report.still_active == 0
    assert report.terminal == len(requests)
    assert report.matches == len(matches)
    assert report.dlq == 50


async def test_lonely_request_expires_without_further_input(
    settings: Settings, worker_factory
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        await worker.wait_ready()
        await send_messages(settings, [(names.request, b"lonely", _request("lonely", 1, ttl_s=1))])
        outputs = await reader.wait_for(
            lambda out: any(e["status"] == "expired" for e in out.statuses),
            timeout_s=20,
            what="the expiry of a lonely request",
        )
    expired = [e for e in outputs.statuses if e["status"] == "expired"]
    assert expired[0]["request_id"] == "lonely-r1"
    assert expired[0]["reason"] == "ttl"


async def test_pause_queues_resume_matches_and_configure_takes_effect(
    settings: Settings, worker_factory
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)

    def command(pool: str, name: str, **extra: object) -> tuple[str, bytes, bytes]:
        body = {"command": name, "pool_id": pool, **extra}
        return names.command, pool.encode(), orjson.dumps(body)

    def statuses_of(out: Outputs, status: str) -> set[str]:
        return {str(e["request_id"]) for e in out.statuses if e["status"] == status}

    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        await worker.wait_ready()
        await send_messages(
            settings,
            [
                command("paused", "pause"),
                command("strict", "configure", config={"match_on": ["level"]}),
            ],
        )
        await wait_until_consumed(settings, names.command, timeout_s=60)
        await send_messages(
            settings,
            [
                (names.request, b"paused", _request("paused", 1)),
                (names.request, b"paused", _request("paused", 2)),
                (names.request, b"strict", _request("strict", 1, criteria={"level": "a"})),
                (names.request, b"strict", _request("strict", 2, criteria={"level": "b"})),
            ],
        )
        await reader.wait_for(
            lambda out: (
                statuses_of(out, "queued") >= {"paused-r1", "paused-r2", "strict-r1", "strict-r2"}
            ),
            timeout_s=60,
            what="four queued requests",
        )
        outputs = await reader.settle(quiet_s=2.0)
        assert not statuses_of(outputs, "matched"), "a paused or strict pool matched"

        await send_messages(
            settings, [command("paused", "resume"), command("strict", "configure", config={})]
        )
        outputs = await reader.wait_for(
            lambda out: (
                statuses_of(out, "matched") >= {"paused-r1", "paused-r2", "strict-r1", "strict-r2"}
            ),
            timeout_s=30,
            what="matches after resume and reconfigure",
        )
    assert {found["pool_id"] for found in outputs.found} == {"paused", "strict"}
