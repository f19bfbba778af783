"""The audit trail wired into the parts (issue 15): each part reports its events through a
callback, and an action whose events cannot be recorded is refused before it starts. Fakes for
the trail (recording calls); real queue, procedures, worklist service and listener."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support.peers import free_port, wait_until

from agent.audit import AlertKind, AuditPeer, AuditUnavailable, Outcome
from agent.config import DestinationSection, WorklistSection, load_config
from agent.daemon import AlertGate, audit_config_change
from agent.errors import AcquisitionError
from agent.forwarder import UNKNOWN, StudyRef, TransferAudit, read_study_ref
from agent.iod import UIDSource
from agent.listener import CommitmentReportHandler, Listener, Refusal
from agent.mpps import MppsClient
from agent.procedures import Procedures
from agent.queue import QueueStore
from agent.records import Delivery, DeliveryState, Order, SOPReference
from agent.station import AcquireRequest, OrderChoice, Parts, Station, StationLimits
from agent.worklist import WorklistService
from agent.worklist.errors import WorklistQueryError
from agent.worklist.query import FindResult

SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"
PACS = DestinationSection(name="pacs", host="127.0.0.1", port=4242, called_ae="PACS")


@dataclass
class FakeTrail:
    """Records each event method's call; `broken` makes every one raise AuditUnavailable."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    broken: bool = False
    enabled: bool = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> Any:
            if self.broken:
                raise AuditUnavailable("audit spool /x/audit.db: cannot record the event "
                                       "(database or disk is full)")
            self.calls.append((name, {"args": args, **kwargs}))
            return {"enabled": True, "backlog": 0, "alert": None} if name == "status" else None
        return record

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for called, kwargs in self.calls if called == name]


# --- the daemon's pieces ------------------------------------------------------------------


def test_a_refusal_repeated_within_the_window_is_counted_not_recorded_again() -> None:
    trail, now = FakeTrail(), [100.0]
    gate = AlertGate(trail, repeat_s=60, clock=lambda: now[0])  # type: ignore[arg-type]
    peer = AuditPeer("10.0.0.9", "EVIL")
    for _ in range(50):
        gate.alert(AlertKind.REFUSED_ASSOCIATION, "calling AE title EVIL not accepted", peer)
    gate.alert(AlertKind.REFUSED_API_REQUEST, "API request refused: bad token", peer)
    assert len(trail.calls) == 2
    now[0] += 61
    gate.alert(AlertKind.REFUSED_ASSOCIATION, "calling AE title EVIL not accepted", peer)
    assert "49 more like it" in trail.calls[2][1]["args"][1]
    gate.alert(AlertKind.REFUSED_ASSOCIATION, "calling AE title EVIL not accepted", peer)
    gate.flush()
    assert len(trail.calls) == 4 and "1 more time(s)" in trail.calls[3][1]["args"][1]
    assert trail.calls[3][1]["args"][2] == peer
    gate.flush()
    assert len(trail.calls) == 4


def test_a_changed_config_file_is_a_software_configuration_alert(tmp_path: Path) -> None:
    trail = FakeTrail()
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\n")
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    assert audit_config_change(trail, config, audit_dir) is False      # type: ignore[arg-type]
    assert audit_config_change(trail, config, audit_dir) is False      # type: ignore[arg-type]
    assert trail.calls == []
    config.write_text("[agent]\nae_title = \"OTHER\"\n")
    assert audit_config_change(trail, config, audit_dir) is True       # type: ignore[arg-type]
    [alert] = trail.named("security_alert")
    assert alert["args"][0] is AlertKind.SOFTWARE_CONFIGURATION
    assert alert["subject_uri"] == config.resolve().as_uri()
    assert audit_config_change(trail, config, audit_dir) is False      # type: ignore[arg-type]


