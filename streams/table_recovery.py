"""Table recovery that keeps every changelog record fetched for a standby.

Faust hands changelog records to its recovery service through one queue, which
app-wide flow control empties whenever it resumes: records fetched before a
rebalance must not be applied after it. At the end of a recovery Faust resumes
its standby partitions first, then runs the tables' `on_recover` callbacks (our
engine rebuild takes up to a few hundred milliseconds), and only then resumes
flow control for the streams. That last resume empties the queue a second time,
and drops the standby records fetched meanwhile. The consumer has moved past
them, the records after them are applied, and the standby's offset claims a copy
it never wrote. When that standby is promoted it trusts its copy: requests that
were matched come back as waiting (the cluster drill caught one such promotion,
docs/operations.md). faust-streaming#212 reports the same loss for global tables.

So the changelog queue here is kept while a recovery completes, and emptied as
Faust empties it everywhere else: on a rebalance, and on resumes within it.

The opposite mistake is applying a record that should have been dropped. The
fetcher can put a record into the queue after a rebalance emptied it (it was
waiting for the producer's buffer to drain, or for space in the queue). The
recovery would apply it, and the records between the last one applied and this
one, dropped by the rebalance, would then lie below the offset it claims, never
read again. Faust's streams skip a record fetched in an earlier generation or
handed over while flow control is suspended; the recovery's queue does the same
here, and the recovery's next seek reads such a record again.
"""

from __future__ import annotations

from typing import Any

from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, AppT, EventT
from mode.utils.queues import ThrowableQueue

__all__ = ["ChangelogQueue", "StandbySafeTableManager"]


class ChangelogQueue(ThrowableQueue):
    """Faust's changelog queue: flow control may empty it only while it is not held,
    and it hands out only records of the current generation, fetched while flow runs.
    """

    def __init__(self, *args: Any, app: AppT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held = False
        self._app = app

    def clear(self) -> None:
        if not self.held:
            super().clear()

    async def get(self) -> Any:
        while True:
            event = await super().get()
            if self._is_current(event):
                return event

    def _is_current(self, event: EventT) -> bool:
        return (
            self._app.flow_control.is_active()
            and event.message.generation_id == self._app.consumer_generation_id
        )


class _StandbySafeRecovery(Recovery):
    def __init__(self, *args: Any, queue: ChangelogQueue, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue = queue

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        # Only the standby partitions are fetching now (the actives are paused), so
        # what the queue holds belongs to this generation, in offset order.
        self._queue.held = True
        try:
            await super().on_recovery_completed(generation_id)
        finally:
            self._queue.held = False


class StandbySafeTableManager(TableManager):
    """Faust's table manager with a recovery that keeps standby records (module docstring).

    Example:
        >>> app = faust.App("example", TableManager=StandbySafeTableManager)  # doctest: +SKIP
    """

    @property
    def changelog_queue(self) -> ChangelogQueue:
        if self._changelog_queue is None:
            self._changelog_queue = ChangelogQueue(
                maxsize=self.app.conf.stream_buffer_maxsize,
                flow_control=self.app.flow_control,
                clear_on_resume=True,
                app=self.app,
            )
        assert isinstance(self._changelog_queue, ChangelogQueue)  # only made here
        return self._changelog_queue

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _StandbySafeRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop, queue=self.changelog_queue
            )
        return self._recovery

    def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # A rebalance that starts while a recovery completes must still find the
        # queue emptied: its records may belong to partitions this worker loses.
        self.changelog_queue.held = False
        super().on_partitions_revoked(revoked)
