"""The cluster drill: three brokers, three workers, a steady load, and faults in turn.

One broker (the one leading most partitions) is SIGKILLed and restarted, one
worker is SIGKILLed and restarted, and one worker is stopped for good; the drill
waits for recovery after each. Then the load stops, every request ends (matched,
or expired by its TTL) and the audit must find nothing lost and no conflicting
duplicate. Printed (pytest -s): throughput before, during and after each fault,
and the failover time of the killed worker's pools, for each standby setting in
`DRILL_STANDBY_VARIANTS` (default "1"; "1,0" also runs the drill without standby
table replicas, about as long again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.audit import audit_topics
from streams.kafka_local import LocalKafka, free_port
from streams.settings import Settings, get_settings
from streams.topics import ensure_topics
from streams.worker_process import WorkerProcess
from tests.support.cluster_drill import (
    MatchSeen,
    Member,
    OutputLog,
    Phase,
    SteadyLoad,
    answer_or_none,
    describe_missing,
    group_members,
    leader_counts,
    render_phases,
    render_timeline,
    standby_variants,
    under_replicated,
)
from tests.support.drill import poll_until
from tests.support.harness import isolated_settings

pytestmark = pytest.mark.integration

PARTITIONS = 6
"""Two active partitions per worker while three run."""
POOLS = 60
RATE = 150.0
"""Requests per second produced throughout the faults."""
TTL_S = 10.0
"""Requests left alone when the load stops end `expired` this long after they were queued."""
WINDOW_S = 5.0
"""Length of the "before" and "after" throughput windows around each fault."""
BROKER_DOWN_S = 4.0

# Generous for a loaded 2-core machine running three JVMs and three workers; every
# wait is still bounded. A killed worker's partitions move after its 10 s session.
START_TIMEOUT_S = 150.0
READY_TIMEOUT_S = 150.0
RECOVER_TIMEOUT_S = 120.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalKafka]:
    """Three nodes of the drill's own on free ports; the session's broker is not touched."""
    kafka = LocalKafka(
        port=free_port(3),
        nodes=3,
        data_dir=tmp_path / "kafka",
        cache_dir=get_settings().kafka_cache_dir,
    )
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def workers() -> Iterator[dict[str, WorkerProcess]]:
    """The drill's workers by label, stopped before the cluster they talk to."""
    started: dict[str, WorkerProcess] = {}
    yield started
    for worker in started.values():
        worker.stop()


@asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=",".join(settings.broker_hosts), request_timeout_ms=10_000
    )
    await asyncio.wait_for(admin.start(), 60)
    try:
        yield admin
    finally:
        await admin.close()


async def _stable_group(
    admin: AIOKafkaAdminClient, settings: Settings, *, expect: int, what: str
) -> list[Member]:
    found: list[Member] = []

    async def stable() -> bool:
        members = await answer_or_none(group_members(admin, settings, expect=expect))
        found[:] = members or []
        return bool(members)

    await poll_until(stable, timeout_s=RECOVER_TIMEOUT_S, what=what, every_s=0.5)
    return found


def _member_of(members: list[Member], worker: WorkerProcess) -> Member:
    (member,) = [m for m in members if m.url.endswith(f":{worker.settings.web_port}")]
    return member


async def _matching_everywhere(
    log: OutputLog, since: float, partitions: set[int], what: str
) -> dict[int, MatchSeen]:
    """Wait until each of `partitions` has a match decided after `since`; return the firsts."""
    await poll_until(
        lambda: log.check() or partitions <= log.matched_partitions_after(since),
        timeout_s=RECOVER_TIMEOUT_S,
        what=what,
        details=lambda: f"matching again: {sorted(log.matched_partitions_after(since))}",
    )
    return {p: m for p, m in log.first_matches_after(since).items() if p in partitions}


