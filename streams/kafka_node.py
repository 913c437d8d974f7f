"""One local Kafka node: a KRaft broker+controller JVM and the directory it owns.

A node's directory holds:

    server.properties   rendered on every start
    controller.port     kept so a restart reuses the controller endpoint
    broker.pid          present while the node runs
    broker.log          its stdout/stderr (the previous run's in broker.log.1)
    data/               the log dirs: topics, offsets, cluster metadata

`streams.kafka_local.LocalKafka` decides where the directories are, which ports the
nodes get and in which order things happen; a node only carries them out.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import time
from pathlib import Path

from streams.kafka_config import HOST, render_properties
from streams.kafka_jars import LocalKafkaError, tail
from streams.kafka_process import (
    accepts,
    cmdline,
    free_port,
    pid_alive,
    signal_group,
    spawn_detached,
    wait_exit,
)
from streams.kafka_status import BrokerStatus

__all__ = ["KafkaNode"]

_FORMAT_TIMEOUT_S = 120

log = logging.getLogger(__name__)


class KafkaNode:
    """A KRaft broker+controller whose files live in `home`.

    Example:
        >>> node = KafkaNode(node_id=1, port=9092, home=Path("var/kafka"), heap="512m")
        >>> node.status().running  # doctest: +SKIP
        False
    """

    def __init__(self, *, node_id: int, port: int, home: Path, heap: str) -> None:
        """Describe a node; nothing is written or started.

        Args:
            node_id: Its KRaft node id, unique in the cluster.
            port: Its client (PLAINTEXT) port on 127.0.0.1.
            home: The directory it owns.
            heap: JVM heap, both -Xms and -Xmx, e.g. "512m".
        """
        self.node_id = node_id
        self.port = port
        self.heap = heap
        self.home = home
        self.properties_path = home / "server.properties"
        self.pid_path = home / "broker.pid"
        self.log_path = home / "broker.log"
        self.log_dir = home / "data"
        self._controller_port_path = home / "controller.port"

    def status(self, *, last_port: bool = False) -> BrokerStatus:
        """Whether this node runs; a stale pid file (JVM gone) reads as not running.

        Args:
            last_port: Report the port of the last run even if the node is not running.
        """
        pid = self.running_pid()
        port = self.configured_port() if pid is not None or last_port else None
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            port=port or self.port,
            data_dir=self.home,
            log_path=self.log_path,
            node_id=self.node_id,
        )

    def running_pid(self) -> int | None:
        """The pid of this node's JVM, or None when it does not run."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not pid_alive(pid):
            return None
        command = cmdline(pid)
        # A recycled pid (after a reboot, say) is not our node.
        if command is not None and (
            "kafka.Kafka" not in command or self._properties_arg not in command
        ):
            return None
        return pid

    def controller_port(self, *, taken: set[int], keep: bool) -> int:
        """The controller port to start with: the recorded one if still usable, else a new one.

        Args:
            taken: Ports other nodes of the cluster use.
            keep: Running nodes list the recorded port among their voters, so it must not
                change.

        Raises:
            LocalKafkaError: If `keep` and the recorded port is gone or taken.
        """
        try:
            port = int(self._controller_port_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            port = 0
        usable = port != 0 and port != self.port and port not in taken
        if usable and (self.running_pid() is not None or not accepts(port)):
            return port
        if keep:
            raise LocalKafkaError(
                f"node {self.node_id}'s controller port {port or '(none recorded)'} is not "
                "usable while the other nodes run with it; stop the cluster and start it again"
            )
        if port:
            # Only the endpoint changes; a static quorum identifies voters by node id.
            log.warning(
                "kafka.controller_port.busy node=%d port=%d action=pick_new", self.node_id, port
            )
        port = free_port()
        while port == self.port or port in taken:
            port = free_port()
        self._controller_port_path.write_text(f"{port}\n")
        return port

    def write_properties(self, properties: dict[str, str]) -> None:
        """Render this start's server.properties."""
        self.properties_path.write_text(render_properties(properties))

    def format(self, java: str, lib: Path, cluster_id: str) -> None:
        """Format the log dir for `cluster_id`, unless that was done on an earlier start.

        Args:
            java: The java executable.
            lib: The directory of the Kafka jars.
            cluster_id: The id every node of the cluster is formatted with.

        Raises:
            LocalKafkaError: If the storage tool fails.
        """
        if (self.log_dir / "meta.properties").is_file():
            return
        command = [*self._jvm_command(java, lib), "kafka.tools.StorageTool", "format"]
        command += ["-t", cluster_id, "-c", self._properties_arg, "--ignore-formatted"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=_FORMAT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(
                f"kafka storage format did not finish in {_FORMAT_TIMEOUT_S}s"
            ) from exc
        if done.returncode != 0:
            raise LocalKafkaError(
                f"formatting {self.log_dir} failed:\n"
                + tail((done.stdout + done.stderr).splitlines())
            )
        log.info(
            "kafka.formatted node=%d cluster_id=%s log_dir=%s",
            self.node_id,
            cluster_id,
            self.log_dir,
        )

    def launch(self, java: str, lib: Path) -> int:
        """Start the JVM in the background; the caller waits for it to be ready.

        Returns:
            Its pid, also written to the pid file.
        """
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        pid = spawn_detached(
            [*self._jvm_command(java, lib), "kafka.Kafka", self._properties_arg],
            log_path=self.log_path,
            cwd=self.home,
        )
        self.pid_path.write_text(f"{pid}\n")
        log.info(
            "kafka.starting node=%d pid=%d bootstrap=%s:%d data_dir=%s",
            self.node_id,
            pid,
            HOST,
            self.port,
            self.home,
        )
        return pid

    def wait_stopped(self, pid: int, deadline: float) -> None:
        """Wait for a node sent SIGTERM to exit, killing it once `deadline` has passed.

        Args:
            pid: The node's pid.
            deadline: A `time.monotonic()` value.
        """
        started = time.monotonic()
        if not wait_exit(pid, max(0.0, deadline - started)):
            log.warning("kafka.stop.kill node=%d pid=%d reason=timeout", self.node_id, pid)
            signal_group(pid, signal.SIGKILL)
            wait_exit(pid, 10.0)
        self.pid_path.unlink(missing_ok=True)
        log.info(
            "kafka.stopped node=%d pid=%d waited_s=%.1f",
            self.node_id,
            pid,
            time.monotonic() - started,
        )

    def abandon(self, pid: int) -> None:
        """Kill a JVM that failed to start and forget it."""
        signal_group(pid, signal.SIGKILL)
        wait_exit(pid, 10.0)
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the node at once, as a crash would; the pid file stays, as after a crash."""
        pid = self.running_pid()
        if pid is None:
            log.info("kafka.kill.skipped reason=not_running node=%d", self.node_id)
            return
        signal_group(pid, signal.SIGKILL)
        wait_exit(pid, 10.0)
        log.info("kafka.killed node=%d pid=%d", self.node_id, pid)

    def log_tail(self) -> str:
        """The last lines of the node's log, for an error message."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log written)"
        return tail(lines)

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

    @property
    def _properties_arg(self) -> str:
        # Canonical, so it names the same file from any working directory or symlinked
        # route; it is also how our node's command line is told apart from others'.
        return str(self.properties_path.resolve())

    def configured_port(self) -> int | None:
        """The client port in the last server.properties, None if there is none."""
        try:
            text = self.properties_path.read_text()
        except FileNotFoundError:
            return None
        match = re.search(r"^advertised\.listeners=PLAINTEXT://[^:]+:(\d+)", text, re.MULTILINE)
        return int(match.group(1)) if match else None
