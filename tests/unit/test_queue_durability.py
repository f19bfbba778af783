"""Which queue commits are flushed to disk (synchronous=FULL) and which may be undone by a
power cut (synchronous=NORMAL: written to the WAL, flushed by the next FULL commit or
checkpoint). Issue 18: the sending path's own commits (claim a batch, record what the archive
stored, put rows back) fsynced the WAL on the disk the archive also writes to; a power cut that
undoes one of them only makes a row fall back to an earlier state, and the object goes out
again under the same UID (RELIABILITY.md promise 2). Every commit that a promise rests on
(acknowledged capture, a commitment report before 0x0000, a purge before its file is
removed, an operator's decision) stays FULL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.errors import QueueError
from agent.queue import NewObject, QueueStore
from agent.records import CommitmentResult, DeliveryState

SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"
FULL, NORMAL = "FULL", "NORMAL"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    queue = QueueStore(tmp_path / "spool", ["pacs"], min_free_bytes=0)
    queue.open()
    yield queue
    queue.close()


class CommitLevels:
    """The synchronous level in force at each COMMIT, read from the statements the
    connection ran (the connection starts at FULL: `connect` checks it)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.level = FULL
        self.commits: list[str] = []
        conn.set_trace_callback(self._seen)

    def _seen(self, sql: str) -> None:
        text = " ".join(sql.split()).upper()
        if text.startswith("PRAGMA SYNCHRONOUS="):
            self.level = text.split("=", 1)[1].strip()
        elif text == "COMMIT":
            self.commits.append(self.level)

    def during(self, action: Callable[[], object]) -> list[str]:
        start = len(self.commits)
        action()
        return self.commits[start:]


def put(store: QueueStore, count: int) -> list[int]:
    return [store.enqueue(f"object {i}".encode(), sop_instance_uid=f"2.25.{500 + i}",
                          sop_class_uid=SC, transfer_syntax_uid=EXPLICIT).queue_id
            for i in range(count)]


def level(store: QueueStore) -> int:
    return int(store.conn.execute("PRAGMA synchronous").fetchone()[0])


def test_the_sending_paths_own_commits_are_not_flushed(store: QueueStore) -> None:
    put(store, 4)
    levels = CommitLevels(store.conn)
    batch: list = []
    assert levels.during(lambda: batch.extend(store.claim_batch("pacs", limit=4))) == [NORMAL]
    assert levels.during(lambda: store.mark_sent_many(
        [(d.delivery_id, "") for d in batch[:2]])) == [NORMAL]
    assert levels.during(lambda: store.requeue([d.delivery_id for d in batch[2:]])) == [NORMAL]
    assert level(store) == 2                     # the connection is back at FULL
    states = [d.state for d in store.deliveries(destination="pacs")]
    assert states == [DeliveryState.SENT] * 2 + [DeliveryState.PENDING] * 2


def test_every_commit_a_promise_rests_on_is_flushed(store: QueueStore) -> None:
    levels = CommitLevels(store.conn)
    # acknowledged capture, one object and a group
    assert levels.during(lambda: put(store, 3)) == [FULL] * 3
    assert levels.during(lambda: store.enqueue_many(
        [NewObject(b"g", "2.25.900", SC, EXPLICIT)])) == [FULL]
    [d0, d1, d2, d3] = store.claim_batch("pacs", limit=4)
    store.mark_sent_many([(d0.delivery_id, ""), (d1.delivery_id, "")])
    # the transaction before its N-ACTION, the report before its 0x0000
    assert levels.during(lambda: store.begin_commitment(
        "pacs", [d0.delivery_id], "2.25.77", 9e9)) == [FULL]
    report = CommitmentResult("2.25.77", committed=((SC, d0.sop_instance_uid),), failed=())
    assert levels.during(lambda: store.apply_commitment_report(
        report, retry_commit_at=0.0)) == [FULL]
    # a refusal for good and an operator's retry
    assert levels.during(lambda: store.mark_failed(d2.delivery_id, "refused")) == [FULL]
    assert levels.during(lambda: store.retry([d2.queue_id])) == [FULL]
    assert levels.during(lambda: store.mark_retry([d3.delivery_id], "link", 0.0)) == [FULL]
    # a purge: the row before its file goes
    assert levels.during(lambda: store.purge(
        retention_s=0, final_states={"pacs": DeliveryState.COMMITTED})) == [FULL]
    assert not store.object_path(d0.queue_id).exists()
    assert level(store) == 2


def test_a_failed_unflushed_transaction_leaves_the_connection_at_full(
        store: QueueStore) -> None:
    put(store, 1)
    [delivery] = store.claim_batch("pacs")
    store.conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON deliveries "
                       "BEGIN SELECT RAISE(ABORT, 'refused by test'); END")
    with pytest.raises((QueueError, sqlite3.Error), match="refused by test"):
        store.mark_sent_many([(delivery.delivery_id, "")])
    assert level(store) == 2
    assert not store.conn.in_transaction
    store.conn.execute("DROP TRIGGER refuse")
    levels = CommitLevels(store.conn)
    assert levels.during(lambda: store.mark_failed(delivery.delivery_id, "x")) == [FULL]
