"""Rejection (IHE IOCM) against Orthanc, through the real queue, forwarder and listener (no
daemon): an image rejected before it was sent never reaches Orthanc; one rejected after it was
sent gets a Key Object Selection rejection note that reaches Orthanc only after Orthanc
committed the image, and Orthanc's REST shows the note in the image's study."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.agent_process import AGENT_AE
from support.peers import free_port, run_dciodvfy, wait_until

from agent.config import DestinationSection, QueueSection
from agent.demo.orthanc import OrthancServer, RegisteredModality
from agent.forwarder import DestinationWorker
from agent.iod import UIDSource, build_image, encode_part10
from agent.iod.anatomy import BY_BODY_PART
from agent.iod.kos import KOS_SOP_CLASS
from agent.listener import CommitmentReportHandler, Listener
from agent.queue import QueueStore
from agent.records import DeliveryState, DeviceInfo, Order, SeriesContext
from agent.rejection import RejectionResult, reject
from drivers.frame import Frame
from drivers.simulated import phantom

pytestmark = pytest.mark.integration

S = DeliveryState
EXPLICIT = "1.2.840.10008.1.2.1"
DEVICE = DeviceInfo(modality="DX", manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1",
                    institution_name="Klinikum", software_versions="fw 2.1")
ORDER = Order(patient_name="Iocm^Test", patient_id="IOCM-1", patient_birth_date="19700101",
              patient_sex="O")
#: a DX states its region and side (issue 16 item 3): a right hand
HAND = BY_BODY_PART["HAND"].code


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    try:
        yield queue
    finally:
        queue.close()


def queue_images(store: QueueStore, count: int) -> list[str]:
    """`count` DX images of one study and series, queued; their SOP Instance UIDs."""
    uids = UIDSource()
    series = SeriesContext(study_instance_uid=uids.new_uid(), series_instance_uid=uids.new_uid(),
                           study_id="1", series_number=1, study_datetime="20240301093000.000000",
                           series_datetime="20240301093000.000000")
    made = []
    for index in range(count):
        frame = Frame(pixels=phantom(64, 64, 12, index), bits_stored=12,
                      photometric_interpretation="MONOCHROME2", t_mono=float(index),
                      t_wall=1_709_285_400.0 + index, sequence_number=index,
                      pixel_spacing_mm=(0.139, 0.139))
        sop_uid = uids.new_uid()
        ds = build_image("dx", [frame], order=ORDER, device=DEVICE, series=series,
                         instance_number=index + 1, sop_instance_uid=sop_uid, tz=UTC,
                         patient_orientation=("P", "F"), anatomic_region=HAND,
                         image_laterality="R")
        store.enqueue(encode_part10(ds), sop_instance_uid=sop_uid,
                      sop_class_uid=str(ds.SOPClassUID), transfer_syntax_uid=EXPLICIT)
        made.append(sop_uid)
    return made


def worker_for(store: QueueStore, destination: DestinationSection) -> DestinationWorker:
    worker = DestinationWorker(destination, ae_title=AGENT_AE, queue=store,
                               queue_config=QueueSection(retry_initial_s=0.2, retry_max_s=1.0),
                               uids=UIDSource(), report_handler=lambda _report: 0)
    worker.launch()
    worker.wait_ready()
    return worker


def run_rounds(worker: DestinationWorker, limit: int = 20) -> None:
    """Rounds until one finds nothing to do (bounded: a loop would be a bug)."""
    for _ in range(limit):
        if not worker.run_once():
            return
    raise AssertionError(f"the forwarder still had work after {limit} rounds")


def reject_now(store: QueueStore, uids: list[str], final: dict[str, S]) -> RejectionResult:
    return reject(store, uids, "quality", device=DEVICE, uids=UIDSource(), final_states=final,
                  now=datetime.now(UTC))


def test_rejected_before_sending_never_reaches_orthanc(store: QueueStore,
                                                      orthanc: OrthancServer) -> None:
    rejected, kept = queue_images(store, 2)
    result = reject_now(store, [rejected], {"pacs": S.SENT})
    assert result.notes == ()                                
    worker = worker_for(store, DestinationSection(
        "pacs", "127.0.0.1", orthanc.dicom_port, orthanc.ae_title, storage_commitment=False))
    try:
        run_rounds(worker)
    finally:
        worker.stop()
    assert orthanc.find_instance(kept) is not None             # the forwarder did run
    assert orthanc.find_instance(rejected) is None
    assert len(orthanc.instances()) == 1                       # and no note either
    assert store.counts()["pacs"]["rejected"] == 1


def delivery_times(db: Path, sop_instance_uid: str) -> tuple[float | None, float | None]:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT d.stored_at, d.committed_at FROM deliveries d JOIN objects o "
            "USING (queue_id) WHERE o.sop_instance_uid=?", (sop_instance_uid,)).fetchone()
    finally:
        conn.close()
    return row[0], row[1]


def test_rejected_after_sending_the_note_follows_the_commitment(
        store: QueueStore, orthanc: OrthancServer, tmp_path: Path) -> None:
    listener_port = free_port(exclude={orthanc.dicom_port, orthanc.http_port})
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))
    # a short commitment deadline: the first report cannot reach us (listener down), so the
    # agent asks again under a new Transaction UID once it passes
    destination = DestinationSection("pacs", "127.0.0.1", orthanc.dicom_port, orthanc.ae_title,
                                     storage_commitment=True, commitment_timeout_s=2.0)
    [image] = queue_images(store, 1)
    listener = Listener(ae_title=AGENT_AE, host="127.0.0.1", port=listener_port,
                        destinations=[destination],
                        report_handler=CommitmentReportHandler(store, [destination],
                                                               retry_commit_s=0.5))
    worker = worker_for(store, destination)
    try:
        worker.run_once()                                      # stored, commitment asked
        assert orthanc.find_instance(image) is not None
        [row] = store.deliveries(destination="pacs")
        assert row.state is S.COMMIT_REQUESTED
        result = reject_now(store, [image], {"pacs": S.COMMITTED})
        [note] = result.notes                                
        assert note.destinations == ("pacs",)
        worker.run_once()
        assert orthanc.find_instance(note.sop_instance_uid) is None, \
            "the note went out before the image was committed"
        listener.start()

        def note_arrived() -> bool:
            worker.run_once()
            return orthanc.find_instance(note.sop_instance_uid) is not None

        wait_until(note_arrived, 30, "the rejection note to reach Orthanc after commitment")
    finally:
        worker.stop()
        listener.stop()
    db = store.spool.db_path
    _, image_committed_at = delivery_times(db, image)
    note_stored_at, _ = delivery_times(db, note.sop_instance_uid)
    assert image_committed_at is not None and note_stored_at is not None
    assert note_stored_at >= image_committed_at
    # what Orthanc 1.10 does with it: stores it as an ordinary instance in the image's study
    # (no IOCM: the rejected image stays, readable)
    tags = orthanc.instance_tags(orthanc.find_instance(note.sop_instance_uid) or "")
    image_tags = orthanc.instance_tags(orthanc.find_instance(image) or "")
    assert tags["SOPClassUID"] == KOS_SOP_CLASS and tags["Modality"] == "KO"
    assert tags["StudyInstanceUID"] == image_tags["StudyInstanceUID"]
    assert tags["PatientID"] == image_tags["PatientID"]
    assert tags["ConceptNameCodeSequence"][0]["CodeValue"] == "113001"
    evidence = tags["CurrentRequestedProcedureEvidenceSequence"][0]
    assert evidence["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0][
        "ReferencedSOPInstanceUID"] == image
    assert orthanc.find_instance(image) is not None
    assert len(orthanc.instances()) == 2
    # both objects as Orthanc holds them pass dciodvfy (issue 16 done-when)
    for uid in (image, note.sop_instance_uid):
        path = tmp_path / f"{uid}.dcm"
        path.write_bytes(orthanc.instance_file(orthanc.find_instance(uid) or ""))
        assert run_dciodvfy(path) == [], uid


def test_a_two_destination_rejection_splits_its_rows(tmp_path: Path,
                                                     orthanc: OrthancServer) -> None:
    """Stored at one archive, still queued for a second: the second never gets the image, the
    first gets the note (without commitment, as soon as the image is stored)."""
    with QueueStore(tmp_path / "spool2", ["pacs", "offline"]) as two:
        [image] = queue_images(two, 1)
        pacs = DestinationSection("pacs", "127.0.0.1", orthanc.dicom_port, orthanc.ae_title,
                                  storage_commitment=False)
        worker = worker_for(two, pacs)
        try:
            run_rounds(worker)
            result = reject_now(two, [image], {"pacs": S.SENT, "offline": S.COMMITTED})
            assert result.cancelled == (                      
                (two.objects_by_uid([image])[image].queue_id, "offline"),)
            run_rounds(worker)
        finally:
            worker.stop()
        [note] = result.notes                                
        assert orthanc.find_instance(note.sop_instance_uid) is not None
        assert two.claim_batch("offline") == []
        assert note.destinations == ("pacs",)
