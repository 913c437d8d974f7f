"""`streams.changelog_prefill`: a broker out of reach skips the fill and leaves no client open."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from streams.changelog_prefill import prefill_changelog


async def test_an_unreachable_broker_skips_the_fill_and_stops_the_consumer(monkeypatch) -> None:
    stopped: list[AIOKafkaConsumer] = []
    real_stop = AIOKafkaConsumer.stop

    async def recording_stop(consumer: AIOKafkaConsumer) -> None:
        stopped.append(consumer)
        await real_stop(consumer)

    monkeypatch.setattr(AIOKafkaConsumer, "stop", recording_stop)

    report = await prefill_changelog(
        object(), topic="changelog", partitions=1, bootstrap_servers="127.0.0.1:1", timeout_s=5.0
    )

    assert report is None
    assert len(stopped) == 1
