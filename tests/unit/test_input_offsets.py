"""Redelivered input is skipped; input the fetcher jumped over is asked for again."""

from __future__ import annotations

from agents.input_offsets import AppliedOffsets
from models.state import InputMark


def test_redelivery_is_recognised_and_the_next_offset_is_not_a_gap() -> None:
    offsets = AppliedOffsets()
    offsets.mark("in", 0, 10)
    assert offsets.already("in", 0, 10) and offsets.already("in", 0, 3)
    assert not offsets.already("in", 0, 11)
    assert offsets.missing_before("in", 0, 11) is None
    assert offsets.missing_before("in", 1, 500) is None  # nothing known on partition 1


def test_a_jump_asks_for_the_first_skipped_offset_until_filled_or_given_up() -> None:
    offsets = AppliedOffsets(accept_hole_after_s=60.0)
    offsets.load([InputMark(partition=2, changed_at=0.0, topic="in", offset=2971)])
    assert offsets.missing_before("in", 2, 6651, now=100.0) == 2972
    assert offsets.missing_before("in", 2, 6652, now=150.0) == 2972  # still missing
    offsets.mark("in", 2, 2972)  # the seek brought it back
    assert offsets.missing_before("in", 2, 6651, now=155.0) == 2973
    # A gap that a minute of seeking could not fill is gone from the log: accepted.
    assert offsets.missing_before("in", 2, 6651, now=216.0) is None
