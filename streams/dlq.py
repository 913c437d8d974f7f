"""Turning a rejected input message into a `match.dlq` record."""

from __future__ import annotations

import base64
import logging

from faust.types import EventT, TopicT

from models.codec import dumps, utc_now_iso
from models.messages import DlqRecord

__all__ = ["dlq_record", "reject"]

log = logging.getLogger(__name__)

_RAW_TEXT_LIMIT = 64_000
"""Longer payloads are cut in the DLQ record: the reason matters, not 10 MB of it."""


def dlq_record(
    *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, error: str
) -> DlqRecord:
    """Describe a rejected message; the raw value is kept as text or base64."""
    raw = value or b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = "base64:" + base64.b64encode(raw[:_RAW_TEXT_LIMIT]).decode("ascii")
    return DlqRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key.decode("utf-8", errors="replace"),
        error=error,
        raw=text[:_RAW_TEXT_LIMIT],
        at=utc_now_iso(),
    )


async def reject(dlq: TopicT, event: EventT, error: str) -> None:
    """Send the message of `event` to the `dlq` topic with `error`, keyed by its source topic."""
    message = event.message
    record = dlq_record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=event.value,
        error=error,
    )
    log.warning(
        "input rejected topic=%s partition=%d offset=%d error=%r",
        message.topic,
        message.partition,
        message.offset,
        error,
    )
    await dlq.send(key=message.topic.encode(), value=dumps(record))
