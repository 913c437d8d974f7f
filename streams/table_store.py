"""The state table's RocksDB store, without RocksDB's write-ahead log.

RocksDB logs every write before applying it, so that a crashed process finds its
last writes again. The worker never asks that of its local copy: after a crash it
discards the copy and rebuilds it from the changelog (`streams.worker`), the durable
record of every write. After a clean stop the store is closed, and closing writes
what the log would have held. In the worker a put took 9-13 us without the log
against 12-15 us with it (docs/performance.md, "State writes: the store").

Without the log a store that was not closed keeps only what RocksDB had flushed to
its files, in the order it was written: the persisted offset is written after the
value it covers, so the copy is still some earlier state with the offset that goes
with it, and Faust's recovery reads the changelog from there.

The store is Faust's own otherwise. Tables select it with the store URL
`rocksdb-unlogged://` (an entry point in `faust.stores`, see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rocksdict
from faust.stores import rocksdb

__all__ = ["UnloggedRocksDBOptions", "UnloggedRocksDBStore"]


class UnloggedRocksDBOptions(rocksdb.RocksDBOptions):
    """Faust's options for opening a partition's database, which then writes without its log."""

    def open(self, path: Path, *, read_only: bool = False) -> rocksdb.DB:
        db = super().open(path, read_only=read_only)
        without_log = rocksdict.WriteOptions()
        # A property at run time; rocksdict's stubs declare it a method.
        without_log.disable_wal = True  # type: ignore[method-assign, assignment]
        db.set_write_options(without_log)
        return db


class UnloggedRocksDBStore(rocksdb.Store):
    """Faust's RocksDB store, its partitions' databases opened without their logs.

    The changelog prefill opens them with the same options (`rocksdb_options`).

    Example:
        >>> app.Table("state", store="rocksdb-unlogged://")  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rocksdb_options = UnloggedRocksDBOptions(
            **(self.options or {}), use_rocksdict=self.use_rocksdict
        )
