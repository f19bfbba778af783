"""The N-CREATE attribute list and the final N-SET modification list of one MPPS (PS3.4
Table F.7.2-1), built from an `MppsRecord`. Pure: no I/O, no clock, no network.

Rules that shape this module:

- Only attributes present at N-CREATE may be N-SET later (PS3.4 F.7.2.2.2, Table F.7.2-1
  note 5), so every attribute of `N_SET_KEYWORDS` is created, at zero length when its value is
  not known yet (PPS End Date/Time, Performed Series Sequence, PPS Discontinuation Reason Code
  Sequence).
- Without scheduled data, Scheduled Step Attributes Sequence holds one item with the Study
  Instance UID and the other 2/2 attributes at zero length (F.7.2.1.2 note 3); no dummy values
  (IHE SWF unscheduled case).
- Values are checked as they are set (pydicom validation RAISE, plus control characters and
  backslash, which pydicom lets through). Messages about patient attributes never show the
  value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from pydicom import config
from pydicom import uid as sop
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from agent.mpps.errors import MppsValueError
from agent.mpps.model import MppsRecord, PerformedSeries, PPSStatus
from agent.records import Code, SOPReference

#: UTF-8 (PS3.3 C.12.1.1.2), as in the images; N-SET repeats it because a set Protocol Name or
#: Operators' Name may need it (F.7.2.2.1: the N-SET's set must be the N-CREATE's)
SPECIFIC_CHARACTER_SET = "ISO_IR 192"

#: every attribute the final N-SET carries; each is created by `n_create_dataset`
N_SET_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "PerformedProcedureStepStatus",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDiscontinuationReasonCodeSequence",
    "PerformedSeriesSequence",
)

#: documents, not images: listed in Referenced Non-Image Composite SOP Instance Sequence
#: (0040,0220) of their series item (the dose SR, a rejection note)
NON_IMAGE_SOP_CLASSES = frozenset(str(uid) for uid in (
    sop.XRayRadiationDoseSRStorage, sop.KeyObjectSelectionDocumentStorage,
    sop.BasicTextSRStorage, sop.EnhancedSRStorage, sop.ComprehensiveSRStorage))

#: their values must never appear in a message (STYLE.md, Logging)
_PHI_KEYWORDS = frozenset({"PatientName", "PatientID", "PatientBirthDate", "AdmissionID"})

#: PS3.5 6.2: no control characters in SH/LO/PN/AE/CS and no backslash, which separates
#: values; pydicom's validation checks lengths and CS/UI/DA syntax, not these
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x1f\x7f\\]")


def dicom_date_time(moment: datetime) -> tuple[str, str]:
    """DA and TM (HHMMSS.FFFFFF) of the wall-clock time `moment`: a naive datetime is taken as
    local time as is, an aware one is converted to this machine's zone first."""
    local = moment if moment.tzinfo is None else moment.astimezone().replace(tzinfo=None)
    return local.strftime("%Y%m%d"), local.strftime("%H%M%S.%f")


