"""The worker answers liveness and readiness over HTTP once it has recovered."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from streams.settings import Settings

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


async def test_healthz_and_readyz(settings: Settings, worker_factory) -> None:
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    base = f"http://127.0.0.1:{settings.web_port}"

    health = await asyncio.wait_for(asyncio.to_thread(_get, f"{base}/healthz"), 15)
    ready = await asyncio.wait_for(asyncio.to_thread(_get, f"{base}/readyz"), 15)

    assert health == (200, {"status": "ok"})
    assert ready[0] == 200
    assert ready[1]["status"] == "ready"
