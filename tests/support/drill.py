"""Tools of the failure drills (tests/integration/test_drills.py).

A drill runs real worker processes against a real broker, drives them through the
contract's topics only, breaks things on purpose and then asks `matchstream audit`
whether the contract still holds. This module has the pieces: the workload with
confirmations and profile updates, a client that answers proposals, a tracker of
which requests have a status, the chaos schedule, memory sampling and the figures
a drill prints.

Sizes can be lowered for a quick local run (`DRILL_REQUESTS`, `DRILL_SCALE_REQUESTS`,
`DRILL_BURST_REQUESTS`) and a run's random choices replayed (`DRILL_SEED`); only these
tests read them, and the defaults are what the issue asks for and what CI runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from models.messages import TERMINAL_STATUSES
from streams.kafka_local import LocalKafka, free_port
from streams.settings import Settings
from streams.topics import TopicNames
from streams.worker_process import WorkerProcess
from streams.workload import Workload

__all__ = [
    "Chaos",
    "DrillFigures",
    "DrillWorkload",
    "MemoryWatch",
    "StatusTracker",
    "WorkerSet",
    "drill_seed",
    "env_int",
    "group_topics",
    "log_counts",
    "poll_until",
    "produce_paced",
    "read_topic",
    "request_ids",
]

# Long enough to ride out a broker restart: an idempotent producer retries its
# batches until this runs out, without duplicating them.
_PRODUCER_TIMEOUT_MS = 120_000


def env_int(name: str, default: int) -> int:
    """A drill size from the environment (tests only), else the full default."""
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def drill_seed() -> int:
    """`DRILL_SEED` to replay a run, else a fresh one (printed with the figures)."""
    seed = env_int("DRILL_SEED", random.SystemRandom().randrange(1_000_000))
    # Shown with a failure too, whose drill never prints its figures.
    print(f"drill seed={seed} (DRILL_SEED={seed} replays it)")
    return seed


async def poll_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float,
    what: str,
    every_s: float = 0.2,
    details: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` until it holds; fail naming `what` (and `details()`) on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{extra}")
        await asyncio.sleep(every_s)


def _producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=",".join(settings.broker_hosts),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=_PRODUCER_TIMEOUT_MS,
    )


# -- workload ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    kind: str


@dataclass(frozen=True, kw_only=True)
class DrillWorkload:
    """`streams.workload.Workload` requests over pools of four kinds, plus profile updates.

    Pool `i` is, by `i % 4`: a pair pool whose matches need both members to confirm;
    a pair pool matching on difficulty; a group-of-3 pool matching on topic (relaxed
    after 5 s); a pair pool without criteria. Users come back (`users_per_pool`), so
    some requests supersede earlier ones, and about one request in twenty is
    followed by a profile update of its user.
    """

    requests: int
    pools: int
    seed: int
    run_id: str
    malformed: int = 0
    cancel_ratio: float = 0.05
    duplicate_ratio: float = 0.03
    users_per_pool: int = 0
    profile_ratio: float = 0.05
    ttl_s: float = 300.0
    confirm_timeout_s: float = 15.0

    @property
    def base(self) -> Workload:
        return Workload(
            requests=self.requests,
            pools=self.pools,
            seed=self.seed,
            cancel_ratio=self.cancel_ratio,
            duplicate_ratio=self.duplicate_ratio,
            malformed=self.malformed,
            users_per_pool=self.users_per_pool,
            ttl_s=self.ttl_s,
            run_id=self.run_id,
        )

    @property
    def pool_ids(self) -> list[str]:
        return [self.base.pool_id(index) for index in range(self.pools)]

    def config(self, index: int) -> dict[str, Any]:
        config: dict[str, Any] = {"request_ttl_s": self.ttl_s}
        match index % 4:
            case 0:
                config.update(require_confirm=True, confirm_timeout_s=self.confirm_timeout_s)
            case 1:
                config.update(match_on=["difficulty"])
            case 2:
                config.update(
                    mode="group", group_size=3, match_on=["topic"], relax_after_s={"topic": 5}
                )
        return config

    def configure(self, names: TopicNames) -> list[Message]:
        return [
            Message(
                names.command,
                pool_id.encode(),
                orjson.dumps(
                    {"command": "configure", "pool_id": pool_id, "config": self.config(index)}
                ),
                "configure",
            )
            for index, pool_id in enumerate(self.pool_ids)
        ]

    def close(self, names: TopicNames) -> list[Message]:
        return [
            Message(
                names.command,
                pool_id.encode(),
                orjson.dumps({"command": "close", "pool_id": pool_id}),
                "close",
            )
            for pool_id in self.pool_ids
        ]

    def stream(self, names: TopicNames) -> Iterator[Message]:
        """Requests, cancels, duplicates, malformed input and profile updates, in order."""
        rng = random.Random(self.seed + 1)
        for message in self.base.messages():
            if message.kind == "configure":
                continue  # our own configs, sent first by `configure`
            yield Message(names.request, message.key, message.value, message.kind)
            if message.kind == "request" and rng.random() < self.profile_ratio:
                user_id = orjson.loads(message.value)["user_id"]
                update = {
                    "user_id": user_id,
                    "profile": {
                        "interests": rng.sample(["rust", "go", "chess", "jazz", "ml"], 2),
                        "embedding": [rng.uniform(-1, 1) for _ in range(4)],
                    },
                    "updated_at": "2026-11-23T10:05:00Z",
                }
                yield Message(names.profile, user_id.encode(), orjson.dumps(update), "profile")


def request_ids(messages: Iterable[Message]) -> set[tuple[str, str]]:
    """(pool_id, request_id) of every valid join request among `messages`."""
    ids = set()
    for message in messages:
        if message.kind == "request" and message.value is not None:
            body = orjson.loads(message.value)
            ids.add((body["pool_id"], body["request_id"]))
    return ids


async def produce_paced(
    settings: Settings,
    messages: Sequence[Message],
    *,
    rate: float | None,
    chunk: int = 200,
) -> Counter[str]:
    """Produce `messages` in order at about `rate` messages/s (None: as fast as possible).

    Waits for every acknowledgement; counts what was sent by kind.
    """
    counts: Counter[str] = Counter()
    producer = _producer(settings)
    await producer.start()
    try:
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        for number, message in enumerate(messages, start=1):
            pending.append(await producer.send(message.topic, message.value, key=message.key))
            counts[message.kind] += 1
            if number % chunk == 0:
                await asyncio.gather(*pending)
                pending.clear()
                if rate is not None:
                    # Pacing, not synchronisation: the drill wants inputs spread over time.
                    ahead = number / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return counts


async def read_topic(settings: Settings, topic: str, *, timeout_s: float = 60.0) -> list[Any]:
    """Every record of `topic` up to its current end, as `ConsumerRecord`s."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=",".join(settings.broker_hosts), enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, n) for n in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []

        async def drain() -> None:
            remaining = {tp for tp, end in ends.items() if end > 0}
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, batch in batches.items():
                    records.extend(r for r in batch if r.offset < ends[tp])
                    if batch and batch[-1].offset >= ends[tp] - 1:
                        remaining.discard(tp)

        await asyncio.wait_for(drain(), timeout_s)
        return records
    finally:
        await consumer.stop()


