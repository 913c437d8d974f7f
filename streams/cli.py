"""The `matchstream` command line (CONTRACT section 3)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from streams.kafka_cli import add_kafka_parser
from streams.runtime import tune_process, use_event_loop
from streams.settings import Settings, get_settings

__all__ = ["main"]


def _settings_with(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the flags given on the command line on top."""
    overrides: dict[str, object] = {}
    for flag in ("broker", "web_port", "data_dir", "database_url"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    return get_settings().model_copy(update=overrides) if overrides else get_settings()


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker(_settings_with(args), loglevel=args.loglevel)


def _cmd_produce(args: argparse.Namespace) -> int:
    from streams.produce import produce_messages
    from streams.workload import Workload

    workload = Workload(
        requests=args.requests,
        pools=args.pools,
        seed=args.seed,
        cancel_ratio=args.cancel_ratio,
        duplicate_ratio=args.duplicate_ratio,
        malformed=args.malformed,
        run_id=args.run_id,
    )
    messages = list(workload.messages())
    counts = asyncio.run(produce_messages(_settings_with(args), messages, total=len(messages)))
    print(" ".join(f"{kind}={count}" for kind, count in sorted(counts.items())))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(
        _settings_with(args),
        requests=args.requests,
        pools=args.pools,
        keep_running=not args.exit_after_workload,
    )


def _positive_rate(text: str) -> float:
    rate = float(text)
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"a rate must be positive, got {text}")
    return rate


def _cmd_bench(args: argparse.Namespace) -> int:
    # The baselines run in this process: on the workers' loop, they compare like with like.
    use_event_loop(_settings_with(args).event_loop)
    code = 0
    if args.scenario in ("all", "stream"):
        from streams.bench import run_bench

        code = run_bench(
            _settings_with(args),
            requests=args.requests,
            pools=args.pools,
            latency_rate=args.latency_rate,
        )
    if code == 0 and args.scenario in ("all", "ceiling"):
        from streams.bench_ceiling import run_ceiling_bench

        code = run_ceiling_bench(_settings_with(args), requests=args.requests, pools=args.pools)
    if code == 0 and args.scenario in ("all", "events"):
        from streams.bench_events import run_events_bench

        sizes = [int(size) for size in args.recommend_sizes.split(",") if size.strip()]
        code = run_events_bench(recommend_sizes=sizes, batch_attendees=args.batch_attendees)
    if code == 0 and args.scenario in ("all", "partner"):
        from streams.bench_partner import run_partner_bench

        code = run_partner_bench(waiting=args.partner_waiting)
    if code == 0 and args.scenario in ("all", "recovery"):
        from streams.bench_recovery import run_recovery_bench

        code = run_recovery_bench(
            _settings_with(args),
            waiting=args.recovery_waiting,
            embedding_dims=args.recovery_embedding_dims,
        )
    return code


def _cmd_audit(args: argparse.Namespace) -> int:
    from streams.audit import run_audit

    return run_audit(_settings_with(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matchstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_kafka_parser(commands)

    worker = commands.add_parser("worker", help="run a Faust worker with the RocksDB store")
    worker.add_argument("--broker", help="bootstrap URL (MATCHSTREAM_BROKER)")
    worker.add_argument("--web-port", dest="web_port", type=int, help="HTTP port")
    worker.add_argument("--data-dir", dest="data_dir", type=Path, help="table directory root")
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(func=_cmd_worker)

    produce = commands.add_parser("produce", help="produce a generated workload")
    produce.add_argument("--broker")
    produce.add_argument("--requests", type=int, default=2_000)
    produce.add_argument("--pools", type=int, default=40)
    produce.add_argument("--seed", type=int, default=0)
    produce.add_argument("--cancel-ratio", type=float, default=0.05)
    produce.add_argument("--duplicate-ratio", type=float, default=0.05)
    produce.add_argument("--malformed", type=int, default=0)
    produce.add_argument("--run-id", default="demo", help="prefix of pool, request, user ids")
    produce.set_defaults(func=_cmd_produce)

    demo = commands.add_parser("demo", help="local broker + worker + a workload")
    demo.add_argument("--requests", type=int, default=5_000)
    demo.add_argument("--pools", type=int, default=20)
    demo.add_argument("--data-dir", dest="data_dir", type=Path)
    demo.add_argument(
        "--exit", dest="exit_after_workload", action="store_true", help="stop after the workload"
    )
    demo.set_defaults(func=_cmd_demo)

    bench = commands.add_parser(
        "bench", help="throughput and latency next to a bare relay, on a broker of its own"
    )
    bench.add_argument("--requests", type=int, default=20_000)
    bench.add_argument("--pools", type=int, default=200)
    bench.add_argument("--data-dir", dest="data_dir", type=Path)
    bench.add_argument(
        "--scenario",
        choices=("all", "stream", "ceiling", "events", "partner", "recovery"),
        default="all",
        help=(
            "stream: Kafka throughput and latency; ceiling: what a Faust worker reaches "
            "per event and batched, with no matching and with the engine; events: "
            "recommend and batch pools in "
            "process; partner: partner search among many waiting requests, in process; "
            "recovery: a worker restarted with many requests waiting"
        ),
    )
    bench.add_argument(
        "--latency-rate",
        dest="latency_rate",
        type=_positive_rate,
        help="requests/s of the stream scenario's latency phases (default: half the "
        "matcher's measured rate); a fixed rate compares revisions at the same load",
    )
    bench.add_argument(
        "--recommend-sizes",
        default="1000,10000,50000",
        help="attendees per recommend run, comma-separated",
    )
    bench.add_argument("--batch-attendees", type=int, default=1_000)
    bench.add_argument(
        "--partner-waiting",
        dest="partner_waiting",
        type=int,
        default=100_000,
        help="waiting requests in the partner-search pool",
    )
    bench.add_argument(
        "--recovery-waiting",
        dest="recovery_waiting",
        type=int,
        default=1_000_000,
        help="waiting requests the restarted worker recovers",
    )
    bench.add_argument(
        "--recovery-embedding-dims",
        dest="recovery_embedding_dims",
        type=int,
        default=0,
        help="embedding size of each waiting request's profile in the recovery scenario",
    )
    bench.set_defaults(func=_cmd_bench)

    audit = commands.add_parser(
        "audit", help="check the contract's invariants over the topics; exit 1 on a violation"
    )
    audit.add_argument("--broker")
    audit.add_argument(
        "--database-url",
        dest="database_url",
        help="also compare with the Postgres sink (MATCHSTREAM_DATABASE_URL)",
    )
    audit.set_defaults(func=_cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `matchstream` console script."""
    tune_process()  # before anything imports numpy
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = _parser().parse_args(argv)
    sys.exit(args.func(args))
