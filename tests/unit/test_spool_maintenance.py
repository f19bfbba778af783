"""`spool backup` and `spool verify` (issue 17, item 3): an online, consistent copy of the queue
database and its files, and a read-only check that every row has its file and every file its
row, with SHA-256 where the row records one."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import QueueError
from agent.queue import QueueStore, maintenance, schema
from agent.queue.maintenance import backup_spool, verify_spool
from agent.records import CommitmentResult, DeliveryState

S = DeliveryState
SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"
FIXTURE = Path(__file__).resolve().parent.parent / "data" / "spool-v0"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def put(store: QueueStore, n: int, first: int = 0) -> list[int]:
    return [store.enqueue(f"object {i}".encode() * 10, sop_instance_uid=f"2.25.{5000 + i}",
                          sop_class_uid=SC, transfer_syntax_uid=EXPLICIT).queue_id
            for i in range(first, first + n)]


def commit_all(store: QueueStore, txn: str) -> None:
    batch = store.claim_batch("pacs")
    for d in batch:
        store.mark_sent(d.delivery_id)
    store.begin_commitment("pacs", [d.delivery_id for d in batch], txn, store._now() + 60)
    store.apply_commitment_report(CommitmentResult(txn, committed=tuple(
        (d.sop_class_uid, d.sop_instance_uid) for d in batch), failed=()),
        retry_commit_at=store._now())


@pytest.fixture
def running(tmp_path: Path) -> Iterator[QueueStore]:
    """A spool as the running daemon holds it: locked, open, recent commits still in the WAL."""
    store = QueueStore(tmp_path / "spool", ["pacs"], clock=FakeClock())
    store.open()
    try:
        yield store
    finally:
        store.close()


def rows(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(schema.ro_uri(db, immutable=db.is_relative_to(FIXTURE)), uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def copy_fixture(root: Path) -> Path:
    root.mkdir()
    shutil.copy2(FIXTURE / "queue.db", root / "queue.db")
    shutil.copytree(FIXTURE / "objects", root / "objects")
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- verify ----------------------------------------------------------------------------------
def test_verify_a_healthy_spool_while_the_daemon_holds_it(running: QueueStore) -> None:
    put(running, 3)
    commit_all(running, "2.25.61")
    put(running, 2, first=3)
    running.purge(retention_s=0, final_states={"pacs": S.COMMITTED})   # 3 rows, no files
    report = verify_spool(running.spool.root)
    assert report.problems == [], report.problems
    assert report.ok
    assert (report.objects, report.purged, report.files, report.hashes_checked) == (2, 3, 2, 2)
    assert report.schema_version == schema.SCHEMA_VERSION


def test_verify_reads_a_spool_of_the_released_version_without_writing(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path / "spool")
    before = (root / "queue.db").read_bytes()
    report = verify_spool(root)
    assert report.ok, report.problems
    assert (report.schema_version, report.objects, report.purged, report.hashes_checked) == \
        (0, 8, 1, 8)
    assert (root / "queue.db").read_bytes() == before          # not migrated, not touched


def test_verify_names_every_problem_by_queue_id_only(running: QueueStore) -> None:
    ids = put(running, 4)
    objects = running.spool.objects_dir
    running.object_path(ids[0]).unlink()                                   # row without file
    damaged = running.object_path(ids[1])
    damaged.write_bytes(bytes(len(damaged.read_bytes())))                  # same size, zeros
    running.object_path(ids[2]).write_bytes(b"short")                      # cut
    (objects / "0000000099.dcm").write_bytes(b"stray")                     # file without row
    (objects / "DOE^JOHN 19700101.dcm").write_bytes(b"not ours")           # a name not ours
    report = verify_spool(running.spool.root)
    assert not report.ok
    assert report.problems == [
        f"queue item {ids[0]}: file objects/{ids[0]:010d}.dcm missing (data loss)",
        f"queue item {ids[1]}: SHA-256 of objects/{ids[1]:010d}.dcm differs from the record",
        f"queue item {ids[2]}: objects/{ids[2]:010d}.dcm has 5 bytes, the record says 80",
        "queue item 99: objects/0000000099.dcm has no queue record",
        "objects/: 1 file not named <queue id>.dcm (names logged at DEBUG)",
    ]
    assert not any("DOE" in line for line in report.problems)
    assert report.hashes_checked == 2               # the one intact, the one damaged


def test_verify_does_not_blame_what_the_daemon_did_meanwhile(
        running: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are read, then the folder listed: an object queued in between has a file and no
    row in the snapshot, one purged in between a row and no file. Neither is a problem."""
    put(running, 1)
    commit_all(running, "2.25.64")
    object_files = maintenance._object_files

    def and_the_daemon_goes_on(spool: Any) -> Any:
        put(running, 1, first=1)
        running.purge(retention_s=0, final_states={"pacs": S.COMMITTED})
        return object_files(spool)

    monkeypatch.setattr(maintenance, "_object_files", and_the_daemon_goes_on)
    report = verify_spool(running.spool.root)
    assert report.problems == []
    assert (report.objects, report.files) == (1, 1)


def test_verify_refuses_a_newer_schema(running: QueueStore) -> None:
    running.conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(QueueError, match="never downgrade"):
        verify_spool(running.spool.root)


