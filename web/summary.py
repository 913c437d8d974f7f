"""Pool summaries over HTTP (CONTRACT sections 1.8 and 2) and `GET /metrics`.

A pool's summary is computed live by the worker that owns it; `GET /pools`
asks every worker for the pools it owns and merges the answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from yarl import URL

from models.messages import PoolSummary
from web.auth import HttpError
from web.routing import Call, QueryParam, Reply, Route

__all__ = ["PoolList", "summary_routes"]

log = logging.getLogger(__name__)

_PEER_TIMEOUT = aiohttp.ClientTimeout(total=5)


class PoolList(BaseModel):
    pools: list[PoolSummary]
    unreachable: list[str]
    """Workers that did not answer; their pools are missing from `pools`."""


def summary_routes(
    *,
    local_summary: Callable[[str], PoolSummary | None],
    local_pools: Callable[[], list[str]],
    peers: Callable[[], list[URL]],
    client: Callable[[], aiohttp.ClientSession],
) -> list[Route]:
    """The summary, pool list and metrics routes.

    Args:
        local_summary: pool_id -> live summary of a pool this worker owns, or None.
        local_pools: the pools this worker owns now.
        peers: base URLs of the other workers of the group.
        client: the HTTP client to ask them with.
    """

    def one(pool_id: str, not_found: str) -> Reply:
        summary = local_summary(pool_id)
        if summary is None:
            raise HttpError(404, not_found)
        return Reply(summary)

    async def pool_summary(call: Call) -> Reply:
        pool_id = call.params["pool_id"]
        return one(pool_id, f"pool {pool_id} not found")

    async def job_summary(call: Call) -> Reply:
        # Summaries are always computed live, so force_refresh has nothing to bypass.
        job_id = call.params["job_id"]
        return one(job_id, "Job not found")

    async def pool_list(call: Call) -> Reply:
        mine = [s for s in (local_summary(p) for p in local_pools()) if s is not None]
        if call.query.get("scope") == "local":
            return Reply(PoolList(pools=mine, unreachable=[]))
        authorization = call.request.headers.get("Authorization")
        answers = await asyncio.gather(*(_ask(client(), peer, authorization) for peer in peers()))
        pools, unreachable = list(mine), []
        for peer, answer in zip(peers(), answers, strict=False):
            if answer is None:
                unreachable.append(str(peer))
            else:
                pools.extend(answer)
        pools.sort(key=lambda summary: summary.pool_id)
        return Reply(PoolList(pools=pools, unreachable=unreachable))

    async def metrics(call: Call) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [
        Route("GET", "/pools", pool_list, "Every pool of every worker", "user", PoolList,
              query=(QueryParam("scope", "`local`: only this worker's pools."),),
              errors=(401,)),
        Route("GET", "/pools/{pool_id}/summary", pool_summary, "A pool's summary", "user",
              PoolSummary, errors=(401, 404), owner_key="pool_id"),
        Route("GET", "/jobs/{job_id}/matching/summary", job_summary,
              "Seed alias of the summary", "user", PoolSummary,
              query=(QueryParam("force_refresh", "Accepted; summaries are always live.",
                                "boolean"),),
              errors=(401, 404), owner_key="job_id"),
        Route("GET", "/metrics", metrics, "Prometheus metrics of this worker", "public",
              streams=False),
    ]  # fmt: skip


async def _ask(
    client: aiohttp.ClientSession, peer: URL, authorization: str | None
) -> list[PoolSummary] | None:
    headers = {"Authorization": authorization} if authorization else {}
    try:
        async with client.get(
            peer.with_path("/pools").with_query(scope="local"),
            headers=headers,
            timeout=_PEER_TIMEOUT,
        ) as answer:
            if answer.status != 200:
                log.warning("pool list peer=%s status=%d", peer, answer.status)
                return None
            body = orjson.loads(await answer.read())
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("pool list peer=%s error=%r", peer, error)
        return None
    return [PoolSummary.model_validate(item) for item in body["pools"]]
