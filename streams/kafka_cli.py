"""`matchstream kafka start|stop|status`: the local development broker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streams.kafka_local import BrokerStatus, LocalKafka, LocalKafkaError, free_port
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
        >>> args = parser.parse_args(["kafka", "status", "--port", "19092"])
        >>> (args.action, args.port, args.func is run_kafka)
        ('status', 19092, True)
    """
    settings = get_settings()
    parser = subparsers.add_parser(
        "kafka",
        help="run a single-node Kafka broker for development",
        description=(
            "Start, stop or inspect a single-node KRaft broker on 127.0.0.1. Its jars are "
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
    parser.set_defaults(func=run_kafka)


def run_kafka(args: argparse.Namespace) -> int:
    """Carry out `matchstream kafka <action>`.

    Args:
        args: Parsed arguments with `action`, `port` and `data_dir`.

    Returns:
        The exit code: 0 on success, 2 on an error, and for `status` 3 when no
        broker is running.
    """
    picked = args.port == 0
    kafka = LocalKafka(
        port=free_port() if picked else args.port,
        data_dir=args.data_dir,
        cache_dir=get_settings().kafka_cache_dir,
    )
    try:
        if args.action == "start":
            before = kafka.status()
            if before.running:
                print(f"kafka already running {_describe(before)}")
                return _EXIT_OK
            if picked:
                print(f"kafka picked free port {kafka.port}")
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
        print(f"kafka not running data={current.data_dir} log={current.log_path}")
        return _EXIT_NOT_RUNNING
    except LocalKafkaError as exc:
        print(f"matchstream kafka {args.action}: {exc}", file=sys.stderr)
        return _EXIT_ERROR


def _describe(status: BrokerStatus) -> str:
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
