"""The IHE IOCM rejection note: a Key Object Selection Document (PS3.3 A.35.4, SOP class
1.2.840.10008.5.1.4.1.1.88.59) whose title says why the instances it names are withdrawn.

What it carries (IHE RAD TF-3 IOCM, PS3.16 TID 2010 "Key Object Selection"):

- the rejected images' Patient, General Study and Patient Study attributes, copied unchanged
  from one of them (the note belongs to their study; an archive files it there);
- its own series, Modality KO (C.17.6.1);
- Current Requested Procedure Evidence Sequence (C.17.6.2, Type 1) naming every rejected
  instance, study → series → SOP class/instance: what an archive acts on;
- a CONTAINER titled from CID 7011 "Rejected for Quality Reasons" (113001),
  "Rejected for Patient Safety Reasons" (113037) or "Incorrect Modality Worklist Entry"
  (113038), holding one IMAGE item per rejected instance (TID 2010 row 5, CONTAINS).

The module table below is the IOD's, in the shape of `agent.iod.iods` (docs/iods.md shows it
from here). Pure: no I/O, no clock; UIDs and times are arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum

from pydicom import Dataset
from pydicom import uid as sop
from pydicom.datadict import tag_for_keyword

from agent.errors import IODError
from agent.iod.building import building
from agent.iod.iods import MODULES, ModuleInfo, ModuleUsage, Usage
from agent.iod.modules import add_general_equipment_module, check_general_equipment
from agent.iod.valuerep import (
    SPECIFIC_CHARACTER_SET,
    check_integer,
    check_timezone_offset,
    check_uid,
    date_part,
    format_dt,
    put,
    time_part,
    utc_offset_of,
)
from agent.records import Code, DeviceInfo

#: Key Object Selection Document Storage, from pydicom's table (PS3.4 B.5)
KOS_SOP_CLASS = str(sop.KeyObjectSelectionDocumentStorage)
KOS_MODALITY = "KO"
#: TID 2010 "Key Object Selection", mapping resource DCMR (PS3.16)
KOS_TEMPLATE = ("2010", "DCMR")


class RejectionReason(StrEnum):
    """The reasons a technologist may give (`reject --reason`), IHE IOCM."""

    QUALITY = "quality"
    PATIENT_SAFETY = "patient-safety"
    INCORRECT_MODALITY_WORKLIST = "incorrect-modality-worklist"


#: Document Title per reason: CID 7011 "Rejected for Quality Reasons" family (PS3.16)
REJECTION_TITLES: dict[RejectionReason, Code] = {
    RejectionReason.QUALITY: Code("113001", "DCM", "Rejected for Quality Reasons"),
    RejectionReason.PATIENT_SAFETY: Code("113037", "DCM", "Rejected for Patient Safety Reasons"),
    RejectionReason.INCORRECT_MODALITY_WORKLIST:
        Code("113038", "DCM", "Incorrect Modality Worklist Entry"),
}

#: the modules of the KOS IOD that no image IOD of ours has
KOS_MODULES: dict[str, ModuleInfo] = {
    "key-object-document-series": ModuleInfo("Key Object Document Series", "C.17.6.1"),
    "key-object-document": ModuleInfo("Key Object Document", "C.17.6.2"),
    "sr-document-content": ModuleInfo("SR Document Content", "C.17.3"),
}

#: PS3.3 Table A.35.4-1, Key Object Selection Document IOD Modules
KOS_IOD_MODULES: tuple[ModuleUsage, ...] = tuple(
    ModuleUsage(key, ie, Usage(usage), written) for key, ie, usage, written in (
        ("patient", "Patient", "M", True),
        ("clinical-trial-subject", "Patient", "U", False),
        ("general-study", "Study", "M", True),
        ("patient-study", "Study", "U", True),
        ("clinical-trial-study", "Study", "U", False),
        ("key-object-document-series", "Series", "M", True),
        ("clinical-trial-series", "Series", "U", False),
        ("general-equipment", "Equipment", "M", True),
        ("key-object-document", "Document", "M", True),
        ("sr-document-content", "Document", "M", True),
        ("sop-common", "Document", "M", True),
    )
)

#: copied unchanged from the rejected image when it has them: the Patient (C.7.1.1),
#: General Study (C.7.2.1) and Patient Study (C.7.2.2) attributes our objects may carry
PATIENT_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID",
                    "IssuerOfPatientIDQualifiersSequence", "PatientBirthDate", "PatientSex",
                    "OtherPatientIDsSequence")
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
                  "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence",
                  "StudyDescription", "ReferencedStudySequence", "ProcedureCodeSequence")
PATIENT_STUDY_KEYWORDS = ("AdmissionID", "PatientAge", "PatientSize", "PatientWeight")
#: Type 2 in their modules: written empty when the image lacks them
_TYPE2 = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"})


@dataclass(frozen=True)
class RejectedInstance:
    """One instance a note rejects: what Current Requested Procedure Evidence names."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