def test_a_config_change_that_cannot_be_audited_is_not_recorded_as_seen(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("a")
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    audit_config_change(FakeTrail(), config, audit_dir)                # type: ignore[arg-type]
    config.write_text("b")
    with pytest.raises(AuditUnavailable):
        audit_config_change(FakeTrail(broken=True), config, audit_dir)  # type: ignore[arg-type]
    trail = FakeTrail()
    assert audit_config_change(trail, config, audit_dir) is True       # type: ignore[arg-type]


# --- transfers: patient and study from the spooled file's header ---------------------------


def part10(path: Path, patient_id: str, study_uid: str, sop_uid: str, accession: str = "") -> Path:
    ds = Dataset()
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.AccessionNumber = accession
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = sop_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class FakeQueue:
    folder: Path

    def object_path(self, queue_id: int) -> Path:
        return self.folder / f"{queue_id}.dcm"


def delivery(queue_id: int, sop_uid: str, sop_class: str = SC) -> Delivery:
    return Delivery(queue_id, queue_id, "pacs", DeliveryState.SENDING, 0, 0.0, "", None, 0.0,
                    sop_uid, sop_class)


def test_header_read_names_patient_study_and_accession(tmp_path: Path) -> None:
    path = part10(tmp_path / "1.dcm", "PID-7", "1.2.3", "1.2.3.1", "ACC-7")
    assert read_study_ref(path) == StudyRef("PID-7", "1.2.3", "ACC-7")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    assert read_study_ref(tmp_path / "junk.dcm") == StudyRef(UNKNOWN, UNKNOWN)


def test_transfers_are_audited_per_study_and_destination(tmp_path: Path) -> None:
    part10(tmp_path / "1.dcm", "PID-1", "1.2.3", "1.2.3.1", "ACC-1")
    part10(tmp_path / "2.dcm", "PID-1", "1.2.3", "1.2.3.2", "ACC-1")
    part10(tmp_path / "3.dcm", "PID-2", "1.2.4", "1.2.4.1")
    trail = FakeTrail()
    audit = TransferAudit(trail, FakeQueue(tmp_path), [PACS])  # type: ignore[arg-type]
    batch = [delivery(1, "1.2.3.1"), delivery(2, "1.2.3.2", CT), delivery(3, "1.2.4.1")]
    audit.begin(PACS, batch)
    audit.begin(PACS, batch)            # the same studies again: begun once per run
    begun = trail.named("begin_transferring")
    assert [(b["patient_id"], b["study_uid"], b["sop_classes"], b["accession"])
            for b in begun] == [("PID-1", "1.2.3", {SC: 1, CT: 1}, "ACC-1"),
                                ("PID-2", "1.2.4", {SC: 1}, "")]
    assert begun[0]["args"][0] == AuditPeer("127.0.0.1", "PACS", 4242)
    audit.transferred(PACS, stored=batch[:1], failed=batch[1:])
    stored = trail.named("instances_transferred")
    assert [(s["study_uid"], s["sop_classes"], s["outcome"], s["committed"]) for s in stored] \
        == [("1.2.3", {SC: 1}, Outcome.MINOR_FAILURE, False),
            ("1.2.4", {SC: 1}, Outcome.SERIOUS_FAILURE, False)]
    # the commitment report names instances by UID: the study is remembered from the store
    (tmp_path / "1.dcm").unlink()
    audit.committed("pacs", [(SC, "1.2.3.1")], [])
    last = trail.named("instances_transferred")[-1]
    assert (last["patient_id"], last["study_uid"], last["outcome"], last["committed"]) == \
        ("PID-1", "1.2.3", Outcome.SUCCESS, True)


def test_a_batch_whose_begin_cannot_be_audited_is_not_sent(tmp_path: Path) -> None:
    part10(tmp_path / "1.dcm", "PID-1", "1.2.3", "1.2.3.1")
    audit = TransferAudit(FakeTrail(broken=True), FakeQueue(tmp_path),  # type: ignore[arg-type]
                          [PACS])
    with pytest.raises(AuditUnavailable):
        audit.begin(PACS, [delivery(1, "1.2.3.1")])


def test_a_commitment_report_is_audited_before_it_is_applied(tmp_path: Path) -> None:
    from agent.net.commitment import CommitmentReport

    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    try:
        queued = queue.enqueue(b"DICM" * 8, sop_instance_uid="1.2.3.1", sop_class_uid=SC,
                               transfer_syntax_uid="1.2.840.10008.1.2.1")
        [claimed] = queue.claim_batch("pacs")
        queue.mark_sent(claimed.delivery_id)
        queue.begin_commitment("pacs", [claimed.delivery_id], "2.25.77", deadline=1e12)
        seen: list[tuple[str, list[tuple[str, str]], list[tuple[str, str]]]] = []
        broken = [True]

        def on_report(dest: str, ok: list[tuple[str, str]], bad: list[tuple[str, str]]) -> None:
            if broken[0]:
                raise AuditUnavailable("audit spool full")
            seen.append((dest, ok, bad))

        handler = CommitmentReportHandler(queue, [PACS], retry_commit_s=1.0,
                                          on_report=on_report)
        info = Dataset()
        info.TransactionUID = "2.25.77"
        item = Dataset()
        item.ReferencedSOPClassUID = SC
        item.ReferencedSOPInstanceUID = "1.2.3.1"
        info.ReferencedSOPSequence = [item]
        report = CommitmentReport(peer_ae="PACS", sop_class_uid="1.2.840.10008.1.20.1",
                                  event_type_id=1, event_information=info)
        assert handler.handle_report(report) == 0x0110      # refused: nothing applied
        assert queue.deliveries(queue_ids=[queued.queue_id])[0].state is \
            DeliveryState.COMMIT_REQUESTED
        broken[0] = False
        assert handler.handle_report(report) == 0x0000
        assert seen == [("pacs", [(SC, "1.2.3.1")], [])]
        assert queue.deliveries(queue_ids=[queued.queue_id])[0].state is \
            DeliveryState.COMMITTED
    finally:
        queue.close()


# --- the listener's refusals -------------------------------------------------------------


def test_the_listener_reports_a_refused_calling_ae_title(tmp_path: Path) -> None:
    refused: list[Refusal] = []
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    port = free_port()
    listener = Listener(ae_title="MODALITY1", host="127.0.0.1", port=port,
                        destinations=[PACS], on_refused=refused.append,
                        report_handler=CommitmentReportHandler(queue, [PACS],
                                                               retry_commit_s=1.0))
    listener.start()
    try:
        ae = AE(ae_title="EVIL")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="MODALITY1")
        assert assoc.is_rejected
        wait_until(lambda: bool(refused), 5, "the refusal reported")
    finally:
        listener.stop()
        queue.close()
    [refusal] = refused
    assert (refusal.kind, refusal.host, refusal.ae_title) == ("ae-title", "127.0.0.1", "EVIL")
    assert "calling AE title EVIL not accepted" in refusal.detail


