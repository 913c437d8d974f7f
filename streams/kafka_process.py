"""Ports, probes and processes of the local Kafka nodes.

The only Kafka protocol spoken here is one Metadata request, which tells whether a
node serves clients and how many brokers it sees. A node's JVM is started detached (`spawn_detached`) so that it outlives the command
that started it; everything else here finds, signals and waits for such processes.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from streams.kafka_config import HOST
from streams.kafka_jars import LocalKafkaError

__all__ = [
    "accepts",
    "cmdline",
    "free_port",
    "live_brokers",
    "pid_alive",
    "signal_group",
    "spawn_detached",
    "wait_exit",
]

_CLIENT_ID = b"matchstream-probe"
_CORRELATION_ID = 0x4D53
_METADATA = 3
# Kafka 4.0 dropped Metadata v0-v3 (KIP-896); v4 is the oldest it answers and, like
# every version before v9, needs no tagged fields.
_METADATA_VERSION = 4


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive TCP ports on 127.0.0.1 that were free a moment ago.

    Args:
        count: How many ports in a row are needed, one per cluster node.

    Returns:
        The lowest port of the run.

    Raises:
        LocalKafkaError: If no free run was found in a few tries.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    for _ in range(50):
        with ExitStack() as held:
            first = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            first.bind((HOST, 0))
            port = int(first.getsockname()[1])
            if port + count - 1 > 65535:
                continue
            try:
                for extra in range(port + 1, port + count):
                    sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((HOST, extra))
            except OSError:
                continue
            return port
    raise LocalKafkaError(f"found no {count} consecutive free ports on {HOST}")


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def live_brokers(port: int) -> int | None:
    """How many brokers the node on `port` lists in its metadata, None if it does not answer.

    A node lists the brokers the controller has registered and not fenced, so a cluster
    is whole once every node lists all of them. Kafka 4.0 opens its client listener only
    once it serves requests, but that order is an implementation detail; an answer to a
    request does not depend on it.
    """
    # Metadata v4 body: an empty topic array (no topics wanted), no auto-creation.
    body = struct.pack(">ib", 0, 0)
    response = _request(port, _METADATA, _METADATA_VERSION, body, extra=8)
    if response is None:
        return None
    _throttle_ms, brokers = struct.unpack(">ii", response)
    return int(brokers)


def _request(port: int, api_key: int, version: int, body: bytes, extra: int = 0) -> bytes | None:
    """Send one request (header v1) and return the `extra` bytes after the correlation id."""
    header = struct.pack(">hhih", api_key, version, _CORRELATION_ID, len(_CLIENT_ID)) + _CLIENT_ID
    request = header + body
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            response = _recv_exactly(sock, 8 + extra)
    except OSError:
        return None
    if response is None or struct.unpack(">i", response[4:8])[0] != _CORRELATION_ID:
        return None
    return response[8:]


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def spawn_detached(command: list[str], *, log_path: Path, cwd: Path) -> int:
    """Start `command` in the background with its output appended to `log_path`.

    Returns:
        The pid of the started process.

    Raises:
        LocalKafkaError: If it could not be launched.
    """
    # sh backgrounds the command and exits, so the node is not our child: it outlives
    # this process, and no Popen object is left waiting on it.
    script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    try:
        launcher = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(log_path.resolve()), *command],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
            check=True,
        )
        return int(launcher.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise LocalKafkaError(f"could not launch the broker: {exc}") from exc


def cmdline(pid: int) -> str | None:
    """The command line of `pid`, or None where there is no procfs to read it from."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # no procfs (macOS): trust the pid file
    return raw.replace(b"\0", b" ").decode(errors="replace")


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie whose threads are all gone is not)."""
    if not _exists(pid):
        return False
    # A zombie still has a pid but is gone; containers whose init does not reap
    # orphans keep one around after the broker exits. The main thread turns
    # zombie first, though, while the JVM's other threads still hold its sockets.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return _exists(pid)  # no procfs (macOS), or it has just been reaped
    return state != "Z" or threads > 1


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process reusing the pid; the caller's cmdline check decides
    return True


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` is gone; False if it still runs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group `pid` belongs to, or to `pid` alone if that is ours."""
    # The node leads no group of its own (sh did), so signal the group it is in,
    # unless that is ours.
    try:
        pgid = os.getpgid(pid)
        if pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
