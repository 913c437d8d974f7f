"""Tools of the cluster drill (tests/integration/test_cluster_drill.py).

Three brokers and three workers take a steady load while one broker and two
workers are broken in turn. This module has the load, a reader that remembers
when every output appeared, what the consumer group and the brokers look like
at a given moment, and the figures the drill prints. Event times are wall-clock
seconds (`time.time()`), the clock of output timestamps and of a match's
`created_at`, which is when the engine decided it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any, Self, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from models.codec import utc_now_iso
from models.messages import TERMINAL_STATUSES
from streams.settings import Settings
from streams.topics import TopicNames

__all__ = [
    "MatchSeen",
    "Member",
    "OutputLog",
    "Phase",
    "SteadyLoad",
    "answer_or_none",
    "describe_missing",
    "group_members",
    "leader_counts",
    "render_phases",
    "render_timeline",
    "standby_variants",
    "under_replicated",
]

# An idempotent producer retries a batch until this runs out, without duplicating
# it: long enough to ride out the election after a broker's death.
_PRODUCER_TIMEOUT_MS = 120_000

T = TypeVar("T")


def standby_variants() -> list[int]:
    """`DRILL_STANDBY_VARIANTS` (tests only, e.g. "1,0"), else just Faust's default, 1."""
    raw = os.environ.get("DRILL_STANDBY_VARIANTS", "").strip()
    return [int(part) for part in raw.split(",") if part.strip()] if raw else [1]


# -- the load ------------------------------------------------------------------------------


