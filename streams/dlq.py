"""Turning a rejected input message into a `match.dlq` record."""

from __future__ import annotations

import base64

from models.codec import utc_now_iso
from models.messages import DlqRecord

__all__ = ["dlq_record"]

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
