"""A single-node Apache Kafka broker for development, run from Maven Central jars.

The broker is one KRaft process acting as both broker and controller on
127.0.0.1. Everything it owns lives under `<data_dir>/kafka/`:

    server.properties   rendered on every start
    cluster.id          kept so a restart reuses the formatted storage
    controller.port     kept so a restart reuses the controller endpoint
    broker.pid          present while a broker from this directory runs
    broker.log          its stdout/stderr (the previous run's in broker.log.1)
    start.lock          held while a `start` is under way
    data/               the log dirs: topics, offsets, cluster metadata

The jars are downloaded once by Maven into `<cache_dir>/<KAFKA_VERSION>/lib/`.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "BrokerStatus",
    "LocalKafka",
    "LocalKafkaError",
    "broker_properties",
    "free_port",
    "render_properties",
]

KAFKA_VERSION = "4.0.0"
"""Version of `org.apache.kafka:kafka_2.13` in `kafka-pom.xml`; names the jar cache."""

_MIN_JAVA = 17
_HOST = "127.0.0.1"
_NODE_ID = 1
_LOG_TAIL_LINES = 30
_DOWNLOAD_TIMEOUT_S = 900.0
_COMPLETE_MARKER = ".complete.json"
_HEAP_RE = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
_JAVA_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')

log = logging.getLogger(__name__)


class LocalKafkaError(RuntimeError):
    """The local broker could not be prepared, started or stopped."""


@dataclass(frozen=True)
class BrokerStatus:
    """What `LocalKafka.status()` found.

    Attributes:
        running: A broker started from this data dir is alive.
        pid: Its process id, or None when not running.
        port: The client port: the running broker's, else the configured one.
        data_dir: The broker's own directory, `<data_dir>/kafka`.
        log_path: Where its stdout/stderr go.
    """

    running: bool
    pid: int | None
    port: int
    data_dir: Path
    log_path: Path

    @property
    def bootstrap(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{_HOST}:{self.port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Returns:
        The port number the kernel picked for an ephemeral bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def broker_properties(*, port: int, controller_port: int, log_dir: Path) -> dict[str, str]:
    """The server.properties of a combined broker+controller node on 127.0.0.1.

    Args:
        port: The PLAINTEXT client port.
        controller_port: The KRaft controller port.
        log_dir: Where topic data and cluster metadata are stored.

    Returns:
        Property names mapped to values, in file order.
    """
    if port == controller_port:
        raise ValueError(f"port and controller_port must differ, both are {port}")
    return {
        "process.roles": "broker,controller",
        "node.id": str(_NODE_ID),
        # A static quorum: `format` needs no --standalone and the voter set never changes.
        "controller.quorum.voters": f"{_NODE_ID}@{_HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "8",
        "auto.create.topics.enable": "true",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # The default of 50 partitions means 50 logs to create and load before the first
        # group can join; 8 keeps startup and group coordination quick on 2 cores.
        "offsets.topic.num.partitions": "8",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests and a single dev worker should not wait 3 s for partners that never come.
        "group.initial.rebalance.delay.ms": "0",
        # A restarted node's broker registration is refused until the previous
        # incarnation's session expires: with the default 9 s a restart took 13.5 s, with
        # 3 s it takes 5.5 s. Broker and controller share one JVM, so heartbeats only go
        # missing when the whole process stalls.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "3000",
        # Faust changelog topics are compacted; retention stays at the broker default.
        "log.cleaner.enable": "true",
    }


def render_properties(properties: Mapping[str, str]) -> str:
    """Java `.properties` text, one `key=value` per line.

    Args:
        properties: Names mapped to values.

    Returns:
        The file content; backslashes in values are escaped as Java expects.
    """
    lines = ["# Written by `matchstream kafka start` on every start; edits are lost."]
    for key, value in properties.items():
        escaped = value.replace("\\", "\\\\")
        lines.append(f"{key}={escaped}")
    return "\n".join(lines) + "\n"


class LocalKafka:
    """A development broker whose files live under `<data_dir>/kafka/`.

    Example:
        >>> kafka = LocalKafka(port=9092, data_dir=Path("var"), cache_dir=Path("/tmp/kc"))
        >>> kafka.start()  # doctest: +SKIP
        >>> kafka.status().running  # doctest: +SKIP
        True
        >>> kafka.stop()  # doctest: +SKIP
        True
    """

    def __init__(self, *, port: int, data_dir: Path, cache_dir: Path, heap: str = "512m") -> None:
        """Describe a broker; nothing is started or downloaded yet.

        Args:
            port: The client (PLAINTEXT) port on 127.0.0.1, 1-65535.
            data_dir: Matchstream's data dir; the broker uses its `kafka/` subdirectory.
            cache_dir: Where the jars are downloaded, one subdirectory per Kafka version.
            heap: JVM heap, both -Xms and -Xmx, e.g. "512m" or "1g".

        Raises:
            ValueError: On a port out of range or a heap size Java would not accept.
        """
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if not _HEAP_RE.match(heap):
            raise ValueError(f"heap must look like 512m or 1g, got {heap!r}")
        self.port = port
        self.heap = heap
        self.cache_dir = Path(cache_dir).expanduser()
        self.home = Path(data_dir).expanduser() / "kafka"
        self.properties_path = self.home / "server.properties"
        self.pid_path = self.home / "broker.pid"
        self.log_path = self.home / "broker.log"
        self.log_dir = self.home / "data"
        self._cluster_id_path = self.home / "cluster.id"
        self._controller_port_path = self.home / "controller.port"

    # -- jars --------------------------------------------------------------------------

    @property
    def lib_dir(self) -> Path:
        """Where the broker's jars live once downloaded."""
        return self.cache_dir / KAFKA_VERSION / "lib"

    def ensure_jars(self) -> Path:
        """Download the broker's jars with Maven unless a complete copy is cached.

        The download goes to a temporary directory next to the cache and is renamed
        into place only when complete, so an interrupted download is simply redone.

        Returns:
            The directory holding the jars (the classpath is `<dir>/*`).

        Raises:
            LocalKafkaError: If java (17+) or mvn is missing, or Maven fails.
        """
        self._java()
        pom = (resources.files("streams") / "kafka-pom.xml").read_bytes()
        digest = hashlib.sha256(pom).hexdigest()
        if self._jars_complete(digest):
            return self.lib_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError(
                "mvn (Apache Maven) is not on PATH; it downloads the Kafka jars once "
                f"into {self.lib_dir}. Install it, e.g. `apt-get install maven`."
            )
        self.lib_dir.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        log.info("kafka.jars.download version=%s dest=%s", KAFKA_VERSION, self.lib_dir)
        with tempfile.TemporaryDirectory(dir=self.lib_dir.parent, prefix=".download-") as tmp:
            staging = Path(tmp) / "lib"
            # Maven runs on a copy so nothing (target/, a zipped package) depends on
            # where the package itself is installed.
            pom_copy = Path(tmp) / "pom.xml"
            pom_copy.write_bytes(pom)
            command = [mvn, "-q", "-B", "-f", str(pom_copy), "dependency:copy-dependencies"]
            command.append(f"-DoutputDirectory={staging}")
            try:
                done = subprocess.run(
                    command,
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=_DOWNLOAD_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise LocalKafkaError(
                    f"mvn did not finish downloading the Kafka jars in {_DOWNLOAD_TIMEOUT_S:.0f}s"
                ) from exc
            jars = sorted(p.name for p in staging.glob("*.jar")) if staging.is_dir() else []
            if done.returncode != 0 or not jars:
                tail = _tail((done.stdout + done.stderr).splitlines(), _LOG_TAIL_LINES)
                raise LocalKafkaError(
                    f"mvn failed (exit {done.returncode}) downloading the Kafka jars:\n{tail}"
                )
            marker = {"kafka": KAFKA_VERSION, "pom_sha256": digest, "jars": jars}
            (staging / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=1))
            self._replace_lib_dir(staging, digest)
        log.info(
            "kafka.jars.ready version=%s jars=%d elapsed_s=%.1f dest=%s",
            KAFKA_VERSION,
            len(jars),
            time.monotonic() - started,
            self.lib_dir,
        )
        return self.lib_dir

    def _jars_complete(self, digest: str) -> bool:
        try:
            marker = json.loads((self.lib_dir / _COMPLETE_MARKER).read_text())
        except (OSError, ValueError):
            return False
        if marker.get("pom_sha256") != digest:
            return False
        return all((self.lib_dir / name).is_file() for name in marker.get("jars", []))

    def _replace_lib_dir(self, staging: Path, digest: str) -> None:
        if self.lib_dir.exists():
            # A stale or damaged copy: move it aside first, since rename() will not
            # replace a non-empty directory.
            trash = staging.parent / "old-lib"
            self.lib_dir.rename(trash)
        try:
            staging.rename(self.lib_dir)
        except OSError:
            # Another process finished the same download first; use its copy.
            if not self._jars_complete(digest):
                raise

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError(
                f"java is not on PATH; Kafka {KAFKA_VERSION} needs Java {_MIN_JAVA} or newer "
                "(e.g. `apt-get install openjdk-17-jre-headless`)."
            )
        try:
            done = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalKafkaError(f"could not run `{java} -version`: {exc}") from exc
        output = done.stderr + done.stdout
        match = _JAVA_VERSION_RE.search(output)
        if match is None:
            raise LocalKafkaError(f"could not read the Java version from `{java} -version`")
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_402" means Java 8
            major = int(match.group(2))
        if major < _MIN_JAVA:
            raise LocalKafkaError(
                f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java {_MIN_JAVA} or newer."
            )
        return java

    # -- lifecycle ---------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        """Whether a broker started from this data dir is running.

        Returns:
            The status; a stale pid file (broker gone) reads as not running.
        """
        pid = self._running_pid()
        port = self._configured_port() if pid is not None else None
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            port=port or self.port,
            data_dir=self.home,
            log_path=self.log_path,
        )

    def start(self, timeout_s: float = 60) -> None:
        """Start the broker and wait until it answers Kafka requests.

        Does nothing (but log) if a broker from this data dir already runs. Topics and
        offsets survive a stop/start: storage is formatted only the first time.

        Args:
            timeout_s: How long to wait for the broker to become ready.

        Raises:
            LocalKafkaError: If the jars or Java are unavailable, the port is taken, or the
                broker exits or is not ready in time (the message has its last log lines).
        """
        self.home.mkdir(parents=True, exist_ok=True)
        # Two concurrent starts would both launch a JVM and rotate each other's log.
        with (self.home / "start.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._start(timeout_s)

    def _start(self, timeout_s: float) -> None:
        current = self.status()
        if current.running:
            log.info(
                "kafka.start.skipped reason=already_running pid=%s bootstrap=%s data_dir=%s",
                current.pid,
                current.bootstrap,
                self.home,
            )
            return
        if _accepts(self.port):
            raise LocalKafkaError(
                f"port {self.port} on {_HOST} is already in use by another process; "
                "choose another with --port (0 picks a free one)."
            )
        java = self._java()
        lib = self.ensure_jars()
        self.pid_path.unlink(missing_ok=True)
        controller_port = self._controller_port()
        props = broker_properties(
            port=self.port, controller_port=controller_port, log_dir=self.log_dir.resolve()
        )
        self.properties_path.write_text(render_properties(props))
        self._format(java, lib)

        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        started = time.monotonic()
        pid = self._spawn([*self._jvm_command(java, lib), "kafka.Kafka", self._properties_arg])
        self.pid_path.write_text(f"{pid}\n")
        log.info(
            "kafka.starting pid=%d bootstrap=%s:%d controller_port=%d data_dir=%s",
            pid,
            _HOST,
            self.port,
            controller_port,
            self.home,
        )
        self._wait_ready(pid, started, timeout_s)
        log.info(
            "kafka.started pid=%d bootstrap=%s:%d elapsed_s=%.1f log=%s",
            pid,
            _HOST,
            self.port,
            time.monotonic() - started,
            self.log_path,
        )

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop the broker cleanly, killing it if it does not exit in time.

        Args:
            timeout_s: How long to wait after SIGTERM before sending SIGKILL.

        Returns:
            Whether a broker was running.
        """
        pid = self._running_pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            log.info("kafka.stop.skipped reason=not_running data_dir=%s", self.home)
            return False
        started = time.monotonic()
        _signal_group(pid, signal.SIGTERM)
        if not _wait_exit(pid, timeout_s):
            log.warning("kafka.stop.kill pid=%d reason=timeout timeout_s=%.0f", pid, timeout_s)
            _signal_group(pid, signal.SIGKILL)
            _wait_exit(pid, 10.0)
        self.pid_path.unlink(missing_ok=True)
        log.info("kafka.stopped pid=%d elapsed_s=%.1f", pid, time.monotonic() - started)
        return True

    def kill(self) -> None:
        """SIGKILL the broker at once, as a crash would; the pid file stays, as after a crash."""
        pid = self._running_pid()
        if pid is None:
            log.info("kafka.kill.skipped reason=not_running data_dir=%s", self.home)
            return
        _signal_group(pid, signal.SIGKILL)
        _wait_exit(pid, 10.0)
        log.info("kafka.killed pid=%d", pid)

    # -- helpers -----------------------------------------------------------------------

    @property
    def _properties_arg(self) -> str:
        # Canonical, so it names the same file from any working directory or symlinked
        # route; it is also how our broker's command line is told apart from others'.
        return str(self.properties_path.resolve())

    def _jvm_command(self, java: str, lib: Path) -> list[str]:
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            # The JVM flags of Kafka's own bin/kafka-run-class.sh.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            # slf4j-simple prints no timestamps unless asked.
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
            "-cp",
            str(lib / "*"),
        ]

    def _format(self, java: str, lib: Path) -> None:
        if (self.log_dir / "meta.properties").is_file():
            return
        cluster_id = self._cluster_id()
        command = [*self._jvm_command(java, lib), "kafka.tools.StorageTool", "format"]
        command += ["-t", cluster_id, "-c", self._properties_arg, "--ignore-formatted"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError("kafka storage format did not finish in 120s") from exc
        if done.returncode != 0:
            tail = _tail((done.stdout + done.stderr).splitlines(), _LOG_TAIL_LINES)
            raise LocalKafkaError(f"formatting {self.log_dir} failed:\n{tail}")
        log.info("kafka.formatted cluster_id=%s log_dir=%s", cluster_id, self.log_dir)

    def _cluster_id(self) -> str:
        try:
            return self._cluster_id_path.read_text().strip()
        except FileNotFoundError:
            pass
        # Kafka's Uuid.randomUuid(): 16 random bytes, URL-safe base64 without padding,
        # never starting with "-" (it would read as a command-line flag).
        while True:
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            if not cluster_id.startswith("-"):
                break
        self._cluster_id_path.write_text(cluster_id + "\n")
        return cluster_id

    def _controller_port(self) -> int:
        try:
            port = int(self._controller_port_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            port = 0
        if port and port != self.port and not _accepts(port):
            return port
        if port:
            # Only the endpoint changes; a static quorum identifies voters by node id.
            log.warning("kafka.controller_port.busy port=%d action=pick_new", port)
        port = free_port()
        while port == self.port:
            port = free_port()
        self._controller_port_path.write_text(f"{port}\n")
        return port

    def _configured_port(self) -> int | None:
        try:
            text = self.properties_path.read_text()
        except FileNotFoundError:
            return None
        match = re.search(r"^advertised\.listeners=PLAINTEXT://[^:]+:(\d+)", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _spawn(self, command: list[str]) -> int:
        # sh backgrounds the JVM and exits, so the broker is not our child: it outlives
        # this process, and no Popen object is left waiting on it.
        script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
        try:
            launcher = subprocess.run(
                ["/bin/sh", "-c", script, "sh", str(self.log_path.resolve()), *command],
                cwd=self.home,
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

    def _wait_ready(self, pid: int, started: float, timeout_s: float) -> None:
        deadline = started + timeout_s
        while True:
            if not _pid_alive(pid):
                self.pid_path.unlink(missing_ok=True)
                raise LocalKafkaError(
                    f"the broker exited during startup; last lines of {self.log_path}:\n"
                    + self._log_tail()
                )
            if _answers_kafka(self.port):
                return
            if time.monotonic() >= deadline:
                _signal_group(pid, signal.SIGKILL)
                _wait_exit(pid, 10.0)
                self.pid_path.unlink(missing_ok=True)
                raise LocalKafkaError(
                    f"the broker was not ready within {timeout_s:.0f}s and was killed; "
                    f"last lines of {self.log_path}:\n" + self._log_tail()
                )
            time.sleep(0.2)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log written)"
        return _tail(lines, _LOG_TAIL_LINES)

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmdline = _cmdline(pid)
        # A recycled pid (after a reboot, say) is not our broker.
        if cmdline is not None and (
            "kafka.Kafka" not in cmdline or self._properties_arg not in cmdline
        ):
            return None
        return pid


def _tail(lines: list[str], count: int) -> str:
    return "\n".join(lines[-count:]) if lines else "(no output)"


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((_HOST, port)) == 0


def _answers_kafka(port: int) -> bool:
    """Whether the port answers an ApiVersions request, not merely accepts TCP.

    Kafka 4.0 opens its client listener only once it serves requests, but that
    order is an implementation detail; a Kafka answer does not depend on it.
    """
    correlation_id = 0x4D53
    client_id = b"matchstream-probe"
    # Request header v1 + ApiVersions v0 body (empty): api_key 18, version 0.
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((_HOST, port), timeout=1.0) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 8)
    except OSError:
        return False
    return header is not None and struct.unpack(">ii", header)[1] == correlation_id


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # no procfs (macOS): trust the pid file
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _pid_alive(pid: int) -> bool:
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
        return True  # someone else's process reusing the pid; _running_pid sorts it out
    return True


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The broker leads no group of its own (sh did), so signal the group it is in,
    # unless that is ours.
    try:
        pgid = os.getpgid(pid)
        if pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
