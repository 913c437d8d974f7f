"""The profiles agent: `profile-update` -> `profiles` table -> every matcher partition.

`profile-update` is keyed by user and the pools by pool, so a user's newest profile
is decided here, on the user's partition: the newest `updated_at` wins, and an
update without one counts as sent when it is accepted. The accepted profile is
stored in the `profiles` table (RocksDB, changelog) and sent to every partition of
the internal `matchstream.profile-change` topic, where the matcher applies it to
the pools the user is active in (`MatchEngine.handle_profile`), usually well
within a second.

An update equal in time to the stored one is forwarded again: after a crash
between storing an update and sending it on, the redelivered update must still
reach every partition, and partitions that already have it ignore it.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC

from faust.types import EventT, StreamT, TableT, TopicT

from models.codec import DecodeError, decode, dumps
from models.messages import ProfileChange, ProfileUpdate
from streams.app import Matchstream
from streams.dlq import reject
from streams.topics import replication_for

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(stream: Matchstream) -> None:
    """Add the `profiles` table and the agent that keeps it to the app."""
    settings = stream.settings
    partitions = settings.topic_partitions
    replication = replication_for(settings, brokers=len(settings.broker_hosts))
    updates = _raw_topic(stream, stream.names.profile)
    changes = _raw_topic(stream, stream.names.profile_changes)
    table = stream.app.Table(
        "profiles",
        key_type=str,
        value_type=bytes,
        partitions=partitions,
        extra_topic_configs={"min.insync.replicas": str(replication.min_insync)},
    )

    @stream.app.agent(updates, name="profiles", concurrency=1)
    async def keep_profiles(events: StreamT) -> None:
        async for event in events.events():
            await _accept(stream, table, changes, event)


def _raw_topic(stream: Matchstream, name: str) -> TopicT:
    return stream.app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=stream.settings.topic_partitions,
    )


async def _accept(stream: Matchstream, table: TableT, changes: TopicT, event: EventT) -> None:
    message = event.message
    try:
        update = decode(ProfileUpdate, event.value)
        if message.key != update.user_id.encode():
            # Newest-wins needs every update of a user on one partition.
            raise DecodeError("profile-update messages must be keyed by their user_id")
    except DecodeError as exc:
        await reject(stream.dlq, event, str(exc))
        return
    updated_at = time.time()
    if update.updated_at is not None:
        moment = update.updated_at
        updated_at = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    stored = table.get(update.user_id)
    if stored is not None and decode(ProfileChange, stored).updated_at > updated_at:
        log.debug("profile.stale user=%s updated_at=%.3f", update.user_id, updated_at)
        return
    change = dumps(
        ProfileChange(user_id=update.user_id, profile=update.profile, updated_at=updated_at)
    )
    table[update.user_id] = change
    for partition in range(stream.settings.topic_partitions):
        await changes.send(key=update.user_id.encode(), value=change, partition=partition)
