"""The local broker's and cluster's preparation logic, without starting Java."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.kafka_cli import add_kafka_parser
from streams.kafka_local import (
    KAFKA_VERSION,
    LocalKafka,
    LocalKafkaError,
    broker_properties,
    free_port,
    render_properties,
)
from streams.kafka_node import KafkaNode
from streams.settings import Settings
from streams.topics import Replication, replication_for


def _script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    # PATH holds only the fakes, so the scripts name where their own tools are.
    path.write_text("#!/bin/sh\nPATH=/usr/bin:/bin\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only what a test puts there (and nothing called java or mvn)."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


@pytest.fixture
def java17(bin_dir: Path) -> Path:
    return _script(bin_dir, "java", "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2\n")


@pytest.fixture
def fake_mvn(bin_dir: Path) -> Path:
    """An mvn that 'downloads' two jars and counts its runs in bin/mvn.calls."""
    return _script(
        bin_dir,
        "mvn",
        'echo run >> "$(dirname "$0")/mvn.calls"\n'
        'for arg in "$@"; do case "$arg" in -DoutputDirectory=*) out="${arg#*=}";; esac; done\n'
        'mkdir -p "$out" && touch "$out/kafka_2.13-4.0.0.jar" "$out/slf4j-api-2.0.16.jar"\n',
    )


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _kafka(tmp_path: Path, port: int = 19092, nodes: int = 1) -> LocalKafka:
    return LocalKafka(
        port=port, data_dir=tmp_path / "var", cache_dir=tmp_path / "cache", nodes=nodes
    )


def _parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


# -- properties ------------------------------------------------------------------------


def test_properties_describe_a_combined_node_on_loopback(tmp_path: Path) -> None:
    props = broker_properties(port=19092, controller_port=19093, log_dir=tmp_path / "data")

    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert "controller.quorum.bootstrap.servers" not in props  # static quorum


def test_properties_suit_a_single_small_dev_node(tmp_path: Path) -> None:
    props = broker_properties(port=19092, controller_port=19093, log_dir=tmp_path)

    assert props["num.partitions"] == "8"
    assert props["offsets.topic.num.partitions"] == "8"
    assert props["auto.create.topics.enable"] == "false"  # topics are created on purpose
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.cleaner.enable"] == "true"
    assert "log.retention.hours" not in props
    replication = {k: v for k, v in props.items() if k.endswith((".replication.factor", ".isr"))}
    assert set(replication) >= {
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    }
    assert set(replication.values()) == {"1"}


def test_properties_let_a_restarted_node_register_quickly(tmp_path: Path) -> None:
    props = broker_properties(port=19092, controller_port=19093, log_dir=tmp_path)

    heartbeat = int(props["broker.heartbeat.interval.ms"])
    session = int(props["broker.session.timeout.ms"])
    assert heartbeat < session < 9000


def test_properties_reject_one_port_for_both_listeners(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must differ"):
        broker_properties(port=19092, controller_port=19092, log_dir=tmp_path)


def test_rendered_properties_read_back_the_same() -> None:
    props = {"a.b": "1", "log.dirs": r"C:\kafka\data", "listeners": "PLAINTEXT://h:1"}

    text = render_properties(props)

    assert text.startswith("#")
    assert _parse_properties(text) == {
        "a.b": "1",
        "log.dirs": r"C:\\kafka\\data",
        "listeners": "PLAINTEXT://h:1",
    }


# -- a three-node cluster's properties -------------------------------------------------

VOTERS = {1: 29001, 2: 29002, 3: 29003}


def _node_properties(node_id: int, tmp_path: Path) -> dict[str, str]:
    return broker_properties(
        port=19091 + node_id,
        controller_port=VOTERS[node_id],
        log_dir=tmp_path / f"node-{node_id}",
        node_id=node_id,
        voters=VOTERS,
    )


def test_every_node_of_a_cluster_names_the_same_static_quorum(tmp_path: Path) -> None:
    nodes = [_node_properties(node_id, tmp_path) for node_id in (1, 2, 3)]

    quorum = "1@127.0.0.1:29001,2@127.0.0.1:29002,3@127.0.0.1:29003"
    assert [props["controller.quorum.voters"] for props in nodes] == [quorum] * 3
    assert [props["node.id"] for props in nodes] == ["1", "2", "3"]
    assert all(props["process.roles"] == "broker,controller" for props in nodes)
    assert all("controller.quorum.bootstrap.servers" not in props for props in nodes)


def test_cluster_nodes_stop_without_asking_a_quorum_that_is_stopping_too(tmp_path: Path) -> None:
    single = broker_properties(port=19092, controller_port=19093, log_dir=tmp_path)

    assert _node_properties(3, tmp_path)["controlled.shutdown.enable"] == "false"
    assert "controlled.shutdown.enable" not in single  # its own controller approves at once


def test_each_node_of_a_cluster_has_its_own_listeners_and_log_dir(tmp_path: Path) -> None:
    props = _node_properties(2, tmp_path)

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:29002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "node-2")


def test_a_three_node_cluster_keeps_three_copies_and_needs_two(tmp_path: Path) -> None:
    props = _node_properties(1, tmp_path)

    factors = {k: v for k, v in props.items() if k.endswith(".replication.factor")}
    min_isr = {k: v for k, v in props.items() if k.endswith((".min.isr", "min.insync.replicas"))}
    assert set(factors) == {
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
    }
    assert set(factors.values()) == {"3"}
    assert set(min_isr) == {
        "min.insync.replicas",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
    }
    assert set(min_isr.values()) == {"2"}


def test_a_two_node_cluster_accepts_writes_with_one_node_down(tmp_path: Path) -> None:
    props = broker_properties(
        port=19092, controller_port=29001, log_dir=tmp_path, voters={1: 29001, 2: 29002}
    )

    assert props["default.replication.factor"] == "2"
    assert props["min.insync.replicas"] == "1"


@pytest.mark.parametrize(
    ("voters", "message"),
    [
        ({1: 29009, 2: 29002}, "must map node 1"),
        ({1: 29001, 2: 29001}, "controller ports of its own"),
        ({1: 29001, 2: 19092}, "controller ports of its own"),
    ],
)
def test_properties_reject_a_quorum_that_does_not_fit(
    tmp_path: Path, voters: dict[int, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        broker_properties(port=19092, controller_port=29001, log_dir=tmp_path, voters=voters)


@pytest.mark.parametrize(
    ("brokers", "factor", "min_insync"), [(0, 1, 1), (1, 1, 1), (2, 2, 1), (3, 3, 2), (7, 3, 2)]
)
def test_replication_follows_the_broker_count_up_to_three(
    brokers: int, factor: int, min_insync: int
) -> None:
    assert Replication.for_brokers(brokers) == Replication(factor=factor, min_insync=min_insync)


def test_an_explicit_replication_factor_wins_over_the_broker_count() -> None:
    assert replication_for(Settings(), brokers=3) == Replication(factor=3, min_insync=2)
    pinned = Settings(replication_factor=1)
    assert replication_for(pinned, brokers=3) == Replication(factor=1, min_insync=1)
    assert replication_for(Settings(replication_factor=5), brokers=1).min_insync == 2


@pytest.mark.parametrize(("text", "expected"), [("auto", None), ("", None), ("3", 3)])
def test_replication_factor_setting_reads_auto_as_unset(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: int | None
) -> None:
    monkeypatch.setenv("MATCHSTREAM_REPLICATION_FACTOR", text)

    assert Settings().replication_factor == expected


def test_replication_factor_setting_rejects_zero() -> None:
    with pytest.raises(ValidationError):
        Settings(replication_factor=0)


# -- construction and ports ------------------------------------------------------------


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()

    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_finds_a_run_of_ports_for_a_cluster() -> None:
    first = free_port(3)

    with socket.socket() as a, socket.socket() as b, socket.socket() as c:
        for sock, port in zip((a, b, c), range(first, first + 3), strict=True):
            sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("port", "heap", "message"),
    [
        (0, "512m", "port"),
        (70000, "512m", "port"),
        (9092, "lots", "heap"),
        (9092, "0m", "heap"),
        (9092, "1g\n", "heap"),
    ],
)
def test_constructor_rejects_bad_values(tmp_path: Path, port: int, heap: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalKafka(port=port, data_dir=tmp_path, cache_dir=tmp_path, heap=heap)


@pytest.mark.parametrize(
    ("port", "nodes", "message"),
    [(9092, 0, "nodes"), (9092, 6, "nodes"), (65534, 3, r"port must be in 1\.\.65533")],
)
def test_constructor_rejects_bad_clusters(
    tmp_path: Path, port: int, nodes: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LocalKafka(port=port, data_dir=tmp_path, cache_dir=tmp_path, nodes=nodes)


def test_constructor_is_keyword_only(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        LocalKafka(9092, tmp_path, tmp_path)  # type: ignore[misc]  # the point of the test


def test_files_live_under_data_dir_kafka(tmp_path: Path) -> None:
    kafka = _kafka(tmp_path)

    status = kafka.status()

    assert status.data_dir == tmp_path / "var" / "kafka"
    (node,) = status.nodes
    assert node.data_dir == tmp_path / "var" / "kafka"
    assert node.log_path == tmp_path / "var" / "kafka" / "broker.log"
    assert kafka.lib_dir == tmp_path / "cache" / KAFKA_VERSION / "lib"


def test_cluster_nodes_get_consecutive_ports_and_directories_of_their_own(
    tmp_path: Path,
) -> None:
    kafka = _kafka(tmp_path, port=19092, nodes=3)

    status = kafka.status()

    home = tmp_path / "var" / "kafka"
    assert status.data_dir == home
    assert [node.node_id for node in status.nodes] == [1, 2, 3]
    assert [node.data_dir for node in status.nodes] == [home / f"node-{n}" for n in (1, 2, 3)]
    assert status.bootstrap == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
    assert status.broker_url == "kafka://127.0.0.1:19092;127.0.0.1:19093;127.0.0.1:19094"
    assert Settings(broker=status.broker_url).broker_hosts == status.bootstrap.split(",")


# -- java and maven --------------------------------------------------------------------


@pytest.mark.usefixtures("bin_dir")
def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match=r"java is not on PATH.*Java 17"):
        _kafka(tmp_path).ensure_jars()


def test_old_java_is_a_clear_error(tmp_path: Path, bin_dir: Path) -> None:
    _script(bin_dir, "java", "echo 'java version \"1.8.0_402\"' >&2\n")

    with pytest.raises(LocalKafkaError, match=r"Java 8; Kafka .* needs Java 17"):
        _kafka(tmp_path).ensure_jars()


@pytest.mark.usefixtures("java17")
def test_missing_mvn_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match=r"mvn .* not on PATH"):
        _kafka(tmp_path).ensure_jars()


@pytest.mark.usefixtures("java17")
def test_jars_are_downloaded_once(tmp_path: Path, fake_mvn: Path) -> None:
    kafka = _kafka(tmp_path)

    first = kafka.ensure_jars()
    second = kafka.ensure_jars()

    assert first == second == kafka.lib_dir
    assert (first / "kafka_2.13-4.0.0.jar").is_file()
    assert (fake_mvn.parent / "mvn.calls").read_text().count("run") == 1
    assert [p.name for p in first.parent.iterdir()] == ["lib"]  # no staging left behind


@pytest.mark.usefixtures("java17")
def test_a_damaged_cache_is_downloaded_again(tmp_path: Path, fake_mvn: Path) -> None:
    kafka = _kafka(tmp_path)
    (kafka.ensure_jars() / "slf4j-api-2.0.16.jar").unlink()

    kafka.ensure_jars()

    assert (kafka.lib_dir / "slf4j-api-2.0.16.jar").is_file()
    assert (fake_mvn.parent / "mvn.calls").read_text().count("run") == 2


@pytest.mark.usefixtures("java17")
def test_a_failed_download_leaves_no_cache(tmp_path: Path, bin_dir: Path) -> None:
    _script(
        bin_dir,
        "mvn",
        'for arg in "$@"; do case "$arg" in -DoutputDirectory=*) out="${arg#*=}";; esac; done\n'
        'mkdir -p "$out" && touch "$out/half.jar"\n'
        "echo '[ERROR] Could not resolve dependencies' && exit 1\n",
    )
    kafka = _kafka(tmp_path)

    with pytest.raises(LocalKafkaError, match=r"exit 1\)(.|\n)*Could not resolve"):
        kafka.ensure_jars()

    assert not kafka.lib_dir.exists()
    assert list(kafka.lib_dir.parent.iterdir()) == []


# -- lifecycle without a broker --------------------------------------------------------


def test_stale_pid_file_reads_as_not_running(tmp_path: Path) -> None:
    kafka = _kafka(tmp_path)
    (node,) = kafka.nodes
    kafka.home.mkdir(parents=True)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    node.pid_path.write_text(gone.stdout)

    assert kafka.status().running is False
    assert kafka.status().nodes[0].pid is None
    assert kafka.stop() is False
    assert not node.pid_path.exists()


def test_a_pid_that_is_not_our_broker_reads_as_not_running(tmp_path: Path) -> None:
    kafka = _kafka(tmp_path)
    kafka.home.mkdir(parents=True)
    kafka.nodes[0].pid_path.write_text(f"{os.getpid()}\n")  # this pytest process

    assert kafka.status().running is False


def test_start_refuses_a_port_in_use(tmp_path: Path, listening_port: int) -> None:
    kafka = _kafka(tmp_path, port=listening_port)

    with pytest.raises(LocalKafkaError, match=f"port {listening_port} .* in use"):
        kafka.start()


def test_recorded_nodes_reads_the_data_dir(tmp_path: Path) -> None:
    home = tmp_path / "kafka"
    assert LocalKafka.recorded_nodes(tmp_path) is None

    (home / "data").mkdir(parents=True)
    (home / "data" / "meta.properties").write_text("node.id=1\n")
    assert LocalKafka.recorded_nodes(tmp_path) == 1  # a data dir from before cluster mode

    (home / "nodes").write_text("3\n")
    assert LocalKafka.recorded_nodes(tmp_path) == 3


def test_start_refuses_a_data_dir_formatted_for_another_cluster_size(tmp_path: Path) -> None:
    kafka = _kafka(tmp_path, nodes=3)
    kafka.home.mkdir(parents=True)
    (kafka.home / "nodes").write_text("1\n")

    with pytest.raises(LocalKafkaError, match="holds a 1-node cluster; start it with --nodes 1"):
        kafka.start()


def test_start_refuses_a_cluster_port_in_use(tmp_path: Path, listening_port: int) -> None:
    kafka = _kafka(tmp_path, port=listening_port - 1, nodes=3)

    with pytest.raises(LocalKafkaError, match=f"port {listening_port} .* the 2 ports after it"):
        kafka.start()


def test_kill_rejects_an_unknown_node(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="node_id must be in 1..3"):
        _kafka(tmp_path, nodes=3).kill(node_id=4)


@pytest.fixture
def fake_node() -> Iterator[Callable[[KafkaNode], None]]:
    """Run a stand-in process whose command line passes for the node's JVM."""
    started: list[subprocess.Popen[bytes]] = []

    def run(node: KafkaNode) -> None:
        command = [sys.executable, "-c", "import time; time.sleep(120)"]
        command += ["kafka.Kafka", str(node.properties_path.resolve())]
        # A session of its own, like a real node, so stopping it signals only its group.
        process = subprocess.Popen(command, start_new_session=True)
        node.pid_path.write_text(f"{process.pid}\n")
        started.append(process)

    yield run
    for process in started:
        process.kill()
        process.wait()


