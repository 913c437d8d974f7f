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
