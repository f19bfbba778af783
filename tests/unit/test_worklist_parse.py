"""A C-FIND response identifier (as pynetdicom hands it over: raw elements) to WorklistItems:
every key, bad input named by response and attribute, never a value in a message."""

from __future__ import annotations

import copy
import struct
from io import BytesIO

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import decode
from support.worklist_data import (
    PHI_ID,
    PHI_NAME,
    STUDY_COMPONENT_CLASS,
    Entry,
    as_received,
    encode_dataset,
    entry_dataset,
    new_uid,
    raw_element,
)

from agent.records import Code, OtherPatientID, SOPReference
from agent.worklist import DEFAULT_FALLBACK, WorklistItem, WorklistItemError
from agent.worklist.parse import MAX_SEQUENCE_ITEMS, parse_response


def parse(entry: Entry, *, implicit: bool = False,
          fallback: tuple[str, ...] = DEFAULT_FALLBACK) -> list[WorklistItem]:
    return parse_response(as_received(entry_dataset(entry), implicit=implicit), response=3,
                          fallback=fallback)


def only(entry: Entry, *, implicit: bool = False,
         fallback: tuple[str, ...] = DEFAULT_FALLBACK) -> WorklistItem:
    (item,) = parse(entry, implicit=implicit, fallback=fallback)
    return item


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_every_key_is_read(implicit: bool) -> None:
    referenced = new_uid()
    entry = Entry(patient_name="Müller^Jürgen", referenced_study_uid=referenced)
    item = only(entry, implicit=implicit)
    assert item.patient_name == "Müller^Jürgen"
    assert item.patient_id == "P-0001"
    assert item.issuer_of_patient_id == "HOSP"
    assert item.patient_birth_date == "19700101"
    assert item.patient_sex == "M"
    assert item.other_patient_ids == (OtherPatientID("OLD-1", "OLDHOSP", "TEXT"),)
    assert item.admission_id == "ADM-1"
    assert item.accession_number == "ACC-0001"
    assert item.referring_physician_name == "House^Gregory"
    assert item.requested_procedure_id == "RP-0001"
    assert item.requested_procedure_description == "Chest PA"
    assert item.requested_procedure_codes == (Code("RPID-17", "99LOCAL", "Chest radiograph"),)
    assert item.study_instance_uid == entry.study_instance_uid
    assert item.referenced_studies == (SOPReference(STUDY_COMPONENT_CLASS, referenced),)
    assert item.modality == "OT"
    assert item.station_ae_title == "MODALITY1"
    assert (item.sps_start_date, item.sps_start_time) == ("20240501", "093000")
    assert item.sps_start == "2024-05-01T09:30:00"
    assert item.sps_id == "SPS-0001"
    assert item.sps_description == "Chest PA standing"
    assert item.scheduled_protocol_codes == (Code("PROT-1", "99LOCAL", "Chest PA protocol"),)
    assert item.performing_physician_name == "Quinn^Michaela"
    assert item.sps_status == "SCHEDULED"
    assert item.character_set == "ISO_IR 192"
    assert item.notes == ()


def test_a_dataset_built_in_memory_reads_the_same() -> None:
    entry = Entry(patient_name="Γιάννης^Παπαδόπουλος")
    assert parse_response(entry_dataset(entry), response=1) == parse(entry)


def test_japanese_in_iso_2022_and_in_utf8() -> None:
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    iso = only(Entry(patient_name=name, charset="\\ISO 2022 IR 87"))
    utf8 = only(Entry(patient_name=name, charset="ISO_IR 192"))
    assert iso.patient_name == utf8.patient_name == name
    assert iso.character_set == "\\ISO 2022 IR 87"


def test_trailing_empty_name_components_are_dropped() -> None:
    assert only(Entry(patient_name="Doe^John^^^")).patient_name == "Doe^John"
    assert only(Entry(patient_name="Doe^John==")).patient_name == "Doe^John"


def test_empty_patient_name_is_kept_with_a_note() -> None:
    item = only(Entry(patient_name=""))
    assert item.patient_name == ""
    assert item.notes == ("PatientName: empty",)


def test_absent_optional_keys_read_as_empty() -> None:
    entry = Entry(omit=("PatientBirthDate", "AccessionNumber", "IssuerOfPatientID",
                        "SPS.ScheduledProcedureStepStartTime", "SPS.Modality"),
                  requested_procedure_code=None, protocol_code=None, other_patient_ids=())
    item = only(entry)
    assert (item.patient_birth_date, item.accession_number, item.issuer_of_patient_id) == \
        ("", "", "")
    assert item.sps_start == "2024-05-01"
    assert item.modality == ""
    assert item.requested_procedure_codes == item.scheduled_protocol_codes == ()


