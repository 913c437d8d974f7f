"""Wires the HTTP API (routes, auth, routing to pool owners, live streams) into a worker."""

from __future__ import annotations

import logging
import time
from importlib.metadata import version
from typing import cast

import aiohttp
from faust.web.drivers.aiohttp import Web as AiohttpWeb
from yarl import URL

from models.messages import PoolSummary
from streams.app import Matchstream
from web.api import ApiBackend, api_routes
from web.auth import Authenticator
from web.dashboard import Dashboard
from web.live import StatusStreams, partition_of
from web.openapi import openapi_route
from web.routing import OwnerLocator, mount
from web.summary import summary_routes

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(stream: Matchstream) -> None:
    """Add every API route of CONTRACT section 2 to the worker's web server.

    Raises:
        ValueError: the JWT secret is set but too short to be safe.
    """
    app, settings = stream.app, stream.settings
    authenticator = Authenticator(secret=settings.jwt_secret)

    async def send(topic: str, key: bytes, value: bytes) -> None:
        await app.producer.send_and_wait(topic, key, value, None, None, None)

    def read(key: str) -> bytes | None:
        value = stream.state.get(key)
        return cast(bytes | None, value)

    backend = ApiBackend(
        send=send,
        read=read,
        pools=stream.engine.pools,
        topics=(stream.names.request, stream.names.confirm, stream.names.command),
    )
    streams = StatusStreams(
        bootstrap=settings.broker_hosts,
        topic=stream.names.status,
        partitions=settings.topic_partitions,
        on_count=stream.watch.metrics.live_streams.set,
    )

    dashboard = Dashboard(
        bootstrap=settings.broker_hosts,
        topic=stream.names.progress,
        partitions=settings.topic_partitions,
    )

    def local_summary(pool_id: str) -> PoolSummary | None:
        return stream.watch.summary(
            pool_id, stream.engine, recovering=bool(app.in_recovery), now=time.time()
        )

    def peers() -> list[URL]:
        own = str(app.conf.canonical_url)
        return [URL(url) for url in app.router.table_metadata(stream.state.name) if url != own]

    summaries = summary_routes(
        local_summary=local_summary,
        local_pools=lambda: sorted(set(stream.watch.ledgers) | set(stream.engine.pools)),
        peers=peers,
        client=lambda: cast(aiohttp.ClientSession, app.http_client),
    )
    routes = [
        *api_routes(backend, open_mode=authenticator.open_mode),
        *summaries,
        streams.route(),
        *dashboard.routes(),
    ]
    routes.append(
        openapi_route(routes, version=version("matchstream"), secured=not authenticator.open_mode)
    )
    changelog = stream.state.changelog_topic.get_topic_name()

    def owner_url(pool_id: str) -> URL:
        # Faust's own `key_store` hashes the table's JSON-encoded key; our state lives
        # in the partition producers choose for the raw pool_id.
        partition = partition_of(pool_id, settings.topic_partitions)
        for url, topics in app.router.table_metadata(stream.state.name).items():
            if partition in topics.get(changelog, ()):
                return URL(url)
        raise KeyError(pool_id)

    owners = OwnerLocator(
        owner_url=owner_url,
        own_url=URL(str(app.conf.canonical_url)),
        ready=lambda: not (app.rebalancing or app.in_recovery),
        client=lambda: cast(aiohttp.ClientSession, app.http_client),
    )
    web = cast(AiohttpWeb, app.web)
    mount(web.web_app, routes, authenticator=authenticator, owners=owners)
    dashboard.install(web.web_app)

    @app.task
    async def announce_auth_mode() -> None:
        authenticator.warn_if_open()