def _write_node_properties(kafka: LocalKafka, port: int) -> None:
    """Properties of a run on ports port, port + 1, ... (not the ones kafka was given)."""
    voters = {node.node_id: 29000 + node.node_id for node in kafka.nodes}
    for node in kafka.nodes:
        node.home.mkdir(parents=True, exist_ok=True)
        node.write_properties(
            broker_properties(
                port=port + node.node_id - 1,
                controller_port=voters[node.node_id],
                log_dir=node.log_dir,
                node_id=node.node_id,
                voters=voters,
            )
        )


def test_a_degraded_cluster_reports_every_node_where_it_last_ran(
    tmp_path: Path, fake_node: Callable[[KafkaNode], None]
) -> None:
    kafka = _kafka(tmp_path, port=19092, nodes=3)
    _write_node_properties(kafka, port=39092)
    fake_node(kafka.nodes[0])
    fake_node(kafka.nodes[2])

    status = kafka.status()

    assert status.running is False
    assert [node.running for node in status.nodes] == [True, False, True]
    assert status.nodes[1].pid is None
    assert status.bootstrap == "127.0.0.1:39092,127.0.0.1:39093,127.0.0.1:39094"


def test_stop_stops_every_running_node_of_a_cluster(
    tmp_path: Path, fake_node: Callable[[KafkaNode], None]
) -> None:
    kafka = _kafka(tmp_path, nodes=3)
    _write_node_properties(kafka, port=39092)
    fake_node(kafka.nodes[0])
    fake_node(kafka.nodes[1])

    assert kafka.stop(timeout_s=10) is True

    assert not any(node.running for node in kafka.status().nodes)
    assert not any(node.pid_path.exists() for node in kafka.nodes)
    assert kafka.stop() is False


