"""`streams.bench_cores`: the worker on one core, the others elsewhere, and back."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator

import pytest

from streams.bench_cores import threads_of, worker_on_own_core

# A process with a second thread, both alive until the test kills it.
_TWO_THREADS = (
    "import threading, time\n"
    "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
_READY_TIMEOUT_S = 10.0


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started = [
        subprocess.Popen([sys.executable, "-c", _TWO_THREADS], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for process in started:
            assert process.stdout is not None
            readable, _, _ = select.select([process.stdout], [], [], _READY_TIMEOUT_S)
            assert readable, "the child process did not start its thread in time"
            assert process.stdout.readline().strip() == "ready"
        yield started
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


def _affinities(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(thread) for thread in threads_of(pid)]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to split")
def test_the_worker_gets_the_last_core_and_everything_is_restored(
    processes: list[subprocess.Popen[str]],
) -> None:
    worker, other = processes
    cores = os.sched_getaffinity(0)
    assert len(threads_of(worker.pid)) >= 2

    with worker_on_own_core(worker.pid, [other.pid]) as worker_core:
        assert worker_core == {max(cores)}
        assert _affinities(worker.pid) == [{max(cores)}] * len(threads_of(worker.pid))
        assert all(affinity == cores - {max(cores)} for affinity in _affinities(other.pid))

    assert all(affinity == cores for affinity in _affinities(worker.pid))
    assert all(affinity == cores for affinity in _affinities(other.pid))


def test_one_core_is_left_alone(
    processes: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, other = processes
    before = _affinities(worker.pid)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})

    with worker_on_own_core(worker.pid, [other.pid]) as worker_core:
        assert worker_core is None
        monkeypatch.undo()
        assert _affinities(worker.pid) == before


def test_a_process_that_exited_has_no_threads() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait(timeout=10)
    assert threads_of(exited.pid) == []


def test_a_refused_change_is_reported_as_no_split(
    processes: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, other = processes
    before = _affinities(worker.pid)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})

    def refuse(thread: int, cores: set[int]) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)

    with worker_on_own_core(worker.pid, [other.pid]) as worker_core:
        assert worker_core is None
    monkeypatch.undo()
    assert _affinities(worker.pid) == before
