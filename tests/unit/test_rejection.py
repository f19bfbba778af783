"""Rejection (IHE IOCM, agent.rejection): an object rejected before it was sent is never sent
(its rows cancelled, kept until retention); one a destination holds gets a note queued to that
destination only, claimable only once the rejected objects are final there; every refusal
names the UID, holds no patient data and changes nothing."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from test_iod_golden import DEVICE, SCHEDULED, SERIES, TZ, mono

from agent.iod import UIDSource, build_image, encode_part10
from agent.iod.kos import KOS_SOP_CLASS, rejected_by
from agent.queue import QueueStore, schema
from agent.queue.store import NoteToQueue, StaleRejectionError
from agent.records import CommitmentResult, DeliveryState, Order
from agent.rejection import (
    RejectionError,
    apply,
    plan_rejection,
    reject,
)

S = DeliveryState
EXPLICIT = "1.2.840.10008.1.2.1"
NOW = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
#: pacs with storage commitment, backup without
FINAL = {"pacs": S.COMMITTED, "backup": S.SENT}
OTHER_PATIENT = dataclasses.replace(SCHEDULED, patient_id="PID-0815",
                                    patient_name="Andere^Person")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[QueueStore]:
    q = QueueStore(tmp_path / "spool", ["pacs", "backup"], clock=clock)
    q.open()
    try:
        yield q
    finally:
        q.close()


def queue_image(store: QueueStore, uid: str, *, order: Order = SCHEDULED,
                study: str = SERIES.study_instance_uid,
                series: str = SERIES.series_instance_uid) -> int:
    context = dataclasses.replace(SERIES, study_instance_uid=study, series_instance_uid=series)
    order = dataclasses.replace(order, study_instance_uid=study)
    ds = build_image("dx", [mono(12, 0)], order=order, device=DEVICE, series=context,
                     instance_number=1, sop_instance_uid=uid, tz=TZ,
                     anatomic_region=None, image_laterality="R",
                     patient_orientation=("P", "F"))
    return store.enqueue(encode_part10(ds), sop_instance_uid=uid,
                         sop_class_uid=str(ds.SOPClassUID), transfer_syntax_uid=EXPLICIT
                         ).queue_id


def send(store: QueueStore, destination: str, *queue_ids: int) -> None:
    """What the forwarder does on a Success status, for these objects only."""
    for d in store.claim_batch(destination, limit=1000):
        if d.queue_id in queue_ids:
            store.mark_sent(d.delivery_id)
        else:
            store.requeue([d.delivery_id])


def commit(store: QueueStore, destination: str, *queue_ids: int, txn: str) -> None:
    rows = [d for d in store.deliveries(destination=destination)
            if d.queue_id in queue_ids and d.state in (S.SENT, S.COMMIT_REQUESTED)]
    store.begin_commitment(destination, [d.delivery_id for d in rows], txn, 2e9)
    store.apply_commitment_report(CommitmentResult(txn, committed=tuple(
        (d.sop_class_uid, d.sop_instance_uid) for d in rows), failed=()), retry_commit_at=0)


def run(store: QueueStore, uids: list[str], reason: str = "quality") -> Any:
    return reject(store, uids, reason, device=DEVICE, uids=UIDSource(), final_states=FINAL,
                  now=NOW)


def state_of(store: QueueStore, queue_id: int) -> dict[str, S]:
    return {d.destination: d.state for d in store.deliveries(queue_ids=[queue_id])}


def claimable(store: QueueStore, destination: str) -> list[int]:
    batch = store.claim_batch(destination, limit=1000)
    store.requeue([d.delivery_id for d in batch])
    return [d.queue_id for d in batch]


def snapshot(store: QueueStore) -> tuple[dict[str, list[tuple[Any, ...]]], list[str]]:
    tables = ("objects", "deliveries", "transactions", "transaction_items", "rejections",
              "cancellations", "note_waits")
    rows = {t: [tuple(r) for r in store.conn.execute(f"SELECT * FROM {t} ORDER BY 1")]  # noqa: S608
            for t in tables}
    files = sorted(p.name for d in (store.spool.objects_dir, store.spool.tmp_dir)
                   for p in d.iterdir())
    return rows, files


def note_dataset(store: QueueStore, queue_id: int) -> Dataset:
    return pydicom.dcmread(store.object_path(queue_id))


# -- before sending ---------------------------------------------------------------------------

def test_rejected_before_sending_is_never_sent_but_kept(store: QueueStore) -> None:
    rejected, kept = queue_image(store, "2.25.11"), queue_image(store, "2.25.12")
    result = run(store, ["2.25.11"])
    assert result.rejected == ("2.25.11",) and result.notes == ()
    assert sorted(result.cancelled) == [(rejected, "backup"), (rejected, "pacs")]
    assert claimable(store, "pacs") == [kept] and claimable(store, "backup") == [kept]
    assert store.object_path(rejected).exists()             # not deleted before retention
    assert store.counts()["pacs"] == {"pending": 1, "sending": 0, "sent": 0,
                                      "commit_requested": 0, "committed": 0, "failed": 0,
                                      "rejected": 1}
    assert store.retry([rejected]) == 0                     # queue retry cannot revive it
    assert claimable(store, "pacs") == [kept]
    assert store.rejected_uids(["2.25.11", "2.25.12"]) == {"2.25.11"}
    assert store.rejections()[rejected].reason == "quality"
    assert all("rejected (quality) before it was sent" in d.last_error
               for d in store.deliveries(queue_ids=[rejected]))


def test_a_failed_row_is_cancelled_too(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.13")
    [row] = store.deliveries(queue_ids=[queue_id], destination="pacs")
    store.mark_failed(row.delivery_id, "archive refused it")
    result = run(store, ["2.25.13"], "patient-safety")
    assert sorted(result.cancelled) == [(queue_id, "backup"), (queue_id, "pacs")]
    assert store.counts()["pacs"]["failed"] == 0 and store.counts()["pacs"]["rejected"] == 1


def test_a_cancelled_object_is_removed_at_retention(store: QueueStore, clock: FakeClock) -> None:
    queue_id = queue_image(store, "2.25.14")
    run(store, ["2.25.14"])
    assert store.purge(retention_s=100, final_states=FINAL) == 0
    clock.t += 101
    assert store.purge(retention_s=100, final_states=FINAL) == 1
    assert not store.object_path(queue_id).exists()


# -- after sending ----------------------------------------------------------------------------

def test_rejected_after_sending_queues_a_note_to_the_destination_that_has_it(
        store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.21")
    send(store, "pacs", queue_id)
    commit(store, "pacs", queue_id, txn="2.25.900")
    result = run(store, ["2.25.21"], "incorrect-modality-worklist")
    assert result.cancelled == ((queue_id, "backup"),)      # backup never had it
    [note] = result.notes
    assert note.destinations == ("pacs",) and note.rejects == ("2.25.21",)
    assert state_of(store, note.queue_id) == {"pacs": S.PENDING}
    ds = note_dataset(store, note.queue_id)
    assert ds.SOPClassUID == KOS_SOP_CLASS and ds.SOPInstanceUID == note.sop_instance_uid
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113038"
    assert rejected_by(ds) == ["2.25.21"]
    image = pydicom.dcmread(store.object_path(queue_id), stop_before_pixels=True)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert ds[keyword].value == image[keyword].value, keyword
    assert ds.SeriesInstanceUID != image.SeriesInstanceUID
    assert claimable(store, "pacs") == [note.queue_id]      # the image is committed there
    assert result.as_dict()["notes"][0]["destinations"] == ["pacs"]


def test_the_note_waits_until_the_image_is_committed(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.22")
    send(store, "pacs", queue_id)                           # stored, not yet committed
    [note] = run(store, ["2.25.22"]).notes
    assert claimable(store, "pacs") == []
    assert "sent once queue item(s)" in store.deliveries(queue_ids=[note.queue_id])[0].last_error
    store.begin_commitment("pacs", [d.delivery_id for d in store.deliveries(
        queue_ids=[queue_id], destination="pacs")], "2.25.901", 2e9)
    assert claimable(store, "pacs") == []                   # commit_requested: not yet
    commit(store, "pacs", queue_id, txn="2.25.902")
    assert store.deliveries(queue_ids=[queue_id], destination="pacs")[0].state == S.COMMITTED
    assert claimable(store, "pacs") == [note.queue_id]


def test_without_commitment_the_note_waits_only_for_the_store(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.23")
    send(store, "backup", queue_id)
    [note] = run(store, ["2.25.23"]).notes
    assert note.destinations == ("backup",)
    assert claimable(store, "backup") == [note.queue_id]


def test_the_note_waits_for_every_rejected_image(store: QueueStore) -> None:
    first, second = queue_image(store, "2.25.24"), queue_image(store, "2.25.25")
    send(store, "pacs", first, second)
    commit(store, "pacs", first, txn="2.25.903")
    [note] = run(store, ["2.25.24", "2.25.25"]).notes
    assert note.rejects == ("2.25.24", "2.25.25")
    assert claimable(store, "pacs") == []
    commit(store, "pacs", second, txn="2.25.904")
    assert claimable(store, "pacs") == [note.queue_id]


def test_each_destination_gets_a_note_naming_only_what_it_holds(store: QueueStore) -> None:
    both, pacs_only = queue_image(store, "2.25.31"), queue_image(store, "2.25.32")
    send(store, "pacs", both, pacs_only)
    send(store, "backup", both)
    result = run(store, ["2.25.31", "2.25.32"])
    assert result.cancelled == ((pacs_only, "backup"),)
    notes = {n.destinations: n for n in result.notes}
    assert set(notes) == {("pacs",), ("backup",)}
    assert rejected_by(note_dataset(store, notes[("pacs",)].queue_id)) == \
        ["2.25.31", "2.25.32"]
    assert rejected_by(note_dataset(store, notes[("backup",)].queue_id)) == ["2.25.31"]
    series = {note_dataset(store, n.queue_id).SeriesInstanceUID for n in result.notes}
    assert len(series) == 1                                 # one rejection, one series


def test_two_destinations_holding_the_same_share_one_note(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.33")
    send(store, "pacs", queue_id)
    send(store, "backup", queue_id)
    [note] = run(store, ["2.25.33"]).notes
    assert sorted(note.destinations) == ["backup", "pacs"]
    assert sorted(state_of(store, note.queue_id)) == ["backup", "pacs"]


# -- refusals: nothing changes ----------------------------------------------------------------

def refused(store: QueueStore, uids: list[str], match: str, reason: str = "quality") -> str:
    before = snapshot(store)
    with pytest.raises(RejectionError, match=match) as caught:
        run(store, uids, reason)
    assert snapshot(store) == before
    return str(caught.value)


def test_an_unknown_uid_is_refused(store: QueueStore) -> None:
    queue_image(store, "2.25.41")
    refused(store, ["2.25.41", "2.25.999"], r"SOP Instance UID 2\.25\.999 is not in this "
                                             r"agent's queue; nothing was rejected")
    assert store.rejected_uids(["2.25.41"]) == set()


@pytest.mark.parametrize(("uids", "reason", "match"), [
    ([], "quality", "no SOP Instance UID given"),
    (["1.02.3"], "quality", r"'1\.02\.3' is not a SOP Instance UID"),
    (["2.25.41"], "blurred", "rejection reason 'blurred' is not one of quality, "
                             "patient-safety, incorrect-modality-worklist"),
])
def test_bad_arguments_are_refused(store: QueueStore, uids: list[str], reason: str,
                                   match: str) -> None:
    queue_image(store, "2.25.41")
    refused(store, uids, match, reason)


def test_another_patients_image_mixed_in_is_refused_without_naming_anyone(
        store: QueueStore) -> None:
    queue_image(store, "2.25.42")
    queue_image(store, "2.25.43", order=OTHER_PATIENT)
    message = refused(store, ["2.25.42", "2.25.43"],
                      r"SOP Instance UID 2\.25\.43 belongs to another patient than 2\.25\.42")
    for phi in ("PID-0815", "PID-4711", "Andere", "Müller"):
        assert phi not in message


def test_another_study_mixed_in_is_refused(store: QueueStore) -> None:
    queue_image(store, "2.25.44")
    queue_image(store, "2.25.45", study="1.2.3.4.101")
    refused(store, ["2.25.44", "2.25.45"],
            r"SOP Instance UID 2\.25\.45 belongs to another study than 2\.25\.44")


def test_rejecting_twice_is_refused(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.46")
    send(store, "pacs", queue_id)
    run(store, ["2.25.46"])
    refused(store, ["2.25.46"], r"SOP Instance UID 2\.25\.46 is already rejected \(quality\)")


def test_a_note_cannot_be_rejected(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.47")
    send(store, "pacs", queue_id)
    [note] = run(store, ["2.25.47"]).notes
    refused(store, [note.sop_instance_uid], "is a rejection note")


def test_an_object_being_sent_is_refused(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.48")
    store.claim_batch("pacs")                               # in flight: outcome unknown
    refused(store, ["2.25.48"], r"2\.25\.48 is being sent to pacs right now")
    assert state_of(store, queue_id)["pacs"] == S.SENDING


def test_a_spool_file_gone_at_retention_is_refused(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.49")
    store.object_path(queue_id).unlink()
    refused(store, ["2.25.49"], "its spooled file was removed after the retention time")


def test_an_unreadable_spool_file_is_refused(store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.50")
    store.object_path(queue_id).write_bytes(b"not dicom at all")
    refused(store, ["2.25.50"], "cannot be read as DICOM")


def test_a_failure_while_queueing_the_note_leaves_nothing(
        store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    queue_id = queue_image(store, "2.25.51")
    send(store, "pacs", queue_id)
    before = snapshot(store)

    def broken(tmp: Path, final: Path) -> None:
        tmp.rename(final)                                   # the file lands, then the disk fails
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("agent.queue.store.install_synced", broken)
    with pytest.raises(Exception, match="rejection note write failed: Input/output error"):
        run(store, ["2.25.51"])
    assert snapshot(store) == before


# -- the queue moving under a plan ------------------------------------------------------------

def test_a_plan_made_stale_by_a_send_is_refused_and_reject_plans_again(
        store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.61")
    plan = plan_rejection(store, ["2.25.61"], "quality")
    assert sorted(plan.cancel) == [(queue_id, "backup"), (queue_id, "pacs")]
    send(store, "pacs", queue_id)                           # the forwarder got there first
    before = snapshot(store)
    with pytest.raises(StaleRejectionError):
        apply(store, plan, device=DEVICE, uids=UIDSource(), final_states=FINAL, now=NOW)
    assert snapshot(store) == before
    result = run(store, ["2.25.61"])                        # planned again: a note to pacs
    assert result.cancelled == ((queue_id, "backup"),)
    assert [n.destinations for n in result.notes] == [("pacs",)]


def test_the_store_refuses_a_plan_that_leaves_a_delivered_row_without_a_note(
        store: QueueStore) -> None:
    queue_id = queue_image(store, "2.25.62")
    send(store, "pacs", queue_id)
    with pytest.raises(StaleRejectionError):
        store.reject([queue_id], "quality", cancel=[(queue_id, "backup")], notes=[],
                     cancel_text="x")
    note = NoteToQueue(b"note", "2.25.63", KOS_SOP_CLASS, EXPLICIT,
                       {"pacs": ((queue_id, S.COMMITTED),), "backup": ((queue_id, S.SENT),)})
    with pytest.raises(StaleRejectionError):                # backup does not hold it
        store.reject([queue_id], "quality", cancel=[], notes=[note], cancel_text="x")


# -- logs, schema -----------------------------------------------------------------------------

def test_no_patient_data_in_logs_at_info(store: QueueStore,
                                         caplog: pytest.LogCaptureFixture) -> None:
    queue_id = queue_image(store, "2.25.71")
    send(store, "pacs", queue_id)
    caplog.set_level(logging.DEBUG)
    run(store, ["2.25.71"])
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "2.25.71" in text
    for phi in ("PID-4711", "Müller", "19611231"):
        assert phi not in text


def test_the_rejection_tables_come_with_schema_version_2(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "spool", ["pacs"]):
        pass
    conn = sqlite3.connect(tmp_path / "spool" / "queue.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION >= 2
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"rejections", "cancellations", "note_waits"} <= tables