# -- command line ----------------------------------------------------------------------


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="matchstream")
    add_kafka_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["kafka", *argv])


def test_cli_status_of_a_stopped_broker_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli("status", "--data-dir", str(tmp_path))

    assert args.func(args) == 3
    assert capsys.readouterr().out.startswith(f"kafka not running data={tmp_path / 'kafka'}")


def test_cli_stop_of_a_stopped_broker_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli("stop", "--data-dir", str(tmp_path))

    assert args.func(args) == 0
    assert capsys.readouterr().out == "kafka was not running\n"


def test_cli_errors_go_to_stderr_with_exit_2(
    tmp_path: Path, listening_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli("start", "--port", str(listening_port), "--data-dir", str(tmp_path))

    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("matchstream kafka start: port")


def test_cli_rejects_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _cli("start", "--port", "http")
    assert "not a port number" in capsys.readouterr().err


def test_cli_parses_a_cluster_size(tmp_path: Path) -> None:
    assert _cli("start", "--nodes", "3").nodes == 3
    assert _cli("status").nodes is None  # what the data dir holds, else 1


@pytest.mark.parametrize(("value", "message"), [("0", "1..5"), ("6", "1..5"), ("x", "node count")])
def test_cli_rejects_a_bad_cluster_size(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    with pytest.raises(SystemExit):
        _cli("start", "--nodes", value)
    assert message in capsys.readouterr().err


def test_cli_status_of_a_degraded_cluster_lists_every_node_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_node: Callable[[KafkaNode], None]
) -> None:
    kafka = LocalKafka(port=19092, data_dir=tmp_path, cache_dir=tmp_path, nodes=3)
    _write_node_properties(kafka, port=39092)
    (kafka.home / "nodes").write_text("3\n")
    fake_node(kafka.nodes[0])
    fake_node(kafka.nodes[2])
    args = _cli("status", "--data-dir", str(tmp_path))  # --nodes comes from the data dir

    assert args.func(args) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("kafka degraded running=2/3 nodes=3 bootstrap=127.0.0.1:39092,")
    assert lines[2] == (
        f"  node=2 not running data={kafka.home / 'node-2'} "
        f"log={kafka.home / 'node-2' / 'broker.log'}"
    )
    assert lines[-1] == (
        "  export MATCHSTREAM_BROKER='kafka://127.0.0.1:39092;127.0.0.1:39093;127.0.0.1:39094'"
    )
