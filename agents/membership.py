"""Whether this worker can still be sure it owns the partitions it was assigned.

The group coordinator expires a member whose heartbeats stop for the session timeout
and gives its partitions to the others; the member learns of it only when it next
reaches the coordinator. Meanwhile Faust keeps fetching and the matcher keeps writing,
so two workers write one changelog partition and decide the same requests twice. The
crash drill found it after a broker restart: one worker's lookup of the coordinator
went unanswered, the coordinator expired it 10 s later and the other worker took every
partition, while the first went on matching for half a minute.

`GroupMembership` times every heartbeat of the Faust consumer's group. A heartbeat the
coordinator answered (`NoError`, or a rebalance in progress, which also keeps the
member) was received no earlier than it was sent, so the coordinator cannot expire the
member before that send time plus the session timeout. `current()` is true until then,
less a margin for the time between the check and the writes reaching the broker. The
matcher checks it before each input; while it is false the input waits, until the
coordinator answers again or a rebalance starts. In a rebalance the input is left
unapplied: its `InputMark` was not written, so whoever owns the partition next (this
worker or another) is sought back to it by `InputOrder` and applies it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["GroupMembership"]

log = logging.getLogger(__name__)

_RECHECK_S = 0.1


class GroupMembership:
    """Tracks the last heartbeat the group coordinator answered.

    Args:
        consumer: Faust's consumer; its group coordinator lives in the consumer thread.
        session_timeout_s: the group's session timeout.
        margin_s: how long before the coordinator could expire the member input stops.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        consumer: Any,
        session_timeout_s: float,
        margin_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < margin_s < session_timeout_s:
            raise ValueError(
                f"margin_s must be between 0 and session_timeout_s, got {margin_s} "
                f"and {session_timeout_s}"
            )
        self._consumer = consumer
        self.valid_for_s = session_timeout_s - margin_s
        self._clock = clock
        self._confirmed_at: float | None = None
        """Send time of the last heartbeat answered; None before the first one is timed."""
        self._watched: Any = None
        self._unconfirmed_since: float | None = None

    def current(self) -> bool:
        """True unless the coordinator may have expired this member by now."""
        self._watch_coordinator()
        now = self._clock()
        confirmed = self._confirmed_at is None or now - self._confirmed_at < self.valid_for_s
        if not confirmed and self._unconfirmed_since is None:
            self._unconfirmed_since = now
            log.warning(
                "consumer group membership unconfirmed for %.1f s; holding input until the "
                "coordinator answers or the group rebalances",
                now - (self._confirmed_at or now),
            )
        elif confirmed and self._unconfirmed_since is not None:
            log.info(
                "consumer group membership confirmed again after %.1f s of held input",
                now - self._unconfirmed_since,
            )
            self._unconfirmed_since = None
        return confirmed

    async def confirmed(self, rebalancing: Callable[[], bool]) -> bool:
        """Wait while membership is unconfirmed: True once it is, False if a rebalance starts."""
        while not self.current():
            if rebalancing():
                return False
            await asyncio.sleep(_RECHECK_S)
        return True

    def _watch_coordinator(self) -> None:
        coordinator = _group_coordinator(self._consumer)
        if coordinator is None or coordinator is self._watched:
            return
        self._watched = coordinator
        coordinator._do_heartbeat = self._timed(coordinator._do_heartbeat)
        log.info("group membership watch attached group=%s", coordinator.group_id)

    def _timed(self, heartbeat: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
        async def timed_heartbeat() -> bool:
            sent_at = self._clock()
            answered = await heartbeat()
            if answered:
                # Set from the consumer thread, read from the main one: one reference swap.
                self._confirmed_at = sent_at
            return answered

        return timed_heartbeat


def _group_coordinator(consumer: Any) -> Any:
    """aiokafka's group coordinator inside Faust's consumer thread, once it exists."""
    thread = getattr(consumer, "_thread", None)
    client = getattr(thread, "_consumer", None)
    return getattr(client, "_coordinator", None)
