"""A worklist item into every image (IHE RAD TF-2x Appendix A, PS3.17 Annex J): WorklistItem
-> Order -> Secondary Capture -> Part 10 -> read back; dciodvfy on the files; the JSON shape of
`worklist --json`; the cache form; the unscheduled case."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from support.peers import run_dciodvfy

from agent.iod import UIDSource, build_secondary_capture, encode_part10, new_series_context
from agent.records import Code, DeviceInfo, Order, OtherPatientID, SOPReference
from agent.worklist import JSON_KEYS, WorklistItem, WorklistSnapshot
from drivers.frame import Frame

TZ = timezone(timedelta(hours=1))
STARTED_AT = datetime(2024, 5, 1, 9, 31, 2)
DEVICE = DeviceInfo(modality="OT", manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1", institution_name="",
                    software_versions="1.0")
STUDY_UID = "1.2.826.0.1.3680043.10.1234.77"
STUDY_CLASS = "1.2.840.10008.3.1.2.3.1"

ITEM = WorklistItem(
    patient_name="Müller^Jürgen",
    patient_id="PID-4711",
    issuer_of_patient_id="HOSP",
    patient_birth_date="19611231",
    patient_sex="M",
    other_patient_ids=(OtherPatientID("OLD-9", "OLDHOSP", "TEXT"),
                       OtherPatientID("CARD-1", "", "BARCODE")),
    admission_id="ADM-77",
    accession_number="ACC-2024-42",
    referring_physician_name="Schäfer^Anna^^Dr.",
    requested_procedure_id="RP-17",
    requested_procedure_description="Röntgen Thorax",
    requested_procedure_codes=(Code("RPID-17", "99LOCAL", "Chest radiograph"),),
    study_instance_uid=STUDY_UID,
    referenced_studies=(SOPReference(STUDY_CLASS, "1.2.826.0.1.3680043.10.1234.78"),),
    modality="OT",
    station_ae_title="MODALITY1",
    sps_start_date="20240501",
    sps_start_time="0930",
    sps_id="SPS-17-1",
    sps_description="Thorax p.a.",
    scheduled_protocol_codes=(Code("PROT-1", "99LOCAL", "Chest PA", "1.0"),),
    performing_physician_name="Quinn^Michaela",
    sps_status="SCHEDULED",
    character_set="ISO_IR 192",
)


def frame() -> Frame:
    pixels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60).astype(np.uint16)
    return Frame(pixels=pixels, bits_stored=12, photometric_interpretation="MONOCHROME2",
                 t_mono=1.0, t_wall=1_714_548_662.5, sequence_number=1)


def image(order: Order) -> Dataset:
    uids = UIDSource()
    series = new_series_context(uids, order, started_at=STARTED_AT, series_number=1,
                                study_id=order.requested_procedure_id, tz=TZ)
    return build_secondary_capture(frame(), order=order, device=DEVICE, series=series,
                                   instance_number=1, sop_instance_uid=uids.new_uid(), tz=TZ)


def read_back(tmp_path: Path, ds: Dataset, name: str = "image.dcm") -> tuple[Path, Dataset]:
    path = tmp_path / name
    path.write_bytes(encode_part10(ds))
    return path, pydicom.dcmread(path)


def _codes(sequence: object) -> tuple[Code, ...]:
    return tuple(Code(str(item.CodeValue), str(item.CodingSchemeDesignator),
                      str(item.CodeMeaning), str(item.get("CodingSchemeVersion", "")))
                 for item in sequence or ())  # type: ignore[attr-defined]


def order_from_image(ds: Dataset) -> Order:
    """What an archive reads back: the Order the image says it was for."""
    request = ds.RequestAttributesSequence[0] if "RequestAttributesSequence" in ds else Dataset()
    procedure_codes = _codes(ds.get("ProcedureCodeSequence"))
    assert _codes(request.get("RequestedProcedureCodeSequence")) == procedure_codes
    return Order(
        patient_name=str(ds.PatientName),
        patient_id=ds.PatientID,
        patient_birth_date=ds.PatientBirthDate,
        patient_sex=ds.PatientSex,
        issuer_of_patient_id=ds.get("IssuerOfPatientID", ""),
        study_instance_uid=ds.StudyInstanceUID,
        accession_number=ds.AccessionNumber,
        requested_procedure_id=request.get("RequestedProcedureID", ""),
        requested_procedure_description=ds.get("StudyDescription", ""),
        referring_physician_name=str(ds.ReferringPhysicianName),
        sps_id=request.get("ScheduledProcedureStepID", ""),
        sps_description=request.get("ScheduledProcedureStepDescription", ""),
        scheduled="RequestAttributesSequence" in ds,
        other_patient_ids=tuple(
            OtherPatientID(item.PatientID, item.get("IssuerOfPatientID", ""),
                           item.TypeOfPatientID)
            for item in ds.get("OtherPatientIDsSequence", ())),
        referenced_studies=tuple(
            SOPReference(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
            for item in ds.get("ReferencedStudySequence", ())),
        requested_procedure_codes=procedure_codes,
        scheduled_protocol_codes=_codes(request.get("ScheduledProtocolCodeSequence")),
        admission_id=ds.get("AdmissionID", ""),
    )


def test_to_order_copies_what_the_images_need() -> None:
    order = ITEM.to_order()
    assert order.scheduled
    assert order.study_instance_uid == STUDY_UID
    for name in ("patient_name", "patient_id", "issuer_of_patient_id", "patient_birth_date",
                 "patient_sex", "other_patient_ids", "admission_id", "accession_number",
                 "referring_physician_name", "requested_procedure_id",
                 "requested_procedure_description", "requested_procedure_codes",
                 "referenced_studies", "sps_id", "sps_description", "scheduled_protocol_codes"):
        assert getattr(order, name) == getattr(ITEM, name), name


def test_scheduled_image_carries_the_worklist_item(tmp_path: Path) -> None:
    path, back = read_back(tmp_path, image(ITEM.to_order()))
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.StudyInstanceUID == STUDY_UID                  # the RIS's, never a new one
    assert back.AccessionNumber == "ACC-2024-42"
    assert back.StudyDescription == "Röntgen Thorax"
    assert back.StudyID == "RP-17"
    assert back.AdmissionID == "ADM-77"
    assert back.ReferencedStudySequence[0].ReferencedSOPInstanceUID == \
        "1.2.826.0.1.3680043.10.1234.78"
    assert back.ProcedureCodeSequence[0].CodeMeaning == "Chest radiograph"
    (request,) = back.RequestAttributesSequence
    assert request.RequestedProcedureID == "RP-17"
    assert request.ScheduledProcedureStepID == "SPS-17-1"
    assert request.ScheduledProcedureStepDescription == "Thorax p.a."
    assert request.ScheduledProtocolCodeSequence[0].CodeValue == "PROT-1"
    assert request.ScheduledProtocolCodeSequence[0].CodingSchemeVersion == "1.0"
    assert request.RequestedProcedureCodeSequence[0].CodeValue == "RPID-17"
    assert [item.TypeOfPatientID for item in back.OtherPatientIDsSequence] == ["TEXT", "BARCODE"]
    assert order_from_image(back) == ITEM.to_order()
    assert run_dciodvfy(path) == []


@pytest.mark.parametrize("name", [
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "Γιάννης^Παπαδόπουλος",
    "",
])
def test_names_reach_the_image_unchanged_in_utf8(name: str, tmp_path: Path) -> None:
    item = dataclasses.replace(ITEM, patient_name=name)
    path, back = read_back(tmp_path, image(item.to_order()))
    assert str(back.PatientName) == name
    assert name.encode("utf-8") in path.read_bytes()
    assert run_dciodvfy(path) == []


def test_unscheduled_image_has_a_new_study_and_no_dummy_values(tmp_path: Path) -> None:
    order = Order(patient_name="Doe^Jane", patient_id="P-1")
    path, back = read_back(tmp_path, image(order))
    assert back.StudyInstanceUID.startswith("2.25.")
    assert back.AccessionNumber == ""
    for keyword in ("RequestAttributesSequence", "ProcedureCodeSequence",
                    "ReferencedStudySequence", "OtherPatientIDsSequence", "AdmissionID"):
        assert keyword not in back, keyword
    assert run_dciodvfy(path) == []


def test_bad_worklist_values_are_refused_before_building() -> None:
    from agent.errors import IODError
    bad = dataclasses.replace(ITEM, requested_procedure_codes=(Code("", "99LOCAL", "x"),))
    with pytest.raises(IODError, match=r"ProcedureCodeSequence\[0\]\.CodeValue is Type 1"):
        image(bad.to_order())
    bad = dataclasses.replace(ITEM, referenced_studies=(SOPReference(STUDY_CLASS, "1.02"),))
    with pytest.raises(IODError, match=r"ReferencedStudySequence\[0\]\.ReferencedSOPInstance"):
        image(bad.to_order())
    bad = dataclasses.replace(ITEM, other_patient_ids=(OtherPatientID("X", "", "PASSPORT"),))
    with pytest.raises(IODError, match=r"OtherPatientIDsSequence\[0\]\.TypeOfPatientID"):
        image(bad.to_order())


# --- property: what the worklist says is what the image says -------------------------------

_LETTERS = st.sampled_from([*"abcdefghijklmnopqrstuvwxyz", *"ÄÖÜäöüßé", *"Γιάννης",
                            *"Παπαδόπουλος", *"山田太郎やまだ"])
_COMPONENT = st.text(_LETTERS, min_size=1, max_size=8)
_GROUP = st.lists(_COMPONENT, min_size=1, max_size=3).map("^".join)
_NAME = st.one_of(st.just(""), st.lists(_GROUP, min_size=1, max_size=3).map("=".join))
_ID = st.text(st.sampled_from("ABCXYZ0123456789-."), min_size=1, max_size=16)
_LONG_TEXT = st.text(st.sampled_from("Thorax Röntgen 123-Θώρακας"), max_size=64).map(str.strip)
_UID = st.integers(min_value=1, max_value=2**64).map(lambda n: f"2.25.{n}")
_CODE = st.builds(Code, value=_ID, scheme=st.sampled_from(["DCM", "99LOCAL", "LN"]),
                  meaning=_LONG_TEXT.filter(bool), scheme_version=st.sampled_from(["", "1.0"]))
_DATE = st.one_of(st.just(""), st.dates(min_value=date(1900, 1, 1)).map(
    lambda d: d.strftime("%Y%m%d")))

ITEMS = st.builds(
    WorklistItem,
    patient_name=_NAME,
    patient_id=_ID,
    study_instance_uid=_UID,
    requested_procedure_id=_ID,
    sps_id=_ID,
    issuer_of_patient_id=st.one_of(st.just(""), _ID),
    patient_birth_date=_DATE,
    patient_sex=st.sampled_from(["", "M", "F", "O"]),
    other_patient_ids=st.lists(st.builds(OtherPatientID, patient_id=_ID,
                                         issuer_of_patient_id=st.one_of(st.just(""), _ID),
                                         type_of_patient_id=st.sampled_from(
                                             ["TEXT", "RFID", "BARCODE"])),
                               max_size=2).map(tuple),
    admission_id=st.one_of(st.just(""), _ID),
    accession_number=st.one_of(st.just(""), _ID),
    referring_physician_name=_NAME,
    requested_procedure_description=_LONG_TEXT,
    requested_procedure_codes=st.lists(_CODE, max_size=2).map(tuple),
    referenced_studies=st.lists(st.builds(SOPReference, sop_class_uid=st.just(STUDY_CLASS),
                                          sop_instance_uid=_UID), max_size=2).map(tuple),
    sps_description=_LONG_TEXT,
    scheduled_protocol_codes=st.lists(_CODE, max_size=2).map(tuple),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=ITEMS)
def test_item_order_image_round_trip(item: WorklistItem) -> None:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode_part10(image(item.to_order()))))
    assert order_from_image(ds) == item.to_order()


@settings(max_examples=40, deadline=None)
@given(item=ITEMS)
def test_cache_form_round_trip(item: WorklistItem) -> None:
    data = json.loads(json.dumps(item.to_cache(), ensure_ascii=False))
    assert WorklistItem.from_cache(data) == item


# --- what the console and `worklist --json` show ---------------------------------------------

def test_json_item_has_exactly_the_architecture_keys() -> None:
    shown = ITEM.as_json()
    assert tuple(shown) == JSON_KEYS == (
        "accession_number", "patient_name", "patient_id", "patient_birth_date", "patient_sex",
        "study_instance_uid", "requested_procedure_id", "requested_procedure_description",
        "sps_id", "sps_description", "sps_start", "modality", "station_ae_title", "status")
    assert shown["patient_name"] == "Müller^Jürgen"
    assert shown["sps_start"] == "2024-05-01T09:30"
    assert shown["status"] == "SCHEDULED"
    assert all(isinstance(value, str) for value in shown.values())
    json.dumps(shown)


@pytest.mark.parametrize(("date", "time", "shown"), [
    ("20240501", "0930", "2024-05-01T09:30"),
    ("20240501", "093015.123", "2024-05-01T09:30:15"),
    ("20240501", "09", "2024-05-01T09:00"),
    ("20240501", "", "2024-05-01"),
    ("", "0930", ""),
])
def test_sps_start(date: str, time: str, shown: str) -> None:
    assert dataclasses.replace(ITEM, sps_start_date=date, sps_start_time=time).sps_start == shown


@pytest.mark.parametrize(("status", "acquired", "duplicate", "shown"), [
    ("SCHEDULED", False, "", "SCHEDULED"),
    ("", False, "", ""),
    ("STARTED", False, "the RIS reports the step as STARTED", "STARTED"),
    ("COMPLETED", False, "the RIS reports the step as COMPLETED", "COMPLETED"),
    ("SCHEDULED", True, "already acquired on this device", "ACQUIRED"),
])
def test_duplicate_guard(status: str, acquired: bool, duplicate: str, shown: str) -> None:
    item = dataclasses.replace(ITEM, sps_status=status, acquired_here=acquired)
    assert item.duplicate_reason == duplicate
    assert item.is_duplicate == bool(duplicate)
    assert item.as_json()["status"] == shown


def test_snapshot_json_and_summary_say_more_than_n() -> None:
    snapshot = WorklistSnapshot(source="cache", age_s=125.0, items=(ITEM,), truncated=True,
                                limit=1, error="worklist: RIS down")
    shown = snapshot.as_json()
    assert shown["source"] == "cache" and shown["age_s"] == 125.0
    assert shown["items"] == [ITEM.as_json()]
    assert snapshot.summary == "more than 1 worklist item(s) from the cache, 125 s old " \
                               "(worklist: RIS down)"
    assert "Müller" not in snapshot.summary
