"""What `matchstream kafka status` reports: each node's state and the cluster's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streams.kafka_config import HOST

__all__ = ["BrokerStatus", "ClusterStatus"]


@dataclass(frozen=True)
class BrokerStatus:
    """What `KafkaNode.status()` found about one node.

    Attributes:
        running: The node's JVM is alive.
        pid: Its process id, or None when not running.
        port: The client port: where the node last ran if it runs or its cluster does
            in part, else the one it was given.
        data_dir: The node's own directory.
        log_path: Where its stdout/stderr go.
        node_id: Its KRaft node id.
    """

    running: bool
    pid: int | None
    port: int
    data_dir: Path
    log_path: Path
    node_id: int = 1

    @property
    def bootstrap(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{HOST}:{self.port}"


@dataclass(frozen=True)
class ClusterStatus:
    """What `LocalKafka.status()` found, node by node.

    Attributes:
        nodes: Each node's status, by node id.
        data_dir: The cluster's directory, `<data_dir>/kafka`.
    """

    nodes: tuple[BrokerStatus, ...]
    data_dir: Path

    @property
    def running(self) -> bool:
        """Every node is running."""
        return all(node.running for node in self.nodes)

    @property
    def bootstrap(self) -> str:
        """`host:port,host:port,...` of every node, for Kafka clients."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def broker_url(self) -> str:
        """Every node in the `MATCHSTREAM_BROKER` form, `kafka://host:port;host:port`."""
        return "kafka://" + ";".join(node.bootstrap for node in self.nodes)
