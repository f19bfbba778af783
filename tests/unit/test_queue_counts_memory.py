"""`QueueStore.counts()` and `oldest_pending_at()` (every status call) read the queue without
sorting it or building a temporary table (issue 18 item 4b). Grouped by an expression,
counts() sorted every delivery row of the database on each call, in a sort buffer that grew
with the queue up to the page cache's size; in the daemon those transient buffers (64-512 KiB,
hundreds per 10,000 objects) fragmented glibc's heap and its RSS crept with the objects sent.
Now SQLite counts along the (destination, state) index and the cancelled rows alone are
sorted; the oldest waiting object is looked up one state at a time (`state IN (?, ?)` made
SQLite build a temporary table, ~100 KiB, on every call)."""

from __future__ import annotations

import _sqlite3
import ctypes
import random
import sqlite3
from collections import Counter
from pathlib import Path

from agent.queue import QueueStore

#: the library the sqlite3 module uses (the extension module's handle finds its symbols)
_SQLITE = ctypes.CDLL(_sqlite3.__file__)
_SQLITE.sqlite3_memory_used.restype = ctypes.c_int64
_SQLITE.sqlite3_memory_highwater.restype = ctypes.c_int64
_SQLITE.sqlite3_memory_highwater.argtypes = [ctypes.c_int]

STATES = ("pending", "sending", "sent", "commit_requested", "committed", "failed")


def fill(conn: sqlite3.Connection, rows: int, *, cancelled_every: int = 0,
         seed: int = 18) -> None:
    """`rows` objects with one delivery each to "pacs" or "backup" in a random state, written
    straight into the tables in one transaction (enqueue's fsync per object would take
    minutes); every `cancelled_every`-th failed row is cancelled, as a rejection does."""
    chooser = random.Random(seed)
    conn.execute("BEGIN")
    for n in range(rows):
        queue_id = conn.execute(
            "INSERT INTO objects (sop_instance_uid, sop_class_uid, transfer_syntax_uid, "
            "size_bytes, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (f"1.2.826.0.1.3680043.8.498.{10**9 + n}", "1.2.840.10008.5.1.4.1.1.7",
             "1.2.840.10008.1.2.1", 1000, "0" * 64, 1000.0 + n)).lastrowid
        state = chooser.choice(STATES)
        delivery_id = conn.execute(
            "INSERT INTO deliveries (queue_id, destination, state, next_attempt_at, "
            "updated_at) VALUES (?, ?, ?, 0, 0)",
            (queue_id, chooser.choice(("pacs", "backup")), state)).lastrowid
        if cancelled_every and state == "failed" and n % cancelled_every == 0:
            conn.execute("INSERT INTO cancellations (delivery_id, cancelled_at, state_before) "
                         "VALUES (?, 0, 'pending')", (delivery_id,))
    conn.execute("COMMIT")


def counted_row_by_row(conn: sqlite3.Connection) -> dict[str, Counter[str]]:
    """What counts() must say, from every row: a cancelled row counts as "rejected"."""
    cancelled = {r[0] for r in conn.execute("SELECT delivery_id FROM cancellations")}
    result: dict[str, Counter[str]] = {}
    for delivery_id, destination, state in conn.execute(
            "SELECT delivery_id, destination, state FROM deliveries"):
        result.setdefault(destination, Counter())[
            "rejected" if delivery_id in cancelled else state] += 1
    return result


def test_counts_match_a_count_of_every_row(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs", "backup"]) as store:
        fill(store.conn, 600, cancelled_every=3)
        counts = store.counts()
        expected = counted_row_by_row(store.conn)
    assert expected["pacs"]["rejected"] > 0 and expected["backup"]["rejected"] > 0
    for destination in ("pacs", "backup"):
        assert {k: v for k, v in counts[destination].items() if v} == \
            dict(expected[destination])
        # every state is present, as before
        assert set(STATES) <= set(counts[destination])


def test_counts_without_cancellations_have_no_rejected_key(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs", "backup"]) as store:
        fill(store.conn, 50)
        counts = store.counts()
    assert "rejected" not in counts["pacs"] and "rejected" not in counts["backup"]
    assert sum(counts["pacs"].values()) + sum(counts["backup"].values()) == 50


def test_counts_of_a_big_queue_keep_sqlite_memory_flat(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs", "backup"]) as store:
        fill(store.conn, 6000, cancelled_every=50)
        store.counts()          # the statements are prepared and cached once
        used = _SQLITE.sqlite3_memory_used()
        _SQLITE.sqlite3_memory_highwater(1)     # reset the high-water mark to what is used
        counts = store.counts()
        peak = _SQLITE.sqlite3_memory_highwater(0) - used
    assert sum(sum(c.values()) for c in counts.values()) == 6000
    # before: the whole table sorted, ~270 KB for these 6,000 rows (and up to the page
    # cache's 512 KiB as the queue grew); now a few KiB, whatever the number of rows
    assert peak < 48 * 1024, peak


def sqlite_peak_of(call: object) -> int:
    """Bytes SQLite had allocated at most during `call()` above what it had before."""
    assert callable(call)
    used = _SQLITE.sqlite3_memory_used()
    _SQLITE.sqlite3_memory_highwater(1)     # reset the high-water mark to what is used
    call()
    return int(_SQLITE.sqlite3_memory_highwater(0) - used)


def test_oldest_pending_at_is_the_oldest_pending_or_sending_object(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs", "backup"]) as store:
        assert store.oldest_pending_at("pacs") is None
        fill(store.conn, 300)
        expected = {destination: min(r[0] for r in store.conn.execute(
            "SELECT o.created_at FROM deliveries d JOIN objects o USING (queue_id) "
            "WHERE d.destination=? AND d.state IN ('pending', 'sending')", (destination,)))
            for destination in ("pacs", "backup")}
        assert {d: store.oldest_pending_at(d) for d in ("pacs", "backup")} == expected
        store.conn.execute("UPDATE deliveries SET state='sent' WHERE destination='pacs' "
                           "AND state='pending'")
        only_sending = min(r[0] for r in store.conn.execute(
            "SELECT o.created_at FROM deliveries d JOIN objects o USING (queue_id) "
            "WHERE d.destination='pacs' AND d.state='sending'"))
        assert store.oldest_pending_at("pacs") == only_sending


def test_oldest_pending_at_of_a_big_queue_keeps_sqlite_memory_flat(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs", "backup"]) as store:
        fill(store.conn, 6000)
        store.oldest_pending_at("pacs")     # prepared and cached once
        peak = sqlite_peak_of(lambda: store.oldest_pending_at("pacs"))
    # before: ~100 KB for the temporary table of `state IN (?, ?)`; now ~1.5 KiB
    assert peak < 32 * 1024, peak
