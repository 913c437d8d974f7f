"""The local Apache Kafka for development and tests: one node or a small cluster on loopback.

Every node is one KRaft process acting as both broker and controller on 127.0.0.1,
run from jars Maven downloads once (`streams.kafka_jars`); all nodes are voters of a
static quorum, so a cluster of three survives losing any one. Node `i` serves clients
on `port + i - 1`. Everything lives under `<data_dir>/kafka/`:

    cluster.id      kept so a restart reuses the formatted storage
    nodes           how many nodes the storage was formatted for
    start.lock      held while a `start` is under way
    ...             one node: that node's own files, right here (`streams.kafka_node`)
    node-<id>/      several nodes: each node's own files

The modules behind it: `kafka_jars` (Java and the jar cache), `kafka_config` (each
node's server.properties), `kafka_process` (ports, probes, processes), `kafka_node`
(one node's directory and JVM) and `kafka_status` (what `status()` reports).
"""

from __future__ import annotations

import fcntl
import logging
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streams.kafka_config import HOST, broker_properties, new_cluster_id, render_properties
from streams.kafka_jars import KAFKA_VERSION, LocalKafkaError, ensure_jars, find_java, jar_dir
from streams.kafka_node import KafkaNode
from streams.kafka_process import (
    accepts,
    free_port,
    live_brokers,
    signal_group,
)
from streams.kafka_status import BrokerStatus, ClusterStatus

__all__ = [
    "KAFKA_VERSION",
    "MAX_NODES",
    "BrokerStatus",
    "ClusterStatus",
    "LocalKafka",
    "LocalKafkaError",
    "broker_properties",
    "free_port",
    "render_properties",
]

MAX_NODES = 5
"""Every node is a quorum voter and a JVM; more than five only makes a laptop slower."""

_HEAP_RE = re.compile(r"[1-9][0-9]*[kKmMgG]?")

log = logging.getLogger(__name__)