@pytest.mark.parametrize(("omit", "attribute"), [
    ("PatientID", "PatientID"),
    ("StudyInstanceUID", "StudyInstanceUID"),
    ("RequestedProcedureID", "RequestedProcedureID"),
    ("ScheduledProcedureStepSequence", "ScheduledProcedureStepSequence"),
    ("SPS.ScheduledProcedureStepID",
     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID"),
])
def test_missing_required_key_names_response_and_attribute(omit: str, attribute: str) -> None:
    with pytest.raises(WorklistItemError) as info:
        parse(Entry(patient_name=PHI_NAME, omit=(omit,)))
    assert info.value.response == 3
    assert info.value.attribute == attribute
    assert str(info.value).startswith("worklist response 3")
    assert "missing" in str(info.value)
    assert PHI_NAME not in str(info.value)


@pytest.mark.parametrize(("raw", "attribute", "message"), [
    ({"PatientID": PHI_ID.encode() * 10}, "PatientID", "has 120 characters; LO allows 64"),
    ({"PatientID": b"A\\B"}, "PatientID", "holds 2 values; one expected"),
    ({"PatientName": b"M\xfcller^" + PHI_NAME.encode()}, "PatientName",
     "byte 0xFC at offset 1 is not valid in ISO_IR 192"),
    ({"PatientName": b"A=B=C=D"}, "PatientName", "4 component groups"),
    ({"PatientName": b"A" * 65}, "PatientName", "component group of 65 characters"),
    ({"PatientBirthDate": b"19701332"}, "PatientBirthDate", "not a date YYYYMMDD"),
    ({"PatientBirthDate": b"1970-01-01"}, "PatientBirthDate", "not a date YYYYMMDD"),
    ({"PatientSex": b"U "}, "PatientSex", "'U' is not M, F, O or empty"),
    ({"StudyInstanceUID": b"1.2.03.4"}, "StudyInstanceUID", "not a valid UID"),
    ({"AccessionNumber": b"A" * 17 + b" "}, "AccessionNumber", "17 characters; SH allows 16"),
    ({"SPS.ScheduledProcedureStepDescription": b"\xff\xfe"},
     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription", "0xFF"),
])
def test_invalid_value_rejects_the_response(raw: dict[str, bytes], attribute: str,
                                            message: str) -> None:
    entry = Entry(patient_name=PHI_NAME, patient_id=PHI_ID, raw=raw)
    with pytest.raises(WorklistItemError, match=message) as info:
        parse(entry)
    assert info.value.attribute == attribute
    assert PHI_NAME not in str(info.value) and PHI_ID not in str(info.value)
    assert "SPS 'SPS-0001'" in str(info.value)       # which item, by IDs, not by patient


def test_unknown_character_set_rejects_the_response() -> None:
    encoded = encode_dataset(entry_dataset(Entry(raw={"SpecificCharacterSet": b"ISO_IR 999"})))
    with pytest.warns(UserWarning, match="Unknown encoding 'ISO_IR 999'"):
        received = decode(BytesIO(encoded), False, True)     # pydicom warns while reading
    with pytest.raises(WorklistItemError, match="SpecificCharacterSet: Specific Character Set "
                                                "'ISO_IR 999' is not supported"):
        parse_response(received, response=1)


@pytest.mark.parametrize(("raw", "attribute"), [
    ({"SPS.ScheduledProcedureStepStartTime": b"25:00:00"},
     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime"),
    ({"SPS.ScheduledProcedureStepStartDate": b"2024-05-01"},
     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate"),
    ({"SPS.Modality": b"ot"}, "ScheduledProcedureStepSequence[0].Modality"),
    ({"SPS.ScheduledPerformingPhysicianName": b"\xff\xff"},
     "ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName"),
])
def test_invalid_display_only_value_is_left_empty_with_a_note(raw: dict[str, bytes],
                                                              attribute: str) -> None:
    item = only(Entry(raw=raw))
    (note,) = item.notes
    assert note.startswith(f"{attribute}: ") and note.endswith("; left empty")


def test_invalid_code_or_reference_entries_are_left_out_with_a_note() -> None:
    ds = entry_dataset(Entry(referenced_study_uid="1.2.3"))
    ds.RequestedProcedureCodeSequence[0].CodeValue = ""          # Type 1C: needed
    ds.ReferencedStudySequence[0]["ReferencedSOPInstanceUID"] = raw_element(
        "ReferencedSOPInstanceUID", b"1.02")
    ds.OtherPatientIDsSequence[0].TypeOfPatientID = "PASSPORT"
    (item,) = parse_response(as_received(ds), response=1)
    assert item.requested_procedure_codes == ()
    assert item.referenced_studies == ()
    assert item.other_patient_ids == ()
    assert len(item.notes) == 3
    assert any("RequestedProcedureCodeSequence[0].CodeValue: missing" in n for n in item.notes)


def test_no_character_set_uses_the_fallback_and_says_so() -> None:
    item = only(Entry(patient_name="Müller^Jürgen", charset=None))    # Latin-1 bytes
    assert item.patient_name == "Müller^Jürgen"
    assert item.character_set == ""
    assert item.notes == ("PatientName: decoded as ISO_IR 100: the response has no Specific "
                          "Character Set (0008,0005)",)
    utf8 = only(Entry(charset=None, raw={"PatientName": "Müller^Jürgen".encode()}))
    assert utf8.patient_name == "Müller^Jürgen"
    assert "decoded as ISO_IR 192" in utf8.notes[0]


def test_no_character_set_without_fallback_rejects_non_ascii() -> None:
    with pytest.raises(WorklistItemError, match="PatientName: bytes above 0x7F without"):
        parse(Entry(patient_name="Müller^Jürgen", charset=None), fallback=())
    assert only(Entry(charset=None), fallback=()).patient_name == "Doe^John"


def test_a_sequence_item_may_declare_its_own_character_set() -> None:
    ds = entry_dataset(Entry(charset="ISO_IR 100"))
    sps = ds.ScheduledProcedureStepSequence[0]
    sps.SpecificCharacterSet = "ISO_IR 192"
    sps[Tag(0x00400007)] = RawDataElement(Tag(0x00400007), "LO", 6, "Θώρ".encode(), 0, False,
                                          True)
    (item,) = parse_response(as_received(ds), response=1)
    assert item.sps_description == "Θώρ"


def test_several_steps_in_one_response_give_several_items() -> None:
    ds = entry_dataset(Entry())
    second = copy.deepcopy(ds.ScheduledProcedureStepSequence[0])
    second.ScheduledProcedureStepID = "SPS-0002"
    ds.ScheduledProcedureStepSequence.append(second)
    items = parse_response(as_received(ds), response=1)
    assert [item.sps_id for item in items] == ["SPS-0001", "SPS-0002"]
    assert items[0].study_instance_uid == items[1].study_instance_uid


def test_too_many_sequence_items_is_malformed() -> None:
    ds = entry_dataset(Entry())
    ds.OtherPatientIDsSequence = [Dataset() for _ in range(MAX_SEQUENCE_ITEMS + 1)]
    with pytest.raises(WorklistItemError, match=f"has {MAX_SEQUENCE_ITEMS + 1} items"):
        parse_response(as_received(ds), response=1)


def _with_raw_sequence(value: bytes, vr: str = "SQ") -> Dataset:
    ds = entry_dataset(Entry(patient_name=PHI_NAME))
    tag = Tag(0x00400100)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


def test_malformed_sequence_bytes_name_the_sequence() -> None:
    broken = struct.pack("<HH", 0xFFFE, 0xE000)     # an item tag, cut before its length
    with pytest.raises(WorklistItemError, match="ScheduledProcedureStepSequence: its bytes "
                                                "are not a valid sequence") as info:
        parse_response(as_received(_with_raw_sequence(broken)), response=2)
    assert PHI_NAME not in str(info.value)


def test_sequence_whose_items_lack_keys_names_the_key() -> None:
    # an item header claiming 1000 bytes, followed by one element: pydicom reads what is there
    partial = struct.pack("<HHL", 0xFFFE, 0xE000, 1000) + b"\x08\x00\x60\x00CS\x02\x00OT"
    with pytest.raises(WorklistItemError, match=r"ScheduledProcedureStepSequence\[0\]\."
                                                "ScheduledProcedureStepID: missing"):
        parse_response(as_received(_with_raw_sequence(partial)), response=2)


def test_wrong_vr_is_named() -> None:
    with pytest.raises(WorklistItemError, match="ScheduledProcedureStepSequence: has VR LO"):
        parse_response(as_received(_with_raw_sequence(b"abcd", vr="LO")), response=1)
    ds = entry_dataset(Entry())
    ds[Tag(0x00100020)] = RawDataElement(Tag(0x00100020), "US", 2, b"\x01\x00", 0, False, True)
    with pytest.raises(WorklistItemError, match="PatientID: has VR US; LO expected"):
        parse_response(as_received(ds), response=1)


def test_sequence_sent_as_un_is_read_as_implicit_little_endian() -> None:
    ds = entry_dataset(Entry())
    sps_bytes = as_received(ds, implicit=True)  # the SPS sequence encoded implicit VR
    raw = sps_bytes.get_item(Tag(0x00400100))
    assert isinstance(raw, RawDataElement)
    ds[Tag(0x00400100)] = RawDataElement(Tag(0x00400100), "UN", len(raw.value), raw.value, 0,
                                         False, True)
    (item,) = parse_response(as_received(ds), response=1)
    assert item.sps_id == "SPS-0001"


def test_undefined_length_sequences_are_read() -> None:
    ds = entry_dataset(Entry())
    ds["ScheduledProcedureStepSequence"].is_undefined_length = True
    (item,) = parse_response(as_received(ds), response=1)
    assert item.sps_id == "SPS-0001"


def test_garbage_identifier_never_raises_anything_but_worklist_item_error() -> None:
    # bytes that pydicom can read as elements, but that hold nothing usable
    ds = decode(BytesIO(b"\x10\x00\x10\x00PN\x04\x00\xff\xfe\xfd\xfc"), False, True)
    with pytest.raises(WorklistItemError):
        parse_response(ds, response=1)