class SteadyLoad:
    """Pair requests spread over `pools` pools at about `rate` per second, until stopped.

    Pools are never configured, so they pair any two requests on arrival; a request
    left alone ends `expired` after `ttl_s`. Every user asks once, so nothing is
    superseded and every produced request must end matched or expired.
    """

    def __init__(
        self, settings: Settings, *, pools: int, rate: float, ttl_s: float, run_id: str
    ) -> None:
        self.topic = TopicNames.with_prefix(settings.topic_prefix).request
        self.pools = [f"{run_id}-pool-{index}" for index in range(pools)]
        self.rate = rate
        self.ttl_s = ttl_s
        self.run_id = run_id
        self.produced: dict[tuple[str, str], tuple[int, int]] = {}
        """(pool_id, request_id) -> (partition, offset) of every acknowledged request."""
        self.sent_at: list[float] = []
        self._rng = random.Random(run_id)
        self._pending: list[asyncio.Future[Any]] = []
        self._producer = AIOKafkaProducer(
            bootstrap_servers=",".join(settings.broker_hosts),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=_PRODUCER_TIMEOUT_MS,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._producer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.stop()
        finally:
            await self._producer.stop()

    async def stop(self, timeout_s: float = 150.0) -> None:
        """Stop producing and wait until the broker acknowledged everything sent."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await asyncio.wait_for(asyncio.gather(*self._pending), timeout_s)
        self._pending.clear()

    def check(self) -> None:
        """Raise what stopped the producing task, if anything did."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def _run(self) -> None:
        started = time.monotonic()
        number = 0
        while True:
            # Pacing, not synchronisation: requests are due on a fixed schedule, so a
            # producer held up by a broker's death catches up afterwards.
            due = int((time.monotonic() - started) * self.rate)
            while number < due:
                await self._send(number)
                number += 1
            for future in self._pending:
                if future.done():
                    future.result()  # a send that failed for good fails the drill
            self._pending = [future for future in self._pending if not future.done()]
            await asyncio.sleep(0.05)

    async def _send(self, number: int) -> None:
        pool_id = self._rng.choice(self.pools)
        request_id = f"{self.run_id}-r-{number}"
        body = {
            "type": "request",
            "request_id": request_id,
            "pool_id": pool_id,
            "user_id": f"{self.run_id}-u-{number}",
            "ttl_s": self.ttl_s,
            "created_at": utc_now_iso(),
        }
        sent = await self._producer.send(self.topic, orjson.dumps(body), key=pool_id.encode())
        sent.add_done_callback(lambda done: self._acknowledged((pool_id, request_id), done))
        self._pending.append(sent)
        self.sent_at.append(time.time())

    def _acknowledged(self, key: tuple[str, str], sent: asyncio.Future[Any]) -> None:
        if not sent.cancelled() and sent.exception() is None:
            metadata = sent.result()
            self.produced[key] = (metadata.partition, metadata.offset)


# -- the outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchSeen:
    partition: int
    decided: float
    """The match's `created_at`: when the engine decided it."""
    seen: float
    """Timestamp of the first `match.found` record carrying it: when consumers could see it."""


class OutputLog:
    """Follows `match.found` and `match.status` from the start, in the background.

    Keeps the first record of each match and of each (request, status), so relay
    re-emits after a crash are neither counted twice nor taken for new matches.
    """

    def __init__(self, settings: Settings) -> None:
        self.names = TopicNames.with_prefix(settings.topic_prefix)
        self.matches: dict[str, MatchSeen] = {}
        self.status_seen: dict[tuple[str, str, str], float] = {}
        self.ends: dict[tuple[str, str], set[tuple[str, str | None]]] = {}
        self._consumer = AIOKafkaConsumer(
            self.names.found,
            self.names.status,
            bootstrap_servers=",".join(settings.broker_hosts),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=100,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._consumer.stop()

    def check(self) -> None:
        """Raise what stopped the background reader, if anything did."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, records in batches.items():
                for record in records:
                    body = orjson.loads(record.value)
                    seen = record.timestamp / 1000
                    if tp.topic == self.names.found:
                        if body["match_id"] not in self.matches:
                            decided = _epoch(body["created_at"])
                            self.matches[body["match_id"]] = MatchSeen(tp.partition, decided, seen)
                    elif body.get("about") is None:  # refused commands end nothing
                        key = (body["pool_id"], body["request_id"])
                        self.status_seen.setdefault((*key, body["status"]), seen)
                        if body["status"] in TERMINAL_STATUSES:
                            self.ends.setdefault(key, set()).add(
                                (body["status"], body.get("match_id"))
                            )

    def first_matches_after(self, moment: float) -> dict[int, MatchSeen]:
        """Per partition, the earliest match decided after `moment`."""
        first: dict[int, MatchSeen] = {}
        for match in self.matches.values():
            if match.decided > moment:
                best = first.get(match.partition)
                if best is None or match.decided < best.decided:
                    first[match.partition] = match
        return first

    def matched_partitions_after(self, moment: float) -> set[int]:
        return set(self.first_matches_after(moment))

    def per_second(self, what: str) -> Counter[int]:
        """Outputs per whole second of their record timestamp: "matches" or "statuses"."""
        times: Iterable[float] = (
            (match.seen for match in self.matches.values())
            if what == "matches"
            else self.status_seen.values()
        )
        return Counter(int(moment) for moment in times)


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def describe_missing(
    produced: dict[tuple[str, str], tuple[int, int]], missing: Iterable[tuple[str, str]]
) -> str:
    """Missing requests as runs of input offsets per `match.request` partition."""
    offsets: dict[int, list[int]] = {}
    for key in missing:
        partition, offset = produced[key]
        offsets.setdefault(partition, []).append(offset)
    parts = []
    for partition, found in sorted(offsets.items()):
        found.sort()
        runs, start = [], found[0]
        for previous, offset in pairwise(found):
            if offset != previous + 1:
                runs.append(f"{start}-{previous}")
                start = offset
        runs.append(f"{start}-{found[-1]}")
        parts.append(f"p{partition}: {len(found)} at offsets {', '.join(runs[:5])}")
    return "; ".join(parts)


# -- the cluster's state -------------------------------------------------------------------


async def answer_or_none(call: Awaitable[T], timeout_s: float = 15.0) -> T | None:
    """`call`'s result, or None when the cluster cannot answer now (a node is down, a
    coordinator moves): the drill asks again rather than failing on a transient error."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except (KafkaError, OSError, TimeoutError):
        return None


@dataclass(frozen=True)
class Member:
    """One worker as the group coordinator sees it after the Faust assignor ran."""

    url: str
    actives: frozenset[int]
    standbys: frozenset[int]


async def group_members(
    admin: AIOKafkaAdminClient, settings: Settings, *, expect: int
) -> list[Member] | None:
    """The workers' group once Stable with `expect` members that share every partition.

    Returns None while it is rebalancing or a partition has no active owner. Faust
    puts its full assignment (actives, standbys, the member's web URL) in the
    zlib-compressed JSON user data of each member's assignment.
    """
    (response,) = await admin.describe_consumer_groups([settings.app_id])
    if len(response.groups) != 1:
        return None
    state, members = response.groups[0][2], response.groups[0][5]
    if state != "Stable" or len(members) != expect:
        return None
    request = TopicNames.with_prefix(settings.topic_prefix).request
    changelog = f"{settings.app_id}-state-changelog"
    found = []
    for member in members:
        # The assignment is the member's last field in every DescribeGroups version.
        assignment = ConsumerProtocolMemberAssignment.decode(member[-1])
        if not assignment.user_data:
            return None
        faust = orjson.loads(zlib.decompress(assignment.user_data))
        found.append(
            Member(
                url=faust["url"],
                actives=frozenset(faust["assignment"]["actives"].get(request, [])),
                standbys=frozenset(faust["assignment"]["standbys"].get(changelog, [])),
            )
        )
    owned = [partition for member in found for partition in member.actives]
    if sorted(owned) != list(range(settings.topic_partitions)):
        return None
    return found


def _drill_topics(settings: Settings) -> list[str]:
    names = TopicNames.with_prefix(settings.topic_prefix)
    return [names.request, names.found, names.status, f"{settings.app_id}-state-changelog"]


async def leader_counts(admin: AIOKafkaAdminClient, settings: Settings) -> Counter[int]:
    """How many partitions of the drill's busy topics each broker node leads."""
    described = await admin.describe_topics(_drill_topics(settings))
    return Counter(part["leader"] for topic in described for part in topic["partitions"])


async def under_replicated(admin: AIOKafkaAdminClient, settings: Settings, replicas: int) -> int:
    """Partitions of the drill's busy topics with fewer than `replicas` in-sync copies."""
    described = await admin.describe_topics(_drill_topics(settings))
    return sum(
        len(part["isr"]) < replicas
        for topic in described
        if topic["error_code"] == 0
        for part in topic["partitions"]
    ) + sum(topic["error_code"] != 0 for topic in described)


# -- figures -------------------------------------------------------------------------------


@dataclass
class Phase:
    """One fault: when it began, when the drill saw it recovered, what was measured."""

    name: str
    began: float
    recovered: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)


