"""The fetch window opens while messages come fast, closes when they slow, and restores the consumer's own settings."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from streams.fetch_window import FetchWindow
from tests.support.clock import ManualClock


@dataclass
class _Fetcher:
    """The two settings an aiokafka `Fetcher` reads each time it builds a request."""

    _fetch_max_wait_ms: int = 1500
    _fetch_min_bytes: int = 1


def _window(clock: ManualClock) -> FetchWindow:
    return FetchWindow(
        window_ms=10,
        window_bytes=65_536,
        busy_per_s=200.0,
        quiet_per_s=100.0,
        backlog_messages=500,
        clock=clock,
    )


def _received_at_rates(
    window: FetchWindow, clock: ManualClock, rates: list[float], *, behind: int = 0
) -> list[bool]:
    """Feed one check per second at each rate; whether the window was open after each."""
    total = 0
    window.observe(total, behind=behind)
    opened = []
    for rate in rates:
        clock.now += 1.0
        total += int(rate)
        window.observe(total, behind=behind)
        opened.append(window.open)
    return opened


def test_opens_at_the_busy_rate_and_closes_only_under_the_quiet_one() -> None:
    clock = ManualClock(100.0)
    window = _window(clock)
    opened = _received_at_rates(window, clock, [50, 199, 200, 150, 100, 99, 150, 450])
    assert opened == [False, False, True, True, True, False, False, True]


def test_the_first_check_has_no_rate_and_leaves_the_window_closed() -> None:
    clock = ManualClock(100.0)
    window = _window(clock)
    window.observe(1_000_000, behind=0)
    assert not window.open


def test_a_backlog_keeps_the_window_closed_and_closes_an_open_one() -> None:
    clock = ManualClock(100.0)
    window = _window(clock)
    assert _received_at_rates(window, clock, [2_000, 2_000], behind=501) == [False, False]
    assert _received_at_rates(window, clock, [2_000], behind=500) == [True]
    assert _received_at_rates(window, clock, [2_000], behind=20_000) == [False]


def test_applying_sets_the_window_and_closing_restores_the_fetchers_own_settings() -> None:
    clock = ManualClock(100.0)
    window = _window(clock)
    fetcher = _Fetcher(_fetch_max_wait_ms=1500, _fetch_min_bytes=1)
    window.apply(fetcher)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (1500, 1)

    _received_at_rates(window, clock, [500])
    window.apply(fetcher)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (10, 65_536)
    window.apply(fetcher)  # applied again while open: its own settings are still remembered

    _received_at_rates(window, clock, [0])
    window.apply(fetcher)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (1500, 1)


def test_a_fetcher_first_seen_while_open_gets_its_own_settings_back_later() -> None:
    clock = ManualClock(100.0)
    window = _window(clock)
    _received_at_rates(window, clock, [500])
    fetcher = _Fetcher(_fetch_max_wait_ms=700, _fetch_min_bytes=4)
    window.apply(fetcher)
    assert fetcher._fetch_max_wait_ms == 10
    _received_at_rates(window, clock, [0])
    window.apply(fetcher)
    assert (fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes) == (700, 4)


def test_thresholds_must_leave_room_between_quiet_and_busy() -> None:
    with pytest.raises(ValueError, match="quiet_per_s < busy_per_s"):
        FetchWindow(
            window_ms=10,
            window_bytes=1,
            busy_per_s=100.0,
            quiet_per_s=100.0,
            backlog_messages=500,
        )
