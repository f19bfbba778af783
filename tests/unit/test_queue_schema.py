"""Schema versions of the queue database: a spool of the released version upgrades with nothing
lost, a newer database is refused untouched, a failed step changes nothing (issue 17, item 3)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.errors import QueueError
from agent.queue import QueueStore, schema
from agent.queue.store import connect, read_counts
from agent.records import CommitmentResult, DeliveryState

S = DeliveryState
FIXTURE = Path(__file__).resolve().parent.parent / "data" / "spool-v0"
DESTINATIONS = ["pacs", "backup"]
OPEN_TXN = "2.25.1790000000000905"        # open in the fixture, objects 5 and 6 at pacs
T0 = 1_790_000_000.0


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def copy_fixture(root: Path) -> Path:
    """The fixture as a spool folder of its own (the test never writes to tests/data)."""
    root.mkdir()
    shutil.copy2(FIXTURE / "queue.db", root / "queue.db")
    shutil.copytree(FIXTURE / "objects", root / "objects")
    return root


@pytest.fixture
def v0_spool(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path / "spool")


def select(db: Path, sql: str) -> list[dict[str, Any]]:
    # the committed fixture is read as immutable: a plain read-only open of a WAL database
    # leaves -wal and -shm files next to it
    conn = sqlite3.connect(schema.ro_uri(db, immutable=db.is_relative_to(FIXTURE)), uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def version_of(db: Path) -> int:
    return int(select(db, "PRAGMA user_version")[0]["user_version"])


def columns_of(db: Path, table: str) -> set[str]:
    return {r["name"] for r in select(db, f"PRAGMA table_info({table})")}


def snapshot(db: Path) -> dict[str, list[dict[str, Any]]]:
    return {table: select(db, f"SELECT * FROM {table} ORDER BY 1, 2")   # noqa: S608
            for table in ("objects", "deliveries", "transactions", "transaction_items")}


def test_the_fixture_is_the_released_schema() -> None:
    """Guards the fixture itself: regenerated with today's code it would prove nothing."""
    db = FIXTURE / "queue.db"
    assert version_of(db) == 0
    assert "unknown_outcomes" not in columns_of(db, "deliveries")
    states = Counter(r["state"] for r in select(db, "SELECT state FROM deliveries"))
    assert set(states) == {s.value for s in S}                  # every state is there
    transactions = select(db, "SELECT transaction_uid, state FROM transactions")
    assert {"transaction_uid": OPEN_TXN, "state": "open"} in transactions


def test_migration_keeps_every_row_and_the_open_transaction(v0_spool: Path) -> None:
    db = v0_spool / "queue.db"
    before = snapshot(db)
    conn = connect(db)
    try:
        assert schema.migrate(conn, db) == (0, schema.SCHEMA_VERSION)
        assert schema.migrate(conn, db) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    finally:
        conn.close()
    after = snapshot(db)
    assert version_of(db) == schema.SCHEMA_VERSION
    assert [r.pop("unknown_outcomes") for r in after["deliveries"]] == \
        [0] * len(before["deliveries"])
    assert after == before                      # every value of every row, as it was
    assert {r["transaction_uid"]: r["state"] for r in after["transactions"]}[OPEN_TXN] == "open"


def test_no_column_a_reader_of_the_released_schema_uses_is_lost() -> None:
    """`status` offline, `queue list` and bench read these columns; a step may only add."""
    expected = schema.expected_columns()
    for table in ("objects", "deliveries", "transactions", "transaction_items"):
        assert columns_of(FIXTURE / "queue.db", table) <= expected[table], table


