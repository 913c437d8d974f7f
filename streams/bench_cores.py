"""Give the bench's worker a core of its own for one phase.

On a small machine the broker, the bench's clients and the worker share the
cores, so a worker's latency includes waits for a core the broker or a client
holds (the bench reports that wait as its run-queue share). A deployment gives
a worker its own core; this module recreates that on the bench's machine by
setting CPU affinities: every thread of the worker on the last core, every
thread of the other processes on the rest. Threads started meanwhile inherit
their creator's setting, so the split holds for the whole phase.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["threads_of", "worker_on_own_core"]

log = logging.getLogger(__name__)


def threads_of(pid: int) -> list[int]:
    """The thread ids of process `pid` (none once it has exited)."""
    try:
        return [int(entry.name) for entry in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:
        return []


@contextmanager
def worker_on_own_core(worker_pid: int, other_pids: Iterable[int]) -> Iterator[set[int] | None]:
    """Pin `worker_pid` to one core and `other_pids` to the others; undo on exit.

    Yields the worker's core set, or None when there is a single core or the
    system refuses the change (nothing stays changed then). Affinities are
    restored to what this process may use.
    """
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        yield None
        return
    worker_core = {max(cores)}
    elsewhere = cores - worker_core
    pids = [worker_pid, *other_pids]
    try:
        try:
            _pin(worker_pid, worker_core)
            for pid in pids[1:]:
                _pin(pid, elsewhere)
        except PermissionError as exc:
            log.warning("bench.cores.refused error=%r", exc)
            yield None
            return
        log.info("bench.cores worker=%s others=%s", sorted(worker_core), sorted(elsewhere))
        yield worker_core
    finally:
        for pid in pids:
            try:
                _pin(pid, cores)
            except PermissionError as exc:
                log.warning("bench.cores.restore_refused pid=%d error=%r", pid, exc)


def _pin(pid: int, cores: set[int]) -> None:
    for thread in threads_of(pid):
        try:
            os.sched_setaffinity(thread, cores)
        except ProcessLookupError:
            continue  # the thread ended between the listing and now
