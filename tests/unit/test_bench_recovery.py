"""The recovery bench's changelog: records a worker would have written, keyed as Faust keys them."""

from __future__ import annotations

from faust.serializers import codecs

from matching.arrival import find_partners
from matching.engine import MatchEngine
from models.state import PoolState, RequestState, decode_state, state_key
from streams.bench_recovery import changelog_records
from web.live import partition_of


def _records(waiting: int, pools: int) -> list[tuple[int, bytes, bytes]]:
    return list(
        changelog_records(waiting=waiting, pools=pools, partitions=8, embedding_dims=16, now=1e6)
    )


def test_keys_decode_as_faust_decodes_a_str_keyed_tables_changelog() -> None:
    for partition, key, value in _records(waiting=50, pools=3):
        record = decode_state(value)
        decoded = codecs.loads("json", key)
        if isinstance(record, PoolState):
            assert decoded == state_key("p", record.pool_id)
            pool_id = record.pool_id
        else:
            assert isinstance(record, RequestState)
            assert decoded == state_key("r", record.pool_id, record.request_id)
            pool_id = record.pool_id
        assert partition == record.partition == partition_of(pool_id, 8)


def test_the_engine_loads_every_request_as_waiting_and_none_would_match() -> None:
    engine = MatchEngine()
    engine.load(decode_state(value) for _, _, value in _records(waiting=600, pools=2))

    assert sum(len(book.waiting) for book in engine.pools.values()) == 600
    for book in engine.pools.values():
        for request in list(book.waiting.values()):
            assert not find_partners(book, request, now=1e6)
