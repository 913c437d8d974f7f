"""The matcher agent: input message -> `MatchEngine` -> state table writes.

It runs with concurrency 1 so that offsets are never committed past a message
still being processed, and all table writes happen inside stream iteration so
they land in the changelog partition of the input partition. Each input's writes
carry an `InputMark` with its offset: a message Kafka delivers again (after a
crash or a rebalance, before its offset was committed) is skipped, not re-applied.
Requests need no mark of their own: their ids make them no-ops the second time
(`AppliedOffsets`).

Besides the contract's inputs it consumes `matchstream.profile-change` (profiles
sent on by `agents.profiles`) and the ticks; batch runs are computed in threads
(`agents.batch_runs`) and their results applied at a tick of the pool's partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator

from faust.types import EventT, StreamT

from agents.batch_runs import BatchRuns
from agents.input_order import AppliedOffsets, InputOrder
from agents.membership import GroupMembership
from agents.stall_guard import StallGuard
from agents.tick_backoff import TickBackoff
from matching.engine import Effects, MatchEngine, MisroutedError
from models.codec import DecodeError, decode, dumps
from models.messages import MatchConfirm, MatchRequest, PoolCommand, ProfileChange
from models.state import InputMark, StateRecord, decode_state
from streams.app import Matchstream
from streams.dlq import reject

__all__ = ["apply_input", "register"]

log = logging.getLogger(__name__)

_PROGRESS_LOG_INTERVAL_S = 10.0
_STALL_CHECK_INTERVAL_S = 5.0
_STALL_AFTER_S = 15.0
_FAILED_TICK_FIRST_PAUSE_S = 5.0
_FAILED_TICK_MAX_PAUSE_S = 300.0
_MEMBERSHIP_MARGIN_S = 2.0
_INDEX_CHECK_INTERVAL_S = 0.1
_INDEX_SLICE_S = 0.02
"""Pools indexed after a recovery, per turn of the event loop: input waits at most about
this long (plus one pool's index) behind them."""

Handler = Callable[[MatchEngine, bytes | None, int, float], Effects]


def _on_request(engine: MatchEngine, raw: bytes | None, partition: int, now: float) -> Effects:
    return engine.handle_request(decode(MatchRequest, raw), partition=partition, now=now)


def _on_confirm(engine: MatchEngine, raw: bytes | None, partition: int, now: float) -> Effects:
    return engine.handle_confirm(decode(MatchConfirm, raw), partition=partition, now=now)


def _on_command(engine: MatchEngine, raw: bytes | None, partition: int, now: float) -> Effects:
    return engine.handle_command(decode(PoolCommand, raw), partition=partition, now=now)


def _on_tick(engine: MatchEngine, raw: bytes | None, partition: int, now: float) -> Effects:
    return engine.tick(partition=partition, now=now)


def _on_profile(engine: MatchEngine, raw: bytes | None, partition: int, now: float) -> Effects:
    return engine.handle_profile(decode(ProfileChange, raw), partition=partition, now=now)


def register(stream: Matchstream) -> None:
    """Add the matcher agent and the table recovery hook to the app."""
    handlers: dict[str, Handler] = {
        stream.names.request: _on_request,
        stream.names.confirm: _on_confirm,
        stream.names.command: _on_command,
        stream.names.tick: _on_tick,
        stream.names.profile_changes: _on_profile,
    }

    input_topics = (
        stream.names.request,
        stream.names.confirm,
        stream.names.command,
        stream.names.profile_changes,
    )
    applied = AppliedOffsets()
    # Installed now: Faust's fetcher binds the consumer's methods when it starts.
    order = InputOrder(consumer=stream.app.consumer, topics=input_topics, applied=applied)
    order.install()

    def load_engine(records: list[StateRecord]) -> None:
        stream.engine.load(record for record in records if not isinstance(record, InputMark))
        stream.watch.reload(records)

    def reload_engine() -> None:
        load_engine([decode_state(value) for value in stream.state.values()])

    @stream.state.on_recover
    async def rebuild_engine() -> None:
        # Tables hold only the partitions assigned now, so this also forgets
        # pools that moved to another worker.
        started = time.monotonic()
        with _collector_paused():
            records = [decode_state(value) for value in stream.state.values()]
            applied.load(record for record in records if isinstance(record, InputMark))
            order.reset()
            load_engine(records)
        waiting = sum(len(book.waiting) for book in stream.engine.pools.values())
        log.info(
            "engine rebuilt pools=%d waiting=%d seconds=%.3f",
            len(stream.engine.pools),
            waiting,
            time.monotonic() - started,
        )
        indexing.since_rebuild(started, stream.engine.unindexed_pools)

    indexing = _Indexing()

    @stream.app.timer(_INDEX_CHECK_INTERVAL_S, name="matcher_partner_indexes")
    async def index_recovered_pools() -> None:
        # Also after `reload_engine`, which does not log its rebuild.
        deadline = time.monotonic() + _INDEX_SLICE_S
        while stream.engine.index_next_pool():
            if time.monotonic() >= deadline:
                await asyncio.sleep(0)  # let waiting input in
                deadline = time.monotonic() + _INDEX_SLICE_S
        indexing.done()

    progress = _Progress()
    runs = BatchRuns()
    tick_backoff = TickBackoff(
        first_delay_s=_FAILED_TICK_FIRST_PAUSE_S, max_delay_s=_FAILED_TICK_MAX_PAUSE_S
    )
    guard = StallGuard(
        app=stream.app,
        group_id=stream.settings.app_id,
        bootstrap_servers=",".join(stream.settings.broker_hosts),
        input_topics=input_topics,
        stall_after_s=_STALL_AFTER_S,
    )

    membership = GroupMembership(
        consumer=stream.app.consumer,
        session_timeout_s=stream.app.conf.broker_session_timeout,
        margin_s=_MEMBERSHIP_MARGIN_S,
    )

    def rebalancing() -> bool:
        return stream.app.rebalancing or not stream.app.flow_control.is_active()

    @stream.app.agent(stream.inputs, name="matcher", concurrency=1)
    async def matcher(events: StreamT) -> None:
        async for event in events.events():
            if not await membership.confirmed(rebalancing):
                continue  # left unapplied for the partition's next owner (agents.membership)
            await _process(
                stream, handlers, event, progress, applied, order, runs, tick_backoff, reload_engine
            )
            guard.processed(event.message.tp, event.message.offset)

    @stream.app.timer(_STALL_CHECK_INTERVAL_S, name="matcher_stall_guard")
    async def guard_inputs() -> None:
        await guard.check()

    @stream.app.timer(_PROGRESS_LOG_INTERVAL_S, name="matcher_progress")
    async def log_progress() -> None:
        progress.log_since_last(stream.engine)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Run a rebuild without the cycle collector, and keep what it made out of its walks.

    A rebuild allocates millions of objects that live until the next one; while they
    were made, the collector kept walking the growing heap, and afterwards each full
    collection walked all of them again (about 5 s for 1,000,000 waiting requests).
    So they are frozen (`gc.freeze`): the collector skips them until the next rebuild
    unfreezes them, and garbage the previous state leaves in cycles waits for the
    next collection after that.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


class _Indexing:
    """Logs when the partner indexes a rebuild left out are all built."""

    def __init__(self) -> None:
        self._pending = False
        self._rebuild_started = 0.0
        self._pools = 0

    def since_rebuild(self, started: float, pools: int) -> None:
        self._pending, self._rebuild_started, self._pools = True, started, pools

    def done(self) -> None:
        if not self._pending:
            return
        self._pending = False
        # Timed from the rebuild's start, as its own line is: the two compare directly.
        log.info(
            "partner indexes built pools=%d seconds=%.3f",
            self._pools,
            time.monotonic() - self._rebuild_started,
        )


class _Progress:
    """Counters for the operator's periodic progress line."""

    def __init__(self) -> None:
        self.inputs = self.ticks = self.writes = self.rejected = self.redelivered = 0
        self.out_of_order = 0
        self._logged = (0, 0, 0, 0, 0, 0)

    def log_since_last(self, engine: MatchEngine) -> None:
        now = (
            self.inputs,
            self.ticks,
            self.writes,
            self.rejected,
            self.redelivered,
            self.out_of_order,
        )
        if now == self._logged:
            return
        inputs, ticks, writes, rejected, redelivered, out_of_order = (
            a - b for a, b in zip(now, self._logged, strict=True)
        )
        self._logged = now
        log.info(
            "matcher progress inputs=%d ticks=%d state_writes=%d rejected=%d redelivered=%d "
            "out_of_order=%d pools=%d waiting=%d",
            inputs,
            ticks,
            writes,
            rejected,
            redelivered,
            out_of_order,
            len(engine.pools),
            sum(len(book.waiting) for book in engine.pools.values()),
        )


async def _process(
    stream: Matchstream,
    handlers: dict[str, Handler],
    event: EventT,
    progress: _Progress,
    applied: AppliedOffsets,
    order: InputOrder,
    runs: BatchRuns,
    tick_backoff: TickBackoff,
    reload_engine: Callable[[], None],
) -> None:
    message = event.message
    handler = handlers[message.topic]
    # Ticks only ask "what is due now?": applying one twice changes nothing.
    is_tick = message.topic == stream.names.tick
    if is_tick:
        progress.ticks += 1
    elif applied.already(message.topic, message.partition, message.offset):
        progress.redelivered += 1
        stream.watch.metrics.redelivered.labels(message.topic).inc()
        return
    elif not applied.in_order(message.topic, message.partition, message.offset):
        # Left unapplied: applying it would count the unapplied ones before it as
        # applied. It comes again, in order, from the offset `rewind` seeks to.
        progress.out_of_order += 1
        await order.rewind(message.tp)
        return
    else:
        progress.inputs += 1
    now = time.time()
    if is_tick and tick_backoff.holds(message.partition, now):
        return
    effects, refusal = apply_input(handler, stream.engine, event, now, reload_engine)
    if is_tick:
        tick_backoff.record(message.partition, failed=refusal is not None, now=now)
        effects.extend(runs.collect(stream.engine, message.partition, now))
    else:
        if refusal is not None:
            progress.rejected += 1
            stream.watch.metrics.dlq.labels(message.topic).inc()
            await reject(stream.dlq, event, refusal)
        mark = applied.applied(
            message.topic, message.partition, message.offset, replay_safe=effects.replay_safe
        )
        if mark is not None:
            effects.writes.append(mark)
    progress.writes += len(effects.writes)
    await stream.state_writer.write((key, dumps(record)) for key, record in effects.writes)
    stream.watch.applied(
        effects.writes,
        input_applied=not is_tick,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        input_timestamp=None if is_tick else message.timestamp,
        now=now,
    )
    for notice in effects.notices:
        await stream.status.send(key=notice.pool_id.encode(), value=dumps(notice))
    runs.launch(effects)


def apply_input(
    handler: Handler,
    engine: MatchEngine,
    event: EventT,
    now: float,
    reload_engine: Callable[[], None],
) -> tuple[Effects, str | None]:
    """Run `handler` on one input: (its effects, None), or (no effects, why it was refused).

    Bad input is refused as such. Any other exception is a fault of the engine's,
    caught so that one input cannot crash the agent: the input is refused with
    the error, and the engine, which may have changed half-way, is reloaded from
    the state table, which no effect of this input reached.
    """
    message = event.message
    try:
        return handler(engine, event.value, message.partition, now), None
    except (DecodeError, MisroutedError) as exc:
        return Effects(), str(exc)
    except Exception as exc:
        log.exception(
            "engine failed on input, reloading it from the table topic=%s partition=%d offset=%d",
            message.topic,
            message.partition,
            message.offset,
        )
        with _collector_paused():
            reload_engine()
        return Effects(), f"internal error: {exc!r}"
