"""The events bench at a size CI affords: both tables, with sane numbers."""

from __future__ import annotations

import re

import pytest

from streams.bench_events import run_events_bench
from streams.event_workload import attendee_profiles


def _rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in output.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]


def test_the_short_events_bench_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_events_bench(recommend_sizes=[300, 150], batch_attendees=60) == 0

    output = capsys.readouterr().out
    assert output.startswith("Machine: ")
    rows = _rows(output)
    recommend = [row for row in rows if re.fullmatch(r"[\d,]+", row[0])]
    assert [row[0] for row in recommend] == ["150", "300"]
    assert all(float(row[1].split()[0]) > 0 for row in recommend)
    assert "n^" in recommend[1][6]
    batch = {row[0]: float(row[4]) for row in rows if row[0].startswith(("exact", "greedy"))}
    assert batch["exact, through the engine (start_matching to records)"] == 1.0
    assert 0.95 <= batch["greedy + swaps (the method above 1,000)"] <= 1.0
    assert batch["exact with chaos 5"] <= 1.0
    assert "checked against a from-scratch recomputation at 150 attendees" in output


def test_generated_attendees_are_reproducible_and_valid() -> None:
    first = attendee_profiles(20, dimensions=8, seed=3, texts=True)

    assert first == attendee_profiles(20, dimensions=8, seed=3, texts=True)
    assert all(2 <= len(profile["interests"]) <= 6 for profile in first)
    assert all(len(profile["embedding"]) == 8 and profile["opinions"] for profile in first)