def n_create_dataset(record: MppsRecord) -> Dataset:
    """The N-CREATE Attribute List: status IN PROGRESS, every N-SET attribute created.

    Raises
    ------
    MppsValueError
        If a value cannot be encoded in its VR; the message names the attribute.
    """
    step = record.step
    order = step.order
    ds = Dataset()
    _put(ds, "SpecificCharacterSet", SPECIFIC_CHARACTER_SET)

    # Performed Procedure Step Relationship
    _put(ds, "ScheduledStepAttributesSequence", [scheduled_step_item(record)])
    _put(ds, "PatientName", order.patient_name)
    _put(ds, "PatientID", order.patient_id)
    if order.issuer_of_patient_id:
        _put(ds, "IssuerOfPatientID", order.issuer_of_patient_id)
    if order.other_patient_ids:
        items = []
        for index, other in enumerate(order.other_patient_ids):
            item = Dataset()
            where = f"OtherPatientIDsSequence[{index}]."
            _put(item, "PatientID", other.patient_id, where=where)
            if other.issuer_of_patient_id:
                _put(item, "IssuerOfPatientID", other.issuer_of_patient_id, where=where)
            _put(item, "TypeOfPatientID", other.type_of_patient_id, where=where)
            items.append(item)
        _put(ds, "OtherPatientIDsSequence", items)
    _put(ds, "PatientBirthDate", order.patient_birth_date)
    _put(ds, "PatientSex", order.patient_sex)
    _put(ds, "ReferencedPatientSequence", [])
    if order.admission_id:
        _put(ds, "AdmissionID", order.admission_id)

    # Performed Procedure Step Information
    _put(ds, "PerformedProcedureStepID", step.pps_id)
    _put(ds, "PerformedStationAETitle", record.station_ae_title)
    _put(ds, "PerformedStationName", record.station_name)
    _put(ds, "PerformedLocation", record.location)
    _put(ds, "PerformedProcedureStepStartDate", step.start_date)
    _put(ds, "PerformedProcedureStepStartTime", step.start_time)
    _put(ds, "PerformedProcedureStepStatus", PPSStatus.IN_PROGRESS.value)
    _put(ds, "PerformedProcedureStepDescription", step.description)
    _put(ds, "PerformedProcedureTypeDescription", "")
    _put(ds, "ProcedureCodeSequence", _code_items("ProcedureCodeSequence",
                                                  record.procedure_codes))
    _put(ds, "PerformedProcedureStepEndDate", "")
    _put(ds, "PerformedProcedureStepEndTime", "")
    # Type 3, created empty so that DISCONTINUED can carry a reason (Table F.7.2-1 note 5)
    _put(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence", [])

    # Image Acquisition Results
    _put(ds, "Modality", step.modality)
    _put(ds, "StudyID", record.study_id)
    _put(ds, "PerformedProtocolCodeSequence",
         _code_items("PerformedProtocolCodeSequence", record.performed_protocol_codes))
    _put(ds, "PerformedSeriesSequence", [])
    return ds


def scheduled_step_item(record: MppsRecord) -> Dataset:
    """The one item of Scheduled Step Attributes Sequence (0040,0270). For an unscheduled
    order every 2/2 attribute is present at zero length and no 3/3 one is sent (F.7.2.1.2
    note 3); the Study Instance UID is the one minted for the images."""
    order = record.step.order
    where = "ScheduledStepAttributesSequence[0]."
    item = Dataset()
    _put(item, "StudyInstanceUID", record.step.study_instance_uid, where=where)
    _put(item, "ReferencedStudySequence",
         _reference_items(where + "ReferencedStudySequence", order.referenced_studies),
         where=where)
    _put(item, "AccessionNumber", order.accession_number, where=where)
    _put(item, "RequestedProcedureID", order.requested_procedure_id, where=where)
    if order.requested_procedure_codes:
        _put(item, "RequestedProcedureCodeSequence",
             _code_items(where + "RequestedProcedureCodeSequence",
                         order.requested_procedure_codes), where=where)
    _put(item, "RequestedProcedureDescription", order.requested_procedure_description,
         where=where)
    _put(item, "ScheduledProcedureStepID", order.sps_id, where=where)
    _put(item, "ScheduledProcedureStepDescription", order.sps_description, where=where)
    _put(item, "ScheduledProtocolCodeSequence",
         _code_items(where + "ScheduledProtocolCodeSequence", order.scheduled_protocol_codes),
         where=where)
    return item


def final_n_set_dataset(record: MppsRecord) -> Dataset:
    """The N-SET Modification List that ends the step: COMPLETED or DISCONTINUED, the end
    date and time, and every series with every image (F.7.2.2.2: all items of a sequence are
    sent, not only new ones).

    Raises
    ------
    MppsValueError
        If the step is not final, has no series (Performed Series Sequence must not be empty
        at the final state, Table F.7.2-1 note 2), or a value cannot be encoded.
    """
    if record.final_status is None:
        raise MppsValueError(f"MPPS {record.step.sop_instance_uid}: not final yet")
    if not record.series:
        raise MppsValueError(f"MPPS {record.step.sop_instance_uid}: Performed Series Sequence "
                             "is empty; the final state needs at least one series")
    ds = Dataset()
    _put(ds, "SpecificCharacterSet", SPECIFIC_CHARACTER_SET)
    _put(ds, "PerformedProcedureStepStatus", record.final_status.value)
    _put(ds, "PerformedProcedureStepEndDate", record.end_date)
    _put(ds, "PerformedProcedureStepEndTime", record.end_time)
    reasons: tuple[Code, ...] = ()
    if record.final_status is PPSStatus.DISCONTINUED and record.discontinuation_reason:
        reasons = (record.discontinuation_reason,)
    _put(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence",
         _code_items("PerformedProcedureStepDiscontinuationReasonCodeSequence", reasons))
    _put(ds, "PerformedSeriesSequence",
         [performed_series_item(series, index) for index, series in enumerate(record.series)])
    return ds


def performed_series_item(series: PerformedSeries, index: int = 0) -> Dataset:
    """One item of Performed Series Sequence; Protocol Name and Series Instance UID are Type 1,
    the rest Type 2 (present, maybe empty).

    Raises
    ------
    MppsValueError
        If Protocol Name is empty or a value cannot be encoded.
    """
    where = f"PerformedSeriesSequence[{index}]."
    if not series.protocol_name.strip():
        raise MppsValueError(f"MPPS {where}ProtocolName is Type 1 and must not be empty")
    item = Dataset()
    _put(item, "PerformingPhysicianName", series.performing_physician_name, where=where)
    _put(item, "ProtocolName", series.protocol_name, where=where)
    _put(item, "OperatorsName", series.operator_name, where=where)
    _put(item, "SeriesInstanceUID", series.series_instance_uid, where=where)
    _put(item, "SeriesDescription", series.series_description, where=where)
    _put(item, "RetrieveAETitle", series.retrieve_ae_title, where=where)
    images = [r for r in series.images if r.sop_class_uid not in NON_IMAGE_SOP_CLASSES]
    others = [r for r in series.images if r.sop_class_uid in NON_IMAGE_SOP_CLASSES]
    _put(item, "ReferencedImageSequence",
         _reference_items(where + "ReferencedImageSequence", images), where=where)
    # Type 2: the documents of the step (the dose SR), empty when it made images only
    _put(item, "ReferencedNonImageCompositeSOPInstanceSequence",
         _reference_items(where + "ReferencedNonImageCompositeSOPInstanceSequence", others),
         where=where)
    return item


#: Performed Series Sequence item attributes an image also carries (General Series / General
#: Equipment), by `add_series` parameter
_SERIES_KEYWORDS = (("protocol_name", "ProtocolName"),
                    ("series_description", "SeriesDescription"),
                    ("operator_name", "OperatorsName"),
                    ("performing_physician_name", "PerformingPhysicianName"))


def series_values(image: Dataset) -> dict[str, str]:
    """The Performed Series item values as `image` carries them, as `add_series` keyword
    arguments: the MPPS then says about the series exactly what its images say, and no more.

    An attribute the image lacks is "" (Type 2, sent at zero length), never a made-up value;
    Protocol Name, Type 1 in the MPPS, is left out when the image has none, and the step's
    `protocol_name` is used: write that same value into the images (General Series (0018,1030))
    so the two agree.
    """
    values: dict[str, str] = {}
    for parameter, keyword in _SERIES_KEYWORDS:
        element = image.data_element(keyword) if keyword in image else None
        text = "" if element is None or element.is_empty else str(element.value)
        if parameter != "protocol_name" or text:
            values[parameter] = text
    return values


def _code_items(where: str, codes: Iterable[Code]) -> list[Dataset]:
    items = []
    for index, code in enumerate(codes):
        at = f"{where}[{index}]."
        for keyword, value in (("CodeValue", code.value),
                               ("CodingSchemeDesignator", code.scheme),
                               ("CodeMeaning", code.meaning)):
            if not value.strip():
                raise MppsValueError(f"MPPS {at}{keyword} is Type 1 and must not be empty")
        item = Dataset()
        _put(item, "CodeValue", code.value, where=at)
        _put(item, "CodingSchemeDesignator", code.scheme, where=at)
        if code.scheme_version:
            _put(item, "CodingSchemeVersion", code.scheme_version, where=at)
        _put(item, "CodeMeaning", code.meaning, where=at)
        items.append(item)
    return items


def _reference_items(where: str, references: Iterable[SOPReference]) -> list[Dataset]:
    items = []
    for index, reference in enumerate(references):
        at = f"{where}[{index}]."
        item = Dataset()
        _put(item, "ReferencedSOPClassUID", reference.sop_class_uid, where=at)
        _put(item, "ReferencedSOPInstanceUID", reference.sop_instance_uid, where=at)
        items.append(item)
    return items


def _put(ds: Dataset, keyword: str, value: object, *, where: str = "") -> None:
    """Set one attribute, validated with RAISE (a new element is otherwise checked against
    pydicom's *reading* mode, WARN, which lets a bad value through)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise MppsValueError(f"{keyword} is not a DICOM keyword")  # a bug in this module
    vr = dictionary_VR(tag)
    phi = keyword in _PHI_KEYWORDS
    name = f"MPPS {where}{keyword}"
    if isinstance(value, str):
        if _FORBIDDEN_IN_TEXT.search(value):
            raise MppsValueError(f"{name} contains a control character or a backslash")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise MppsValueError(f"{name} holds a character UTF-8 cannot encode") from None
    try:
        ds[tag] = DataElement(tag, vr, value, validation_mode=config.RAISE)
    except ValueError as err:
        if phi:
            raise MppsValueError(f"{name} is not a valid {vr} value") from None
        raise MppsValueError(f"{name} is not a valid {vr} value: {err}") from err
