"""The HTTP API end to end: auth, the confirm flow, live streams, two workers, fuzzing."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed
from tests.support.http import SECRET, Api, SseStream, token
from web.live import partition_of

pytestmark = pytest.mark.integration


def _base(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.web_port}"


async def test_auth_confirm_flow_and_live_stream(settings: Settings, worker_factory) -> None:
    worker = worker_factory(jwt_secret=SECRET)
    worker.start()
    await worker.wait_ready()
    ann, bob, mallory, admin = (
        token("ann"),
        token("bob"),
        token("mallory"),
        token("ops", admin=True),
    )
    names = TopicNames.with_prefix(settings.topic_prefix)

    async with Api(_base(settings)) as api:
        no_token = await api.call("POST", "/pools/iv/requests", json={})
        forged = await api.call(
            "POST", "/pools/iv/requests", as_user=token("ann", secret="x" * 32), json={}
        )
        not_admin = await api.call("PUT", "/pools/iv", as_user=ann, json={})
        assert (no_token.status, forged.status, not_admin.status) == (401, 401, 403)
        assert "detail" in no_token.body and "detail" in forged.body

        configured = await api.call(
            "PUT",
            "/pools/iv",
            as_user=admin,
            json={"match_on": ["difficulty"], "require_confirm": True, "confirm_timeout_s": 60},
        )
        assert configured.status == 202
        await wait_until_consumed(settings, names.command, timeout_s=60)

        async with api.session.get(
            api.base_url + "/pools/iv/stream", headers={"Authorization": f"Bearer {ann}"}
        ) as response:
            assert response.status == 200
            stream = SseStream(response)
            await stream.wait_live()

            easy = {"criteria": {"difficulty": "Easy"}}
            mine = await api.call("POST", "/pools/iv/requests", as_user=ann, json=easy)
            assert mine.status == 202
            impostor = await api.call(
                "POST", "/pools/iv/requests", as_user=bob, json={**easy, "user_id": "ann"}
            )
            assert impostor.status == 403
            assert (
                await api.call("POST", "/pools/iv/requests", as_user=bob, json=easy)
            ).status == 202

            queued = await stream.next_event()
            proposed = await stream.next_event()
            assert (queued.event, proposed.event) == ("queued", "proposed")
            latency_s = (
                proposed.received_at - datetime.fromisoformat(proposed.data["at"]).timestamp()
            )
            print(f"\nlive stream latency from status event to client: {latency_s * 1000:.0f} ms")
            assert latency_s < 2.0  # the 200 ms figure is measured by the bench, not asserted
            match_id = proposed.data["match_id"]
            request_id = mine.body["request_id"]

            own = await api.call("GET", f"/pools/iv/requests/{request_id}", as_user=ann)
            peek = await api.call("GET", f"/pools/iv/requests/{request_id}", as_user=bob)
            stranger = await api.call(
                "POST", f"/pools/iv/matches/{match_id}/confirm", as_user=mallory,
                json={"accept": True},
            )  # fmt: skip
            cancel_other = await api.call("DELETE", f"/pools/iv/requests/{request_id}", as_user=bob)
            assert (own.status, own.body["status"], own.body["match_id"]) == (
                200,
                "proposed",
                match_id,
            )
            assert (peek.status, stranger.status, cancel_other.status) == (403, 403, 403)

            for user in (ann, bob):
                answer = await api.call(
                    "POST", f"/pools/iv/matches/{match_id}/confirm", as_user=user,
                    json={"accept": True},
                )  # fmt: skip
                assert answer.status == 202
            matched = await stream.next_event()
            assert (matched.event, matched.data["user_id"]) == ("matched", "ann")

        match = await api.call("GET", f"/pools/iv/matches/{match_id}", as_user=bob)
        members = await api.call("GET", "/pools/iv/members", as_user=admin)
        spec = await api.call("GET", "/openapi.json")

    assert match.status == 200 and match.body["final"] is True
    assert {m["user_id"]: m["answer"] for m in match.body["members"]} == {"ann": True, "bob": True}
    assert sorted((m["user_id"], m["status"]) for m in members.body["members"]) == [
        ("ann", "matched"),
        ("bob", "matched"),
    ]
    create = spec.body["paths"]["/pools/{pool_id}/requests"]["post"]
    assert create["security"] == [{"bearer": []}]
    assert {"202", "401", "422"} <= set(create["responses"])


async def test_a_stream_resumes_after_its_last_event_id(settings: Settings, worker_factory) -> None:
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    async with Api(_base(settings)) as api:
        async with api.session.get(api.base_url + "/pools/resume/stream") as response:
            stream = SseStream(response)
            await stream.wait_live()
            first = await api.call("POST", "/pools/resume/requests", json={"user_id": "u1"})
            assert first.status == 202
            seen = await stream.next_event()
        # Disconnected: two more statuses happen meanwhile (u2 arrives, both match).
        await api.call("POST", "/pools/resume/requests", json={"user_id": "u2"})
        async with api.session.get(
            api.base_url + "/pools/resume/stream", headers={"Last-Event-ID": str(seen.id)}
        ) as response:
            stream = SseStream(response)
            missed = [await stream.next_event() for _ in range(2)]
    assert seen.event == "queued"
    # u2 matches on arrival, so its first status is `matched`; nothing before is repeated.
    assert sorted((e.data["user_id"], e.event) for e in missed) == [
        ("u1", "matched"),
        ("u2", "matched"),
    ]
    offsets = [int(str(e.id).rsplit("-", 1)[1]) for e in (seen, *missed)]
    assert offsets == sorted(set(offsets)), offsets


async def test_two_workers_answer_for_each_others_pools(
    settings: Settings, worker_factory, tmp_path: Path
) -> None:
    # One pool per partition, so that each worker owns some of them.
    pools: dict[int, str] = {}
    for n in range(1000):
        pools.setdefault(partition_of(f"team-{n}", settings.topic_partitions), f"team-{n}")
        if len(pools) == settings.topic_partitions:
            break
    workers = [worker_factory(tmp_path / "w0"), worker_factory(tmp_path / "w1")]
    for worker in workers:
        worker.start()
    for worker in workers:
        await worker.wait_ready()

    answers: dict[tuple[str, int], tuple[object, str | None]] = {}
    async with Api(_base(workers[0].settings)) as first, Api(_base(workers[1].settings)) as second:
        for pool in pools.values():
            created = await first.call(
                "POST", f"/pools/{pool}/requests", json={"user_id": "solo", "request_id": pool}
            )
            assert created.status == 202

        async def read(api: Api, pool: str) -> tuple[object, str | None]:
            # 404 until the owner consumed the request; 503 is retried inside `call`.
            while (got := await api.call("GET", f"/pools/{pool}/requests/{pool}")).status == 404:
                await asyncio.sleep(0.1)
            assert got.status == 200, got
            return got.body, got.worker

        for pool in pools.values():
            for index, api in enumerate((first, second)):
                answers[(pool, index)] = await asyncio.wait_for(read(api, pool), 60)

    assert len(answers) == 2 * len(pools), "every pool readable through both workers"
    for pool in pools.values():
        assert answers[(pool, 0)] == answers[(pool, 1)], f"{pool}: both workers give one answer"
    owners = {worker for _, worker in answers.values()}
    assert len(owners) == 2, f"the pools' owners were {owners}: expected both workers"


async def test_schemathesis_finds_no_server_errors(
    settings: Settings, worker_factory, tmp_path: Path
) -> None:
    worker = worker_factory(jwt_secret=SECRET)
    worker.start()
    await worker.wait_ready()
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{_base(settings)}/openapi.json",
        "--header",
        f"Authorization: Bearer {token('fuzzer', admin=True)}",
        # Streams never end, so a fuzzer cannot judge them; they have their own tests.
        "--exclude-path-regex",
        ".*/stream$",
        # DELETE cancels a request, which stays readable with status `cancelled`; and a
        # 202 means the worker applies the request later, so an immediate read may 404.
        "--exclude-checks",
        "use_after_free,ensure_resource_availability",
        "--max-examples",
        "25",
        "--max-time",
        "60",
        "--request-timeout",
        "10",
        "--seed",
        "20261123",
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
