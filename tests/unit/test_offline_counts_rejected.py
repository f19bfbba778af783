"""`status` while the daemon is down reads the queue with `read_counts` (no spool lock): it
must count what the running daemon's `QueueStore.counts()` counts, a cancelled row (a rejected
object's, never sent) as "rejected", not as the "failed" it is stored as."""

from __future__ import annotations

from pathlib import Path

from agent.queue import QueueStore
from agent.queue.store import read_counts


def _add(store: QueueStore, n: int, destination: str, state: str) -> int:
    conn = store.conn
    queue_id = conn.execute(
        "INSERT INTO objects (sop_instance_uid, sop_class_uid, transfer_syntax_uid, "
        "size_bytes, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (f"1.2.826.0.1.3680043.8.498.{n}", "1.2.840.10008.5.1.4.1.1.7",
         "1.2.840.10008.1.2.1", 1000, "0" * 64, 1000.0 + n)).lastrowid
    return int(conn.execute(
        "INSERT INTO deliveries (queue_id, destination, state, next_attempt_at, updated_at) "
        "VALUES (?, ?, ?, 0, 0)", (queue_id, destination, state)).lastrowid)


def test_offline_counts_fold_cancelled_rows_into_rejected_as_the_daemon_does(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with QueueStore(spool, ["pacs"]) as store:
        with store._lock:
            store.conn.execute("BEGIN")
            for n in range(6):
                _add(store, n, "pacs", "sent")
            cancelled = [_add(store, 10 + n, "pacs", "failed") for n in range(3)]
            _add(store, 20, "pacs", "failed")
            for delivery_id in cancelled:
                store.conn.execute("INSERT INTO cancellations (delivery_id, cancelled_at, "
                                   "state_before) VALUES (?, 0, 'pending')", (delivery_id,))
            store.conn.execute("COMMIT")
        online = store.counts()
    offline = read_counts(spool / "queue.db")
    assert online["pacs"]["rejected"] == 3 and online["pacs"]["failed"] == 1
    assert offline == online