def test_the_listener_reports_a_refused_address(tmp_path: Path) -> None:
    refused: list[Refusal] = []
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    port = free_port()
    elsewhere = DestinationSection(name="pacs", host="127.0.0.2", port=4242, called_ae="PACS")
    listener = Listener(ae_title="MODALITY1", host="127.0.0.1", port=port,
                        destinations=[elsewhere], on_refused=refused.append,
                        report_handler=CommitmentReportHandler(queue, [elsewhere],
                                                               retry_commit_s=1.0))
    listener.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert client.recv(1) == b""        # closed without a word
        wait_until(lambda: bool(refused), 5, "the refusal reported")
    finally:
        listener.stop()
        queue.close()
    assert (refused[0].kind, refused[0].host) == ("address", "127.0.0.1")


# --- worklist, procedures, station -------------------------------------------------------


RIS = WorklistSection(host="127.0.0.1", port=9, called_ae="RIS", refresh_s=60.0)
EMPTY = FindResult(items=(), truncated=False, limit=10, problems=(), responses=0, filtered_out=0,
                   elapsed_s=0.0)


def test_each_worklist_c_find_is_reported_with_its_outcome(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.worklist.service as service_module

    seen: list[tuple[Dataset, str | None]] = []
    service = WorklistService(RIS, ae_title="MODALITY1", modality="OT", cache_dir=tmp_path,
                              on_query=lambda ds, error: seen.append((ds, error)))
    service.refresh_now()               # nothing listens on port 9: no query left us
    assert seen == []
    answers: list[Any] = [EMPTY,
                          WorklistQueryError("worklist: RIS answered C-FIND failure 0xA700")]

    def find(*args: Any, **kwargs: Any) -> FindResult:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    monkeypatch.setattr(service_module, "find_worklist", find)
    assert service.refresh_now().source == "ris"
    assert service.refresh_now().error is not None
    assert [error for _, error in seen] == [None, "worklist: RIS answered C-FIND failure 0xA700"]
    assert seen[0][0].ScheduledProcedureStepSequence[0].Modality == "OT"


def test_a_worklist_answer_that_cannot_be_audited_is_not_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.worklist.service as service_module

    def refuse(ds: Dataset, error: str | None) -> None:
        raise AuditUnavailable("audit spool full")

    service = WorklistService(RIS, ae_title="MODALITY1", modality="OT", cache_dir=tmp_path,
                              on_query=refuse)
    monkeypatch.setattr(service_module, "find_worklist", lambda *a, **k: EMPTY)
    snapshot = service.refresh_now()
    assert snapshot.source == "cache" and "audit spool full" in (snapshot.error or "")


def test_mpps_create_and_updates_are_reported(tmp_path: Path) -> None:
    from agent.config import MppsSection

    seen: list[tuple[str, str | None, int]] = []
    mpps = MppsClient(MppsSection("127.0.0.1", 1, "RIS"), ae_title="MODALITY1",
                      journal_dir=tmp_path / "mpps", uids=UIDSource(), station_name="ROOM1")
    procedures = Procedures(uids=UIDSource(), mpps=mpps, modality="OT", protocol_name="t",
                            on_mpps=lambda action, p: seen.append(
                                (action, p.mpps_uid, sum(map(len, p.series.values())))))
    procedure = procedures.start(Order(patient_name="A^B", patient_id="P1"))
    procedures.record_series(procedure, "2.25.5", [SOPReference(SC, "2.25.6")])
    procedures.end(procedure.procedure_id, "completed")
    assert seen == [("create", procedure.mpps_uid, 0), ("update", procedure.mpps_uid, 1),
                    ("update", procedure.mpps_uid, 1)]


@dataclass
class CountingAcquisition:
    emits_radiation: bool = False
    exposures: int = 0

    def acquire(self, order: Order, frames: int) -> Any:
        self.exposures += frames
        raise AssertionError("the device must not be used")


def test_an_acquisition_that_cannot_be_audited_is_refused_before_capture(
        tmp_path: Path) -> None:
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'[agent]\nae_title = "MOD"\nspool_dir = "{tmp_path / "spool"}"\n'
        '[device]\ndriver = "simulated"\n'
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 104\n'
        'called_ae = "PACS"\n')
    acquisition = CountingAcquisition()
    procedures = Procedures(uids=UIDSource(), mpps=None, modality="OT", protocol_name="t")
    parts = Parts(config=load_config(config_path), queue=None,  # type: ignore[arg-type]
                  acquisition=acquisition, forwarder=None,  # type: ignore[arg-type]
                  listener=None, procedures=procedures,  # type: ignore[arg-type]
                  audit=FakeTrail(broken=True))  # type: ignore[arg-type]
    station = Station(parts, StationLimits())
    request = AcquireRequest(1, OrderChoice(Order(patient_name="A^B", patient_id="P1")))
    with pytest.raises(AcquisitionError, match="audit trail cannot record it"):
        station.acquire(request)
    assert acquisition.exposures == 0 and procedures.all() == []

