"""What each node of the local Kafka cluster is told: its server.properties.

Every node is a combined KRaft broker+controller on 127.0.0.1 and a voter of a
static quorum (`controller.quorum.voters`), so `kafka.tools.StorageTool format`
needs no `--standalone` or `--initial-controllers` and the voter set never changes.
Replication follows `streams.topics.Replication.for_brokers`, the same rule
`ensure_topics` applies to Matchstream's own topics.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from pathlib import Path

from streams.topics import Replication

__all__ = ["HOST", "broker_properties", "new_cluster_id", "render_properties"]

HOST = "127.0.0.1"
"""Every local node listens on loopback only: it has no authentication."""


def broker_properties(
    *,
    port: int,
    controller_port: int,
    log_dir: Path,
    node_id: int = 1,
    voters: Mapping[int, int] | None = None,
) -> dict[str, str]:
    """The server.properties of one combined broker+controller node on 127.0.0.1.

    Args:
        port: The node's PLAINTEXT client port.
        controller_port: The node's KRaft controller port.
        log_dir: Where the node keeps topic data and cluster metadata.
        node_id: The node's id, unique in the cluster.
        voters: Controller port of every node of the cluster by node id; by default
            this node alone, a single-node cluster.

    Returns:
        Property names mapped to values, in file order.

    Raises:
        ValueError: If ports collide or `voters` disagrees with this node.

    Example:
        >>> props = broker_properties(
        ...     port=9093, controller_port=19002, log_dir=Path("data"), node_id=2,
        ...     voters={1: 19001, 2: 19002, 3: 19003},
        ... )
        >>> props["controller.quorum.voters"]
        '1@127.0.0.1:19001,2@127.0.0.1:19002,3@127.0.0.1:19003'
        >>> props["default.replication.factor"], props["min.insync.replicas"]
        ('3', '2')
    """
    voters = {node_id: controller_port} if voters is None else dict(voters)
    if port == controller_port:
        raise ValueError(f"port and controller_port must differ, both are {port}")
    if voters.get(node_id) != controller_port:
        raise ValueError(f"voters must map node {node_id} to its controller_port {controller_port}")
    if len(set(voters.values())) != len(voters) or port in voters.values():
        raise ValueError(f"every node needs controller ports of its own, got {voters}")
    replication = Replication.for_brokers(len(voters))
    factor, min_isr = str(replication.factor), str(replication.min_insync)
    quorum = ",".join(f"{voter}@{HOST}:{voters[voter]}" for voter in sorted(voters))
    properties = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        # A static quorum: `format` needs no --standalone and the voter set never changes.
        "controller.quorum.voters": quorum,
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "8",
        # Topics are created on purpose, with their partition count; a typo or an
        # early subscriber must fail loudly instead of creating one on defaults.
        "auto.create.topics.enable": "false",
        "default.replication.factor": factor,
        "min.insync.replicas": min_isr,
        # The default of 50 partitions means 50 logs to create and load before the first
        # group can join; 8 keeps startup and group coordination quick on 2 cores.
        "offsets.topic.num.partitions": "8",
        "offsets.topic.replication.factor": factor,
        "transaction.state.log.num.partitions": "8",
        "transaction.state.log.replication.factor": factor,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": factor,
        "share.coordinator.state.topic.min.isr": min_isr,
        # Tests and a single dev worker should not wait 3 s for partners that never come.
        "group.initial.rebalance.delay.ms": "0",
        # A restarted node's broker registration is refused until the previous
        # incarnation's session expires: with the default 9 s a restart took 13.5 s, with
        # 3 s it takes 5.5 s. The same timeout is how long a killed node of a cluster
        # keeps leading its partitions, so it also bounds the write stall after a crash.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "3000",
        # Faust changelog topics are compacted; retention stays at the broker default.
        "log.cleaner.enable": "true",
    }
    if len(voters) > 1:
        # A controlled shutdown waits (up to 5 minutes) for the quorum to approve it, and
        # when the whole cluster stops, the last node has no quorum left to ask. Nodes only
        # ever stop all together or crash, so there are no leaders worth moving first.
        properties["controlled.shutdown.enable"] = "false"
    return properties


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


def new_cluster_id() -> str:
    """A fresh id to format a cluster's storage with, as `kafka-storage random-uuid` makes.

    Returns:
        16 random bytes, URL-safe base64 without padding (Kafka's `Uuid.randomUuid()`).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # One starting with "-" would read as a command-line flag.
        if not cluster_id.startswith("-"):
            return cluster_id
