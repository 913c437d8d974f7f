"""Confirm and decline over Kafka, driven only through the contract's topics."""

from __future__ import annotations

import orjson
import pytest

from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from tests.support.harness import OutputReader, Outputs, send_messages

pytestmark = pytest.mark.integration


def _statuses(out: Outputs, request_id: str) -> list[str]:
    return [str(e["status"]) for e in out.statuses if e["request_id"] == request_id]


async def test_accept_accept_matches_and_decline_requeues(
    settings: Settings, worker_factory
) -> None:
    names = TopicNames.with_prefix(settings.topic_prefix)

    def request(pool: str, user: str) -> tuple[str, bytes, bytes]:
        body = {"request_id": f"{pool}-{user}", "pool_id": pool, "user_id": user}
        return names.request, pool.encode(), orjson.dumps(body)

    def confirm(pool: str, match_id: object, user: str, accept: bool) -> tuple[str, bytes, bytes]:
        body = {"match_id": match_id, "pool_id": pool, "user_id": user, "accept": accept}
        return names.confirm, pool.encode(), orjson.dumps(body)

    configure = {
        "command": "configure",
        "pool_id": "confirm",
        "config": {"require_confirm": True, "confirm_timeout_s": 120},
    }
    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        await worker.wait_ready()
        await send_messages(settings, [(names.command, b"confirm", orjson.dumps(configure))])
        await wait_until_consumed(settings, names.command, timeout_s=60)
        await send_messages(settings, [request("confirm", "ann"), request("confirm", "bob")])
        outputs = await reader.wait_for(
            lambda out: "proposed" in _statuses(out, "confirm-bob"),
            timeout_s=30,
            what="a proposal",
        )
        proposal = next(e for e in outputs.statuses if e["status"] == "proposed")
        first_match = proposal["match_id"]
        assert not outputs.found, "match.found before anyone confirmed"

        # Bob declines; Ann is requeued and proposed to the next newcomer, Cy.
        await send_messages(
            settings,
            [
                confirm("confirm", first_match, "ann", True),
                confirm("confirm", first_match, "mallory", True),
                confirm("confirm", first_match, "bob", False),
            ],
        )
        await reader.wait_for(
            lambda out: "requeued" in _statuses(out, "confirm-ann"),
            timeout_s=30,
            what="ann requeued after bob declined",
        )
        await send_messages(settings, [request("confirm", "cy")])
        outputs = await reader.wait_for(
            lambda out: "proposed" in _statuses(out, "confirm-cy"),
            timeout_s=30,
            what="a second proposal",
        )
        second_match = next(
            e["match_id"] for e in outputs.statuses if e["request_id"] == "confirm-cy"
        )
        await send_messages(
            settings,
            [
                confirm("confirm", second_match, "ann", True),
                confirm("confirm", second_match, "cy", True),
            ],
        )
        outputs = await reader.wait_for(
            lambda out: bool(out.found), timeout_s=30, what="match.found after both accepted"
        )
        outputs = await reader.settle(quiet_s=1.0)

    assert [f["match_id"] for f in outputs.found] == [second_match]
    assert {m["user_id"] for m in outputs.found[0]["members"]} == {"ann", "cy"}
    assert _statuses(outputs, "confirm-bob")[-1] == "declined"
    assert _statuses(outputs, "confirm-ann")[-1] == "matched"
    refused = [e for e in outputs.statuses if e.get("about") == "confirm"]
    assert [(e["user_id"], e["reason"]) for e in refused] == [("mallory", "not_member")]