def test_verify_without_a_database_says_so(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="no queue database"):
        verify_spool(tmp_path)


# -- backup ----------------------------------------------------------------------------------
def test_backup_while_the_daemon_runs_is_complete_private_and_usable(running: QueueStore,
                                                                     tmp_path: Path) -> None:
    put(running, 3)
    commit_all(running, "2.25.62")
    put(running, 2, first=3)
    running.claim_batch("pacs", limit=1)                 # one in sending at the moment
    dest = tmp_path / "backup"
    report = backup_spool(running.spool.root, dest)
    assert report.ok, report.problems
    assert (report.objects, report.files_copied) == (5, 5)
    assert report.bytes_copied == 5 * 80
    live_rows = rows(running.spool.db_path, "SELECT * FROM deliveries ORDER BY delivery_id")
    assert rows(dest / "queue.db", "SELECT * FROM deliveries ORDER BY delivery_id") == live_rows
    for path in (running.spool.objects_dir).iterdir():
        assert (dest / "objects" / path.name).read_bytes() == path.read_bytes()
    assert mode(dest) == mode(dest / "objects") == 0o700
    assert {mode(p) for p in dest.rglob("*") if p.is_file()} == {0o600}
    assert not (dest / "queue.db-wal").exists()          # one self-contained file
    assert verify_spool(dest).ok
    # the backup is a spool the agent can open (a restore is copying it back)
    with QueueStore(dest, ["pacs"]) as restored:
        assert restored.counts()["pacs"] == running.counts()["pacs"] | {
            "sending": 0, "pending": 2}                  # recovery: sending back to pending


def test_backup_copies_only_what_its_database_copy_references(
        running: QueueStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the database copy and the file copy the daemon goes on: an object queued then
    is not in the backup at all; one purged then is marked purged in the copy."""
    [first] = put(running, 1)
    commit_all(running, "2.25.63")
    put(running, 1, first=1)
    copy_database = maintenance._copy_database

    def and_the_daemon_goes_on(*args: Any) -> int:
        version = copy_database(*args)
        put(running, 1, first=2)
        running.purge(retention_s=0, final_states={"pacs": S.COMMITTED})
        return version

    monkeypatch.setattr(maintenance, "_copy_database", and_the_daemon_goes_on)
    dest = tmp_path / "backup"
    report = backup_spool(running.spool.root, dest)
    assert report.ok, report.problems
    assert (report.objects, report.files_copied, report.purged_meanwhile) == (1, 1, 1)
    assert sorted(p.name for p in (dest / "objects").iterdir()) == ["0000000002.dcm"]
    copied = rows(dest / "queue.db", "SELECT queue_id, purged_at FROM objects")
    assert [r["queue_id"] for r in copied] == [1, 2]
    assert copied[0]["purged_at"] is not None and first == 1
    assert verify_spool(dest).ok


def test_backup_reports_a_file_missing_in_the_spool(running: QueueStore, tmp_path: Path) -> None:
    ids = put(running, 2)
    running.object_path(ids[1]).unlink()
    report = backup_spool(running.spool.root, tmp_path / "backup")
    assert report.problems == [
        f"queue item {ids[1]}: file objects/{ids[1]:010d}.dcm missing in the spool (data loss)"]
    assert report.files_copied == 1 and not report.ok


def test_backup_of_the_released_version_leaves_the_source_as_it_was(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path / "spool")
    before = (root / "queue.db").read_bytes()
    report = backup_spool(root, tmp_path / "backup")
    assert report.ok and (report.schema_version, report.files_copied) == (0, 8)
    assert (root / "queue.db").read_bytes() == before
    digests = {r["queue_id"]: r["sha256"] for r in rows(
        tmp_path / "backup" / "queue.db", "SELECT queue_id, sha256 FROM objects "
        "WHERE purged_at IS NULL")}
    for queue_id, digest in digests.items():
        payload = (tmp_path / "backup" / "objects" / f"{queue_id:010d}.dcm").read_bytes()
        assert hashlib.sha256(payload).hexdigest() == digest


@pytest.mark.parametrize("where", ["spool", "spool/objects/b", "spool/../spool/x"])
def test_backup_into_the_spool_is_refused(running: QueueStore, tmp_path: Path,
                                          where: str) -> None:
    before = sorted(p.name for p in running.spool.root.rglob("*"))
    with pytest.raises(QueueError, match="inside the spool"):
        backup_spool(running.spool.root, tmp_path / where)
    assert sorted(p.name for p in running.spool.root.rglob("*")) == before


def test_backup_into_a_folder_that_is_not_empty_is_refused(running: QueueStore,
                                                           tmp_path: Path) -> None:
    dest = tmp_path / "old-backup"
    dest.mkdir()
    (dest / "queue.db").write_bytes(b"last week's")
    with pytest.raises(QueueError, match="not empty"):
        backup_spool(running.spool.root, dest)
    assert [p.name for p in dest.iterdir()] == ["queue.db"]
    assert (dest / "queue.db").read_bytes() == b"last week's"


def test_backup_into_an_empty_folder_is_fine(running: QueueStore, tmp_path: Path) -> None:
    put(running, 1)
    dest = tmp_path / "empty"
    dest.mkdir(mode=0o755)
    assert backup_spool(running.spool.root, dest).files_copied == 1
    assert mode(dest) == 0o700
