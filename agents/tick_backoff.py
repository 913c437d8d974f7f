"""Spacing out the ticks of a partition whose tick keeps failing.

A tick on which the engine raises is logged and the engine is reloaded from the
state table (`agents.matcher.apply_input`). A fault that fails every tick would
then reload the engine every tick interval; with a million waiting requests a
reload takes most of a minute, so the worker would do nothing else. After a
failed tick the partition's ticks are skipped for a delay that doubles with
each further failure, up to a cap; the first tick that succeeds resets it.
Skipping a tick delays expiry, relaxation and applying finished batch runs,
nothing more: the next tick that runs finds everything due by then.
"""

from __future__ import annotations

import logging

__all__ = ["TickBackoff"]

log = logging.getLogger(__name__)


class TickBackoff:
    """Per partition: when its next tick may run, after failures.

    Args:
        first_delay_s: skipped time after the first failure.
        max_delay_s: the longest skipped time, however many failures follow.
    """

    def __init__(self, *, first_delay_s: float, max_delay_s: float) -> None:
        if not 0 < first_delay_s <= max_delay_s:
            raise ValueError(
                f"need 0 < first_delay_s <= max_delay_s, got {first_delay_s}, {max_delay_s}"
            )
        self._first_delay_s = first_delay_s
        self._max_delay_s = max_delay_s
        self._failing: dict[int, tuple[float, float]] = {}
        """Per failing partition: (the delay after its last failure, when ticks may run again)."""

    def holds(self, partition: int, now: float) -> bool:
        """True when this partition's tick should be skipped."""
        failing = self._failing.get(partition)
        return failing is not None and now < failing[1]

    def record(self, partition: int, *, failed: bool, now: float) -> None:
        """Account for a tick that ran."""
        if not failed:
            if self._failing.pop(partition, None) is not None:
                log.info("tick succeeded again partition=%d", partition)
            return
        previous = self._failing.get(partition)
        delay = self._first_delay_s if previous is None else min(previous[0] * 2, self._max_delay_s)
        self._failing[partition] = (delay, now + delay)
        log.warning("tick failed partition=%d; its ticks pause for %.0f s", partition, delay)
