"""A partition whose tick keeps failing is ticked ever less often, and normally again once it succeeds."""

from __future__ import annotations

import pytest

from agents.tick_backoff import TickBackoff


def _run_ticks(backoff: TickBackoff, *, fails_until: float, until: float) -> list[float]:
    """Tick partition 0 every second; the tick fails before `fails_until`. Returns when ticks ran."""
    ran = []
    now = 0.0
    while now < until:
        if not backoff.holds(0, now):
            ran.append(now)
            backoff.record(0, failed=now < fails_until, now=now)
        now += 1.0
    return ran


def test_failures_double_the_pause_up_to_the_cap_and_a_success_ends_it() -> None:
    backoff = TickBackoff(first_delay_s=2.0, max_delay_s=8.0)
    ran = _run_ticks(backoff, fails_until=40.0, until=60.0)
    assert ran[:6] == [0.0, 2.0, 6.0, 14.0, 22.0, 30.0]  # pauses 2, 4, 8, 8, 8
    # The tick at 38 fails (pause to 46); the one at 46 succeeds, and every second ticks again.
    assert ran[6:] == [38.0, *(float(t) for t in range(46, 60))]


def test_partitions_are_paused_separately() -> None:
    backoff = TickBackoff(first_delay_s=5.0, max_delay_s=60.0)
    backoff.record(3, failed=True, now=10.0)
    assert backoff.holds(3, 14.9)
    assert not backoff.holds(3, 15.0)
    assert not backoff.holds(4, 11.0)


def test_a_tick_that_never_failed_is_never_held() -> None:
    backoff = TickBackoff(first_delay_s=5.0, max_delay_s=60.0)
    backoff.record(0, failed=False, now=1.0)
    assert not backoff.holds(0, 1.5)


@pytest.mark.parametrize(("first", "cap"), [(0.0, 1.0), (5.0, 1.0)])
def test_delays_must_be_positive_and_ordered(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="first_delay_s"):
        TickBackoff(first_delay_s=first, max_delay_s=cap)