class LocalKafka:
    """A development broker, or a cluster of them, whose files live under `<data_dir>/kafka/`.

    Example:
        >>> kafka = LocalKafka(port=9092, nodes=3, data_dir=Path("var"), cache_dir=Path("/tmp/kc"))
        >>> kafka.start()  # doctest: +SKIP
        >>> kafka.status().bootstrap  # doctest: +SKIP
        '127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094'
        >>> kafka.kill(node_id=2)  # doctest: +SKIP
        >>> kafka.start()  # starts node 2 again  # doctest: +SKIP
        >>> kafka.stop()  # doctest: +SKIP
        True
    """

    def __init__(
        self, *, port: int, data_dir: Path, cache_dir: Path, heap: str = "512m", nodes: int = 1
    ) -> None:
        """Describe a broker or cluster; nothing is started or downloaded yet.

        Args:
            port: The first node's client (PLAINTEXT) port on 127.0.0.1; node `i` uses
                `port + i - 1`.
            data_dir: Matchstream's data dir; the nodes use its `kafka/` subdirectory.
            cache_dir: Where the jars are downloaded, one subdirectory per Kafka version.
            heap: JVM heap of each node, both -Xms and -Xmx, e.g. "512m" or "1g".
            nodes: How many nodes, 1 to `MAX_NODES`; 3 tolerates losing one.

        Raises:
            ValueError: On ports out of range, a bad node count or a heap size Java
                would not accept.
        """
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be in 1..{MAX_NODES}, got {nodes}")
        if not 1 <= port <= 65535 - (nodes - 1):
            raise ValueError(
                f"port must be in 1..{65535 - (nodes - 1)} for {nodes} nodes, got {port}"
            )
        if not _HEAP_RE.fullmatch(heap):
            raise ValueError(f"heap must look like 512m or 1g, got {heap!r}")
        self.port = port
        self.heap = heap
        self.cache_dir = Path(cache_dir).expanduser()
        self.home = Path(data_dir).expanduser() / "kafka"
        self.nodes = tuple(
            KafkaNode(
                node_id=node_id,
                port=port + node_id - 1,
                # One node keeps the layout single-node data dirs have always had.
                home=self.home if nodes == 1 else self.home / f"node-{node_id}",
                heap=heap,
            )
            for node_id in range(1, nodes + 1)
        )
        self._cluster_id_path = self.home / "cluster.id"
        self._nodes_path = self.home / "nodes"

    @staticmethod
    def recorded_nodes(data_dir: Path) -> int | None:
        """How many nodes `<data_dir>/kafka` was formatted for, or None if it never was."""
        home = Path(data_dir).expanduser() / "kafka"
        try:
            return int((home / "nodes").read_text().strip())
        except (FileNotFoundError, ValueError):
            pass
        # Data dirs from before cluster mode hold a single node and no `nodes` file.
        return 1 if (home / "data" / "meta.properties").is_file() else None

    # -- jars --------------------------------------------------------------------------

    @property
    def lib_dir(self) -> Path:
        """Where the broker's jars live once downloaded."""
        return jar_dir(self.cache_dir)

    def ensure_jars(self) -> Path:
        """Download the broker's jars unless cached; see `streams.kafka_jars.ensure_jars`."""
        return ensure_jars(self.cache_dir)

    # -- lifecycle ---------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        """Which nodes started from this data dir are running.

        Returns:
            The status of every node; a stale pid file (node gone) reads as not running.
        """
        partial = self._partly_running()
        nodes = tuple(node.status(last_port=partial) for node in self.nodes)
        return ClusterStatus(nodes=nodes, data_dir=self.home)

    def running_pids(self) -> list[int]:
        """The process ids of the nodes running now (for signals and CPU placement)."""
        return [pid for node in self.nodes if (pid := node.running_pid()) is not None]

    def start(self, timeout_s: float = 60) -> None:
        """Start every node that is not running and wait until the cluster serves clients.

        Does nothing (but log) if every node runs already. After a crash of one node,
        this starts that node alone. Topics and offsets survive a stop/start: storage is
        formatted only the first time.

        Args:
            timeout_s: How long to wait for the nodes to become ready.

        Raises:
            LocalKafkaError: If the jars or Java are unavailable, a port is taken, the data
                dir holds a cluster of another size, or a node exits or is not ready in
                time (the message has its last log lines).
        """
        self.home.mkdir(parents=True, exist_ok=True)
        # Two concurrent starts would both launch JVMs and rotate each other's logs.
        with (self.home / "start.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._start(timeout_s)

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop every node cleanly, killing those that do not exit in time.

        Args:
            timeout_s: How long to wait after SIGTERM before sending SIGKILL.

        Returns:
            Whether any node was running.
        """
        running = [(node, pid) for node in self.nodes if (pid := node.running_pid()) is not None]
        if not running:
            for node in self.nodes:
                node.pid_path.unlink(missing_ok=True)
            log.info("kafka.stop.skipped reason=not_running data_dir=%s", self.home)
            return False
        deadline = time.monotonic() + timeout_s
        # All at once, so the nodes' shutdowns overlap instead of adding up; the nodes of
        # a cluster do not hand over leaderships first (see `broker_properties`).
        for _, pid in running:
            signal_group(pid, signal.SIGTERM)
        for node, pid in running:
            node.wait_stopped(pid, deadline)
        for node in self.nodes:
            node.pid_path.unlink(missing_ok=True)
        return True

    def kill(self, node_id: int | None = None) -> None:
        """SIGKILL nodes at once, as a crash would; their pid files stay, as after a crash.

        Args:
            node_id: The node to kill; every node if None.
        """
        if node_id is not None and not 1 <= node_id <= len(self.nodes):
            raise ValueError(f"node_id must be in 1..{len(self.nodes)}, got {node_id}")
        for node in self.nodes:
            if node_id is None or node.node_id == node_id:
                node.kill()

    # -- helpers -----------------------------------------------------------------------

    def _start(self, timeout_s: float) -> None:
        recorded = self.recorded_nodes(self.home.parent)
        if recorded is not None and recorded != len(self.nodes):
            raise LocalKafkaError(
                f"{self.home} holds a {recorded}-node cluster; start it with --nodes {recorded} "
                "or use another --data-dir"
            )
        down = [node for node in self.nodes if node.running_pid() is None]
        if not down:
            log.info(
                "kafka.start.skipped reason=already_running bootstrap=%s data_dir=%s",
                self.status().bootstrap,
                self.home,
            )
            return
        if len(down) < len(self.nodes):
            # The running nodes and their clients know the others by their last ports.
            for node in down:
                node.port = node.configured_port() or node.port
        for node in down:
            if accepts(node.port):
                raise LocalKafkaError(
                    f"port {node.port} on {HOST} is already in use by another process; "
                    + _choose_port_hint(len(self.nodes))
                )
        java, lib = find_java(), ensure_jars(self.cache_dir)
        voters: dict[int, int] = {}
        taken = {node.port for node in self.nodes}
        for node in self.nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            port = node.controller_port(taken=taken, keep=len(down) < len(self.nodes))
            voters[node.node_id] = port
            taken.add(port)
        cluster_id = self._cluster_id()
        for node in down:
            node.pid_path.unlink(missing_ok=True)
            node.write_properties(
                broker_properties(
                    port=node.port,
                    controller_port=voters[node.node_id],
                    log_dir=node.log_dir.resolve(),
                    node_id=node.node_id,
                    voters=voters,
                )
            )
        # Each format is a JVM start of its own; side by side they take the time of one.
        with ThreadPoolExecutor(max_workers=len(down)) as pool:
            for done in [pool.submit(node.format, java, lib, cluster_id) for node in down]:
                done.result()
        self._nodes_path.write_text(f"{len(self.nodes)}\n")

        started = time.monotonic()
        launched = {node.node_id: node.launch(java, lib) for node in down}
        self._wait_ready(down, launched, started + timeout_s, timeout_s)
        log.info(
            "kafka.started nodes=%d bootstrap=%s elapsed_s=%.1f data_dir=%s",
            len(down),
            ",".join(f"{HOST}:{node.port}" for node in down),
            time.monotonic() - started,
            self.home,
        )

    def _wait_ready(
        self, down: list[KafkaNode], launched: dict[int, int], deadline: float, timeout_s: float
    ) -> None:
        """Wait until every launched node answers and sees every node as a live broker."""
        while True:
            for node in down:
                if node.running_pid() is None:
                    self._abandon(launched, down)
                    raise LocalKafkaError(
                        f"{_name(node, len(self.nodes))} exited during startup; last lines of "
                        f"{node.log_path}:\n" + node.log_tail()
                    )
            waiting = [node for node in down if live_brokers(node.port) != len(self.nodes)]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                self._abandon(launched, down)
                node = waiting[0]
                others = "" if len(down) == 1 else f" with the {len(down) - 1} started with it"
                raise LocalKafkaError(
                    f"{_name(node, len(self.nodes))} was not ready within {timeout_s:.0f}s "
                    f"and was killed{others}; last lines of {node.log_path}:\n" + node.log_tail()
                )
            time.sleep(0.2)

    def _partly_running(self) -> bool:
        running = [node.running_pid() is not None for node in self.nodes]
        return any(running) and not all(running)

    @staticmethod
    def _abandon(launched: dict[int, int], down: list[KafkaNode]) -> None:
        for node in down:
            node.abandon(launched[node.node_id])

    def _cluster_id(self) -> str:
        try:
            return self._cluster_id_path.read_text().strip()
        except FileNotFoundError:
            cluster_id = new_cluster_id()
            self._cluster_id_path.write_text(cluster_id + "\n")
            return cluster_id


def _name(node: KafkaNode, nodes: int) -> str:
    return "the broker" if nodes == 1 else f"node {node.node_id}"


def _choose_port_hint(nodes: int) -> str:
    if nodes == 1:
        return "choose another with --port (0 picks a free one)."
    return (
        f"the {nodes} nodes use --port and the {nodes - 1} ports after it; "
        "choose another --port (0 picks free ones)."
    )
