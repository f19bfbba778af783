"""The IOCM rejection note (agent.iod.kos): a Key Object Selection Document in the rejected
images' study, titled by the reason, naming every rejected instance in its evidence and its
content; dciodvfy finds no error, DCMTK dsrdump reads it, and docs/iods.md shows its table."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom import uid as pydicom_uid
from pydicom.filebase import DicomBytesIO
from support.peers import run_dciodvfy
from test_iod_golden import DEVICE, build_case

from agent.errors import IODError
from agent.iod import encode_part10
from agent.iod.iods import MODULES, Usage
from agent.iod.kos import (
    KOS_IOD_MODULES,
    KOS_MODULES,
    KOS_SOP_CLASS,
    REJECTION_TITLES,
    RejectedInstance,
    RejectionReason,
    build_rejection_note,
    kos_module_markdown,
    rejected_by,
)

DSRDUMP = Path("/usr/bin/dsrdump")     # DCMTK by full path (PEERS.md)
DOC = Path(__file__).resolve().parents[2] / "docs" / "iods.md"
BEGIN, END = "<!-- kos-module-table: begin -->", "<!-- kos-module-table: end -->"
NOW = datetime(2023, 11, 15, 10, 0, 0, tzinfo=UTC)


def image(case: str = "dx-mono12-region") -> Dataset:
    return pydicom.dcmread(DicomBytesIO(build_case(case, "explicit-little")))


def instance_of(ds: Dataset) -> RejectedInstance:
    return RejectedInstance(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                            str(ds.SeriesInstanceUID))


#: a second image of the same study in another series, and a third in the first series
OTHERS = (RejectedInstance(str(pydicom_uid.DigitalXRayImageStorageForPresentation),
                           "1.2.3.4.501", "1.2.3.4.201"),
          RejectedInstance(str(pydicom_uid.DigitalXRayImageStorageForPresentation),
                           "1.2.3.4.502", "1.2.3.4.200"))


def note_for(source: Dataset, reason: str = "quality",
             rejected: tuple[RejectedInstance, ...] | None = None, **kwargs: object) -> Dataset:
    return build_rejection_note(
        source, (instance_of(source),) if rejected is None else rejected, reason,
        device=DEVICE, series_instance_uid="1.2.3.9", sop_instance_uid="1.2.3.10",
        now=kwargs.pop("now", NOW), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("reason", "code", "meaning"), [
    ("quality", "113001", "Rejected for Quality Reasons"),
    ("patient-safety", "113037", "Rejected for Patient Safety Reasons"),
    ("incorrect-modality-worklist", "113038", "Incorrect Modality Worklist Entry"),
])
def test_the_title_says_the_reason(reason: str, code: str, meaning: str) -> None:
    note = note_for(image(), reason)
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == \
        (code, "DCM", meaning)
    assert note.ValueType == "CONTAINER" and note.ContinuityOfContent == "SEPARATE"
    template = note.ContentTemplateSequence[0]
    assert (template.TemplateIdentifier, template.MappingResource) == ("2010", "DCMR")


def test_evidence_and_content_name_every_rejected_instance_by_study_and_series() -> None:
    source = image()
    rejected = (instance_of(source), *OTHERS)
    note = note_for(source, rejected=rejected)
    evidence = note.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1 and evidence[0].StudyInstanceUID == source.StudyInstanceUID
    series = {s.SeriesInstanceUID: [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
                                    for r in s.ReferencedSOPSequence]
              for s in evidence[0].ReferencedSeriesSequence}
    assert series == {
        "1.2.3.4.200": [(source.SOPClassUID, source.SOPInstanceUID),
                        (OTHERS[1].sop_class_uid, "1.2.3.4.502")],
        "1.2.3.4.201": [(OTHERS[0].sop_class_uid, "1.2.3.4.501")],
    }
    assert rejected_by(note) == [source.SOPInstanceUID, "1.2.3.4.502", "1.2.3.4.501"]
    items = note.ContentSequence
    assert [(i.RelationshipType, i.ValueType) for i in items] == [("CONTAINS", "IMAGE")] * 3
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items] == \
        [r.sop_instance_uid for r in rejected]
    assert all(len(i.ReferencedSOPSequence) == 1 for i in items)


def test_same_patient_and_study_its_own_series_modality_ko() -> None:
    source = image()
    note = note_for(source)
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                    "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                    "ProcedureCodeSequence"):
        assert note[keyword].value == source[keyword].value, keyword
    assert note.SOPClassUID == KOS_SOP_CLASS == pydicom_uid.KeyObjectSelectionDocumentStorage
    assert (note.SOPInstanceUID, note.SeriesInstanceUID) == ("1.2.3.10", "1.2.3.9")
    assert note.SeriesInstanceUID != source.SeriesInstanceUID
    assert note.Modality == "KO" and note.ReferencedPerformedProcedureStepSequence == []
    assert note.Manufacturer == DEVICE.manufacturer
    assert "PixelData" not in note and "RequestAttributesSequence" not in note


def test_an_unscheduled_image_gives_type2_attributes_empty() -> None:
    source = image("dx-mono16-nodose")
    del source.AccessionNumber                     # an imported object may lack Type 2 ones
    note = note_for(source)
    assert note.AccessionNumber == "" and note.PatientID == source.PatientID


def test_dates_are_in_the_zone_of_the_rejected_image() -> None:
    source = image()                       # built at +0100
    assert source.TimezoneOffsetFromUTC == "+0100"
    note = note_for(source, now=NOW)
    assert note.TimezoneOffsetFromUTC == "+0100"
    assert (note.ContentDate, note.ContentTime) == ("20231115", "110000.000000")
    assert (note.InstanceCreationDate, note.InstanceCreationTime) == \
        ("20231115", "110000.000000")
    del source.TimezoneOffsetFromUTC       # e.g. an imported object: the note's own zone
    zone = timezone(timedelta(hours=-5))
    note = note_for(source, now=NOW.astimezone(zone))
    assert note.TimezoneOffsetFromUTC == "-0500" and note.ContentTime == "050000.000000"


@pytest.mark.parametrize("reason", list(RejectionReason))
def test_dciodvfy_finds_no_error_and_dsrdump_reads_it(reason: RejectionReason,
                                                      tmp_path: Path) -> None:
    source = image()
    path = tmp_path / "note.dcm"
    path.write_bytes(encode_part10(note_for(source, reason, rejected=(instance_of(source),
                                                                      *OTHERS))))
    assert run_dciodvfy(path) == []
    out = subprocess.run([str(DSRDUMP), "+Pc", "+Pt", str(path)], capture_output=True,
                         text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "E:" not in out.stderr, out.stderr
    title = REJECTION_TITLES[reason]
    assert f'<CONTAINER:({title.value},DCM,"{title.meaning}")=SEPARATE>' in out.stdout
    assert "Key Object Selection Document" in out.stdout
    assert out.stdout.count("<contains IMAGE:") == 3


@pytest.mark.parametrize(("change", "message"), [
    ({"reason": "blurred"}, "rejection reason 'blurred' is not one of quality, patient-safety"),
    ({"rejected": ()}, "needs at least one rejected instance"),
    ({"rejected": (OTHERS[0], OTHERS[0])}, "1.2.3.4.501 is listed twice"),
    ({"rejected": (RejectedInstance("1.2.840.10008.5.1.4.1.1.1.1", "1.02.3", "1.2.3"),)},
     r"instance 0\.ReferencedSOPInstanceUID '1.02.3' is not a valid UID"),
    ({"rejected": (RejectedInstance("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3", ""),)},
     r"instance 0\.SeriesInstanceUID '' is not a valid UID"),
    ({"series_number": -1}, "SeriesNumber must be an integer"),
])
def test_bad_input_is_refused_naming_the_attribute(change: dict[str, object],
                                                   message: str) -> None:
    arguments: dict[str, object] = {"reason": "quality", "rejected": (OTHERS[0],), **change}
    with pytest.raises(IODError, match=message):
        note_for(image(), **arguments)  # type: ignore[arg-type]


def test_a_source_without_a_study_uid_is_refused() -> None:
    source = image()
    del source.StudyInstanceUID
    with pytest.raises(IODError, match="General Study: StudyInstanceUID None is not a valid"):
        note_for(source)


@pytest.fixture
def no_deletion(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(self: Dataset, key: object) -> None:
        raise AssertionError(f"the builder deleted {key!r}")
    monkeypatch.setattr(Dataset, "__delitem__", refuse)
    monkeypatch.setattr(Dataset, "__delattr__", refuse)
    yield


def test_the_builder_only_adds(no_deletion: None) -> None:
    source = image()
    assert note_for(source) is not None


def test_the_module_table_is_known_and_mandatory_modules_are_written() -> None:
    for row in KOS_IOD_MODULES:
        assert row.key in MODULES or row.key in KOS_MODULES, row.key
        if row.usage is Usage.MANDATORY:
            assert row.written is True, row.key


def test_docs_show_the_kos_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC}: markers {BEGIN} / {END} missing"
    between = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert between == kos_module_markdown().strip(), \
        "docs/iods.md's KOS table differs from agent.iod.kos.KOS_IOD_MODULES"
