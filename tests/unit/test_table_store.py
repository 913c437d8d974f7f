"""The state table's store writes without RocksDB's log, and keeps what a close writes.

A copy of a database's directory taken while it is open is what a crash would leave.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faust.stores.rocksdb import RocksDBOptions

from streams.app import create_app
from streams.settings import Settings
from streams.table_store import UnloggedRocksDBOptions, UnloggedRocksDBStore


def _crash_image(db: Any, path: Path, image: Path) -> dict[bytes, bytes]:
    """What reopening `path` would find had the process died now."""
    shutil.copytree(path, image)
    reopened: Any = RocksDBOptions().open(image)
    try:
        return dict(reopened.items())
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("options", "kept_by_a_crash"),
    [(UnloggedRocksDBOptions(), False), (RocksDBOptions(), True)],
    ids=["unlogged", "faust-default"],
)
def test_a_crash_keeps_unflushed_writes_only_with_the_log(
    tmp_path: Path, options: RocksDBOptions, kept_by_a_crash: bool
) -> None:
    path = tmp_path / "db"
    db: Any = options.open(path)
    try:
        db.put(b"r/lobby/1", b"waiting")
        found = _crash_image(db, path, tmp_path / "image")
    finally:
        db.close()
    assert (found == {b"r/lobby/1": b"waiting"}) is kept_by_a_crash


def test_a_closed_database_keeps_its_writes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db: Any = UnloggedRocksDBOptions().open(path)
    db.put(b"r/lobby/1", b"waiting")
    db.close()
    reopened: Any = RocksDBOptions().open(path)
    try:
        assert reopened[b"r/lobby/1"] == b"waiting"
    finally:
        reopened.close()


@pytest.fixture
def state_store(tmp_path: Path) -> Iterator[Any]:
    stream = create_app(Settings(data_dir=tmp_path / "worker"))
    yield stream.state.data
    # Building the app made Faust's consumer, whose thread has its own event loop.
    consumer: Any = stream.app.consumer
    consumer._thread.thread_loop.close()


def test_the_worker_table_and_its_prefill_open_databases_without_the_log(
    state_store: Any, tmp_path: Path
) -> None:
    assert isinstance(state_store, UnloggedRocksDBStore)
    faust_opens = state_store._open_for_partition(3)
    # The changelog prefill opens a partition's database this way.
    prefill_opens = state_store.rocksdb_options.open(state_store.partition_path(4))
    for partition, db in ((3, faust_opens), (4, prefill_opens)):
        try:
            db.put(b"r/lobby/1", b"waiting")
            image = tmp_path / f"image-{partition}"
            assert _crash_image(db, state_store.partition_path(partition), image) == {}
        finally:
            db.close()
