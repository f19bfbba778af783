"""The queue's SQLite page cache is bounded small (issue 18 item 4b): with SQLite's default
(2,000 KiB per connection) the daemon's idle RSS grew ~0.8 MB per 1,000 objects over a
`bench soak --quick` run while the cache filled up with the growing database."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import pytest

from agent.queue import QueueStore
from agent.queue.store import PAGE_CACHE_KIB, connect

_NAME = ctypes.util.find_library("sqlite3")


def sqlite_heap_bytes() -> int:
    """Bytes SQLite has allocated in this process (every connection), from the library the
    sqlite3 module uses."""
    assert _NAME is not None
    library = ctypes.CDLL(_NAME)
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return int(library.sqlite3_memory_used())


def fill(db_path: Path, megabytes: float) -> None:
    """A table of `megabytes` next to the queue's, written by a connection of its own."""
    conn = connect(db_path)
    try:
        conn.execute("CREATE TABLE bulk (n INTEGER PRIMARY KEY, pad TEXT)")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO bulk (pad) VALUES (?)",
                         (("x" * 200,) for _ in range(int(megabytes * 1e6 / 200))))
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_connect_sets_the_bounded_page_cache(tmp_path: Path) -> None:
    conn = connect(tmp_path / "queue.db")
    try:
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -PAGE_CACHE_KIB
    finally:
        conn.close()


@pytest.mark.skipif(_NAME is None, reason="no libsqlite3 to ask for its memory use")
def test_reading_a_big_queue_database_keeps_sqlite_memory_small(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs"]) as store:
        fill(store.spool.db_path, 4.0)
        before = sqlite_heap_bytes()
        # every page of the 4 MB table goes through the queue's own connection
        assert store.conn.execute("SELECT SUM(LENGTH(pad)) FROM bulk").fetchone()[0] > 3e6
        grown = sqlite_heap_bytes() - before
    # the cache's pages plus SQLite's per-page headers (~1.2 times the cache size), and far
    # from the ~2 MB of SQLite's default
    assert grown < min(PAGE_CACHE_KIB * 1024 * 1.5 + 100_000, 1_000_000), grown
