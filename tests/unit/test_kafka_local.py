"""The local broker's preparation logic, without starting Java."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.kafka_cli import add_kafka_parser
from streams.kafka_local import (
    KAFKA_VERSION,
    LocalKafka,
    LocalKafkaError,
    broker_properties,
    free_port,
    render_properties,
)


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


def _kafka(tmp_path: Path, port: int = 19092) -> LocalKafka:
    return LocalKafka(port=port, data_dir=tmp_path / "var", cache_dir=tmp_path / "cache")


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
    assert props["auto.create.topics.enable"] == "true"
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


# -- construction and ports ------------------------------------------------------------


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()

    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("port", "heap", "message"),
    [(0, "512m", "port"), (70000, "512m", "port"), (9092, "lots", "heap"), (9092, "0m", "heap")],
)
def test_constructor_rejects_bad_values(tmp_path: Path, port: int, heap: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalKafka(port=port, data_dir=tmp_path, cache_dir=tmp_path, heap=heap)


def test_constructor_is_keyword_only(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        LocalKafka(9092, tmp_path, tmp_path)  # type: ignore[misc]  # the point of the test


def test_files_live_under_data_dir_kafka(tmp_path: Path) -> None:
    kafka = _kafka(tmp_path)

    status = kafka.status()

    assert status.data_dir == tmp_path / "var" / "kafka"
    assert status.log_path == tmp_path / "var" / "kafka" / "broker.log"
    assert kafka.lib_dir == tmp_path / "cache" / KAFKA_VERSION / "lib"


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
    kafka.home.mkdir(parents=True)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    kafka.pid_path.write_text(gone.stdout)

    assert kafka.status().running is False
    assert kafka.status().pid is None
    assert kafka.stop() is False
    assert not kafka.pid_path.exists()


def test_a_pid_that_is_not_our_broker_reads_as_not_running(tmp_path: Path) -> None:
    kafka = _kafka(tmp_path)
    kafka.home.mkdir(parents=True)
    kafka.pid_path.write_text(f"{os.getpid()}\n")  # this pytest process

    assert kafka.status().running is False


def test_start_refuses_a_port_in_use(tmp_path: Path, listening_port: int) -> None:
    kafka = _kafka(tmp_path, port=listening_port)

    with pytest.raises(LocalKafkaError, match=f"port {listening_port} .* in use"):
        kafka.start()


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
