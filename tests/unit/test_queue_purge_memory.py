"""`QueueStore.purge()` (the daemon's purge pass, every minute) lets SQLite decide which objects
are due, instead of fetching every unpurged object's delivery rows and judging them in Python
(issue 18 item 4b). With the default retention (a day) those rows were a day's worth of
objects, ~300 bytes of short-lived Python objects each, on every pass: pymalloc's arenas grew
to each pass's peak and objects allocated meanwhile by other threads kept them, so the
daemon's RSS crept with the queue while its live Python heap stayed flat."""

from __future__ import annotations

import random
import sqlite3
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.queue import QueueStore
from agent.queue import store as store_module
from agent.records import DeliveryState

S = DeliveryState
NOW = 100_000.0
RETENTION_S = 1000.0
FINAL = {"pacs": S.COMMITTED, "backup": S.SENT}


def fill(conn: sqlite3.Connection, objects: int, *, seed: int, due_share: float) -> None:
    """`objects` objects with one or two delivery rows (pacs, backup, or "old", a destination
    that is no longer configured) in random states and times around the retention's edge, a
    few cancelled, a few with no row at all; about `due_share` of them due. Written straight
    into the tables in one transaction (enqueue's fsync per object would take minutes)."""
    chooser = random.Random(seed)
    states = [s.value for s in S]
    conn.execute("BEGIN")
    for n in range(objects):
        queue_id = conn.execute(
            "INSERT INTO objects (sop_instance_uid, sop_class_uid, transfer_syntax_uid, "
            "size_bytes, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (f"2.25.{10**9 + n}", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1", 1000,
             "0" * 64, 0.0)).lastrowid
        due = chooser.random() < due_share
        if chooser.random() < 0.02:
            continue                                    # no delivery row
        for destination in chooser.sample(["pacs", "backup", "old"],
                                          chooser.choice([1, 2, 2])):
            final = FINAL.get(destination, S.COMMITTED).value
            state = final if due or chooser.random() < 0.5 else chooser.choice(states)
            done = NOW - RETENTION_S - chooser.choice([1, 0, -1, -500]) if not due \
                else NOW - RETENTION_S - chooser.choice([0, 1, 500])
            stored, committed = chooser.choice([(done, None), (done - 5, done), (None, None),
                                                (None, done)])
            delivery_id = conn.execute(
                "INSERT INTO deliveries (queue_id, destination, state, next_attempt_at, "
                "updated_at, stored_at, committed_at) VALUES (?, ?, ?, 0, 0, ?, ?)",
                (queue_id, destination, state, stored, committed)).lastrowid
            if chooser.random() < 0.05:
                conn.execute("INSERT INTO cancellations (delivery_id, cancelled_at, "
                             "state_before) VALUES (?, ?, 'pending')",
                             (delivery_id, done if chooser.random() < 0.5 else NOW))
    conn.execute("COMMIT")


def due_row_by_row(conn: sqlite3.Connection, final_states: Mapping[str, S]) -> set[int]:
    """What purge must delete, judged from every row as the Python pass did: an object with
    at least one row, every one of them cancelled `RETENTION_S` ago, or in its destination's
    final state with its stored/committed time `RETENTION_S` ago."""
    ready: dict[int, bool] = {}
    for queue_id, destination, state, cancelled_at, done_at in conn.execute(
            "SELECT o.queue_id, d.destination, d.state, c.cancelled_at, "
            "COALESCE(d.committed_at, d.stored_at) FROM objects o JOIN deliveries d "
            "USING (queue_id) LEFT JOIN cancellations c USING (delivery_id) "
            "WHERE o.purged_at IS NULL"):
        final = final_states.get(destination)
        if cancelled_at is not None:
            ok = cancelled_at + RETENTION_S <= NOW
        else:
            ok = final is not None and state == final and done_at is not None \
                and done_at + RETENTION_S <= NOW
        ready[queue_id] = ready.get(queue_id, True) and ok
    return {queue_id for queue_id, ok in ready.items() if ok}


def purged_ids(conn: sqlite3.Connection) -> set[int]:
    return {r[0] for r in conn.execute("SELECT queue_id FROM objects WHERE purged_at IS NOT NULL")}


@pytest.mark.parametrize("final_states", [FINAL, {"pacs": S.COMMITTED}, {}])
def test_purge_deletes_what_a_row_by_row_judgement_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, final_states: dict[str, S]) -> None:
    # small batches: the due objects span several of them
    monkeypatch.setattr(store_module, "PURGE_BATCH", 16)
    with QueueStore(tmp_path / "spool", ["pacs", "backup"], clock=lambda: NOW) as store:
        fill(store.conn, 600, seed=18, due_share=0.3)
        expected = due_row_by_row(store.conn, final_states)
        files = [store.spool.object_path(q) for q in (min(expected), max(expected))] \
            if expected else []
        for path in files:
            path.write_bytes(b"spooled")
        assert store.purge(retention_s=RETENTION_S, final_states=final_states) == len(expected)
        assert purged_ids(store.conn) == expected
        assert not any(path.exists() for path in files)
        # a second pass finds nothing more
        assert store.purge(retention_s=RETENTION_S, final_states=final_states) == 0
    if final_states == FINAL:
        assert len(expected) > 3 * 16       # the case was not vacuous
    if not final_states:
        assert expected                     # cancelled ones are due wherever they were


def test_purge_of_a_big_queue_within_retention_builds_no_python_object_per_row(
        tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs", "backup"], clock=lambda: NOW) as store:
        fill(store.conn, 6000, seed=4, due_share=0.0)
        due = due_row_by_row(store.conn, FINAL)
        # only objects within retention are left
        store.conn.executemany("UPDATE objects SET purged_at=0 WHERE queue_id=?",
                               [(q,) for q in due])
        store.purge(retention_s=RETENTION_S, final_states=FINAL)  # the statement is cached
        tracemalloc.start()
        try:
            purged = store.purge(retention_s=RETENTION_S, final_states=FINAL)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert purged == 0
    # before: every row of the 6,000 objects fetched and judged, ~3 MB at the peak (and
    # ~15 MB for 50,000 objects of one row each, a day of a busy station); now ~2 KiB
    assert peak < 32 * 1024, peak