async def test_timeout_cancel_and_crash_during_pending_proposals(
    settings: Settings, worker_factory
) -> None:
    """Three pools, one worker that is SIGKILLed while every proposal is pending.

    - `silent`: ann accepts, bob never answers; after the timeout ann is requeued and
      bob expires with reason confirmation_timeout.
    - `cancel`: cy cancels while proposed; dee is requeued; dee's late confirm is rejected.
    - `crash`: both accept, one answer before the crash and one after it.
    """
    names = TopicNames.with_prefix(settings.topic_prefix)

    def request(pool: str, user: str) -> tuple[str, bytes, bytes]:
        body = {"request_id": f"{pool}-{user}", "pool_id": pool, "user_id": user}
        return names.request, pool.encode(), orjson.dumps(body)

    def confirm(pool: str, match_id: object, user: str) -> tuple[str, bytes, bytes]:
        body = {"match_id": match_id, "pool_id": pool, "user_id": user, "accept": True}
        return names.confirm, pool.encode(), orjson.dumps(body)

    def configure(pool: str, timeout_s: float) -> tuple[str, bytes, bytes]:
        config = {"require_confirm": True, "confirm_timeout_s": timeout_s}
        body = {"command": "configure", "pool_id": pool, "config": config}
        return names.command, pool.encode(), orjson.dumps(body)

    def match_of(out: Outputs, request_id: str) -> object:
        return next(
            e["match_id"]
            for e in out.statuses
            if e["request_id"] == request_id and e["status"] == "proposed"
        )

    worker = worker_factory()
    worker.start()
    async with OutputReader(settings) as reader:
        await worker.wait_ready()
        # The silent pool's deadline must outlive the restart below.
        await send_messages(
            settings, [configure("silent", 25), configure("cancel", 120), configure("crash", 120)]
        )
        await wait_until_consumed(settings, names.command, timeout_s=60)
        await send_messages(
            settings,
            [
                *(request(pool, user) for pool, user in [("silent", "ann"), ("silent", "bob")]),
                *(request(pool, user) for pool, user in [("cancel", "cy"), ("cancel", "dee")]),
                *(request(pool, user) for pool, user in [("crash", "eve"), ("crash", "fay")]),
            ],
        )
        outputs = await reader.wait_for(
            lambda out: sum(e["status"] == "proposed" for e in out.statuses) == 6,
            timeout_s=30,
            what="three proposals",
        )
        silent, cancel, crash = (match_of(outputs, f"{p}-{u}") for p, u in
                                 [("silent", "ann"), ("cancel", "cy"), ("crash", "eve")])  # fmt: skip
        await send_messages(
            settings, [confirm("silent", silent, "ann"), confirm("crash", crash, "eve")]
        )
        await wait_until_consumed(settings, names.confirm, timeout_s=30)

        worker.kill()
        cancel_cy = {
            "type": "cancel",
            "request_id": "cancel-cy",
            "pool_id": "cancel",
            "user_id": "cy",
        }
        await send_messages(
            settings,
            [(names.request, b"cancel", orjson.dumps(cancel_cy)), confirm("crash", crash, "fay")],
        )
        worker.start()
        await worker.wait_ready()
        await reader.wait_for(
            lambda out: "requeued" in _statuses(out, "cancel-dee") and bool(out.found),
            timeout_s=90,
            what="dee requeued and the crash pool's match found after the restart",
        )
        await send_messages(settings, [confirm("cancel", cancel, "dee")])
        outputs = await reader.wait_for(
            lambda out: (
                "expired" in _statuses(out, "silent-bob")
                and any(e.get("about") == "confirm" for e in out.statuses)
            ),
            timeout_s=60,
            what="the silent proposal timing out and dee's late confirm refused",
        )
        outputs = await reader.settle(quiet_s=1.0)

    assert [f["match_id"] for f in outputs.found] == [crash]
    assert _statuses(outputs, "silent-bob")[-1] == "expired"
    assert (
        next(
            e["reason"]
            for e in outputs.statuses
            if e["request_id"] == "silent-bob" and e["status"] == "expired"
        )
        == "confirmation_timeout"
    )
    assert _statuses(outputs, "silent-ann")[-1] == "requeued"
    assert _statuses(outputs, "cancel-cy")[-1] == "cancelled", [
        (e["user_id"], e["status"], e["reason"], e.get("about"), e["at"])
        for e in outputs.statuses
        if e["pool_id"] == "cancel"
    ]
    assert _statuses(outputs, "cancel-dee")[-1] == "requeued"
    refused = [e for e in outputs.statuses if e.get("about") == "confirm"]
    assert [(e["user_id"], e["match_id"], e["reason"]) for e in refused] == [
        ("dee", cancel, "not_proposed")
    ]
    assert "did not stop cleanly" in worker.log_text()
