"""Queue transitions, durability layout and crash recovery (no network, no pydicom)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import DestinationSection, QueueSection
from agent.errors import QueueError, SpoolFullError, SpoolLockedError, UnknownQueueItemError
from agent.forwarder import MAX_UNKNOWN_OUTCOMES, DestinationWorker
from agent.iod import UIDSource
from agent.net.store_process import StoreOutcome
from agent.queue import QueueStore
from agent.queue.spool import SPOOL_MARKER
from agent.records import CommitmentResult, DeliveryState

S = DeliveryState
SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[QueueStore]:
    q = QueueStore(tmp_path / "spool", ["pacs", "backup"], clock=clock)
    q.open()
    yield q
    q.close()


def put(q: QueueStore, n: int = 1) -> list[int]:
    return [
        q.enqueue(f"object {i}".encode(), sop_instance_uid=f"2.25.{1000 + i}",
                  sop_class_uid=SC, transfer_syntax_uid=EXPLICIT).queue_id
        for i in range(n)
    ]


def states(q: QueueStore, destination: str = "pacs") -> list[str]:
    return [d.state.value for d in q.deliveries(destination=destination)]


def test_enqueue_is_durable_and_private(store: QueueStore) -> None:
    [queue_id] = put(store)
    path = store.object_path(queue_id)
    assert path.read_bytes() == b"object 0"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.spool.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.spool.db_path.stat().st_mode) == 0o600
    assert path.name == f"{queue_id:010d}.dcm"          # our id, never a received UID
    assert list(store.spool.tmp_dir.iterdir()) == []
    assert states(store, "pacs") == ["pending"] and states(store, "backup") == ["pending"]
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claim_is_capped_by_bytes_but_always_takes_one(store: QueueStore) -> None:
    for i, size in enumerate([40, 40, 40, 100, 10]):
        store.enqueue(bytes(size), sop_instance_uid=f"2.25.{2000 + i}", sop_class_uid=SC,
                      transfer_syntax_uid=EXPLICIT)
    assert [d.sop_instance_uid for d in store.claim_batch("pacs", max_bytes=100)] == \
        ["2.25.2000", "2.25.2001"]                  # 80 bytes; a third would make 120
    assert [d.sop_instance_uid for d in store.claim_batch("pacs", max_bytes=50)] == \
        ["2.25.2002"]
    # larger than the cap on its own: claimed alone rather than never
    assert [d.sop_instance_uid for d in store.claim_batch("pacs", max_bytes=50)] == \
        ["2.25.2003"]
    assert states(store) == ["sending"] * 4 + ["pending"]


def test_same_uid_twice_is_refused(store: QueueStore) -> None:
    put(store)
    with pytest.raises(QueueError, match="already queued"):
        put(store)
    assert len(list(store.spool.objects_dir.iterdir())) == 1
    assert list(store.spool.tmp_dir.iterdir()) == []


def test_claim_send_commit_cycle(store: QueueStore, clock: FakeClock) -> None:
    put(store, 3)
    batch = store.claim_batch("pacs", limit=2)
    assert [d.state for d in batch] == [S.SENDING, S.SENDING]
    assert [d.attempts for d in batch] == [1, 1]
    assert states(store) == ["sending", "sending", "pending"]
    assert store.claim_batch("pacs", limit=5)[0].sop_instance_uid == "2.25.1002"
    for d in batch:
        store.mark_sent(d.delivery_id)
    store.begin_commitment("pacs", [d.delivery_id for d in batch], "2.25.77", clock.t + 60)
    assert states(store) == ["commit_requested", "commit_requested", "sending"]
    report = CommitmentResult("2.25.77", committed=((SC, "2.25.1000"), (SC, "2.25.1001")),
                              failed=())
    outcome = store.apply_commitment_report(report, retry_commit_at=clock.t)
    assert (outcome.known_transaction, outcome.committed) == (True, 2)
    assert states(store) == ["committed", "committed", "sending"]
    assert states(store, "backup") == ["pending"] * 3       # destinations are independent
    # the same report again changes nothing
    again = store.apply_commitment_report(report, retry_commit_at=clock.t)
    assert again.committed == 2 and states(store) == ["committed", "committed", "sending"]


def test_report_for_unknown_transaction_or_foreign_instance(store: QueueStore,
                                                            clock: FakeClock) -> None:
    put(store, 2)
    [d0, d1] = store.claim_batch("pacs")
    store.mark_sent(d0.delivery_id)
    store.mark_sent(d1.delivery_id)
    store.begin_commitment("pacs", [d0.delivery_id], "2.25.5", clock.t + 60)
    unknown = store.apply_commitment_report(
        CommitmentResult("2.25.999", committed=((SC, "2.25.1000"),), failed=()),
        retry_commit_at=clock.t)
    assert not unknown.known_transaction
    # 2.25.1001 was sent but is not part of transaction 2.25.5; 2.25.4242 was never ours;
    # a right UID under the wrong SOP class is not ours either
    mixed = store.apply_commitment_report(
        CommitmentResult("2.25.5", committed=((SC, "2.25.1001"), (SC, "2.25.4242"),
                                              ("1.2.3", "2.25.1000")), failed=()),
        retry_commit_at=clock.t)
    assert sorted(mixed.ignored) == ["2.25.1000", "2.25.1001", "2.25.4242"]
    assert states(store) == ["commit_requested", "sent"]


def test_failure_reasons(store: QueueStore, clock: FakeClock) -> None:
    put(store, 3)
    batch = store.claim_batch("pacs")
    for d in batch:
        store.mark_sent(d.delivery_id)
    store.begin_commitment("pacs", [d.delivery_id for d in batch], "2.25.6", clock.t + 60)
    outcome = store.apply_commitment_report(
        CommitmentResult("2.25.6", committed=(), failed=(
            (SC, "2.25.1000", 0x0112), (SC, "2.25.1001", 0x0213), (SC, "2.25.1002", 0x0110))),
        retry_commit_at=clock.t + 30)
    assert (outcome.resend, outcome.retry_commit, outcome.failed) == (1, 1, 1)
    rows = store.deliveries(destination="pacs")
    assert [r.state for r in rows] == [S.PENDING, S.SENT, S.FAILED]
    assert "0x0110" in rows[2].last_error
    # the failed object is kept on disk and can be retried by hand
    assert store.object_path(rows[2].queue_id).exists()
    assert store.retry([rows[2].queue_id]) == 1
    assert store.deliveries(destination="pacs")[2].state == S.PENDING
    with pytest.raises(UnknownQueueItemError):
        store.retry([9999])


def test_a_late_failure_cannot_undo_a_commitment(store: QueueStore, clock: FakeClock) -> None:
    put(store)
    [d] = store.claim_batch("pacs")
    store.mark_sent(d.delivery_id)
    store.begin_commitment("pacs", [d.delivery_id], "2.25.8", clock.t + 60)
    store.apply_commitment_report(CommitmentResult("2.25.8", ((SC, "2.25.1000"),), ()),
                                  retry_commit_at=clock.t)
    store.apply_commitment_report(CommitmentResult("2.25.8", (), ((SC, "2.25.1000", 0x0112),)),
                                  retry_commit_at=clock.t)
    assert states(store) == ["committed"]


def test_missing_report_expires_to_a_new_request(store: QueueStore, clock: FakeClock) -> None:
    put(store, 2)
    batch = store.claim_batch("pacs")
    for d in batch:
        store.mark_sent(d.delivery_id)
    store.begin_commitment("pacs", [d.delivery_id for d in batch], "2.25.9", clock.t + 60)
    assert store.expire_transactions("pacs") == []
    clock.t += 61
    assert sorted(store.expire_transactions("pacs")) == sorted(d.delivery_id for d in batch)
    assert states(store) == ["sent", "sent"]
    # a late report on the superseded transaction still counts
    store.apply_commitment_report(CommitmentResult("2.25.9", ((SC, "2.25.1000"),), ()),
                                  retry_commit_at=clock.t)
    assert states(store) == ["committed", "sent"]


def test_failed_n_action_returns_rows_to_sent(store: QueueStore, clock: FakeClock) -> None:
    put(store)
    [d] = store.claim_batch("pacs")
    store.mark_sent(d.delivery_id)
    store.begin_commitment("pacs", [d.delivery_id], "2.25.10", clock.t + 60)
    store.fail_transaction_request("2.25.10", "N-ACTION aborted")
    assert states(store) == ["sent"]
    assert store.sent_awaiting_commitment("pacs")[0].last_error == "N-ACTION aborted"


def test_retry_backoff_and_due_time(store: QueueStore, clock: FakeClock) -> None:
    put(store)
    [d] = store.claim_batch("pacs")
    store.mark_retry([d.delivery_id], "PACS refused association", clock.t + 10)
    assert store.claim_batch("pacs") == []
    assert store.next_due_at("pacs") == clock.t + 10
    clock.t += 10
    [again] = store.claim_batch("pacs")
    assert again.attempts == 2 and again.last_error == "PACS refused association"


def test_restart_resets_sending_and_quarantines_orphans(tmp_path: Path,
                                                        clock: FakeClock) -> None:
    spool = tmp_path / "spool"
    q = QueueStore(spool, ["pacs"], clock=clock)
    q.open()
    ids = put(q, 4)
    q.claim_batch("pacs", limit=2)
    [_third, fourth] = q.claim_batch("pacs", limit=2)
    q.mark_sent(fourth.delivery_id)
    q.begin_commitment("pacs", [fourth.delivery_id], "2.25.12", clock.t + 3600)
    q.close()
    # what a crash can leave behind: a tmp file, a file without a row, a row without a file
    (spool / "tmp" / "abc.tmp").write_bytes(b"half")
    (spool / "objects" / "0000009999.dcm").write_bytes(b"never acknowledged")
    (spool / "objects" / f"{ids[2]:010d}.dcm").unlink()
    q = QueueStore(spool, ["pacs"], clock=clock)
    q.open()
    try:
        rows = q.deliveries(destination="pacs")
        # the report for 2.25.12 may have come while we were down: ask again under a new UID
        assert [r.state for r in rows] == [S.PENDING, S.PENDING, S.FAILED, S.SENT]
        assert q.expire_transactions("pacs", now=clock.t + 7200) == []
        assert "data loss" in rows[2].last_error
        assert list((spool / "tmp").iterdir()) == []
        assert (spool / "quarantine" / "0000009999.dcm").read_bytes() == b"never acknowledged"
        # same bytes, same UID after the restart
        assert q.object_path(ids[0]).read_bytes() == b"object 0"
        assert rows[0].sop_instance_uid == "2.25.1000"
    finally:
        q.close()


def test_second_process_cannot_open_the_same_spool(store: QueueStore, tmp_path: Path) -> None:
    other = QueueStore(tmp_path / "spool", ["pacs"])
    with pytest.raises(SpoolLockedError):
        other.open()


def test_purge_only_after_commitment_and_retention(store: QueueStore, clock: FakeClock) -> None:
    [qid] = put(store)
    final = {"pacs": S.COMMITTED, "backup": S.SENT}
    assert store.purge(retention_s=0, final_states=final) == 0
    for dest in ("pacs", "backup"):
        [d] = store.claim_batch(dest)
        store.mark_sent(d.delivery_id)
    assert store.purge(retention_s=0, final_states=final) == 0     # pacs not committed yet
    [d] = store.deliveries(destination="pacs")
    store.begin_commitment("pacs", [d.delivery_id], "2.25.11", clock.t + 60)
    store.apply_commitment_report(CommitmentResult("2.25.11", ((SC, "2.25.1000"),), ()),
                                  retry_commit_at=clock.t)
    assert store.purge(retention_s=100, final_states=final) == 0   # retention not over
    clock.t += 100
    assert store.purge(retention_s=100, final_states=final) == 1
    assert not store.object_path(qid).exists()
    # a destination that is not configured any more keeps its objects
    [qid2] = [store.enqueue(b"x", sop_instance_uid="2.25.5", sop_class_uid=SC,
                            transfer_syntax_uid=EXPLICIT).queue_id]
    assert store.purge(retention_s=0, final_states={"pacs": S.COMMITTED}) == 0
    assert store.object_path(qid2).exists()


def test_counts_cover_every_state(store: QueueStore) -> None:
    put(store, 2)
    store.claim_batch("pacs", limit=1)
    counts = store.counts()
    assert counts["pacs"] == {"pending": 1, "sending": 1, "sent": 0, "commit_requested": 0,
                              "committed": 0, "failed": 0}
    assert counts["backup"]["pending"] == 2


def test_a_full_database_is_a_clear_error_and_leaves_nothing_half_done(
        store: QueueStore) -> None:
    put(store, 2)
    [d] = store.claim_batch("pacs", limit=1)
    # SQLITE_FULL for real: the database may not grow by another page
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    files_before = sorted(store.spool.objects_dir.iterdir())
    with pytest.raises(SpoolFullError):
        for i in range(200):
            store.enqueue(b"x" * 4096, sop_instance_uid=f"2.25.9{i}", sop_class_uid=SC,
                          transfer_syntax_uid=EXPLICIT)
    with pytest.raises(SpoolFullError):
        for _ in range(200):
            store.mark_retry([d.delivery_id], "archive down " + "x" * 3000, 0)
    # the object whose row could not be written left no file behind
    assert len(sorted(store.spool.objects_dir.iterdir())) - len(files_before) == i
    assert list(store.spool.tmp_dir.iterdir()) == []
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    # the round that could not record its outcome left a row in 'sending'; it is recovered
    assert store.requeue([d.delivery_id]) == 1
    assert states(store).count("sending") == 0


# -- issue 13: the spool's files are private, and a folder that is not a spool is not taken ----
def test_wal_and_shm_files_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)          # a service's usual umask: new files 0644
    try:
        q = QueueStore(tmp_path / "spool", ["pacs"])
        q.open()
        try:
            put(q)
            root = q.spool.root
            for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
                assert (root / name).exists(), name
                assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
        finally:
            q.close()
    finally:
        os.umask(old_umask)


def test_a_new_spool_gets_the_marker(tmp_path: Path) -> None:
    q = QueueStore(tmp_path / "spool", ["pacs"])
    q.open()
    q.close()
    assert (tmp_path / "spool" / SPOOL_MARKER).is_file()


def test_a_folder_that_is_not_a_spool_is_refused_and_left_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    (folder / "passwd").write_text("root:x:0:0\n")
    (folder / "tmp").mkdir()
    (folder / "tmp" / "keep.tmp").write_text("mine")
    before = sorted(p.name for p in folder.rglob("*"))
    q = QueueStore(folder, ["pacs"])
    with pytest.raises(QueueError) as caught:
        q.open()
    assert str(folder) in str(caught.value) and SPOOL_MARKER in str(caught.value)
    assert sorted(p.name for p in folder.rglob("*")) == before
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert (folder / "tmp" / "keep.tmp").read_text() == "mine"


def test_a_spool_of_an_older_version_is_adopted(tmp_path: Path) -> None:
    q = QueueStore(tmp_path / "spool", ["pacs"])
    q.open()
    [queue_id] = put(q)
    q.close()
    (tmp_path / "spool" / SPOOL_MARKER).unlink()      # as an older version left it
    q = QueueStore(tmp_path / "spool", ["pacs"])
    q.open()
    try:
        assert q.object_path(queue_id).read_bytes() == b"object 0"
        assert (tmp_path / "spool" / SPOOL_MARKER).is_file()
    finally:
        q.close()


def test_an_empty_existing_folder_becomes_a_spool(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    # what the daemon may make there before it opens the queue the first time
    (tmp_path / "spool" / "api-token").write_text("secret")
    (tmp_path / "spool" / "mpps").mkdir()
    q = QueueStore(tmp_path / "spool", ["pacs"])
    q.open()
    q.close()
    assert (tmp_path / "spool" / SPOOL_MARKER).is_file()


# -- issue 13 finding 9 (c): an object the archive keeps aborting on ends failed -------------
def test_repeated_unknown_outcomes_fail_that_object_only(store: QueueStore,
                                                         clock: FakeClock) -> None:
    put(store, 2)
    reason = "archive aborted the association 3 times while receiving this object"
    for attempt in range(1, 4):
        batch = store.claim_batch("pacs")
        assert len(batch) == 2
        poison, other = batch
        failed = store.mark_outcome_unknown(poison.delivery_id, "pacs: no response",
                                            clock.t, max_unknown=3, failed_reason=reason)
        assert failed is (attempt == 3)
        store.mark_sent(other.delivery_id) if attempt == 3 else store.mark_retry(
            [other.delivery_id], "pacs dropped the association", clock.t)
    rows = store.deliveries(destination="pacs")
    assert [r.state for r in rows] == [S.FAILED, S.SENT]
    assert rows[0].last_error == reason


def test_an_answer_in_between_restarts_the_count(store: QueueStore, clock: FakeClock) -> None:
    put(store)
    for _ in range(2):
        [d] = store.claim_batch("pacs")
        assert not store.mark_outcome_unknown(d.delivery_id, "no response", clock.t,
                                              max_unknown=3, failed_reason="aborted")
    [d] = store.claim_batch("pacs")
    store.mark_retry([d.delivery_id], "pacs: 0xA700 out of resources", clock.t,
                     answered=True)
    for _ in range(2):
        [d] = store.claim_batch("pacs")
        assert not store.mark_outcome_unknown(d.delivery_id, "no response", clock.t,
                                              max_unknown=3, failed_reason="aborted")
    assert states(store) == ["pending"]
    # `queue retry` by hand starts from zero as well
    [d] = store.claim_batch("pacs")
    assert store.mark_outcome_unknown(d.delivery_id, "no response", clock.t, max_unknown=3,
                                      failed_reason="aborted")
    assert store.retry([d.queue_id]) == 1
    [d] = store.claim_batch("pacs")
    assert not store.mark_outcome_unknown(d.delivery_id, "no response", clock.t,
                                          max_unknown=3, failed_reason="aborted")


class AbortingArchive:
    """Stands for the sending process: the archive aborts the association whenever it
    receives `poison`; what comes before it is stored, what comes after is never sent."""

    def __init__(self, poison: int) -> None:
        self.poison = poison
        self.is_established = False
        self.max_pdu = 16384

    def associate(self, request: object) -> None:
        pass

    def store(self, items: list[tuple[int, Path]]) -> Iterator[StoreOutcome]:
        aborted = False
        for key, _path in items:
            if aborted:
                yield StoreOutcome(key, not_sent=True)
            elif key == self.poison:
                aborted = True
                yield StoreOutcome(key)          # no status: outcome unknown
            else:
                yield StoreOutcome(key, status=0x0000)

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_an_object_the_archive_always_aborts_on_fails_and_the_others_go(
        tmp_path: Path, clock: FakeClock) -> None:
    clock.t = time.time() + 10**6           # every retry is due at once: no waiting here
    q = QueueStore(tmp_path / "spool", ["pacs"], clock=clock)
    q.open()
    try:
        put(q, 3)
        [_first, poison, _third] = q.deliveries(destination="pacs")
        worker = DestinationWorker(
            DestinationSection("pacs", "127.0.0.1", 1, "PACS", storage_commitment=False),
            ae_title="AGENT", queue=q, queue_config=QueueSection(), uids=UIDSource(),
            report_handler=lambda _report: 0)
        worker._sender = AbortingArchive(poison.delivery_id)  # type: ignore[assignment]
        rounds = 0
        while worker.run_once():
            rounds += 1
            assert rounds <= 2 * MAX_UNKNOWN_OUTCOMES, "resent forever"
        rows = q.deliveries(destination="pacs")
        assert [r.state for r in rows] == [S.SENT, S.FAILED, S.SENT]
        assert rows[1].last_error == (f"archive aborted the association {MAX_UNKNOWN_OUTCOMES} "
                                      "times while receiving this object")
        assert rows[1].attempts == MAX_UNKNOWN_OUTCOMES
    finally:
        q.close()
