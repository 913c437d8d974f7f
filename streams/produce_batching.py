"""Fewer, fuller produce requests from the worker's two producers.

The worker has two producers: Faust's, which writes the state changelog, and the
output relay's. Each holds a partition's records for a short linger (5 and 2 ms) so
that a paced request's changelog record and outputs leave at once. Every produce
request, and every fetch of the relay that the changelog's appends answer, costs the
worker's one thread CPU on both ends however few records it carries. At about 1,000
inputs a second the worker sent 800 produce requests a second of 5 records each, and
the relay fetched the changelog 300 times a second (docs/performance.md, "Fewer,
fuller produce requests"). Two changes cut that:

- Whole nodes: aiokafka sends a partition's batch when that batch's own linger is
  over, so the batches of the 8 or more partitions a producer writes left in as many
  requests, one after another. Once one batch a broker leads is due, the others it
  leads now go in the same request (as the Java client does). No record waits longer
  than before; some leave earlier.
- A longer linger in a backlog: while the worker is more than `backlog_messages`
  behind its input, both producers linger `backlog_linger_ms`. An input in a backlog
  has waited behind it already; the linger adds little to that, and the CPU it saves
  empties the backlog sooner. Within `caught_up_messages` of the input's ends the
  producers' own lingers apply again.

Both act on aiokafka's private accumulator; `tests/integration/test_produce_batching.py`
checks against a real broker that they still do.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Collection
from typing import Any

from streams.app import Matchstream
from streams.fetch_window import messages_behind

__all__ = ["BacklogLinger", "register", "send_whole_nodes"]

log = logging.getLogger(__name__)

_BACKLOG_LINGER_MS = 25
"""Five times the changelog's own linger: a run with 60 ms was not clearly faster."""
_BACKLOG_MESSAGES = 150
"""About a fifth of a second of input at the rates the latency bench paces: a worker
that far behind is not keeping up with short lingers."""
_CAUGHT_UP_MESSAGES = 20
_CHECK_INTERVAL_S = 0.5


class BacklogLinger:
    """Decides, from how far the worker is behind its input, how long its producers linger.

    Args:
        backlog_linger_ms: the linger while in a backlog.
        backlog_messages: behind by more than this, the worker is in a backlog.
        caught_up_messages: behind by this many or fewer, it is out of it again (fewer
            than `backlog_messages`, so that a worker near the line does not switch
            at every check).
    """

    def __init__(
        self, *, backlog_linger_ms: int, backlog_messages: int, caught_up_messages: int
    ) -> None:
        if not 0 <= caught_up_messages < backlog_messages:
            raise ValueError(
                "need 0 <= caught_up_messages < backlog_messages, "
                f"got {caught_up_messages}, {backlog_messages}"
            )
        self.backlog_linger_ms = backlog_linger_ms
        self._backlog_messages = backlog_messages
        self._caught_up_messages = caught_up_messages
        self.in_backlog = False
        self._own_lingers: dict[int, float] = {}
        """Per producer (by id): its linger in seconds before any backlog."""

    def observe(self, behind: int) -> None:
        """Enter or leave the backlog, given the messages between the worker and its input's ends."""
        if self.in_backlog:
            in_backlog = behind > self._caught_up_messages
        else:
            in_backlog = behind > self._backlog_messages
        if in_backlog != self.in_backlog:
            self.in_backlog = in_backlog
            log.info(
                "backlog linger %s behind=%d linger_ms=%d",
                "on" if in_backlog else "off",
                behind,
                self.backlog_linger_ms,
            )

    def apply(self, producer: Any) -> None:
        """Set the linger of `producer`'s next batches (an aiokafka `AIOKafkaProducer`)."""
        accumulator = producer._message_accumulator
        own = self._own_lingers.setdefault(id(producer), accumulator._linger_time)
        # Read when a partition's next batch is created; batches lingering now keep theirs.
        accumulator._linger_time = self.backlog_linger_ms / 1000 if self.in_backlog else own


class _WholeNodeDrain:
    """An accumulator's `drain_by_nodes` that takes every batch of a node once one is due.

    The sender calls it whenever it may send; it returns, per broker, the batches
    whose linger is over. Ending the linger of the due nodes' other batches first
    makes it return those too.
    """

    def __init__(self, accumulator: Any) -> None:
        self._accumulator = accumulator
        self._drain = accumulator.drain_by_nodes

    def __call__(
        self, ignore_nodes: Collection[int], muted_partitions: Collection[Any] = frozenset()
    ) -> Any:
        first_batches: defaultdict[int, list[Any]] = defaultdict(list)
        due: set[int] = set()
        cluster = self._accumulator._cluster
        for tp, batches in self._accumulator._batches.items():
            if tp in muted_partitions or not batches:
                continue
            leader = cluster.leader_for_partition(tp)
            if leader is None or leader == -1 or leader in ignore_nodes:
                continue  # left to the accumulator's own handling
            first_batches[leader].append(batches[0])
            if not batches[0].remaining_linger():
                due.add(leader)
        for node in due:
            for batch in first_batches[node]:
                batch._linger_time = 0
        return self._drain(ignore_nodes, muted_partitions)


def send_whole_nodes(producer: Any) -> None:
    """Make `producer` send all its batches for a broker once one of them is due (once)."""
    accumulator = producer._message_accumulator
    if not isinstance(accumulator.drain_by_nodes, _WholeNodeDrain):
        # An instance attribute: the sender looks the method up on every call.
        accumulator.drain_by_nodes = _WholeNodeDrain(accumulator)


def register(stream: Matchstream, *, relay_producer: Callable[[], Any | None]) -> None:
    """Check twice a second how far behind the worker is and set up its producers.

    Args:
        relay_producer: the output relay's producer, or None before the relay started.
    """
    linger = BacklogLinger(
        backlog_linger_ms=_BACKLOG_LINGER_MS,
        backlog_messages=_BACKLOG_MESSAGES,
        caught_up_messages=_CAUGHT_UP_MESSAGES,
    )

    @stream.app.timer(_CHECK_INTERVAL_S, name="produce_batching")
    async def set_up_producers() -> None:
        # Faust keeps its aiokafka producer private; None until the app's producer started.
        producers = [
            producer
            for producer in (getattr(stream.app.producer, "_producer", None), relay_producer())
            if producer is not None
        ]
        if not all(_batches_reachable(producer) for producer in producers):
            _warn_unsupported()
            return
        linger.observe(messages_behind(stream))
        for producer in producers:
            send_whole_nodes(producer)
            linger.apply(producer)


@functools.cache  # once per process: the timer asks twice a second
def _warn_unsupported() -> None:
    log.warning("produce batching off: this aiokafka's producer keeps its batches elsewhere")


def _batches_reachable(producer: Any) -> bool:
    accumulator = getattr(producer, "_message_accumulator", None)
    return all(
        hasattr(accumulator, name)
        for name in ("_linger_time", "_batches", "_cluster", "drain_by_nodes")
    )