def test_readers_work_before_and_after_the_upgrade(v0_spool: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = v0_spool / "queue.db"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nae_title = "MOD"\nspool_dir = "{v0_spool}"\n'
                      '[device]\ndriver = "simulated"\n'
                      '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
                      'called_ae = "PACS"\n')

    def queue_list() -> list[dict[str, Any]]:
        capsys.readouterr()
        assert cli.main(["--config", str(config), "queue", "list", "--json"]) == 0
        return list(json.loads(capsys.readouterr().out)["items"])

    counts, items = read_counts(db), queue_list()
    assert counts["pacs"]["commit_requested"] == 2 and len(items) == 18
    conn = connect(db)
    try:
        schema.migrate(conn, db)
    finally:
        conn.close()
    assert read_counts(db) == counts
    assert queue_list() == items


class Archive:
    """A loyal archive: holds what it was sent and commits it when asked."""

    def __init__(self, held: set[tuple[str, str]]) -> None:
        self.held = set(held)                       # (destination, SOP Instance UID)
        self.sends: Counter[tuple[int, str]] = Counter()

    def store(self, store: QueueStore, destination: str) -> int:
        batch = store.claim_batch(destination)
        for d in batch:
            payload = store.object_path(d.queue_id).read_bytes()
            assert hashlib.sha256(payload).hexdigest() == store.get_object(d.queue_id).sha256
            self.held.add((destination, d.sop_instance_uid))
            self.sends[(d.queue_id, destination)] += 1
            store.mark_sent(d.delivery_id)
        return len(batch)

    def commit(self, store: QueueStore, destination: str, txn: str, now: float) -> int:
        sent = store.sent_awaiting_commitment(destination)
        if not sent:
            return 0
        store.begin_commitment(destination, [d.delivery_id for d in sent], txn, now + 60)
        report = CommitmentResult(txn, committed=tuple(
            (d.sop_class_uid, d.sop_instance_uid) for d in sent
            if (destination, d.sop_instance_uid) in self.held), failed=())
        store.apply_commitment_report(report, retry_commit_at=now)
        return len(sent)


def test_an_upgraded_spool_gets_every_object_committed_exactly_once(v0_spool: Path) -> None:
    db = v0_spool / "queue.db"
    fixture_rows = {(r["queue_id"], r["destination"]): r for r in snapshot(db)["deliveries"]}
    clock = FakeClock(T0 + 10_000)
    store = QueueStore(v0_spool, DESTINATIONS, clock=clock)
    store.open()                                        # migrates, then recovers
    try:
        assert version_of(db) == schema.SCHEMA_VERSION
        assert not list(store.spool.quarantine_dir.iterdir())    # no file lost its row
        pacs = {d.queue_id: d.state for d in store.deliveries(destination="pacs")}
        assert pacs == {1: S.COMMITTED, 2: S.PENDING, 3: S.PENDING,    # 3 was sending
                        4: S.SENT, 5: S.SENT, 6: S.SENT,               # asked for again
                        7: S.COMMITTED, 8: S.FAILED, 9: S.PENDING}
        backup = {d.queue_id: d.state for d in store.deliveries(destination="backup")}
        assert backup == {1: S.COMMITTED, **dict.fromkeys(range(2, 10), S.PENDING)}
        # the transaction open before the upgrade still counts: its late report commits
        late = CommitmentResult(OPEN_TXN, committed=tuple(
            (store.get_object(q).sop_class_uid, store.get_object(q).sop_instance_uid)
            for q in (5, 6)), failed=())
        outcome = store.apply_commitment_report(late, retry_commit_at=clock.t)
        assert (outcome.known_transaction, outcome.committed) == (True, 2)
        assert store.retry([8]) == 1                    # failed: by hand, as documented
        # what the archives got before the upgrade (C-STORE answered: stored_at recorded)
        archive = Archive({(dest, store.get_object(q).sop_instance_uid)
                           for (q, dest), r in fixture_rows.items() if r["stored_at"]})
        for round_no in range(5):
            clock.t += 1_000                            # past every retry's due time
            for dest in DESTINATIONS:
                archive.store(store, dest)
                archive.commit(store, dest, f"2.25.42{round_no}{len(dest)}", clock.t)
        counts = store.counts()
        assert counts["pacs"]["committed"] == counts["backup"]["committed"] == 9, counts
        # sent once each, and only what the archive did not already hold
        assert archive.sends == Counter(
            {**{(q, "pacs"): 1 for q in (2, 3, 8, 9)},
             **{(q, "backup"): 1 for q in range(2, 10)}})
        # what was committed before the upgrade was not committed again
        now = {(r["queue_id"], r["destination"]): r for r in snapshot(db)["deliveries"]}
        assert len(now) == 18
        for key in ((1, "pacs"), (1, "backup"), (7, "pacs")):
            assert now[key]["committed_at"] == fixture_rows[key]["committed_at"], key
        assert store.claim_batch("pacs") == [] and store.claim_batch("backup") == []
    finally:
        store.close()


