"""The demo's networking events: a `recommend` pool and a seated `batch` meetup.

Both go through Kafka like any producer's messages, and what they print comes back
from the output topics: the recommend pool's lists from `match.recommendations`,
the meetup's tables from `match.found` and who got no seat from `match.status`.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from models.codec import dumps, utc_now_iso
from streams.event_workload import attendee_profiles
from streams.settings import Settings
from streams.topics import TopicNames, wait_until_consumed

__all__ = ["reading_from_now", "run_event_demos"]

_ATTENDEES = 30
_MEETUP = 8
_WAIT_S = 60.0


async def run_event_demos(settings: Settings) -> None:
    """Run a small networking event and a seated meetup, printing what the topics show."""
    names = TopicNames.with_prefix(settings.topic_prefix)
    run = uuid.uuid4().hex[:6]
    networking, meetup = f"networking-{run}", f"meetup-{run}"
    outputs = (names.recommendations, names.found, names.status)
    async with reading_from_now(settings, *outputs) as consumer:
        await _send(settings, _configure(names, networking, meetup))
        await wait_until_consumed(settings, names.command, timeout_s=_WAIT_S)
        await _send(settings, _attendees(names, networking, meetup))
        view = _View(networking, meetup)
        print(f"\nnetworking event {networking}: {_ATTENDEES} attendees, top 3 each")
        await view.read(consumer, names, until=lambda: view.lists_for() >= _ATTENDEES)
        print(view.networking_line())
        # A profile change and a leave: only the lists they touch are sent again.
        await _send(settings, _changes(names, networking))
        sent = len(view.lists)
        await view.read(consumer, names, until=lambda: view.has_left("u-001"), quiet_s=1.5)
        print(f"after u-000 changed profile and u-001 left: {len(view.lists) - sent} lists re-sent")
        print(view.networking_line())
        print(f"\nmeetup {meetup}: {_MEETUP} attendees, 3 tables x 3 seats, chaos 5")
        start = {"command": "start_matching", "pool_id": meetup}
        await _send(settings, [(names.command, meetup.encode(), dumps(start))])
        await view.read(consumer, names, until=lambda: view.meetup_done() >= _MEETUP)
        print(view.meetup_table())


@contextlib.asynccontextmanager
async def reading_from_now(settings: Settings, *topics: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of `topics` that sees only what is written after it started."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=",".join(settings.broker_hosts),
        auto_offset_reset="latest",
        group_id=None,
    )
    await consumer.start()
    try:
        await consumer.seek_to_end()
        yield consumer
    finally:
        await consumer.stop()


Message = tuple[str, bytes, bytes]


async def _send(settings: Settings, messages: list[Message]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=",".join(settings.broker_hosts), acks="all")
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def _configure(names: TopicNames, networking: str, meetup: str) -> list[Message]:
    recommend = {
        "mode": "recommend",
        "name": "Networking night",
        "top_k": 3,
        "request_ttl_s": None,
        "weights": {"interests": 1.0, "embedding": 1.0, "opinions": 1.0, "facts": 0.5},
    }
    batch = {
        "mode": "batch",
        "name": "AI Meetup 2025",
        "tables": 3,
        "seats_per_table": 3,
        "chaos": 5,
        "request_ttl_s": None,
        "weights": {"interests": 1.0, "embedding": 1.0, "opinions": 1.0, "facts": 0.5},
    }
    return [
        (
            names.command,
            pool.encode(),
            dumps({"command": "configure", "pool_id": pool, "config": c}),
        )
        for pool, c in [(networking, recommend), (meetup, batch)]
    ]


def _attendees(names: TopicNames, networking: str, meetup: str) -> list[Message]:
    messages = []
    profiles = attendee_profiles(_ATTENDEES, dimensions=32, seed=7, texts=True)
    for pool, count in [(networking, _ATTENDEES), (meetup, _MEETUP)]:
        for number, profile in enumerate(profiles[:count]):
            user = f"u-{number:03d}"
            request = {
                "request_id": f"{pool}-{user}",
                "pool_id": pool,
                "user_id": user,
                "profile": profile,
                "created_at": utc_now_iso(),
            }
            messages.append((names.request, pool.encode(), dumps(request)))
    return messages


def _changes(names: TopicNames, networking: str) -> list[Message]:
    update = {
        "user_id": "u-000",
        "profile": {
            "interests": ["kafka", "rust", "chess"],
            "opinions": ["meetups beat conferences"],
        },
        "updated_at": utc_now_iso(),
    }
    leave = {
        "type": "cancel",
        "request_id": f"{networking}-u-001",
        "pool_id": networking,
        "user_id": "u-001",
    }
    return [
        (names.profile, b"u-000", dumps(update)),
        (names.request, networking.encode(), dumps(leave)),
    ]


class _View:
    """What the output topics said about the two demo pools."""

    def __init__(self, networking: str, meetup: str) -> None:
        self.networking, self.meetup = networking, meetup
        self.lists: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self.found: list[dict[str, Any]] = []
        self.ended: dict[str, str] = {}

    async def read(
        self,
        consumer: AIOKafkaConsumer,
        names: TopicNames,
        *,
        until: Callable[[], bool],
        quiet_s: float = 0.0,
    ) -> None:
        deadline = time.monotonic() + _WAIT_S
        last = time.monotonic()
        while time.monotonic() < deadline and not (until() and time.monotonic() - last >= quiet_s):
            batches = await consumer.getmany(timeout_ms=300)
            for tp, messages in batches.items():
                for message in messages:
                    last = time.monotonic()
                    self._take(tp.topic, orjson.loads(message.value), names)
        if not until():
            print("  (gave up waiting; is the worker running?)")

    def _take(self, topic: str, value: dict[str, Any], names: TopicNames) -> None:
        if topic == names.recommendations and value["pool_id"] == self.networking:
            self.lists.append(value)
            self.latest[value["user_id"]] = value
        elif topic == names.found and value["pool_id"] == self.meetup:
            self.found.append(value)
        elif (
            topic == names.status
            and value["pool_id"] == self.meetup
            and value["status"] in ("matched", "unseated")
        ):
            self.ended[value["user_id"]] = value["status"]

    def lists_for(self) -> int:
        return len(self.latest)

    def has_left(self, user: str) -> bool:
        return self.latest.get(user, {}).get("top") == [] and all(
            user not in {entry["user_id"] for entry in lists["top"]}
            for other, lists in self.latest.items()
            if other != user
        )

    def meetup_done(self) -> int:
        return len(self.ended)

    def networking_line(self) -> str:
        first = self.latest.get("u-000")
        if first is None:
            return "  (no list for u-000 yet)"
        picks = ", ".join(
            f"{entry['user_id']} {entry['score']:.2f} ({'; '.join(entry['reasons'][:2]) or '-'})"
            for entry in first["top"]
        )
        return f"  {len(self.lists)} lists sent so far; u-000 v{first['version']}: {picks}"

    def meetup_table(self) -> str:
        tables: dict[int, list[str]] = defaultdict(list)
        for found in self.found:
            members = ", ".join(member["user_id"] for member in found["members"])
            table = found["seats"][0]["table_no"] if found["seats"] else 0
            reasons = "; ".join(found["reasons"][:2]) or "-"
            tables[table].append(f"{members} (confidence {found['score']:.2f}: {reasons})")
        lines = [
            f"  table {table}: {' + '.join(groups)}" for table, groups in sorted(tables.items())
        ]
        unseated = sorted(user for user, status in self.ended.items() if status == "unseated")
        lines.append(f"  unseated: {', '.join(unseated) or 'nobody'}")
        return "\n".join(lines)
