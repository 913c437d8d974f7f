"""`matchstream kafka start|stop|status`: the local development broker or cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streams.kafka_local import (
    MAX_NODES,
    BrokerStatus,
    ClusterStatus,
    LocalKafka,
    LocalKafkaError,
    free_port,
)
from streams.settings import get_settings

__all__ = ["add_kafka_parser", "run_kafka"]

_EXIT_OK = 0
_EXIT_ERROR = 2
_EXIT_NOT_RUNNING = 3


def add_kafka_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `kafka` subcommand; its handler is `args.func`.

    Args:
        subparsers: What the main parser's `add_subparsers()` returned.

    Example:
        >>> parser = argparse.ArgumentParser(prog="matchstream")
        >>> add_kafka_parser(parser.add_subparsers(dest="command", required=True))
        >>> args = parser.parse_args(["kafka", "start", "--port", "19092", "--nodes", "3"])
        >>> (args.action, args.port, args.nodes, args.func is run_kafka)
        ('start', 19092, 3, True)
    """
    settings = get_settings()
    parser = subparsers.add_parser(
        "kafka",
        help="run a Kafka broker, or a small cluster, for development",
        description=(
            "Start, stop or inspect a local KRaft broker on 127.0.0.1, or a cluster of "
            "--nodes combined broker+controller nodes on consecutive ports. Its jars are "
            f"downloaded once with Maven into {settings.kafka_cache_dir}; its data lives in "
            "<data-dir>/kafka and survives restarts."
        ),
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "--port",
        type=_port,
        default=settings.broker_port,
        help="client port on 127.0.0.1; 0 picks a free one (default: %(default)s, "
        "from MATCHSTREAM_BROKER)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=settings.data_dir,
        help="Matchstream's data dir; the broker uses <data-dir>/kafka "
        "(default: %(default)s, from MATCHSTREAM_DATA_DIR)",
    )
    parser.add_argument(
        "--nodes",
        type=_nodes,
        default=None,
        help=f"cluster size, 1..{MAX_NODES}; node i listens on --port + i - 1. 3 survives "
        "losing a node, and topics then get 3 replicas (default: what <data-dir>/kafka "
        "was started with, else 1)",
    )
    parser.set_defaults(func=run_kafka)


def run_kafka(args: argparse.Namespace) -> int:
    """Carry out `matchstream kafka <action>`.

    Args:
        args: Parsed arguments with `action`, `port`, `data_dir` and `nodes` (None: what
            the data dir was started with, else 1).

    Returns:
        The exit code: 0 on success, 2 on an error, and for `status` 3 when not every
        node is running.
    """
    nodes = args.nodes or LocalKafka.recorded_nodes(args.data_dir) or 1
    picked = args.port == 0
    try:
        kafka = LocalKafka(
            port=free_port(nodes) if picked else args.port,
            data_dir=args.data_dir,
            cache_dir=get_settings().kafka_cache_dir,
            nodes=nodes,
        )
    except (LocalKafkaError, ValueError) as exc:
        print(f"matchstream kafka {args.action}: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    try:
        if args.action == "start":
            before = kafka.status()
            if before.running:
                print(f"kafka already running {_describe(before)}")
                return _EXIT_OK
            if picked:
                last = "" if nodes == 1 else f"-{kafka.port + nodes - 1}"
                print(f"kafka picked free port{'s' if last else ''} {kafka.port}{last}")
            kafka.start()
            print(f"kafka started {_describe(kafka.status())}")
            return _EXIT_OK
        if args.action == "stop":
            was_running = kafka.stop()
            print(f"kafka stopped data={kafka.home}" if was_running else "kafka was not running")
            return _EXIT_OK
        current = kafka.status()
        if current.running:
            print(f"kafka running {_describe(current)}")
            return _EXIT_OK
        alive = sum(node.running for node in current.nodes)
        state = f"degraded running={alive}/{len(current.nodes)}" if alive else "not running"
        print(f"kafka {state} {_describe(current)}")
        return _EXIT_NOT_RUNNING
    except LocalKafkaError as exc:
        print(f"matchstream kafka {args.action}: {exc}", file=sys.stderr)
        return _EXIT_ERROR


def _describe(status: ClusterStatus) -> str:
    if len(status.nodes) == 1:
        return _describe_node(status.nodes[0])
    lines = [f"nodes={len(status.nodes)} bootstrap={status.bootstrap} data={status.data_dir}"]
    for node in status.nodes:
        state = "" if node.running else "not running "
        lines.append(f"  node={node.node_id} {state}{_describe_node(node)}")
    if any(node.running for node in status.nodes):
        # Faust wants the hosts joined by ";"; plain Kafka clients take the bootstrap above.
        lines.append(f"  export MATCHSTREAM_BROKER='{status.broker_url}'")
    return "\n".join(lines)


def _describe_node(status: BrokerStatus) -> str:
    if not status.running:
        return f"data={status.data_dir} log={status.log_path}"
    return (
        f"pid={status.pid} bootstrap={status.bootstrap} "
        f"data={status.data_dir} log={status.log_path}"
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _nodes(text: str) -> int:
    try:
        nodes = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a node count: {text!r}") from None
    if not 1 <= nodes <= MAX_NODES:
        raise argparse.ArgumentTypeError(f"nodes must be in 1..{MAX_NODES}, got {nodes}")
    return nodes
