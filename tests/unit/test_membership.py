"""GroupMembership: input waits once the coordinator may have expired this member."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agents.membership import GroupMembership
from tests.support.clock import ManualClock

SESSION_S = 10.0
MARGIN_S = 2.0
_WAIT_S = 5.0


class _Coordinator:
    """aiokafka's group coordinator as far as the watch sees it: one heartbeat call."""

    group_id = "matchstream"

    def __init__(self) -> None:
        self.answers = True

    async def _do_heartbeat(self) -> bool:
        return self.answers


def _membership() -> tuple[GroupMembership, _Coordinator, ManualClock]:
    coordinator = _Coordinator()
    consumer = SimpleNamespace(
        _thread=SimpleNamespace(_consumer=SimpleNamespace(_coordinator=coordinator))
    )
    clock = ManualClock(1000.0)
    membership = GroupMembership(
        consumer=consumer, session_timeout_s=SESSION_S, margin_s=MARGIN_S, clock=clock
    )
    return membership, coordinator, clock


def test_current_until_the_session_less_the_margin_after_an_answered_heartbeat() -> None:
    membership, coordinator, clock = _membership()
    assert membership.current()  # attaches the watch; nothing timed yet
    asyncio.run(coordinator._do_heartbeat())
    sent_at = clock.now

    clock.now = sent_at + SESSION_S - MARGIN_S - 0.01
    assert membership.current()
    clock.now = sent_at + SESSION_S - MARGIN_S
    assert not membership.current()


def test_an_unanswered_heartbeat_confirms_nothing() -> None:
    membership, coordinator, clock = _membership()
    membership.current()
    asyncio.run(coordinator._do_heartbeat())
    coordinator.answers = False
    clock.now += 5.0
    asyncio.run(coordinator._do_heartbeat())
    clock.now += 3.0
    assert not membership.current()

    coordinator.answers = True
    asyncio.run(coordinator._do_heartbeat())
    assert membership.current()


def test_confirmed_waits_for_an_answer() -> None:
    membership, coordinator, clock = _membership()
    membership.current()
    asyncio.run(coordinator._do_heartbeat())
    clock.now += SESSION_S

    async def scenario() -> bool:
        waiting = asyncio.create_task(membership.confirmed(lambda: False))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done, "input went on while membership was unconfirmed"
        await coordinator._do_heartbeat()
        return await asyncio.wait_for(waiting, _WAIT_S)

    assert asyncio.run(scenario()) is True


def test_confirmed_gives_the_input_up_when_a_rebalance_starts() -> None:
    membership, coordinator, clock = _membership()
    membership.current()
    asyncio.run(coordinator._do_heartbeat())
    clock.now += SESSION_S
    rebalance = {"started": False}

    async def scenario() -> bool:
        waiting = asyncio.create_task(membership.confirmed(lambda: rebalance["started"]))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done
        rebalance["started"] = True
        return await asyncio.wait_for(waiting, _WAIT_S)

    assert asyncio.run(scenario()) is False


def test_the_margin_must_fit_in_the_session() -> None:
    with pytest.raises(ValueError, match="margin_s"):
        GroupMembership(consumer=None, session_timeout_s=10.0, margin_s=10.0)
