"""MPPS without a network: the N-CREATE and N-SET datasets (PS3.4 Table F.7.2-1), the journal,
the status mapping and the client's rules for its callers."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import Dataset

from agent.config import MppsSection
from agent.iod.uids import UIDSource, is_valid_uid
from agent.mpps import (
    DISCONTINUATION_REASONS,
    MPPS_SOP_CLASS_UID,
    MppsClient,
    MppsJournalError,
    MppsStateError,
    MppsValueError,
    Pending,
    PPSStatus,
    UnknownProcedureStep,
    discontinuation_reason,
    series_values,
)
from agent.mpps.codes import EQUIPMENT_FAILURE
from agent.mpps.dataset import N_SET_KEYWORDS, final_n_set_dataset, n_create_dataset
from agent.mpps.journal import (
    Journal,
    journal_file_name,
    record_from_json,
    record_to_json,
)
from agent.mpps.model import MppsRecord, PerformedSeries, ProcedureStep
from agent.mpps.outcome import Verdict, classify_mpps_status
from agent.records import Code, Order, OtherPatientID, SOPReference

SC = "1.2.840.10008.5.1.4.1.1.7"
STUDY_UID = "1.2.826.0.1.3680043.10.999.1"
STARTED = datetime(2024, 5, 6, 7, 8, 9, 123456)
PROTOCOL = Code("P-1", "99LOCAL", "Chest PA")

SCHEDULED = Order(
    patient_name="Müller^Jörg", patient_id="PID-1", patient_birth_date="19700101",
    patient_sex="M", issuer_of_patient_id="HOSP", study_instance_uid=STUDY_UID,
    accession_number="ACC-1", requested_procedure_id="RP-1",
    requested_procedure_description="Chest X-ray", sps_id="SPS-1",
    sps_description="Chest PA", scheduled=True,
    other_patient_ids=(OtherPatientID("OTHER-1", "CLINIC"),),
    referenced_studies=(SOPReference("1.2.840.10008.3.1.2.3.1", "1.2.3.4"),),
    requested_procedure_codes=(Code("RPC-1", "99LOCAL", "Chest X-ray"),),
    scheduled_protocol_codes=(PROTOCOL,), admission_id="ADM-1",
)
UNSCHEDULED = Order(patient_name="Doe^Jane", patient_id="PID-2")


def client(tmp_path: Path, **kwargs: object) -> MppsClient:
    return MppsClient(MppsSection("127.0.0.1", 1, "RIS"), ae_title="MODALITY1",
                      journal_dir=tmp_path / "mpps", uids=UIDSource(), station_name="ROOM1",
                      **kwargs)  # type: ignore[arg-type]


def record_for(tmp_path: Path, order: Order) -> MppsRecord:
    mpps = client(tmp_path)
    step = mpps.begin(order, modality="OT", started_at=STARTED, protocol_name="Chest PA")
    return mpps._records[step.sop_instance_uid]


def with_series(record: MppsRecord, *uids: str) -> MppsRecord:
    series = [PerformedSeries(uid, "Chest PA", images=(SOPReference(SC, uid + ".1"),
                                                       SOPReference(SC, uid + ".2")))
              for uid in uids]
    return replace(record, series=series)


# --- N-CREATE ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [SCHEDULED, UNSCHEDULED], ids=["scheduled", "unscheduled"])
def test_every_attribute_set_later_is_created(tmp_path: Path, order: Order) -> None:
    record = record_for(tmp_path, order)
    created = n_create_dataset(record)
    for status, reason in ((PPSStatus.COMPLETED, None),
                           (PPSStatus.DISCONTINUED, EQUIPMENT_FAILURE)):
        final = replace(with_series(record, "1.2.3.9"), final_status=status,
                        end_date="20240506", end_time="080000", discontinuation_reason=reason)
        n_set = final_n_set_dataset(final)
        assert set(n_set.keys()) <= set(created.keys())
        assert {e.keyword for e in n_set} == set(N_SET_KEYWORDS)
    for keyword in N_SET_KEYWORDS:
        assert keyword in created, keyword


def test_n_create_is_in_progress_with_zero_length_final_attributes(tmp_path: Path) -> None:
    ds = n_create_dataset(record_for(tmp_path, SCHEDULED))
    assert ds.PerformedProcedureStepStatus == "IN PROGRESS"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
                    "PerformedProcedureTypeDescription"):
        assert ds[keyword].is_empty, keyword
    for keyword in ("PerformedSeriesSequence", "ReferencedPatientSequence",
                    "PerformedProcedureStepDiscontinuationReasonCodeSequence"):
        assert len(ds[keyword].value) == 0, keyword
    assert ds.PerformedStationAETitle == "MODALITY1"
    assert ds.PerformedStationName == "ROOM1"
    assert ds.PerformedProcedureStepStartDate == "20240506"
    assert ds.PerformedProcedureStepStartTime == "070809.123456"
    assert ds.Modality == "OT"
    assert 0 < len(ds.PerformedProcedureStepID) <= 16


def test_scheduled_step_attributes_come_from_the_worklist_item(tmp_path: Path) -> None:
    ds = n_create_dataset(record_for(tmp_path, SCHEDULED))
    assert len(ds.ScheduledStepAttributesSequence) == 1
    item = ds.ScheduledStepAttributesSequence[0]
    assert item.StudyInstanceUID == STUDY_UID
    assert item.AccessionNumber == "ACC-1"
    assert item.RequestedProcedureID == "RP-1"
    assert item.RequestedProcedureDescription == "Chest X-ray"
    assert item.ScheduledProcedureStepID == "SPS-1"
    assert item.ScheduledProcedureStepDescription == "Chest PA"
    assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
            for r in item.ReferencedStudySequence] == [("1.2.840.10008.3.1.2.3.1", "1.2.3.4")]
    assert [c.CodeValue for c in item.ScheduledProtocolCodeSequence] == ["P-1"]
    assert [c.CodeValue for c in item.RequestedProcedureCodeSequence] == ["RPC-1"]
    # patient, copied unchanged; Procedure codes from the order
    assert str(ds.PatientName) == "Müller^Jörg"
    assert (ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == ("PID-1", "19700101", "M")
    assert ds.IssuerOfPatientID == "HOSP"
    assert ds.OtherPatientIDsSequence[0].PatientID == "OTHER-1"
    assert ds.AdmissionID == "ADM-1"
    assert [c.CodeValue for c in ds.ProcedureCodeSequence] == ["RPC-1"]
    # what was performed is not known from the schedule: Type 2, present and empty
    assert "PerformedProtocolCodeSequence" in ds
    assert len(ds.PerformedProtocolCodeSequence) == 0
    assert ds.PerformedProcedureStepDescription == "Chest PA"


def test_performed_protocol_is_sent_only_when_given(tmp_path: Path) -> None:
    performed = Code("P-2", "99LOCAL", "Chest PA, repeated lateral")
    mpps = client(tmp_path)
    step = mpps.begin(SCHEDULED, modality="OT", started_at=STARTED, protocol_name="Chest PA",
                      performed_protocol_codes=[performed])
    ds = n_create_dataset(mpps._records[step.sop_instance_uid])
    assert [(c.CodeValue, c.CodeMeaning) for c in ds.PerformedProtocolCodeSequence] == [
        ("P-2", "Chest PA, repeated lateral")]
    # the schedule stays where it belongs: in the Scheduled Step Attributes item
    assert [c.CodeValue for c in
            ds.ScheduledStepAttributesSequence[0].ScheduledProtocolCodeSequence] == ["P-1"]


def test_unscheduled_step_attributes_are_empty_but_present(tmp_path: Path) -> None:
    record = record_for(tmp_path, UNSCHEDULED)
    ds = n_create_dataset(record)
    item = ds.ScheduledStepAttributesSequence[0]
    # F.7.2.1.2 note 3: a generated Study Instance UID, every other 2/2 attribute zero length
    assert is_valid_uid(item.StudyInstanceUID)
    assert item.StudyInstanceUID == record.step.study_instance_uid
    for keyword in ("AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription",
                    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription"):
        assert keyword in item and item[keyword].is_empty, keyword
    for keyword in ("ReferencedStudySequence", "ScheduledProtocolCodeSequence"):
        assert keyword in item and len(item[keyword].value) == 0, keyword
    assert "RequestedProcedureCodeSequence" not in item           # 3/3: absent
    assert len(ds.ProcedureCodeSequence) == 0
    assert len(ds.PerformedProtocolCodeSequence) == 0
    assert ds.PatientBirthDate == "" and ds.PatientSex == ""


# --- final N-SET ------------------------------------------------------------------------------

def test_completed_n_set_lists_every_series_and_image(tmp_path: Path) -> None:
    record = with_series(record_for(tmp_path, SCHEDULED), "1.2.3.9", "1.2.3.10")
    final = replace(record, final_status=PPSStatus.COMPLETED, end_date="20240506",
                    end_time="081500.000000")
    ds = final_n_set_dataset(final)
    assert ds.PerformedProcedureStepStatus == "COMPLETED"
    assert (ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime) == \
        ("20240506", "081500.000000")
    assert len(ds.PerformedProcedureStepDiscontinuationReasonCodeSequence) == 0
    assert [s.SeriesInstanceUID for s in ds.PerformedSeriesSequence] == ["1.2.3.9", "1.2.3.10"]
    for item in ds.PerformedSeriesSequence:
        assert item.ProtocolName == "Chest PA"
        for keyword in ("PerformingPhysicianName", "OperatorsName", "SeriesDescription",
                        "RetrieveAETitle"):
            assert keyword in item, keyword
        assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
                for r in item.ReferencedImageSequence] == [
            (SC, item.SeriesInstanceUID + ".1"), (SC, item.SeriesInstanceUID + ".2")]
        assert len(item.ReferencedNonImageCompositeSOPInstanceSequence) == 0


def _image(**values: str) -> Dataset:
    image = Dataset()
    image.SOPClassUID, image.SOPInstanceUID = SC, "1.2.3.9.1"
    image.SeriesInstanceUID = "1.2.3.9"
    for keyword, value in values.items():
        setattr(image, keyword, value)
    return image


@pytest.mark.parametrize("values", [
    {},
    {"SeriesDescription": "X-Ray Radiation Dose Report"},
    {"ProtocolName": "Chest PA", "SeriesDescription": "PA", "OperatorsName": "Tech^Tina",
     "PerformingPhysicianName": "Doc^Dora"},
], ids=["nothing", "description", "everything"])
def test_series_item_says_what_the_images_say_and_no_more(tmp_path: Path,
                                                          values: dict[str, str]) -> None:
    mpps = client(tmp_path)
    step = mpps.begin(SCHEDULED, modality="OT", started_at=STARTED, protocol_name="Step PA")
    image = _image(**values)
    mpps.add_series(step, image.SeriesInstanceUID, [SOPReference(SC, image.SOPInstanceUID)],
                    **series_values(image))
    mpps.complete(step, ended_at=STARTED)
    (item,) = final_n_set_dataset(mpps._records[step.sop_instance_uid]).PerformedSeriesSequence
    for keyword in ("SeriesDescription", "OperatorsName", "PerformingPhysicianName"):
        # Type 2: present; zero length unless the image carries the value
        assert keyword in item, keyword
        assert (str(item[keyword].value) if not item[keyword].is_empty else "") == \
            values.get(keyword, ""), keyword
    # Protocol Name is Type 1 in the MPPS: the image's, else the step's (begin)
    assert item.ProtocolName == values.get("ProtocolName", "Step PA")


def test_discontinued_n_set_carries_the_reason(tmp_path: Path) -> None:
    record = with_series(record_for(tmp_path, UNSCHEDULED), "1.2.3.9")
    final = replace(record, final_status=PPSStatus.DISCONTINUED, end_date="20240506",
                    end_time="081500", discontinuation_reason=EQUIPMENT_FAILURE)
    ds = final_n_set_dataset(final)
    assert ds.PerformedProcedureStepStatus == "DISCONTINUED"
    (reason,) = ds.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert (reason.CodeValue, reason.CodingSchemeDesignator, reason.CodeMeaning) == \
        ("110501", "DCM", "Equipment failure")


def test_final_n_set_needs_a_series(tmp_path: Path) -> None:
    record = replace(record_for(tmp_path, UNSCHEDULED), final_status=PPSStatus.COMPLETED,
                     end_date="20240506", end_time="081500")
    with pytest.raises(MppsValueError, match="Performed Series Sequence"):
        final_n_set_dataset(record)


def test_reason_codes_are_cid_9301() -> None:
    assert sorted(DISCONTINUATION_REASONS) == [str(v) for v in range(110500, 110517)]
    assert all(c.scheme == "DCM" and c.meaning for c in DISCONTINUATION_REASONS.values())
    assert discontinuation_reason("110514").meaning == "Incorrect worklist entry selected"
    with pytest.raises(MppsValueError, match="110500 Doctor canceled procedure"):
        discontinuation_reason("999")


# --- values and the caller's rules ------------------------------------------------------------

def test_bad_values_are_refused_without_showing_patient_data(tmp_path: Path) -> None:
    mpps = client(tmp_path)
    with pytest.raises(MppsValueError) as info:
        mpps.begin(replace(UNSCHEDULED, patient_name="SECRET^" + "X" * 70), modality="OT",
                   started_at=STARTED, protocol_name="P")
    assert "SECRET" not in str(info.value)
    with pytest.raises(MppsValueError, match="Modality"):
        mpps.begin(UNSCHEDULED, modality="ot", started_at=STARTED, protocol_name="P")
    with pytest.raises(MppsValueError, match="ProtocolName"):
        mpps.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="")
    with pytest.raises(MppsValueError, match="control character"):
        mpps.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="a\nb")
    # IHE SWF: no dummy values unscheduled; the worklist's study UID when scheduled
    with pytest.raises(MppsValueError, match="AccessionNumber"):
        mpps.begin(replace(UNSCHEDULED, accession_number="X"), modality="OT",
                   started_at=STARTED, protocol_name="P")
    with pytest.raises(MppsValueError, match="StudyInstanceUID"):
        mpps.begin(replace(SCHEDULED, study_instance_uid=None), modality="OT",
                   started_at=STARTED, protocol_name="P")
    assert mpps.status() == []
    assert list((tmp_path / "mpps").iterdir()) == []


def test_unscheduled_step_mints_the_study_uid_the_images_use(tmp_path: Path) -> None:
    mpps = client(tmp_path)
    step = mpps.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    assert is_valid_uid(step.study_instance_uid)
    assert step.order.study_instance_uid == step.study_instance_uid
    refs = step.image_references()
    assert refs.referenced_sop_class_uid == MPPS_SOP_CLASS_UID == "1.2.840.10008.3.1.2.3.3"
    assert refs.referenced_sop_instance_uid == step.sop_instance_uid
    assert (refs.pps_id, refs.pps_start_date, refs.pps_start_time) == \
        (step.pps_id, "20240506", "070809.123456")
    # append case: the same order again is a new MPPS in the same study
    again = mpps.begin(step.order, modality="OT", started_at=STARTED, protocol_name="P")
    assert again.sop_instance_uid != step.sop_instance_uid
    assert again.pps_id != step.pps_id
    assert again.study_instance_uid == step.study_instance_uid


def test_series_images_merge_and_final_steps_refuse_changes(tmp_path: Path) -> None:
    mpps = client(tmp_path)
    step = mpps.begin(SCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    other = mpps.begin(SCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    with pytest.raises(MppsStateError, match="no image"):
        mpps.complete(step)
    mpps.add_series(step, "1.2.3.9", [(SC, "1.2.3.9.1")])
    mpps.add_series(step, "1.2.3.9", [(SC, "1.2.3.9.1"), SOPReference(SC, "1.2.3.9.2")],
                    series_description="second call")
    with pytest.raises(MppsValueError, match="never spans steps"):
        mpps.add_series(other, "1.2.3.9", [(SC, "1.2.3.9.3")])
    with pytest.raises(MppsValueError, match="not a valid UID"):
        mpps.add_series(step, "1.2.3.10", [(SC, "not-a-uid")])
    (series,) = mpps._records[step.sop_instance_uid].series
    assert [i.sop_instance_uid for i in series.images] == ["1.2.3.9.1", "1.2.3.9.2"]
    assert series.series_description == "second call"
    mpps.complete(step, ended_at=datetime(2024, 5, 6, 8, 0, 0))
    with pytest.raises(MppsStateError, match="COMPLETED"):
        mpps.add_series(step, "1.2.3.11", [(SC, "1.2.3.11.1")])
    with pytest.raises(MppsStateError):
        mpps.discontinue(step, EQUIPMENT_FAILURE)
    with pytest.raises(UnknownProcedureStep):
        mpps.complete("1.2.3.4.5.6")
    states = {s.sop_instance_uid: s for s in mpps.status()}
    assert states[step.sop_instance_uid].state is PPSStatus.COMPLETED
    assert states[step.sop_instance_uid].pending is Pending.N_CREATE
    assert (states[step.sop_instance_uid].series, states[step.sop_instance_uid].images) == (1, 2)


def test_discontinue_without_series_adds_an_empty_one(tmp_path: Path) -> None:
    mpps = client(tmp_path)
    step = mpps.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    mpps.discontinue(step, discontinuation_reason("110505"))
    record = mpps._records[step.sop_instance_uid]
    (series,) = record.series
    assert is_valid_uid(series.series_instance_uid) and series.images == ()
    ds = final_n_set_dataset(record)
    assert len(ds.PerformedSeriesSequence[0].ReferencedImageSequence) == 0


# --- the journal ------------------------------------------------------------------------------

def test_journal_round_trip_and_file_permissions(tmp_path: Path) -> None:
    mpps = client(tmp_path)
    step = mpps.begin(SCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    mpps.add_series(step, "1.2.3.9", [(SC, "1.2.3.9.1")])
    mpps.discontinue(step, EQUIPMENT_FAILURE, ended_at=datetime(2024, 5, 6, 8, 0, 0))
    record = mpps._records[step.sop_instance_uid]
    assert record_from_json(json.loads(json.dumps(record_to_json(record)))) == record

    folder = tmp_path / "mpps"
    (path,) = folder.iterdir()
    assert path.name == journal_file_name(step.sop_instance_uid)
    assert len(path.stem) == 32 and all(c in "0123456789abcdef" for c in path.stem)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    # a new client (a restart) resumes it as it was
    resumed = client(tmp_path)
    assert resumed._records[step.sop_instance_uid] == record
    assert resumed.open_steps() == []                       # final, only the N-SET is owed


def test_journal_leaves_out_damaged_files_and_leftovers(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    mpps = client(tmp_path)
    keep = mpps.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    folder = tmp_path / "mpps"
    damaged = folder / journal_file_name("1.2.3")
    damaged.write_text('{"format": 1, "patient_name": "SECRET')
    leftover = folder / (journal_file_name(keep.sop_instance_uid) + ".tmp")
    leftover.write_text("half written")
    resumed = client(tmp_path)
    assert [s.sop_instance_uid for s in resumed.open_steps()] == [keep.sop_instance_uid]
    assert not leftover.exists() and not damaged.exists()
    assert (folder / (damaged.name + ".corrupt")).exists()
    assert "SECRET" not in caplog.text


def test_journal_write_failure_changes_nothing(tmp_path: Path) -> None:
    mpps = client(tmp_path)
    step = mpps.begin(UNSCHEDULED, modality="OT", started_at=STARTED, protocol_name="P")
    folder = tmp_path / "mpps"
    # a file where the folder was: writes fail even for root, whom permissions do not stop
    folder.rename(tmp_path / "moved")
    folder.write_text("")
    with pytest.raises(MppsJournalError, match=r"journal .* not written"):
        mpps.add_series(step, "1.2.3.9", [(SC, "1.2.3.9.1")])
    with pytest.raises(OSError):                 # MppsJournalError is an OSError too
        mpps.discontinue(step, EQUIPMENT_FAILURE)
    assert mpps._records[step.sop_instance_uid].series == []
    assert mpps._records[step.sop_instance_uid].final_status is None


def test_journal_records_with_other_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        record_from_json({"format": 99})


def test_journal_is_read_oldest_first(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    assert journal.open() == []
    mpps = client(tmp_path)
    late = mpps.begin(UNSCHEDULED, modality="OT", started_at=datetime(2024, 5, 7),
                      protocol_name="P")
    early = mpps.begin(UNSCHEDULED, modality="OT", started_at=datetime(2024, 5, 6),
                       protocol_name="P")
    assert [r.step for r in Journal(tmp_path / "mpps").open()] == [early, late]
    assert isinstance(early, ProcedureStep)


# --- response statuses ------------------------------------------------------------------------

def status(code: int, **extra: object) -> Dataset:
    ds = Dataset()
    ds.Status = code
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("ds", "operation", "verdict"), [
    (status(0x0000), "N-CREATE", Verdict.ACCEPTED),
    (status(0x0001), "N-SET", Verdict.ACCEPTED),                  # warning: held
    (Dataset(), "N-CREATE", Verdict.RETRY),                        # no answer
    (None, "N-SET", Verdict.RETRY),
    (status(0x0213), "N-SET", Verdict.RETRY),
    (status(0x0110), "N-SET", Verdict.RETRY),                      # no A710: transient
    (status(0x0111), "N-CREATE", Verdict.ALREADY),
    (status(0x0110, ErrorID=0xA710), "N-SET", Verdict.ALREADY),
    (status(0x0111), "N-SET", Verdict.REFUSED),
    (status(0x0106), "N-CREATE", Verdict.REFUSED),
    (status(0x0120), "N-CREATE", Verdict.REFUSED),
    (status(0x0112), "N-SET", Verdict.REFUSED),
])
def test_status_mapping(ds: Dataset | None, operation: str, verdict: Verdict) -> None:
    assert classify_mpps_status(ds, operation=operation).verdict is verdict


def test_status_text_names_the_error_id() -> None:
    result = classify_mpps_status(
        status(0x0110, ErrorID=0xA710, ErrorComment="may no longer be updated"),
        operation="N-SET")
    assert result.text == ("0x0110 processing failure, Error ID A710 (may no longer be "
                           "updated)")
