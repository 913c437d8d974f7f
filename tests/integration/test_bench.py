"""`matchstream bench` end to end, at a size CI can afford: its own broker and worker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.bench import run_bench
from streams.bench_ceiling import run_ceiling_bench
from streams.bench_recovery import run_recovery_bench
from streams.settings import get_settings

pytestmark = pytest.mark.integration

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _table(output: str) -> dict[str, str]:
    """Markdown table rows as {first cell: second cell}, header and rule left out."""
    rows = {}
    for line in output.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 2, line
        rows[cells[0]] = cells[1]
    return rows


def _rows_after_first_cell(output: str, *, header: str) -> dict[str, list[str]]:
    """Rows of a wide markdown table as {first cell: the other cells}; the header row
    (its first cell `header`) and the rule left out."""
    return {
        cells[0]: cells[1:]
        for line in output.splitlines()
        if line.startswith("| ") and not line.startswith(f"| {header} ")
        for cells in [[cell.strip() for cell in line.strip().strip("|").split("|")]]
    }


def _row(rows: dict[str, str], prefix: str) -> str:
    found = [value for name, value in rows.items() if name.startswith(prefix)]
    assert len(found) == 1, (prefix, rows)
    return found[0]


def _numbers(text: str) -> list[float]:
    return [float(match.replace(",", "")) for match in _NUMBER.findall(text)]


def test_bench_prints_relay_matcher_and_latency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = get_settings().model_copy(update={"data_dir": tmp_path})
    code = run_bench(settings, requests=1_000, pools=20)

    output = capsys.readouterr().out
    assert code == 0, output
    assert output.startswith("Machine: ")
    rows = _table(output)
    relay = _numbers(_row(rows, "bare relay"))
    matcher = _numbers(_row(rows, "matcher"))
    assert relay and relay[0] > 0
    assert matcher and matcher[0] > 0
    assert _numbers(_row(rows, "ratio matcher / bare relay"))[0] > 0
    assert _numbers(_row(rows, "CPU per record moved"))[0] > 0
    # Every input is read once and causes at least one output or state change.
    records, *parts = _numbers(_row(rows, "Kafka records moved per input"))
    assert records > 2
    assert records == pytest.approx(parts[0] + 2 * parts[2] + parts[3], abs=0.02)
    assert _numbers(_row(rows, "input messages/s one core could move"))[0] > 0
    p50, p99 = _numbers(_row(rows, "latency p50 / p99"))[:2]
    assert 0 < p50 <= p99
    assert "missing" not in _row(rows, "latency p50 / p99")
    legs = _numbers(_row(rows, "latency legs"))
    assert len(legs) == 8
    assert legs[0] > 0  # a request reaches the worker's decision through Kafka, never at once
    # CI's machine has two cores: the phase is repeated with the worker on one of them.
    isolated = _row(rows, "worker on a core of its own")
    assert "missing" not in isolated
    isolated_p50, isolated_p99, *isolated_legs = _numbers(isolated)
    assert 0 < isolated_p50 <= isolated_p99 and len(isolated_legs) == 8
    floor = _row(rows, "floor, worker idle between requests")
    assert "missing" not in floor
    floor_p50, floor_p99, *floor_legs = _numbers(floor)
    assert 0 < floor_p50 <= floor_p99 and len(floor_legs) == 8
    # The worker's /metrics were read around each phase, and it collected in each.
    collections = _row(rows, "worker's garbage collections").split(" / ")
    assert len(collections) == 3 and all("over 50 ms" in cell for cell in collections)
    assert all(_numbers(cell)[0] > 0 for cell in collections)
    assert _numbers(_row(rows, "worker CPU per 1,000 requests"))[0] > 0
    assert _numbers(_row(rows, "worker peak RSS"))[0] > 0
    # The run's broker, worker and files are gone with its temporary directory.
    assert list(tmp_path.iterdir()) == []


def test_ceiling_bench_runs_each_probe_next_to_the_relay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = get_settings().model_copy(update={"data_dir": tmp_path})
    code = run_ceiling_bench(settings, requests=1_000, pools=20)

    output = capsys.readouterr().out
    assert code == 0, output
    assert output.startswith("Machine: ")
    rows = {
        name: [_numbers(cell) for cell in cells]
        for name, cells in _rows_after_first_cell(output, header="path").items()
    }
    relay_rate, relay_ratio, relay_cpu, _busy, _full_core, _outputs = rows.pop(
        "bare relay (baseline)"
    )
    assert relay_rate[0] > 0 and relay_ratio == [1.0] and relay_cpu[0] > 0
    assert list(rows) == [
        "Faust per event, no matching",
        "Faust batched, no matching",
        "Faust batched, with the engine",
    ]
    for rate, ratio, cpu, busy, full_core, _outputs in rows.values():
        assert rate[0] > 0 and cpu[0] > 0 and busy[0] > 0
        assert ratio[0] == pytest.approx(rate[0] / relay_rate[0], abs=0.001)
        assert full_core[0] == pytest.approx(1_000 / cpu[0] / relay_rate[0], rel=0.05)
    # The probes without the engine send two outputs per input; the engine's outputs
    # are a status per request at least.
    assert rows["Faust per event, no matching"][5] == [2.0]
    assert rows["Faust batched, no matching"][5] == [2.0]
    assert rows["Faust batched, with the engine"][5][0] >= 1.0
    assert list(tmp_path.iterdir()) == []


def test_recovery_bench_times_a_cold_and_a_warm_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = get_settings().model_copy(update={"data_dir": tmp_path})
    code = run_recovery_bench(settings, waiting=3_000, pools=10, embedding_dims=8)

    output = capsys.readouterr().out
    assert code == 0, output
    assert output.startswith("Machine: ")
    rows = _rows_after_first_cell(output, header="phase")
    baseline = _numbers(rows["bare read of the changelog (baseline)"][0])[0]
    cold = rows["cold recovery (empty data directory)"]
    warm = rows["warm restart (RocksDB kept)"]
    assert baseline > 0
    for phase in (cold, warm):
        back, rebuild, indexed, ratio, rss, peak = (_numbers(cell)[0] for cell in phase)
        assert 0 < rebuild < back <= indexed
        assert ratio > 0
        assert 0 < rss <= peak
    assert list(tmp_path.iterdir()) == []
