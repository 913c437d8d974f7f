"""Un-sticking input partitions that Faust stopped fetching.

In the crash drill a worker restarted after SIGKILL sometimes recovered its
tables and then never fetched some input partitions again, while the other
topics of the same agent kept flowing (about 1 restart in 10 here). The guard
notices an input partition with a backlog that made no progress for a while,
logs it with what it knows, and resumes and re-seeks the partition to where
the group's committed offset says processing stands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from faust.types import TP, AppT

__all__ = ["StallGuard"]

log = logging.getLogger(__name__)


class StallGuard:
    """Tracks the last offset processed per input partition and revives stalled ones."""

    def __init__(
        self,
        *,
        app: AppT,
        group_id: str,
        bootstrap_servers: str,
        input_topics: Iterable[str],
        stall_after_s: float,
    ) -> None:
        self._app = app
        self._group_id = group_id
        self._bootstrap_servers = bootstrap_servers
        self._topics = frozenset(input_topics)
        self._stall_after_s = stall_after_s
        self._processed: dict[TP, int] = {}
        self._since: dict[TP, tuple[int, float]] = {}
        """Per partition: the processed offset last seen, and since when."""

    def processed(self, tp: TP, offset: int) -> None:
        self._processed[tp] = offset

    async def check(self) -> None:
        """Revive every assigned input partition that has a backlog and no progress.

        Broker errors skip one round: an exception escaping a Faust timer stops the
        whole worker, and a broker being restarted is no reason for that.
        """
        try:
            await self._check()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("stall check skipped error=%r", exc)

    async def _check(self) -> None:
        consumer = self._app.consumer
        partitions = [tp for tp in consumer.assignment() if tp.topic in self._topics]
        if not partitions or self._app.rebalancing or self._app.in_recovery:
            self._since.clear()
            return
        ends = await consumer.highwaters(*partitions)
        # The group's offsets are needed only where nothing was processed since start.
        unseen = any(tp not in self._processed for tp in partitions)
        committed = await self._committed() if unseen else {}
        now = time.monotonic()
        for tp in partitions:
            position = self._processed.get(tp, committed.get(tp, 0) - 1) + 1
            if ends.get(tp, 0) <= position:
                self._since.pop(tp, None)
                continue
            seen, since = self._since.setdefault(tp, (position, now))
            if seen != position:
                self._since[tp] = (position, now)
            elif now - since >= self._stall_after_s:
                await self._revive(tp, position, ends.get(tp, 0))
                self._since.pop(tp, None)

    async def _committed(self) -> dict[TP, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap_servers)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self._group_id)
        finally:
            await admin.close()
        return {TP(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}

    async def _revive(self, tp: TP, position: int, end: int) -> None:
        consumer = self._app.consumer
        log.warning(
            "input partition stalled topic=%s partition=%d next_offset=%d end=%d "
            "paused=%s; resuming and seeking",
            tp.topic,
            tp.partition,
            position,
            end,
            tp in getattr(consumer, "_paused_partitions", set()),
        )
        consumer.resume_partitions([tp])
        # In the consumer's own thread: Faust's `seek` moves the aiokafka consumer from
        # this one, racing its fetcher (a KeyError in `fetched_records` crashed a worker
        # in the burst drill).
        await consumer.seek_wait({tp: position})
