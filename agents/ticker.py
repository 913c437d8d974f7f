"""The clock: a tick on every input partition so expiry runs without new input.

Only the leader ticks, and ticks travel through a topic, so the matcher handles
them inside stream iteration like any other message.
"""

from __future__ import annotations

from streams.app import Matchstream

__all__ = ["register"]


def register(stream: Matchstream) -> None:
    """Add the leader timer to the app."""
    partitions = stream.settings.topic_partitions

    @stream.app.timer(stream.settings.tick_interval_s, on_leader=True, name="ticker")
    async def tick() -> None:
        for partition in range(partitions):
            await stream.tick.send(value=b"tick", partition=partition)