def newer_database(root: Path, version: int) -> Path:
    store = QueueStore(root, ["pacs"])
    store.open()
    store.enqueue(b"object", sop_instance_uid="2.25.1", sop_class_uid="1.2.3",
                  transfer_syntax_uid="1.2.840.10008.1.2.1")
    store.close()
    conn = sqlite3.connect(root / "queue.db")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()                                 # the last close checkpoints: no -wal left
    return root / "queue.db"


def test_a_database_of_a_newer_agent_is_refused_and_never_modified(tmp_path: Path) -> None:
    db = newer_database(tmp_path / "spool", 7)
    content, stat_before = db.read_bytes(), db.stat()
    names = sorted(p.name for p in db.parent.iterdir())
    for _ in range(2):                           # the lock was given back: same answer again
        store = QueueStore(tmp_path / "spool", ["pacs"])
        with pytest.raises(QueueError) as caught:
            store.open()
        assert f"{db} is schema version 7; this agent knows up to {schema.SCHEMA_VERSION}: " \
               "upgrade the agent, never downgrade" in str(caught.value)
    assert db.read_bytes() == content
    assert (db.stat().st_mtime_ns, db.stat().st_mode) == \
        (stat_before.st_mtime_ns, stat_before.st_mode)
    assert sorted(p.name for p in db.parent.iterdir()) == names      # no -wal, no -shm


def test_a_failing_step_leaves_the_database_as_it_was(v0_spool: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE no_such_table ADD COLUMN x INTEGER")

    monkeypatch.setattr(schema, "MIGRATIONS",
                        (*schema.MIGRATIONS, schema.Migration(2, "broken on purpose", broken)))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    db = v0_spool / "queue.db"
    before = snapshot(db)
    with pytest.raises(QueueError, match="no_such_table"):
        QueueStore(v0_spool, DESTINATIONS).open()
    assert version_of(db) == 0
    assert "unknown_outcomes" not in columns_of(db, "deliveries")    # step 1 rolled back too
    assert snapshot(db) == before


def test_a_database_of_the_unreleased_code_is_adopted(v0_spool: Path) -> None:
    """Between 4ba70cc and schema versions the column came with CREATE TABLE, version 0."""
    db = v0_spool / "queue.db"
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE deliveries ADD COLUMN unknown_outcomes INTEGER NOT NULL DEFAULT 0")
    conn.close()
    with QueueStore(v0_spool, DESTINATIONS) as store:
        assert store.counts()["pacs"]["failed"] == 1
    assert version_of(db) == schema.SCHEMA_VERSION


def test_a_new_spool_starts_at_the_newest_version(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs"]):
        pass
    db = tmp_path / "spool" / "queue.db"
    assert version_of(db) == schema.SCHEMA_VERSION
    for table, columns in schema.expected_columns().items():
        assert columns_of(db, table) == columns, table


def test_a_foreign_database_is_refused_naming_what_it_lacks(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    conn = sqlite3.connect(root / "queue.db")
    conn.execute("CREATE TABLE objects (name TEXT)")
    conn.close()
    with pytest.raises(QueueError, match=r"lacks objects\.created_at, objects\.purged_at"):
        QueueStore(root, ["pacs"]).open()
