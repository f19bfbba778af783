"""The test MPPS SCP enforces PS3.4 F.7.2 (a lax peer would let the client's tests pass on
anything): each rule is driven by hand-made requests over a real association."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom.association import Association
from support.mpps_peer import COMPLETED, IN_PROGRESS, MppsPeer
from support.peers import LOCALHOST, free_port

from agent.config import MppsSection
from agent.iod.uids import UIDSource
from agent.logsetup import quiet_pynetdicom
from agent.mpps import MPPS_SOP_CLASS_UID, MppsClient
from agent.mpps.dataset import final_n_set_dataset, n_create_dataset
from agent.mpps.model import MppsRecord, PPSStatus
from agent.net.ae import AgentAE, associate
from agent.records import Order

pytestmark = pytest.mark.integration

SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def assoc() -> Iterator[tuple[MppsPeer, Association]]:
    quiet_pynetdicom()
    port = free_port()
    ris = MppsPeer("RIS")
    ris.start(port)
    ae = AgentAE("MODALITY1")
    ae.add_requested_context(MPPS_SOP_CLASS_UID)
    association = associate(ae, LOCALHOST, port, "RIS")
    try:
        yield ris, association
    finally:
        association.release()
        ris.stop()


@pytest.fixture
def record(tmp_path: Path) -> MppsRecord:
    """A step as the client builds it (not sent: no sender is started)."""
    client = MppsClient(MppsSection(LOCALHOST, 1, "RIS"), ae_title="MODALITY1",
                        journal_dir=tmp_path / "mpps", uids=UIDSource())
    step = client.begin(Order(patient_name="Doe^Jane", patient_id="PID-4"), modality="OT",
                        started_at=datetime(2024, 5, 6, 7, 8, 9), protocol_name="P")
    client.add_series(step, "1.2.3.1", [(SC, "1.2.3.1.1")])
    client.complete(step, ended_at=datetime(2024, 5, 6, 7, 30))
    return client._records[step.sop_instance_uid]


def create(association: Association, ds: Dataset, uid: str) -> tuple[int, int | None]:
    status, _ = association.send_n_create(ds, MPPS_SOP_CLASS_UID, uid)
    return int(status.Status), status.get("ErrorID")


def n_set(association: Association, ds: Dataset, uid: str) -> tuple[int, int | None]:
    status, _ = association.send_n_set(ds, MPPS_SOP_CLASS_UID, uid)
    return int(status.Status), status.get("ErrorID")


def test_n_create_rules(assoc: tuple[MppsPeer, Association], record: MppsRecord) -> None:
    ris, association = assoc
    uid = record.step.sop_instance_uid
    wrong_status = n_create_dataset(record)
    wrong_status.PerformedProcedureStepStatus = COMPLETED
    assert create(association, wrong_status, uid) == (0x0106, None)      # F.7.2.1.3
    missing = n_create_dataset(record)
    del missing.PerformedProcedureStepEndDate                             # Type 2
    assert create(association, missing, uid) == (0x0120, None)
    missing_in_item = n_create_dataset(record)
    del missing_in_item.ScheduledStepAttributesSequence[0].AccessionNumber
    assert create(association, missing_in_item, uid) == (0x0120, None)
    empty = n_create_dataset(record)
    empty.PerformedProcedureStepID = ""                                   # Type 1
    assert create(association, empty, uid) == (0x0121, None)
    assert ris.state_of(uid) == ""
    assert create(association, n_create_dataset(record), uid) == (0x0000, None)
    assert create(association, n_create_dataset(record), uid) == (0x0111, None)
    assert ris.state_of(uid) == IN_PROGRESS


def test_n_set_rules(assoc: tuple[MppsPeer, Association], record: MppsRecord) -> None:
    ris, association = assoc
    uid = record.step.sop_instance_uid
    assert n_set(association, final_n_set_dataset(record), uid) == (0x0112, None)
    created = n_create_dataset(record)
    del created.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert create(association, created, uid) == (0x0000, None)

    not_created = Dataset()
    not_created.PerformedProcedureStepDiscontinuationReasonCodeSequence = []
    assert n_set(association, not_created, uid) == (0x0105, None)         # F.7.2.2.2
    not_allowed = Dataset()
    not_allowed.PatientName = "Other^Name"
    assert n_set(association, not_allowed, uid) == (0x0106, None)         # "Not allowed"
    no_series = Dataset()
    no_series.PerformedProcedureStepStatus = COMPLETED
    no_series.PerformedProcedureStepEndDate = "20240506"
    no_series.PerformedProcedureStepEndTime = "073000"
    assert n_set(association, no_series, uid) == (0x0121, None)           # note 2
    no_end = final_n_set_dataset(record)
    no_end.PerformedProcedureStepEndTime = ""
    del no_end.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert n_set(association, no_end, uid) == (0x0121, None)              # final state Type 1
    assert ris.state_of(uid) == IN_PROGRESS                                # refused: unchanged

    final = final_n_set_dataset(record)
    del final.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert n_set(association, final, uid) == (0x0000, None)
    assert ris.state_of(uid) == PPSStatus.COMPLETED.value
    assert n_set(association, final, uid) == (0x0110, 0xA710)             # Table F.7.2-2
    _, states, _ = ris.snapshot()
    assert states[uid] == [IN_PROGRESS, COMPLETED]