def _rate(buckets: Counter[int], start: float, end: float) -> tuple[float, int]:
    """Mean and lowest per-second count over the whole seconds within [start, end)."""
    seconds = range(int(start) + 1, int(end))
    if not seconds:
        seconds = range(int(start), int(start) + 1)
    counts = [buckets.get(second, 0) for second in seconds]
    return sum(counts) / len(counts), min(counts)


def render_phases(
    phases: list[Phase], log: OutputLog, sent_at: list[float], *, window_s: float
) -> str:
    """The throughput table: before, during and after each fault, per second."""
    matches, statuses = log.per_second("matches"), log.per_second("statuses")
    inputs = Counter(int(moment) for moment in sent_at)
    header = (
        f"{'fault':<34}{'during_s':>9}  {'matches/s before | during (min) | after':<40}"
        f"{'statuses/s before | during | after':<36}{'inputs/s during':>15}"
    )
    lines = [header, "-" * len(header)]
    for phase in phases:
        before = (phase.began - window_s, phase.began)
        during = (phase.began, phase.recovered)
        after = (phase.recovered, phase.recovered + window_s)
        m_before, m_during, m_after = (_rate(matches, *span) for span in (before, during, after))
        s_before, s_during, s_after = (_rate(statuses, *span) for span in (before, during, after))
        i_during, _ = _rate(inputs, *during)
        lines.append(
            f"{phase.name:<34}{phase.recovered - phase.began:>9.1f}  "
            f"{f'{m_before[0]:.0f} | {m_during[0]:.0f} ({m_during[1]}) | {m_after[0]:.0f}':<40}"
            f"{f'{s_before[0]:.0f} | {s_during[0]:.0f} | {s_after[0]:.0f}':<36}"
            f"{i_during:>15.0f}"
        )
        lines.extend(f"    {key}: {value}" for key, value in phase.notes.items())
    return "\n".join(lines)


def render_timeline(log: OutputLog, start: float, end: float, phases: list[Phase]) -> str:
    """Matches per second over the run, 20 seconds a line, with the faults marked."""
    matches = log.per_second("matches")
    marks = {int(phase.began): "!" for phase in phases}
    marks.update({int(phase.recovered): "^" for phase in phases})
    lines = []
    for row in range(int(start), int(end) + 1, 20):
        cells = [
            f"{matches.get(second, 0)}{marks.get(second, '')}"
            for second in range(row, min(row + 20, int(end) + 1))
        ]
        lines.append(f"  t+{row - int(start):>4}s  " + " ".join(cells))
    return "\n".join(lines)
