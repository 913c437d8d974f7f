"""The producer's flush ends only when every write is acknowledged, and refuses after a loss.

The buffer runs as Faust runs it (a started service with its sending task); the Kafka
client is replaced by a channel or a `send` whose outcome each test decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.transport.producer import ProducerBuffer

from streams.durable_producer import DrainingProducerBuffer, DurableApp, DurableProducer

_WAIT_S = 5.0


class _GatedChannel:
    """Hands messages to a 'client' that takes nothing until the gate opens."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.taking = asyncio.Event()
        self.published: list[str] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        self.taking.set()
        await self.gate.wait()
        self.published.append(fut.name)


def _message(channel: _GatedChannel, name: str) -> Any:
    return SimpleNamespace(name=name, message=SimpleNamespace(channel=channel))


def _app() -> DurableApp:
    return DurableApp("durable-test", broker="kafka://127.0.0.1:9", store="memory://")


@pytest.fixture
async def buffer() -> AsyncIterator[DrainingProducerBuffer]:
    running = DrainingProducerBuffer()
    running.app = _app()
    await running.start()
    try:
        yield running
    finally:
        # A message a test left behind its gate would hold the stop (it sends everything).
        await asyncio.wait_for(running.stop(), _WAIT_S)


async def _still_waiting(task: asyncio.Task[None]) -> bool:
    # Faust's own flush gives up after 0.1 s without progress: wait well past that.
    done, _ = await asyncio.wait({task}, timeout=0.5)
    return not done


async def test_flush_waits_for_a_message_the_client_has_not_taken(
    buffer: DrainingProducerBuffer,
) -> None:
    channel = _GatedChannel()
    buffer.put(_message(channel, "write"))
    await asyncio.wait_for(channel.taking.wait(), _WAIT_S)

    # The message has left Faust's queue but not reached the client: Faust's flush is done.
    await asyncio.wait_for(ProducerBuffer.flush(buffer), _WAIT_S)
    flush = asyncio.create_task(buffer.flush())
    assert await _still_waiting(flush)

    channel.gate.set()
    await asyncio.wait_for(flush, _WAIT_S)
    assert channel.published == ["write"]
    assert buffer.unsent == 0


async def test_flush_waits_for_every_queued_message(buffer: DrainingProducerBuffer) -> None:
    channel = _GatedChannel()
    for name in ("a", "b", "c"):
        buffer.put(_message(channel, name))
    flush = asyncio.create_task(buffer.flush())
    assert await _still_waiting(flush)

    channel.gate.set()
    await asyncio.wait_for(flush, _WAIT_S)
    assert channel.published == ["a", "b", "c"]


async def test_stop_sends_everything_and_a_later_flush_refuses() -> None:
    buffer = DrainingProducerBuffer()
    buffer.app = _app()
    await buffer.start()
    channel = _GatedChannel()
    channel.gate.set()
    for name in ("a", "b"):
        buffer.put(_message(channel, name))
    await asyncio.wait_for(buffer.stop(), _WAIT_S)
    assert channel.published == ["a", "b"]

    buffer.put(_message(channel, "late"))
    with pytest.raises(ProducerSendError, match="1 messages unsent"):
        await buffer.flush()


@pytest.fixture
def client_sends(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.Future[Any]]:
    """Each send of the Kafka client returns a future the test settles."""
    futures: list[asyncio.Future[Any]] = []

    async def send(self: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        futures.append(future)
        return future

    monkeypatch.setattr(aiokafka_driver.Producer, "send", send)
    return futures


def _producer() -> DurableProducer:
    """The producer a worker's app makes (not started: the tests replace the client's sends)."""
    producer = _app().producer
    assert isinstance(producer, DurableProducer)
    return producer


async def _send(producer: DurableProducer) -> None:
    await producer.send("topic", b"key", b"value", 0, None, None)


async def test_producer_flush_waits_for_the_broker_to_acknowledge(
    client_sends: list[asyncio.Future[Any]],
) -> None:
    producer = _producer()
    await _send(producer)
    flush = asyncio.create_task(producer.flush())
    assert await _still_waiting(flush)

    client_sends[0].set_result("acknowledged")
    await asyncio.wait_for(flush, _WAIT_S)
    assert producer.send_failure is None


async def test_producer_flush_raises_after_a_failed_send_and_keeps_raising(
    client_sends: list[asyncio.Future[Any]],
) -> None:
    producer = _producer()
    await _send(producer)
    await _send(producer)
    client_sends[0].set_result("acknowledged")
    client_sends[1].set_exception(RuntimeError("message too large"))

    with pytest.raises(ProducerSendError, match="message too large"):
        await asyncio.wait_for(producer.flush(), _WAIT_S)
    await _send(producer)
    client_sends[2].set_result("acknowledged")
    with pytest.raises(ProducerSendError, match="message too large"):
        await asyncio.wait_for(producer.flush(), _WAIT_S)
    assert isinstance(producer.send_failure, RuntimeError)


async def test_a_send_the_client_refuses_fails_every_later_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(self: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        raise RuntimeError("no metadata for the topic in time")

    monkeypatch.setattr(aiokafka_driver.Producer, "send", refuse)
    producer = _producer()
    with pytest.raises(RuntimeError, match="no metadata"):
        await _send(producer)
    with pytest.raises(ProducerSendError, match="no metadata"):
        await asyncio.wait_for(producer.flush(), _WAIT_S)
