"""MPPS against a real SCP on loopback (tests/mpps_peer.py, which enforces PS3.4 F.7.2): the
normal paths, the append case, a RIS that is down, lost responses, real crashes between a
response and its journal entry, and no patient data in the log."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from support.mpps_peer import COMPLETED, DISCONTINUED, IN_PROGRESS, Fault, MppsPeer
from support.peers import LOCALHOST, free_port, wait_until

from agent.config import MppsSection
from agent.iod.uids import UIDSource
from agent.logsetup import quiet_pynetdicom
from agent.mpps import MppsClient, Pending, PPSStatus, ProcedureStep, discontinuation_reason
from agent.mpps.client import CRASH_AFTER_CREATE_RESPONSE, CRASH_AFTER_FINAL_RESPONSE
from agent.mpps.journal import journal_file_name
from agent.records import Code, Order, SOPReference

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SC = "1.2.840.10008.5.1.4.1.1.7"
AE_TITLE = "MODALITY1"
PHI_NAME = "PHI^SENTINEL"
PHI_ID = "PHI-SENTINEL-9"
STARTED = datetime(2024, 5, 6, 7, 8, 9)
DEADLINE_S = 10.0

SCHEDULED = Order(
    patient_name="Müller^Jörg", patient_id="PID-1", patient_birth_date="19700101",
    patient_sex="M", study_instance_uid="1.2.826.0.1.3680043.10.999.7",
    accession_number="ACC-1", requested_procedure_id="RP-1",
    requested_procedure_description="Chest X-ray", sps_id="SPS-1", sps_description="Chest PA",
    scheduled=True, referenced_studies=(SOPReference("1.2.840.10008.3.1.2.3.1", "1.2.3.4"),),
    scheduled_protocol_codes=(Code("P-1", "99LOCAL", "Chest PA"),),
)
UNSCHEDULED = Order(patient_name=PHI_NAME, patient_id=PHI_ID)

MakeClient = Callable[..., MppsClient]

#: pynetdicom 3.0.4 AssociationSocket.connect() drops a refused socket without close(); CPython
#: closes it with a ResourceWarning (no fd leak) that pytest turns into an unraisable-exception
#: warning. Tests that meet a dead port accept it (as tests/integration/test_worklist_faults.py)
ACCEPT_PYNETDICOM_SOCKET_WARNING = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def quiet() -> None:
    quiet_pynetdicom()       # pynetdicom logs datasets otherwise


@pytest.fixture
def peer() -> Iterator[tuple[MppsPeer, int]]:
    port = free_port()
    ris = MppsPeer("RIS")
    ris.start(port)
    try:
        yield ris, port
    finally:
        ris.stop()


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    started: list[MppsClient] = []

    def make(port: int, journal: Path | None = None, **kwargs: object) -> MppsClient:
        options: dict[str, object] = {"retry_initial_s": 0.05, "retry_max_s": 0.2,
                                      "dimse_timeout_s": 5.0, "station_name": "ROOM1"}
        options.update(kwargs)
        client = MppsClient(MppsSection(LOCALHOST, port, "RIS"), ae_title=AE_TITLE,
                            journal_dir=journal or tmp_path / "mpps", uids=UIDSource(),
                            **options)  # type: ignore[arg-type]
        client.start()
        started.append(client)
        return client

    yield make
    for client in started:
        client.stop()


def images(series_uid: str, count: int) -> list[tuple[str, str]]:
    return [(SC, f"{series_uid}.{n}") for n in range(1, count + 1)]


def settled(client: MppsClient) -> bool:
    """Nothing owed to the RIS: every step acknowledged in its current state."""
    return all(s.pending is Pending.NOTHING for s in client.status())


def wait_done(client: MppsClient) -> None:
    wait_until(lambda: client.status() == [], DEADLINE_S,
               f"every MPPS acknowledged; status: {client.status()}")


# --- the normal paths -------------------------------------------------------------------------

def test_in_progress_then_completed_with_every_series_and_image(
        peer: tuple[MppsPeer, int], make_client: MakeClient, tmp_path: Path) -> None:
    ris, port = peer
    client = make_client(port)
    step = client.begin(SCHEDULED, modality="OT", started_at=STARTED, protocol_name="Chest PA")
    wait_until(lambda: ris.state_of(step.sop_instance_uid) == IN_PROGRESS and settled(client),
               DEADLINE_S, "N-CREATE IN PROGRESS acknowledged")

    client.add_series(step, "1.2.3.100", images("1.2.3.100", 2), series_description="PA",
                      operator_name="Tech^Tom")
    client.add_series(step, "1.2.3.200", images("1.2.3.200", 1), retrieve_ae_title="PACS")
    client.complete(step, ended_at=datetime(2024, 5, 6, 7, 20, 0))
    wait_done(client)

    instances, states, exchanges = ris.snapshot()
    assert states[step.sop_instance_uid] == [IN_PROGRESS, COMPLETED]
    assert [(e.operation, e.status, e.calling_ae) for e in exchanges] == [
        ("N-CREATE", 0x0000, AE_TITLE), ("N-SET", 0x0000, AE_TITLE)]
    ds = instances[step.sop_instance_uid]
    assert str(ds.PatientName) == "Müller^Jörg"          # UTF-8 survived the wire
    assert ds.PerformedProcedureStepID == step.pps_id
    assert ds.PerformedStationAETitle == AE_TITLE
    (scheduled,) = ds.ScheduledStepAttributesSequence
    assert (scheduled.StudyInstanceUID, scheduled.AccessionNumber,
            scheduled.ScheduledProcedureStepID) == (SCHEDULED.study_instance_uid, "ACC-1", "SPS-1")
    assert (ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime[:6]) == \
        ("20240506", "072000")
    sent = {item.SeriesInstanceUID: [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
                                     for r in item.ReferencedImageSequence]
            for item in ds.PerformedSeriesSequence}
    assert sent == {"1.2.3.100": images("1.2.3.100", 2), "1.2.3.200": images("1.2.3.200", 1)}
    assert str(ds.PerformedSeriesSequence[0].OperatorsName) == "Tech^Tom"
    assert ds.PerformedSeriesSequence[1].RetrieveAETitle == "PACS"
    assert list((tmp_path / "mpps").iterdir()) == []     # acknowledged: journal gone


def test_discontinued_with_a_reason(peer: tuple[MppsPeer, int],
                                    make_client: MakeClient) -> None:
    ris, port = peer
    client = make_client(port)
    step = client.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    client.add_series(step, "1.2.3.300", images("1.2.3.300", 1))
    client.discontinue(step, discontinuation_reason("110505"))
    wait_done(client)
    instances, states, _ = ris.snapshot()
    assert states[step.sop_instance_uid] == [IN_PROGRESS, DISCONTINUED]
    ds = instances[step.sop_instance_uid]
    (reason,) = ds.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert (reason.CodeValue, reason.CodingSchemeDesignator, reason.CodeMeaning) == \
        ("110505", "DCM", "Patient refused to continue procedure")
    (scheduled,) = ds.ScheduledStepAttributesSequence
    assert scheduled.StudyInstanceUID == step.study_instance_uid
    assert scheduled.AccessionNumber == "" and len(scheduled.ReferencedStudySequence) == 0


def test_append_case_is_a_new_mpps_in_the_same_study(peer: tuple[MppsPeer, int],
                                                     make_client: MakeClient) -> None:
    ris, port = peer
    client = make_client(port)
    first = client.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    client.add_series(first, "1.2.3.400", images("1.2.3.400", 1))
    client.complete(first)
    wait_done(client)
    # more images after COMPLETED: never an N-SET on the final step, a new step instead
    second = client.begin(first.order, modality="OT", started_at=datetime(2024, 5, 6, 8),
                          protocol_name="P")
    client.add_series(second, "1.2.3.401", images("1.2.3.401", 2))
    client.complete(second)
    wait_done(client)

    instances, states, exchanges = ris.snapshot()
    assert second.sop_instance_uid != first.sop_instance_uid
    assert states == {first.sop_instance_uid: [IN_PROGRESS, COMPLETED],
                      second.sop_instance_uid: [IN_PROGRESS, COMPLETED]}
    studies = {uid: ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
               for uid, ds in instances.items()}
    assert set(studies.values()) == {first.study_instance_uid}
    assert all(e.status == 0x0000 for e in exchanges)


# --- the RIS away, answers lost ---------------------------------------------------------------

@ACCEPT_PYNETDICOM_SOCKET_WARNING
def test_ris_down_at_n_create_then_sent_from_the_journal(make_client: MakeClient,
                                                         tmp_path: Path) -> None:
    port = free_port()
    first = make_client(port)
    step = first.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    wait_until(lambda: any(s.attempts >= 2 and "no connection" in s.last_error
                           for s in first.status()), DEADLINE_S, "failed attempts shown")
    first.add_series(step, "1.2.3.500", images("1.2.3.500", 1))
    first.complete(step)
    first.stop()
    (status,) = first.status()
    assert (status.state, status.pending) == (PPSStatus.COMPLETED, Pending.N_CREATE)

    ris = MppsPeer("RIS")
    ris.start(port)
    try:
        restarted = make_client(port)        # same journal folder: a restart
        wait_done(restarted)
        _, states, exchanges = ris.snapshot()
    finally:
        ris.stop()
    assert states == {step.sop_instance_uid: [IN_PROGRESS, COMPLETED]}
    assert [e.status for e in exchanges] == [0x0000, 0x0000]
    assert list((tmp_path / "mpps").iterdir()) == []


@ACCEPT_PYNETDICOM_SOCKET_WARNING
def test_ris_back_while_running_and_rejected_associations(make_client: MakeClient) -> None:
    port = free_port()
    client = make_client(port)
    step = client.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    wait_until(lambda: any(s.attempts >= 1 for s in client.status()), DEADLINE_S,
               "a failed attempt")
    ris = MppsPeer("RIS")
    ris.start(port)
    try:
        ris.refuse_associations()
        wait_until(lambda: any("association rejected" in s.last_error
                               for s in client.status()), DEADLINE_S, "rejection shown")
        ris.refuse_associations(False)
        wait_until(lambda: ris.state_of(step.sop_instance_uid) == IN_PROGRESS
                   and settled(client), DEADLINE_S, "sent once the RIS accepts us")
        (status,) = client.status()
        assert (status.attempts, status.last_error) == (0, "")
    finally:
        ris.stop()


def test_lost_responses_are_resent_and_read_from_the_journal(
        peer: tuple[MppsPeer, int], make_client: MakeClient) -> None:
    ris, port = peer
    # N-CREATE processed but its response lost (abort); the final N-SET processed but never
    # answered (timeout), then refused for lack of resources: the resends' 0111H and
    # 0110H+A710 mean "ours arrived"
    ris.inject(Fault("abort_after", "N-CREATE"), Fault("hang_after", "N-SET"),
               Fault("status", "N-SET", 0x0213))
    client = make_client(port, dimse_timeout_s=0.5)
    step = client.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    client.add_series(step, "1.2.3.600", images("1.2.3.600", 1))
    client.complete(step)
    wait_done(client)
    _, states, exchanges = ris.snapshot()
    assert states[step.sop_instance_uid] == [IN_PROGRESS, COMPLETED]
    assert [(e.operation, e.status, e.error_id, e.fault) for e in exchanges] == [
        ("N-CREATE", None, None, "abort_after"),
        ("N-CREATE", 0x0111, None, ""),
        ("N-SET", None, None, "hang_after"),
        ("N-SET", 0x0213, None, "status"),        # resource limitation: try again later
        ("N-SET", 0x0110, 0xA710, ""),
    ]


def test_a_step_the_ris_closed_itself_is_shown_not_resent(
        peer: tuple[MppsPeer, int], make_client: MakeClient) -> None:
    ris, port = peer
    client = make_client(port)
    step = client.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    wait_until(lambda: ris.state_of(step.sop_instance_uid) == IN_PROGRESS and settled(client),
               DEADLINE_S, "N-CREATE acknowledged")
    # PS3.4 F.7.2.2.3 note 2: the RIS may itself set a final state (e.g. a failed modality)
    with ris._lock:
        ris.instances[step.sop_instance_uid].PerformedProcedureStepStatus = DISCONTINUED
    client.add_series(step, "1.2.3.700", images("1.2.3.700", 1))
    client.complete(step)
    wait_until(lambda: any(s.failed for s in client.status()), DEADLINE_S, "refusal shown")
    (status,) = client.status()
    assert status.pending is Pending.N_SET
    assert "A710" in status.last_error and "closed this MPPS itself" in status.last_error
    assert status.next_attempt_in_s is None
    n_sets = [e for e in ris.snapshot()[2] if e.operation == "N-SET"]
    assert len(n_sets) == 1                     # refused for good: not resent


# --- crashes: a real process killed between a response and its journal entry -----------------

CHILD = """
import json, sys, threading
from datetime import datetime
from pathlib import Path
from agent.config import MppsSection
from agent.iod.uids import UIDSource
from agent.logsetup import quiet_pynetdicom
from agent.mpps import MppsClient
from agent.records import Order

