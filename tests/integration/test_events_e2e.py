"""Networking events over Kafka: a `recommend` pool and a seated `batch` meetup.

Driven only through the contract's topics (`match.request`, `profile-update`,
`pool.command`) and read back from `match.recommendations`, `match.status`,
`match.found` and `match.dlq`.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from tests.support.harness import OutputReader, Outputs, send_messages

pytestmark = pytest.mark.integration

Message = tuple[str, bytes, bytes]


def _latest(out: Outputs) -> dict[tuple[str, str], dict[str, Any]]:
    """Each user's newest list per pool."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for lists in out.recommendations:
        latest[(lists["pool_id"], lists["user_id"])] = lists
    return latest


def _top(out: Outputs, pool: str, user: str) -> list[str] | None:
    lists = _latest(out).get((pool, user))
    return None if lists is None else [entry["user_id"] for entry in lists["top"]]


def _statuses(out: Outputs, request_id: str) -> list[str]:
    return [str(e["status"]) for e in out.statuses if e["request_id"] == request_id]


def _check_versions_and_changes(out: Outputs) -> None:
    """Versions go 1, 2, 3, ... per user, and a list is sent only when it changed."""
    seen: dict[tuple[str, str], tuple[int, Any]] = {}
    for lists in out.recommendations:
        key = (lists["pool_id"], lists["user_id"])
        before = seen.get(key)
        assert lists["version"] == (before[0] + 1 if before else 1), lists
        assert before is None or before[1] != lists["top"], f"unchanged list re-sent: {lists}"
        seen[key] = (lists["version"], lists["top"])