# -- reading statuses and answering proposals -------------------------------------------


@dataclass
class _Answers:
    accepted: int = 0
    declined: int = 0
    silent: int = 0
    failed: int = 0


class StatusTracker:
    """Follows `match.status`: which requests have a status, which have ended.

    With `answer_proposals`, it also plays the users of confirm pools: each member
    of a `proposed` match accepts (most), declines (`decline_ratio`) or never
    answers (`silent_ratio`, left to the confirmation timeout), decided by a hash
    of match and request so that re-emitted proposals get the same answer once.
    Only ids and counters are kept, so it can follow a burst of 200,000 requests.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        answer_proposals: bool = False,
        decline_ratio: float = 0.1,
        silent_ratio: float = 0.03,
        seed: int = 0,
    ) -> None:
        self.names = TopicNames.with_prefix(settings.topic_prefix)
        self.seen: set[tuple[str, str]] = set()
        self.ended: set[tuple[str, str]] = set()
        self.statuses = 0
        self.answers = _Answers()
        self._answer = answer_proposals
        self._decline_ratio = decline_ratio
        self._silent_ratio = silent_ratio
        self._seed = seed
        self._answered: set[tuple[str, str]] = set()
        self._sends: list[asyncio.Future[Any]] = []
        hosts = ",".join(settings.broker_hosts)
        self._consumer = AIOKafkaConsumer(
            self.names.status,
            bootstrap_servers=hosts,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,
        )
        self._producer = _producer(settings)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        await self._producer.start()
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        try:
            await self._producer.flush()
        finally:
            await self._producer.stop()
            await self._consumer.stop()

    def healthy(self) -> bool:
        """True, or raise what went wrong in the background reader."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()
        return True

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5_000)
            for records in batches.values():
                for record in records:
                    await self._on_status(orjson.loads(record.value))

    async def _on_status(self, event: dict[str, Any]) -> None:
        self.statuses += 1
        if event.get("about") is not None:
            return  # a refused cancel or confirm; it says nothing about the request's life
        key = (event["pool_id"], event["request_id"])
        self.seen.add(key)
        if event["status"] in TERMINAL_STATUSES:
            self.ended.add(key)
        elif self._answer and event["status"] == "proposed":
            await self._reply(event)

    async def _reply(self, event: dict[str, Any]) -> None:
        answer_key = (event["match_id"], event["request_id"])
        if answer_key in self._answered:
            return
        self._answered.add(answer_key)
        draw = random.Random(f"{self._seed}/{answer_key}").random()
        if draw < self._silent_ratio:
            self.answers.silent += 1
            return
        accept = draw >= self._silent_ratio + self._decline_ratio
        body = {
            "match_id": event["match_id"],
            "pool_id": event["pool_id"],
            "user_id": event["user_id"],
            "accept": accept,
        }
        future = await self._producer.send(
            self.names.confirm, orjson.dumps(body), key=event["pool_id"].encode()
        )
        future.add_done_callback(self._sent)
        if accept:
            self.answers.accepted += 1
        else:
            self.answers.declined += 1

    def _sent(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.answers.failed += 1


# -- workers, memory and chaos -----------------------------------------------------------


def _vm_kib(pid: int, field: str = "VmHWM") -> int | None:
    """A live process's peak (`VmHWM`) or current (`VmRSS`) resident set, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class MemoryWatch:
    """The peak RSS of every run of every worker, sampled until each run ends.

    `VmHWM` is a process's own peak, gone with the process, so it is sampled
    periodically and once more right before a kill (`sample`).
    """

    def __init__(self, workers: dict[str, WorkerProcess], every_s: float = 0.5) -> None:
        self.workers = workers
        self.every_s = every_s
        self.peak_kib: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for label, worker in self.workers.items():
            if worker.running:
                kib = _vm_kib(worker.pid)
                if kib is not None:
                    self.peak_kib[label] = max(self.peak_kib.get(label, 0), kib)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every_s)  # a sampling period, nothing to wait for

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sample()
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def current_mib(self) -> float:
        """The largest current RSS among the running workers."""
        kib = [
            _vm_kib(worker.pid, "VmRSS") or 0 for worker in self.workers.values() if worker.running
        ]
        return max(kib, default=0) / 1024

    @property
    def peak_mib(self) -> float:
        return max(self.peak_kib.values(), default=0) / 1024

    def render(self) -> str:
        return " ".join(
            f"{label}={kib / 1024:.0f}MiB" for label, kib in sorted(self.peak_kib.items())
        )


@dataclass
class Chaos:
    """Kills a worker and restarts it, and restarts the broker, at random moments.

    Events run one after another, each after a random pause; a killed worker is
    started again after a second random pause (so sometimes while its partitions
    are still orphaned, sometimes after they moved) and must become ready again.
    """

    rng: random.Random
    memory: MemoryWatch
    broker: LocalKafka | None = None
    log: list[str] = field(default_factory=list)
    kills: int = 0
    worker_restarts: int = 0
    broker_restarts: int = 0
    started: float = field(default_factory=time.monotonic)

    def _note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f}s {text}")

    async def run(self, events: Sequence[tuple[str, Any]], *, pause_s: tuple[float, float]) -> None:
        for kind, target in events:
            await asyncio.sleep(self.rng.uniform(*pause_s))  # a random moment: the point
            if kind == "kill":
                await self.kill_and_restart(target)
            elif kind == "broker":
                await self.restart_broker()
            else:
                raise ValueError(kind)

    async def kill_and_restart(self, worker: WorkerProcess) -> None:
        self.memory.sample()
        self._note(f"SIGKILL worker pid={worker.pid}")
        worker.kill()
        self.kills += 1
        await asyncio.sleep(self.rng.uniform(0.2, 4.0))  # down for a random while
        worker.start()
        self.worker_restarts += 1
        self._note(f"worker restarted pid={worker.pid}")
        await worker.wait_ready(timeout_s=120)
        self._note("worker ready")

    async def restart_broker(self) -> None:
        assert self.broker is not None
        self._note("SIGKILL broker")
        await asyncio.to_thread(self.broker.kill)
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))  # down for a random while
        await asyncio.to_thread(self.broker.start, 120)
        self.broker_restarts += 1
        self._note("broker serving again")


_REDELIVERED = re.compile(r"matcher progress .*?redelivered=(\d+)")


def log_counts(logs: Iterable[str]) -> dict[str, int]:
    """What workers logged that a drill reports: skipped redeliveries and stall revivals."""
    text = "\n".join(logs)
    return {
        "redelivered_skipped": sum(int(n) for n in _REDELIVERED.findall(text)),
        "stall_revivals": text.count("input partition stalled"),
        "unclean_restarts": text.count("did not stop cleanly"),
    }


@dataclass
class DrillFigures:
    """What a drill measured, printed as one line per drill."""

    name: str
    seed: int
    values: dict[str, object] = field(default_factory=dict)

    def render(self) -> str:
        parts = " ".join(f"{key}={value}" for key, value in self.values.items())
        return f"DRILL {self.name} seed={self.seed} {parts}"


class WorkerSet:
    """Worker processes of one drill, each with its own data dir, web port and log."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.root = root
        self.workers: dict[str, WorkerProcess] = {}

    def add(self, label: str) -> WorkerProcess:
        own = self.settings.model_copy(
            update={"data_dir": self.root / f"worker-{label}", "web_port": free_port()}
        )
        worker = WorkerProcess(own, self.root / f"worker-{label}.log")
        self.workers[label] = worker
        return worker

    def logs(self) -> list[str]:
        """Every run's log of every worker (the log files are appended to per run)."""
        return [
            worker.log_path.read_text(errors="replace")
            for worker in self.workers.values()
            if worker.log_path.exists()
        ]

    def stop_all(self) -> None:
        for worker in self.workers.values():
            worker.stop()


async def group_topics(settings: Settings, group_id: str, *, timeout_s: float) -> set[str]:
    """The topics a consumer group's members are assigned, once the group is stable.

    Read from the group coordinator (DescribeGroups), so it tells whether any worker
    consumes a topic at all, without waiting for commits that may never come.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=",".join(settings.broker_hosts))
    await admin.start()
    try:
        topics: set[str] = set()

        async def stable() -> bool:
            (response,) = await admin.describe_consumer_groups([group_id])
            for group in response.groups:
                state, members = group[2], group[5]
                if state != "Stable" or not members:
                    return False
                topics.clear()
                for member in members:
                    assignment = ConsumerProtocolMemberAssignment.decode(member[4])
                    topics.update(topic for topic, _ in assignment.assignment)
            return bool(topics)

        await poll_until(stable, timeout_s=timeout_s, what=f"group {group_id} to be stable")
        return topics
    finally:
        await admin.close()