def check_rejected(study_instance_uid: object, rejected: Sequence[RejectedInstance]) -> None:
    """At least one instance, valid UIDs, none twice.

    Raises
    ------
    IODError
        Naming the offending item and attribute.
    """
    module = "Key Object Document"
    check_uid("General Study", "StudyInstanceUID", study_instance_uid)
    if not rejected:
        raise IODError(f"{module}: CurrentRequestedProcedureEvidenceSequence needs at least "
                       "one rejected instance")
    seen: set[str] = set()
    for index, item in enumerate(rejected):
        where = f"CurrentRequestedProcedureEvidenceSequence instance {index}"
        check_uid(module, f"{where}.ReferencedSOPClassUID", item.sop_class_uid)
        check_uid(module, f"{where}.ReferencedSOPInstanceUID", item.sop_instance_uid)
        check_uid(module, f"{where}.SeriesInstanceUID", item.series_instance_uid)
        if item.sop_instance_uid in seen:
            raise IODError(f"{module}: {where}: SOP Instance UID {item.sop_instance_uid} is "
                           "listed twice")
        seen.add(item.sop_instance_uid)


def _copy(ds: Dataset, source: Dataset, keywords: Sequence[str]) -> None:
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is not None and tag in source:
            ds[tag] = copy.deepcopy(source[tag])
        elif keyword in _TYPE2:
            put(ds, keyword, "")


def add_patient_and_study(ds: Dataset, source: Dataset) -> None:
    """Patient, General Study and Patient Study, as the rejected image has them: IOCM files
    the note in the rejected instances' study, for the same patient."""
    with building("patient"):
        _copy(ds, source, PATIENT_KEYWORDS)
    with building("general-study"):
        _copy(ds, source, STUDY_KEYWORDS)
    with building("patient-study"):
        _copy(ds, source, PATIENT_STUDY_KEYWORDS)


def add_key_object_document_series_module(ds: Dataset, *, series_instance_uid: str,
                                          series_number: int) -> None:
    """C.17.6.1: Modality KO, its own series; Referenced Performed Procedure Step Sequence is
    Type 2 and left empty: the note is no part of a performed procedure step."""
    with building(KOS_MODULES["key-object-document-series"].title):
        put(ds, "Modality", KOS_MODALITY)
        put(ds, "SeriesInstanceUID", series_instance_uid)
        put(ds, "SeriesNumber", series_number)
        put(ds, "ReferencedPerformedProcedureStepSequence", [])


def evidence_sequence(study_instance_uid: str,
                      rejected: Sequence[RejectedInstance]) -> list[Dataset]:
    """Hierarchical SOP Instance Reference Macro (Table C.17-3): one study item, one item per
    series in the order first named, each with its instances."""
    by_series: dict[str, list[RejectedInstance]] = {}
    for item in rejected:
        by_series.setdefault(item.series_instance_uid, []).append(item)
    series_items = []
    for series_uid, instances in by_series.items():
        series_item = Dataset()
        put(series_item, "SeriesInstanceUID", series_uid)
        sop_items = []
        for instance in instances:
            sop_item = Dataset()
            put(sop_item, "ReferencedSOPClassUID", instance.sop_class_uid)
            put(sop_item, "ReferencedSOPInstanceUID", instance.sop_instance_uid)
            sop_items.append(sop_item)
        put(series_item, "ReferencedSOPSequence", sop_items)
        series_items.append(series_item)
    study_item = Dataset()
    put(study_item, "StudyInstanceUID", study_instance_uid)
    put(study_item, "ReferencedSeriesSequence", series_items)
    return [study_item]


def add_key_object_document_module(ds: Dataset, *, study_instance_uid: str,
                                   rejected: Sequence[RejectedInstance], instance_number: int,
                                   content_datetime: str) -> None:
    """C.17.6.2. Referenced Request Sequence (1C) is left out: a rejection note is not made
    in response to a request (the images carry the request)."""
    with building(KOS_MODULES["key-object-document"].title):
        put(ds, "InstanceNumber", instance_number)
        put(ds, "ContentDate", date_part(content_datetime))
        put(ds, "ContentTime", time_part(content_datetime))
        put(ds, "CurrentRequestedProcedureEvidenceSequence",
            evidence_sequence(study_instance_uid, rejected))


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    put(item, "CodeValue", code.value)
    put(item, "CodingSchemeDesignator", code.scheme)
    put(item, "CodeMeaning", code.meaning)
    return item


def add_sr_document_content_module(ds: Dataset, *, title: Code,
                                   rejected: Sequence[RejectedInstance]) -> None:
    """C.17.3 with TID 2010: the titled root CONTAINER, one IMAGE item per instance (rows 1
    and 5; the optional description, language and observer context rows are left out)."""
    with building(KOS_MODULES["sr-document-content"].title):
        put(ds, "ValueType", "CONTAINER")
        put(ds, "ConceptNameCodeSequence", [_code_item(title)])
        put(ds, "ContinuityOfContent", "SEPARATE")
        template = Dataset()
        put(template, "MappingResource", KOS_TEMPLATE[1])
        put(template, "TemplateIdentifier", KOS_TEMPLATE[0])
        put(ds, "ContentTemplateSequence", [template])
        items = []
        for instance in rejected:
            item = Dataset()
            put(item, "RelationshipType", "CONTAINS")
            put(item, "ValueType", "IMAGE")
            reference = Dataset()
            put(reference, "ReferencedSOPClassUID", instance.sop_class_uid)
            put(reference, "ReferencedSOPInstanceUID", instance.sop_instance_uid)
            put(item, "ReferencedSOPSequence", [reference])
            items.append(item)
        put(ds, "ContentSequence", items)


