"""The partner-search bench at a size CI affords: both rows, and the two searches agree."""

from __future__ import annotations

import pytest

from streams.bench_partner import run_partner_bench


def test_the_short_partner_bench_prints_baseline_and_index(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_partner_bench(waiting=3_000, newcomers=60, scanned=20) == 0

    output = capsys.readouterr().out
    assert output.startswith("Machine: ")
    rows = [line for line in output.splitlines() if line.startswith("| ") and "ms" in line]
    assert [row.split("|")[1].strip() for row in rows] == [
        "Python scan (baseline)",
        "vectorised index",
    ]
    assert "from both on 20 newcomers: True" in output