async def test_recommend_pool_with_joins_leaves_and_profile_updates(
    settings: Settings, worker_factory
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    pool = "networking"

    def request(user: str, interests: list[str] | None, *, priority: int = 0) -> Message:
        body: dict[str, Any] = {
            "request_id": f"{pool}-{user}",
            "pool_id": pool,
            "user_id": user,
            "priority": priority,
        }
        if interests is not None:
            body["profile"] = {"interests": interests, "opinions": [f"{user} likes meetups"]}
        return names.request, pool.encode(), orjson.dumps(body)

    def profile(user: str, interests: list[str], at: str, *, key: str | None = None) -> Message:
        body = {"user_id": user, "profile": {"interests": interests}, "updated_at": at}
        return names.profile, (key or user).encode(), orjson.dumps(body)

    configure = {
        "command": "configure",
        "pool_id": pool,
        "config": {
            "mode": "recommend",
            "top_k": 2,
            "request_ttl_s": None,
            "weights": {"interests": 1.0, "opinions": 0.5},
        },
    }
    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        await worker.wait_ready()
        await send_messages(settings, [(names.command, pool.encode(), orjson.dumps(configure))])
        await wait_until_consumed(settings, names.command, timeout_s=60)
        # eve has no profile in her request: the one she stored first is used.
        await send_messages(settings, [profile("eve", ["rust", "chess"], "2026-11-23T10:00:00Z")])
        await wait_until_consumed(settings, names.profile, timeout_s=30)
        await wait_until_consumed(settings, names.profile_changes, timeout_s=30)
        await send_messages(
            settings,
            [
                request("ann", ["hiking", "rust"], priority=3),
                request("bob", ["hiking"]),
                request("cid", ["rust"]),
                request("dan", ["golf"]),
                request("eve", None),
            ],
        )
        users = ["ann", "bob", "cid", "dan", "eve"]
        outputs = await reader.wait_for(
            lambda out: all(_top(out, pool, user) for user in users),
            timeout_s=30,
            what="a list for every attendee",
        )
        assert _top(outputs, pool, "ann") == ["bob", "cid"]  # hiking, then rust (tie -> cid)
        assert _top(outputs, pool, "eve")[0] == "cid"  # rust, from her stored profile

        # dan now shares hiking and rust with ann; an older update and a misrouted
        # one change nothing.
        await send_messages(
            settings,
            [
                profile("dan", ["hiking", "rust"], "2026-11-23T10:05:00Z"),
                profile("dan", ["golf", "chess"], "2026-11-23T09:00:00Z"),
                profile("dan", ["knitting"], "2026-11-23T11:00:00Z", key="not-dan"),
            ],
        )
        outputs = await reader.wait_for(
            lambda out: (
                _top(out, pool, "ann") == ["dan", "bob"]
                and _latest(out)[(pool, "dan")]["version"] >= 2
                and bool(out.dlq)
            ),
            timeout_s=30,
            what="ann's list led by dan after dan's profile update, and the misrouted one in the DLQ",
        )
        assert _top(outputs, pool, "dan") == ["ann", "bob"]
        assert "keyed by their user_id" in str(outputs.dlq[0]["error"])

        cancel = {"type": "cancel", "request_id": f"{pool}-bob", "pool_id": pool, "user_id": "bob"}
        await send_messages(settings, [(names.request, pool.encode(), orjson.dumps(cancel))])
        outputs = await reader.wait_for(
            lambda out: (
                _top(out, pool, "bob") == []
                and all("bob" not in (_top(out, pool, user) or []) for user in users)
            ),
            timeout_s=30,
            what="bob gone from every list after his cancel",
        )
        outputs = await reader.settle(quiet_s=2.0)

    _check_versions_and_changes(outputs)
    assert _top(outputs, pool, "ann") == ["dan", "cid"]
    for user in ["ann", "cid", "dan", "eve"]:
        assert _statuses(outputs, f"{pool}-{user}") == ["queued"]  # profile updates send none
    assert _statuses(outputs, f"{pool}-bob") == ["queued", "cancelled"]
    assert not outputs.found
    latest = _latest(outputs)
    assert latest[(pool, "ann")]["top"][0]["reasons"] == ["shared interests: hiking, rust"]
    assert latest[(pool, "ann")]["version"] >= 3


async def test_batch_meetup_from_requests_to_seats(settings: Settings, worker_factory) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)
    pool = "ai-meetup-2025"
    interests = {
        "ann": ["hiking", "llms"],
        "bob": ["hiking", "llms", "rust"],
        "cid": ["chess"],
        "dan": ["chess", "go"],
        "eve": ["rust"],
        "fay": ["rust", "chess"],
        "gus": ["knitting"],
    }
    configure = {
        "command": "configure",
        "pool_id": pool,
        "config": {
            "mode": "batch",
            "name": "AI Meetup 2025",
            "tables": 2,
            "seats_per_table": 3,
            "chaos": 0,
            "request_ttl_s": None,
        },
    }
    start = orjson.dumps({"command": "start_matching", "pool_id": pool})
    requests = [
        (
            names.request,
            pool.encode(),
            orjson.dumps(
                {
                    "request_id": f"{pool}-{user}",
                    "pool_id": pool,
                    "user_id": user,
                    "profile": {"interests": items},
                    "priority": 1 if user == "gus" else 0,
                }
            ),
        )
        for user, items in interests.items()
    ]
    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        await worker.wait_ready()
        await send_messages(settings, [(names.command, pool.encode(), orjson.dumps(configure))])
        await wait_until_consumed(settings, names.command, timeout_s=60)
        await send_messages(settings, requests)
        await reader.wait_for(
            lambda out: sum(e["status"] == "queued" for e in out.statuses) == len(interests),
            timeout_s=30,
            what="every attendee queued",
        )
        assert not reader.outputs.found, "batch pools wait for start_matching"
        # The second start is handled right after the first, while its run is computed
        # in a thread (results are applied at a later tick), so it is refused.
        await send_messages(
            settings, [(names.command, pool.encode(), start), (names.command, pool.encode(), start)]
        )
        outputs = await reader.wait_for(
            lambda out: all(
                _statuses(out, f"{pool}-{user}")[-1:] in (["matched"], ["unseated"])
                for user in interests
            ),
            timeout_s=60,
            what="every attendee matched or unseated",
        )
        outputs = await reader.settle(quiet_s=1.0)

    seats = [seat for found in outputs.found for seat in found["seats"]]
    places = [(seat["table_no"], seat["seat_no"]) for seat in seats]
    assert len(places) == len(set(places)) == 5  # 2 tables x 3 seats seat a trio and a pair
    assert all(1 <= table <= 2 and 1 <= seat <= 3 for table, seat in places)
    for found in outputs.found:
        assert found["mode"] == "batch" and found["reasons"]
        members = {member["user_id"] for member in found["members"]}
        assert {seat["user_id"] for seat in found["seats"]} == members
        assert len({seat["table_no"] for seat in found["seats"]}) == 1  # a group shares a table
    seated = {seat["user_id"] for seat in seats}
    assert "gus" in seated  # priority 1: among the first five chosen
    unseated = [e for e in outputs.statuses if e["status"] == "unseated"]
    assert len(unseated) == 2 and all(e["reason"] == "no_seat" for e in unseated)
    assert {e["user_id"] for e in unseated}.isdisjoint(seated)
    log = worker.log_text()
    assert "batch.start pool=ai-meetup-2025" in log and "name='AI Meetup 2025'" in log
    assert "batch.refused pool=ai-meetup-2025" in log and "still in progress" in log
    assert "batch.done pool=ai-meetup-2025 run=1 attendees=7 pairs=2 seated=5 unseated=2" in log
