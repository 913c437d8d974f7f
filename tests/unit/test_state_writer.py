"""State writes reach the store and the changelog as Faust's own table writes would.

The app and its RocksDB table are the worker's (`create_app`, never started); the
Kafka client is replaced by a producer whose acknowledgements each test settles.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.streams import _current_event
from faust.types import TP

from streams.app import Matchstream, create_app
from streams.settings import Settings

_PARTITION = 3
_WAIT_S = 5.0


class _Producer:
    """Keeps each send and the future that stands for its acknowledgement."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.acknowledgements: list[asyncio.Future[Any]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None, *_: Any
    ) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value, partition))
        acknowledgement: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acknowledgements.append(acknowledgement)
        return acknowledgement


class _Event:
    """What the store and the writer read of the event being processed."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


@contextlib.contextmanager
def _processing(partition: int) -> Iterator[None]:
    # Faust's stream sets this context variable for each event it hands an agent.
    event = _Event(partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]  # a stand-in
    try:
        yield
    finally:
        _current_event.reset(token)


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[Matchstream]:
    built = create_app(Settings(data_dir=tmp_path))
    built.app.producer = _Producer()  # type: ignore[assignment]  # only `send` is used
    yield built
    # Building the app made Faust's consumer, whose thread has its own event loop.
    consumer: Any = built.app.consumer
    consumer._thread.thread_loop.close()
    for db in built.state.data._dbs.values():  # type: ignore[attr-defined]
        db.close()


def _producer(stream: Matchstream) -> _Producer:
    producer = stream.app.producer
    assert isinstance(producer, _Producer)
    return producer


async def test_writes_go_to_the_store_and_the_event_partition_of_the_changelog(
    stream: Matchstream,
) -> None:
    entries = [("r/lobby/ö-1", b'{"a":1}'), ("p/lobby", b'{"b":2}'), ("r/lobby/ö-1", b"{}")]
    with _processing(_PARTITION):
        await stream.state_writer.write(iter(entries))
        assert stream.state.data["r/lobby/ö-1"] == b"{}"
        assert stream.state.data["p/lobby"] == b'{"b":2}'

    store: Any = stream.state.data
    topic = stream.state.changelog_topic.get_topic_name()
    # Key bytes as Faust's store encodes them, which is how its table sends them too.
    assert _producer(stream).sent == [
        (topic, store._encode_key(key), value, _PARTITION) for key, value in entries
    ]


async def test_the_persisted_offset_follows_acknowledged_writes_only(
    stream: Matchstream,
) -> None:
    with _processing(_PARTITION):
        await stream.state_writer.write([("p/a", b"1"), ("p/b", b"2")])
    first, second = _producer(stream).acknowledgements
    tp = TP(stream.state.changelog_topic.get_topic_name(), _PARTITION)
    store: Any = stream.state.data

    first.set_result(SimpleNamespace(offset=41))
    second.set_exception(RuntimeError("lost"))
    settled = asyncio.get_running_loop().create_future()
    # A future's done callbacks run in the order they were added: this one runs last.
    second.add_done_callback(lambda _: settled.set_result(None))
    await asyncio.wait_for(settled, _WAIT_S)
    assert store.persisted_offset(tp) == 41


async def test_a_write_outside_stream_processing_is_refused(stream: Matchstream) -> None:
    with pytest.raises(RuntimeError, match="inside stream processing"):
        await stream.state_writer.write([("p/a", b"1")])
    assert _producer(stream).sent == []
