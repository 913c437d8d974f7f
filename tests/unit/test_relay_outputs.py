"""The output relay's projection of state writes, and what it skips undecoded."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from faust.serializers import codecs

from agents.input_order import AppliedOffsets
from matching.engine import Effects, MatchEngine
from models.codec import dumps
from models.messages import MatchRequest, PoolCommand, PoolConfig, Profile, ProfileChange
from streams.relay import AcknowledgedOffsets, outputs_for, outputs_of, table_key
from streams.topics import TopicNames

NAMES = TopicNames.with_prefix("t.")


def _writes_of_a_busy_pool() -> list[tuple[bytes, bytes]]:
    # Keyed as Faust writes a str-keyed table's changelog.
    return [(codecs.dumps("json", key), dumps(record)) for key, record in _busy_pool().writes]


def _busy_pool() -> Effects:
    engine = MatchEngine()
    applied = AppliedOffsets()
    effects = Effects()
    configure = PoolCommand(command="configure", pool_id="p", config=PoolConfig(mode="pair"))
    effects.extend(engine.handle_command(configure, partition=0, now=0.0))
    for number in range(5):
        request = MatchRequest(request_id=f"r{number}", pool_id="p", user_id=f"u{number}")
        effects.extend(engine.handle_request(request, partition=0, now=1.0 + number))
        mark = applied.applied("t.match.request", 0, number, replay_safe=False)
        assert mark is not None
        effects.writes.append(mark)
    cancel = MatchRequest(type="cancel", request_id="r4", pool_id="p", user_id="u4")
    effects.extend(engine.handle_request(cancel, partition=0, now=9.0))
    change = ProfileChange(user_id="u9", profile=Profile(interests=["go"]), updated_at=9.0)
    effects.extend(engine.handle_profile(change, partition=0, now=9.0))
    return effects


def test_skipping_by_key_loses_no_output() -> None:
    writes = _writes_of_a_busy_pool()
    by_key = [out for key, value in writes for out in outputs_for(table_key(key), value, NAMES)]
    decoding_all = [out for _, value in writes for out in outputs_for(None, value, NAMES)]

    assert by_key == decoding_all
    topics = [topic for topic, _, _ in by_key]
    assert topics.count("t.match.found") == 2 and topics.count("t.match.status") >= 6


def test_records_in_hand_give_the_outputs_of_their_changelog_values() -> None:
    writes = _busy_pool().writes
    in_hand = [out for _, record in writes for out in outputs_of(record, NAMES)]
    from_changelog = [
        out for key, record in writes for out in outputs_for(key, dumps(record), NAMES)
    ]

    assert in_hand == from_changelog
    assert len(in_hand) >= 8


def test_records_without_outputs_are_not_decoded() -> None:
    keys = [table_key(raw_key) for raw_key, _ in _writes_of_a_busy_pool()]
    skipped = [key for key in keys if key is not None and key[0] in "pou"]
    assert {key[0] for key in skipped} == {"p", "o", "u"}
    for key in skipped:
        # Not JSON at all: decoding it would raise.
        assert list(outputs_for(key, b"\xff not a record", NAMES)) == []


class _Consumer:
    """The two methods of an aiokafka consumer that committing uses."""

    def __init__(self, owned: set[TopicPartition]) -> None:
        self.owned = owned
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def _acknowledged() -> asyncio.Future[object]:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


async def test_acknowledged_offsets_are_committed_once_per_interval() -> None:
    first, second = TopicPartition("changelog", 0), TopicPartition("changelog", 1)
    consumer = _Consumer({first, second})
    now = [0.0]
    commits = AcknowledgedOffsets(consumer, interval_s=1.0, clock=lambda: now[0])  # type: ignore[arg-type]

    await commits.settle([_acknowledged()], {first: 10})
    now[0] = 0.5
    await commits.settle([_acknowledged()], {first: 20, second: 5})
    assert consumer.commits == []

    now[0] = 1.0
    await commits.settle([_acknowledged()], {second: 7})
    assert consumer.commits == [{first: 20, second: 7}]

    await commits.settle([_acknowledged()], {first: 30})
    await commits.commit()  # the topic went quiet
    await commits.commit()  # nothing new: no request
    assert consumer.commits == [{first: 20, second: 7}, {first: 30}]


async def test_a_failed_send_keeps_its_batch_uncommitted() -> None:
    changelog = TopicPartition("changelog", 0)
    consumer = _Consumer({changelog})
    commits = AcknowledgedOffsets(consumer, interval_s=0.0)  # type: ignore[arg-type]
    failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    failed.set_exception(KafkaTimeoutError())

    with pytest.raises(KafkaTimeoutError):
        await commits.settle([_acknowledged(), failed], {changelog: 50})
    await commits.commit()

    assert consumer.commits == []