def _note_time(now: datetime, source: Dataset) -> tuple[datetime, str]:
    """The note's clock reading in the zone the rejected image's dates are in, when it names
    one: one object's DA/TM values share one Timezone Offset From UTC (C.12.1.1.8), and the
    note's study date and time are the image's."""
    offset = source.get("TimezoneOffsetFromUTC")
    if offset:
        offset = check_timezone_offset("SOP Common", str(offset))
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        zone = timezone(timedelta(minutes=-minutes if offset[0] == "-" else minutes))
        return now.astimezone(zone), offset
    return now, utc_offset_of(now)


def build_rejection_note(
    source: Dataset,
    rejected: Sequence[RejectedInstance],
    reason: RejectionReason | str,
    *,
    device: DeviceInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    now: datetime,
    series_number: int = 1,
    instance_number: int = 1,
) -> Dataset:
    """The rejection note for `rejected`, all of the study of `source`.

    Parameters
    ----------
    source
        A rejected image (its header is enough): the note copies its patient and study.
    rejected
        Every instance the note withdraws, in order; all in `source`'s study.
    reason
        A `RejectionReason` or its value ("quality", ...).
    device
        Our equipment (General Equipment).
    series_instance_uid, sop_instance_uid
        New UIDs for the note's own series and itself, fixed by the caller (a resend reuses
        them).
    now
        When the note is made (Content and Instance Creation Date/Time); an aware datetime
        gives its offset, a naive one is this machine's local time.

    Raises
    ------
    IODError
        Naming the module and attribute, before anything is built: an unknown reason, a
        source without a valid Study Instance UID, no instance or a bad UID, an instance
        twice.
    """
    try:
        reason = RejectionReason(reason)
    except ValueError as err:
        raise IODError(f"rejection reason {reason!r} is not one of "
                       f"{', '.join(r.value for r in RejectionReason)}") from err
    study_instance_uid = source.get("StudyInstanceUID")
    check_rejected(study_instance_uid, rejected)
    check_uid("Key Object Document Series", "SeriesInstanceUID", series_instance_uid)
    check_uid("SOP Common", "SOPInstanceUID", sop_instance_uid)
    check_integer("Key Object Document Series", "SeriesNumber", series_number, 0, 2**31 - 1)
    check_integer("Key Object Document", "InstanceNumber", instance_number, 0, 2**31 - 1)
    check_general_equipment(device)
    local_now, offset = _note_time(now, source)
    created = format_dt(local_now)
    ds = Dataset()
    with building("sop-common"):
        put(ds, "SpecificCharacterSet", SPECIFIC_CHARACTER_SET)
    add_patient_and_study(ds, source)
    add_key_object_document_series_module(ds, series_instance_uid=series_instance_uid,
                                          series_number=series_number)
    with building("general-equipment"):
        add_general_equipment_module(ds, device)
    add_key_object_document_module(ds, study_instance_uid=str(study_instance_uid),
                                   rejected=rejected, instance_number=instance_number,
                                   content_datetime=created)
    add_sr_document_content_module(ds, title=REJECTION_TITLES[reason], rejected=rejected)
    with building("sop-common"):
        put(ds, "SOPClassUID", KOS_SOP_CLASS)
        put(ds, "SOPInstanceUID", sop_instance_uid)
        put(ds, "InstanceCreationDate", date_part(created))
        put(ds, "InstanceCreationTime", time_part(created))
        put(ds, "TimezoneOffsetFromUTC", offset)
    return ds


def rejected_by(note: Dataset) -> list[str]:
    """The SOP Instance UIDs a rejection note names in its evidence (for tests and `status`)."""
    return [str(sop_item.ReferencedSOPInstanceUID)
            for study in note.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for sop_item in series.get("ReferencedSOPSequence", [])]


def kos_module_markdown() -> str:
    """docs/iods.md's KOS module table (the doc is checked against this)."""
    titles = {**MODULES, **KOS_MODULES}
    return (
        "### `rejection-note`: Key Object Selection Document (PS3.3 A.35.4)\n\n"
        f"SOP Class {KOS_SOP_CLASS}; Modality {KOS_MODALITY}; template TID "
        f"{KOS_TEMPLATE[0]} ({KOS_TEMPLATE[1]}).\n\n"
        "| IE | Module | PS3.3 | Usage | We write it |\n|---|---|---|---|---|\n"
        + "".join(f"| {row.ie} | {titles[row.key].title} | {titles[row.key].clause} "
                  f"| {row.usage.value} | {'yes' if row.written else 'no'} |\n"
                  for row in KOS_IOD_MODULES))