quiet_pynetdicom()
args = json.loads(sys.argv[1])
client = MppsClient(MppsSection("127.0.0.1", args["port"], "RIS"), ae_title="MODALITY1",
                    journal_dir=Path(args["journal"]), uids=UIDSource(), retry_initial_s=0.05,
                    retry_max_s=0.2, dimse_timeout_s=5.0)
step = client.begin(Order(patient_name="Doe^Jane", patient_id="PID-3"), modality="OT",
                    started_at=datetime(2024, 5, 6, 7, 8, 9), protocol_name="P")
client.add_series(step, "1.2.3.800", [("1.2.840.10008.5.1.4.1.1.7", "1.2.3.800.1")])
if args["complete"]:
    client.complete(step)
print(step.sop_instance_uid, flush=True)
client.start()
threading.Event().wait(30)       # the crash point ends the process long before
sys.exit(3)
"""


def crash_child(port: int, journal: Path, crash_point: str, *, complete: bool) -> str:
    env = {**os.environ, "AGENT_CRASHPOINT": crash_point}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({"port": port, "journal": str(journal),
                                                  "complete": complete})],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 137, result.stderr
    return result.stdout.strip()


def test_crash_after_the_final_n_set_was_answered(peer: tuple[MppsPeer, int],
                                                  make_client: MakeClient,
                                                  tmp_path: Path) -> None:
    ris, port = peer
    journal = tmp_path / "mpps"
    uid = crash_child(port, journal, CRASH_AFTER_FINAL_RESPONSE, complete=True)
    assert ris.state_of(uid) == COMPLETED                  # the RIS has it...
    record = json.loads((journal / journal_file_name(uid)).read_text())
    assert (record["final_sent"], record["final_acked"]) == (True, False)   # ...we do not

    client = make_client(port)
    wait_done(client)
    _, states, exchanges = ris.snapshot()
    assert states[uid] == [IN_PROGRESS, COMPLETED]
    assert [(e.operation, e.status, e.error_id) for e in exchanges] == [
        ("N-CREATE", 0x0000, None), ("N-SET", 0x0000, None), ("N-SET", 0x0110, 0xA710)]
    assert list(journal.iterdir()) == []


def test_crash_after_the_n_create_was_answered(peer: tuple[MppsPeer, int],
                                               make_client: MakeClient,
                                               tmp_path: Path) -> None:
    ris, port = peer
    journal = tmp_path / "mpps"
    uid = crash_child(port, journal, CRASH_AFTER_CREATE_RESPONSE, complete=False)
    assert ris.state_of(uid) == IN_PROGRESS

    client = make_client(port)
    (step,) = client.open_steps()                 # the daemon finds it after the restart
    assert isinstance(step, ProcedureStep) and step.sop_instance_uid == uid
    client.complete(step)
    wait_done(client)
    _, states, exchanges = ris.snapshot()
    assert states[uid] == [IN_PROGRESS, COMPLETED]
    assert [(e.operation, e.status) for e in exchanges] == [
        ("N-CREATE", 0x0000), ("N-CREATE", 0x0111), ("N-SET", 0x0000)]


# --- patient data -----------------------------------------------------------------------------

def test_no_patient_data_in_the_log(peer: tuple[MppsPeer, int], make_client: MakeClient,
                                    caplog: pytest.LogCaptureFixture) -> None:
    ris, port = peer
    caplog.set_level(logging.DEBUG, logger="agent")
    caplog.set_level(logging.INFO)
    ris.inject(Fault("abort_after", "N-CREATE"), Fault("status", "N-SET", 0x0106))
    client = make_client(port)
    step = client.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    client.add_series(step, "1.2.3.900", images("1.2.3.900", 1))
    client.complete(step)
    wait_until(lambda: any(s.failed for s in client.status()), DEADLINE_S, "0106H refusal")
    client.retry(step)
    wait_done(client)
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any(step.sop_instance_uid in r.getMessage() for r in records)   # the log works
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        assert PHI_NAME not in text and PHI_ID not in text, text
        assert "PHI" not in text and "SENTINEL" not in text, text