async def _window(load: SteadyLoad, log: OutputLog, until: float) -> None:
    """Let the load run until wall-clock `until`: a measuring window, not a wait for a state."""
    while time.time() < until:
        load.check()
        log.check()
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("standby_replicas", standby_variants())
async def test_cluster_drill_loses_nothing_and_measures_failover(
    cluster: LocalKafka,
    workers: dict[str, WorkerProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    standby_replicas: int,
) -> None:
    began = time.monotonic()
    await asyncio.to_thread(cluster.start, START_TIMEOUT_S)
    # Faust reads `;`-separated hosts; listing all three also gives its changelog 3 copies.
    bootstrap = cluster.status().bootstrap.replace(",", ";")
    settings = isolated_settings(bootstrap, tmp_path / "data", partitions=PARTITIONS)
    settings = settings.model_copy(update={"standby_replicas": standby_replicas})
    await asyncio.wait_for(ensure_topics(settings), 60)
    for label in "abc":
        own = settings.model_copy(
            update={"data_dir": tmp_path / f"worker-{label}", "web_port": free_port()}
        )
        workers[label] = WorkerProcess(own, tmp_path / f"worker-{label}.log")
        workers[label].start()
    await asyncio.gather(*(worker.wait_ready(READY_TIMEOUT_S) for worker in workers.values()))
    setup_s = time.monotonic() - began

    phases: list[Phase] = []
    events: list[str] = []
    async with (
        _admin(settings) as admin,
        OutputLog(settings) as log,
        SteadyLoad(settings, pools=POOLS, rate=RATE, ttl_s=TTL_S, run_id="cd") as load,
    ):
        run_start = time.time()

        def note(text: str) -> None:
            events.append(f"{time.time() - run_start:7.1f}s {text}")

        members = await _stable_group(admin, settings, expect=3, what="three workers sharing")
        note("group: " + "; ".join(f"{m.url} actives={sorted(m.actives)}" for m in members))
        everything = set(range(PARTITIONS))
        await _matching_everywhere(log, run_start, everything, "matches on every partition")
        await _window(load, log, time.time() + WINDOW_S)

        # -- 1. the broker leading most partitions dies and comes back ---------------------
        leaders = await leader_counts(admin, settings)
        node, led = leaders.most_common(1)[0]
        phase = Phase(f"broker {node} SIGKILL, restart", time.time())
        phases.append(phase)
        await asyncio.to_thread(cluster.kill, node)
        note(f"SIGKILL broker node {node} (leader of {led} partitions)")
        await asyncio.sleep(BROKER_DOWN_S)  # the outage itself
        await asyncio.to_thread(cluster.start, START_TIMEOUT_S)
        serving = time.time()
        note(f"broker node {node} serving again")

        async def in_sync() -> bool:
            return await answer_or_none(under_replicated(admin, settings, replicas=3)) == 0

        await poll_until(in_sync, timeout_s=RECOVER_TIMEOUT_S, what="every partition in sync")
        in_sync_at = time.time()
        await _matching_everywhere(log, serving, everything, "matches after the broker restart")
        phase.recovered = time.time()  # in sync and matching everywhere
        phase.notes = {
            "led": f"{led} of the busy partitions",
            "down_s": f"{serving - phase.began:.1f} (SIGKILL to serving, {BROKER_DOWN_S:.0f} s off)",
            "all_in_sync_s": f"{in_sync_at - phase.began:.1f}",
        }
        note("every partition in sync, matching everywhere")
        await _window(load, log, phase.recovered + WINDOW_S)

        # -- 2. a worker dies: its partitions move to the others ---------------------------
        members = await _stable_group(admin, settings, expect=3, what="three workers again")
        victim = workers["b"]
        lost = set(_member_of(members, victim).actives)
        standby_holders = [m.url for m in members if lost & m.standbys]
        standby_of = {p: {m.url for m in members if p in m.standbys} for p in lost}
        victim.kill()
        killed = time.time()
        phase = Phase("worker b SIGKILL (failover)", killed)
        phases.append(phase)
        note(f"SIGKILL worker b, actives={sorted(lost)}, standbys of them on {standby_holders}")
        firsts = await _matching_everywhere(log, killed, lost, "the killed worker's pools")
        decided = max(match.decided for match in firsts.values()) - killed
        visible = max(match.seen for match in firsts.values()) - killed
        phase.recovered = killed + decided
        survivors = await _stable_group(admin, settings, expect=2, what="two workers")
        took = {m.url: sorted(m.actives & lost) for m in survivors}
        owner = {p: m.url for m in survivors for p in m.actives}
        # The assignor balances actives first, so a partition may go to a worker that
        # held no standby of it even when standbys exist: say which case each one was.
        how = {
            p: "standby promoted" if owner.get(p) in standby_of[p] else "recovered" for p in lost
        }
        phase.notes = {
            "failover_s": f"{decided:.1f} to the first new match in every pool it owned, "
            f"{visible:.1f} until visible on match.found",
            "per_partition_s": ", ".join(
                f"p{p}={firsts[p].decided - killed:.1f} ({how[p]})" for p in sorted(firsts)
            ),
            "taken_by": f"{took}; standby_replicas={standby_replicas}",
        }
        note(f"failover done in {decided:.1f}s, partitions taken by {took}")
        await _window(load, log, phase.recovered + WINDOW_S)

        # -- 3. the killed worker comes back and rejoins ----------------------------------
        phase = Phase("worker b restart (rejoin)", time.time())
        phases.append(phase)
        victim.start()
        await victim.wait_ready(READY_TIMEOUT_S)
        ready = time.time()
        members = await _stable_group(admin, settings, expect=3, what="worker b back")
        rejoined = time.time()
        firsts = await _matching_everywhere(log, rejoined, everything, "matches after the rejoin")
        phase.recovered = max(match.decided for match in firsts.values())
        phase.notes = {
            "ready_s": f"{ready - phase.began:.1f}",
            "group_stable_s": f"{rejoined - phase.began:.1f}, "
            f"worker b actives={sorted(_member_of(members, victim).actives)}",
        }
        note("worker b ready and in the group again")
        await _window(load, log, phase.recovered + WINDOW_S)

        # -- 4. a worker leaves for good with a clean stop --------------------------------
        leaver = workers["c"]
        handed = set(_member_of(members, leaver).actives)
        phase = Phase("worker c SIGTERM (leaves)", time.time())
        phases.append(phase)
        await asyncio.to_thread(leaver.stop, 60.0)
        exited = time.time()
        note(f"worker c stopped (SIGTERM), actives={sorted(handed)}")
        firsts = await _matching_everywhere(log, exited, handed, "the leaver's pools")
        phase.recovered = max(match.decided for match in firsts.values())
        survivors = await _stable_group(admin, settings, expect=2, what="two workers left")
        took = {m.url: sorted(m.actives & handed) for m in survivors}
        phase.notes = {
            "handover_s": f"{phase.recovered - phase.began:.1f} from SIGTERM to the first new "
            f"match in every pool it owned (process exited after {exited - phase.began:.1f})",
            "taken_by": str(took),
        }
        await _window(load, log, phase.recovered + WINDOW_S)

        # -- the end: stop the load, let every request end, audit --------------------------
        await load.stop()
        produced = dict(load.produced)
        note(f"load stopped after {len(produced)} requests")
        never_ended = await _until_everything_ended(log, set(produced))
        note(f"{len(produced) - len(never_ended)} requests ended, {len(never_ended)} never did")
        run_end = time.time()
        table = render_phases(phases, log, load.sent_at, window_s=WINDOW_S)
        timeline = render_timeline(log, run_start, run_end, phases)
        ends = {key: log.ends[key] for key in produced if key in log.ends}

    report = await asyncio.wait_for(audit_topics(settings), 180)
    missing = describe_missing(produced, never_ended) if never_ended else "none"
    with capsys.disabled():
        print(
            f"\nCLUSTER DRILL standby_replicas={standby_replicas} partitions={PARTITIONS} "
            f"pools={POOLS} rate={RATE:.0f}/s requests={len(produced)} "
            f"matches={report.matches} identical_re_emits={report.duplicate_outputs} "
            f"never_ended={len(never_ended)} setup_s={setup_s:.0f} "
            f"elapsed_s={time.monotonic() - began:.0f}\n{table}\n"
            f"matches per second (! fault, ^ recovered):\n{timeline}\n"
            + "\n".join(events)
            + f"\nnever ended: {missing}"
        )

    assert not never_ended, f"{len(never_ended)} requests never ended: {missing}"
    assert report.ok, report.render()
    assert report.requests == len(produced), report.render()
    assert report.terminal == len(produced) and report.still_active == 0, report.render()
    conflicting = {key: found for key, found in ends.items() if len(found) != 1}
    assert not conflicting, f"requests with several ends: {list(conflicting.items())[:5]}"
    assert workers["a"].running and victim.running, "a worker died on its own"
    assert "did not stop cleanly" in victim.log_text(), "the restart after SIGKILL rebuilds"


async def _until_everything_ended(
    log: OutputLog, expected: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Wait until every request has ended; return those that never did.

    A request ends at most `TTL_S` after the engine applied it, so once nothing has
    ended for longer than that (plus a margin for a worker catching up) the rest
    never will, and waiting on would only stretch a failing run.
    """
    deadline = time.monotonic() + TTL_S + RECOVER_TIMEOUT_S
    left, since = -1, time.monotonic()
    while True:
        log.check()
        missing = expected - log.ends.keys()
        now = time.monotonic()
        if len(missing) != left:
            left, since = len(missing), now
        if not missing or now - since > TTL_S + 20.0 or now > deadline:
            return missing
        await asyncio.sleep(0.2)
