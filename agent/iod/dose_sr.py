"""X-Ray Radiation Dose SR (PS3.3 A.35.8; IHE REM): one document per procedure, built with
pydicom from the exposures the device reported, and checked before it is returned.

The content tree is PS3.16 TID 10001 "Projection X-Ray Radiation Dose" at the root, with the
device observer (TID 1002/1004: our equipment), the accumulated dose (TID 10002 with TID 10007
"Accumulated Total Projection Radiography Dose", single plane) and one TID 10003 "Irradiation
Event X-Ray Data" container per exposure (its X-ray source rows, TID 10003B, inline). Codes and
meanings are those of pydicom's PS3.16 code dictionary (`pydicom.sr.codedict`); the content items
have the shape of highdicom's `sr.value_types` (CONTAINER/CODE/NUM/UIDREF/DATETIME/TEXT).

What the device does not report is never made up:

- A row the template requires whose value we do not know (Dose Area Product when the firmware
  reports none; Dose (RP) Total: the device has no reference-point dosimetry) is a NUM with an
  empty Measured Value Sequence and the qualifier (114010, DCM, "Value unknown") (PS3.3 C.18.1,
  CID 42), not a number.
- The Synchronization module (C in A.35.8: "required if time synchronization was applied") is
  written only when the caller says the clock was synchronised (`ClockSync`).
- X-Ray Detector / Mechanical Data Available are "No": no TID 10003A/10003C data is reported.

No I/O: UIDs and times are arguments (STYLE.md (c)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from pydicom import uid as sop
from pydicom.dataset import Dataset
from pydicom.valuerep import format_number_as_ds

from agent.errors import IODError
from agent.iod import modules
from agent.iod.building import building
from agent.iod.uids import is_valid_uid
from agent.iod.valuerep import (
    SPECIFIC_CHARACTER_SET,
    check_integer,
    check_text,
    check_uid,
    date_part,
    format_dt,
    put,
    time_part,
    utc_offset_of,
)
from agent.records import Code, DeviceInfo, Order, SeriesContext

#: X-Ray Radiation Dose SR Storage, from pydicom's table (never typed in by hand)
XRAY_RADIATION_DOSE_SR = str(sop.XRayRadiationDoseSRStorage)

#: the series holding the report: its own, Modality SR (PS3.3 C.17.1)
SR_MODALITY = "SR"
SERIES_DESCRIPTION = "X-Ray Radiation Dose Report"

#: Synchronization Frame of Reference UID for UTC (PS3.6 Annex A, "Universal Coordinated Time")
UTC_SYNCHRONIZATION_UID = "1.2.840.10008.15.1.1"
#: Time Distribution Protocol (0018,1802) enumerated values (PS3.3 C.7.4.2)
TIME_DISTRIBUTION_PROTOCOLS = ("NTP", "IRIG", "GPS", "SNTP", "PTP")

#: 1 dGy·cm² = 0.1 Gy x 1e-4 m²: the device reports dGy·cm², TID 10003 wants Gy·m² (UCUM Gy.m2)
GY_M2_PER_DGY_CM2 = 1e-5


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _ucum(value: str, meaning: str | None = None) -> Code:
    return Code(value, "UCUM", meaning or value)


# concept names and values, checked against pydicom.sr.codedict (tests/unit/test_dose_sr.py)
XRAY_RADIATION_DOSE_REPORT = _dcm("113701", "X-Ray Radiation Dose Report")
PROCEDURE_REPORTED = _dcm("121058", "Procedure reported")
PROJECTION_XRAY = _dcm("113704", "Projection X-Ray")
HAS_INTENT = _sct("363703001", "Has Intent")
DIAGNOSTIC_INTENT = _sct("261004008", "Diagnostic Intent")
ACQUISITION_DEVICE_TYPE = _dcm("122142", "Acquisition Device Type")
INTEGRATED_PROJECTION_RADIOGRAPHY = _dcm("113958", "Integrated Projection Radiography System")
OBSERVER_TYPE = _dcm("121005", "Observer Type")
DEVICE = _dcm("121007", "Device")
DEVICE_OBSERVER_UID = _dcm("121012", "Device Observer UID")
DEVICE_OBSERVER_NAME = _dcm("121013", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER = _dcm("121014", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL_NAME = _dcm("121015", "Device Observer Model Name")
DEVICE_OBSERVER_SERIAL_NUMBER = _dcm("121016", "Device Observer Serial Number")
DEVICE_ROLE_IN_PROCEDURE = _dcm("113876", "Device Role in Procedure")
IRRADIATING_DEVICE = _dcm("113859", "Irradiating Device")
SCOPE_OF_ACCUMULATION = _dcm("113705", "Scope of Accumulation")
STUDY = _dcm("113014", "Study")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
PERFORMED_PROCEDURE_STEP = _dcm("113016", "Performed Procedure Step")
PPS_SOP_INSTANCE_UID = _dcm("121126", "Performed Procedure Step SOP Instance UID")
XRAY_DETECTOR_DATA_AVAILABLE = _dcm("113945", "X-Ray Detector Data Available")
XRAY_SOURCE_DATA_AVAILABLE = _dcm("113943", "X-Ray Source Data Available")
XRAY_MECHANICAL_DATA_AVAILABLE = _dcm("113944", "X-Ray Mechanical Data Available")
YES = _sct("373066001", "Yes")
NO = _sct("373067005", "No")
ACCUMULATED_XRAY_DOSE_DATA = _dcm("113702", "Accumulated X-Ray Dose Data")
ACQUISITION_PLANE = _dcm("113764", "Acquisition Plane")
SINGLE_PLANE = _dcm("113622", "Single Plane")
DOSE_AREA_PRODUCT_TOTAL = _dcm("113722", "Dose Area Product Total")
DOSE_RP_TOTAL = _dcm("113725", "Dose (RP) Total")
TOTAL_NUMBER_OF_RADIOGRAPHIC_FRAMES = _dcm("113731", "Total Number of Radiographic Frames")
IRRADIATION_EVENT_XRAY_DATA = _dcm("113706", "Irradiation Event X-Ray Data")
IRRADIATION_EVENT_UID = _dcm("113769", "Irradiation Event UID")
DATETIME_STARTED = _dcm("111526", "DateTime Started")
IRRADIATION_EVENT_TYPE = _dcm("113721", "Irradiation Event Type")
STATIONARY_ACQUISITION = _dcm("113611", "Stationary Acquisition")
DOSE_AREA_PRODUCT = _dcm("122130", "Dose Area Product")
KVP = _dcm("113733", "KVP")
XRAY_TUBE_CURRENT = _dcm("113734", "X-Ray Tube Current")
EXPOSURE_TIME = _dcm("113824", "Exposure Time")
EXPOSURE = _dcm("113736", "Exposure")
SOURCE_OF_DOSE_INFORMATION = _dcm("113854", "Source of Dose Information")
AUTOMATED_DATA_COLLECTION = _dcm("113856", "Automated Data Collection")
VALUE_UNKNOWN = _dcm("114010", "Value unknown")

#: UCUM units of the template rows (PS3.16 TID 10003B, 10007)
KILOVOLT = _ucum("kV")
MILLIAMPERE = _ucum("mA")
MILLISECOND = _ucum("ms")
MICROAMPERE_SECOND = _ucum("uA.s")
GRAY_SQUARE_METRE = _ucum("Gy.m2")
GRAY = _ucum("Gy")
NO_UNITS = _ucum("1", "no units")


@dataclass(frozen=True)
class ModuleRow:
    """One row of the IOD's module table (PS3.3 A.35.8): IE, module, clause, usage, written."""

    ie: str
    title: str
    clause: str
    usage: str
    written: str


#: PS3.3 Table A.35.8-1, X-Ray Radiation Dose SR IOD Modules, and what we write
MODULE_TABLE: tuple[ModuleRow, ...] = (
    ModuleRow("Patient", "Patient", "C.7.1.1", "M", "yes"),
    ModuleRow("Patient", "Clinical Trial Subject", "C.7.1.3", "U", "no"),
    ModuleRow("Study", "General Study", "C.7.2.1", "M", "yes"),
    ModuleRow("Study", "Patient Study", "C.7.2.2", "U", "yes"),
    ModuleRow("Study", "Clinical Trial Study", "C.7.2.3", "U", "no"),
    ModuleRow("Series", "SR Document Series", "C.17.1", "M", "yes"),
    ModuleRow("Series", "Clinical Trial Series", "C.7.3.2", "U", "no"),
    ModuleRow("Frame of Reference", "Synchronization", "C.7.4.2", "C",
              "when the caller says the clock was synchronised (ClockSync)"),
    ModuleRow("Equipment", "General Equipment", "C.7.5.1", "M", "yes"),
    ModuleRow("Document", "SR Document General", "C.17.2", "M", "yes"),
    ModuleRow("Document", "SR Document Content", "C.17.3", "M", "yes"),
    ModuleRow("Document", "SOP Common", "C.12.1", "M", "yes"),
)


@dataclass(frozen=True)
class IrradiationEvent:
    """One exposure as the device reported it (PS3.17 AA.2: the smallest unit of dose
    reporting). `uid` is also the Irradiation Event UID (0008,3010) of the image it made."""

    uid: str
    started_at: datetime           #: aware: when the exposure started
    kvp: float                     #: kV delivered
    mas: float                     #: tube current-time product, mAs
    exposure_ms: float             #: exposure time, ms
    dap_dgycm2: float | None = None  #: dose-area product, dGy·cm²; None: not reported

    @classmethod
    def from_device_parameters(cls, uid: str, started_at: datetime,
                               parameters: Mapping[str, Any]) -> IrradiationEvent:
        """The event of a Frame: `parameters` is its device_parameters (kvp, mas,
        exposure_ms and, from protocol version 2, dap_dgycm2).

        Raises
        ------
        IODError
            If kvp, mas or exposure_ms is missing (a frame without them is no exposure record).
        """
        missing = [key for key in ("kvp", "mas", "exposure_ms") if parameters.get(key) is None]
        if missing:
            raise IODError(f"X-Ray Radiation Dose SR: irradiation event {uid}: the device "
                           f"reported no {', '.join(missing)}")
        dap = parameters.get("dap_dgycm2")
        return cls(uid=uid, started_at=started_at, kvp=parameters["kvp"], mas=parameters["mas"],
                   exposure_ms=parameters["exposure_ms"], dap_dgycm2=dap)


@dataclass(frozen=True)
class ClockSync:
    """The acquisition clock was synchronised to UTC (Synchronization module, C.7.4.2)."""

    distribution_protocol: str = "NTP"   #: one of TIME_DISTRIBUTION_PROTOCOLS
    time_source: str = ""                #: e.g. the NTP server's name; "" = not said


# --- checks ---------------------------------------------------------------------------------

_MODULE = "X-Ray Radiation Dose SR"


def _check_number(where: str, value: object, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise IODError(f"{_MODULE}: {where} {value!r} is not a positive number of {unit}")
    return float(value)


def _check_aware(where: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None \
            or value.tzinfo.utcoffset(value) is None:
        raise IODError(f"{_MODULE}: {where} must be a timezone-aware datetime, got {value!r}")
    return value


def check_events(events: Sequence[IrradiationEvent]) -> None:
    """At least one event (TID 10001: TID 10003 is 1-n, M), unique valid UIDs, positive
    technique values, aware start times."""
    if isinstance(events, str | bytes) or not isinstance(events, Sequence) or not events:
        raise IODError(f"{_MODULE}: no irradiation event: a dose report lists at least one "
                       "(TID 10001, Irradiation Event X-Ray Data is 1-n)")
    seen: set[str] = set()
    for index, event in enumerate(events):
        where = f"irradiation event {index}"
        if not isinstance(event, IrradiationEvent):
            raise IODError(f"{_MODULE}: {where} is a {type(event).__name__}, not an "
                           "IrradiationEvent")
        check_uid(_MODULE, f"{where} IrradiationEventUID", event.uid)
        if event.uid in seen:
            raise IODError(f"{_MODULE}: {where} IrradiationEventUID {event.uid} is given twice")
        seen.add(event.uid)
        _check_aware(f"{where} started_at", event.started_at)
        _check_number(f"{where} kvp", event.kvp, "kV")
        _check_number(f"{where} mas", event.mas, "mAs")
        _check_number(f"{where} exposure_ms", event.exposure_ms, "ms")
        if event.dap_dgycm2 is not None:
            _check_number(f"{where} dap_dgycm2", event.dap_dgycm2, "dGy·cm²")


def _check_arguments(events: Sequence[IrradiationEvent], order: Order, device: DeviceInfo,
                     series: SeriesContext, sop_instance_uid: str, device_observer_uid: str,
                     procedure_started: datetime, procedure_ended: datetime, tz: tzinfo,
                     instance_number: int, performed_procedure_codes: tuple[Code, ...],
                     clock_sync: ClockSync | None) -> None:
    check_events(events)
    modules.check_patient(order)
    modules.check_patient_study(order)
    modules.check_general_study(order, series)
    check_uid("SR Document Series", "SeriesInstanceUID", series.series_instance_uid)
    if series.series_instance_uid == series.study_instance_uid:
        raise IODError("SR Document Series: SeriesInstanceUID equals the StudyInstanceUID")
    check_integer("SR Document Series", "SeriesNumber", series.series_number, 0, 2**31 - 1)
    modules.check_general_equipment(device)
    modules.check_sop_common(sop_instance_uid)
    check_integer("SR Document General", "InstanceNumber", instance_number, 1, 2**31 - 1)
    modules.check_codes("SR Document General", "PerformedProcedureCodeSequence",
                        performed_procedure_codes)
    check_uid(_MODULE, "Device Observer UID", device_observer_uid)
    if not isinstance(tz, tzinfo):
        raise IODError(f"{_MODULE}: tz must be a tzinfo, got {type(tz).__name__}")
    started = _check_aware("procedure_started", procedure_started)
    ended = _check_aware("procedure_ended", procedure_ended)
    if ended < started:
        raise IODError(f"{_MODULE}: procedure_ended {ended.isoformat()} is before "
                       f"procedure_started {started.isoformat()}")
    if order.scheduled:
        check_text("SR Document General", "ReferencedRequestSequence RequestedProcedureID",
                   order.requested_procedure_id, 16, required=True)
    if clock_sync is not None:
        if not isinstance(clock_sync, ClockSync) \
                or clock_sync.distribution_protocol not in TIME_DISTRIBUTION_PROTOCOLS:
            raise IODError(f"Synchronization: TimeDistributionProtocol must be one of "
                           f"{', '.join(TIME_DISTRIBUTION_PROTOCOLS)}, got {clock_sync!r}")
        check_text("Synchronization", "TimeSource", clock_sync.time_source, 16)


# --- content items (the shape of highdicom.sr.value_types) ------------------------------------

def _code_item(code: Code) -> Dataset:
    return modules.code_sequence((code,))[0]


def _item(relationship: str | None, value_type: str, name: Code) -> Dataset:
    item = Dataset()
    if relationship is not None:
        put(item, "RelationshipType", relationship)
    put(item, "ValueType", value_type)
    put(item, "ConceptNameCodeSequence", [_code_item(name)])
    return item


def container_item(relationship: str | None, name: Code, children: list[Dataset],
                   template: str | None = None) -> Dataset:
    """CONTAINER; `template` fills Content Template Sequence (DCMR, e.g. "10003")."""
    item = _item(relationship, "CONTAINER", name)
    put(item, "ContinuityOfContent", "SEPARATE")
    if template is not None:
        template_item = Dataset()
        put(template_item, "MappingResource", "DCMR")
        put(template_item, "TemplateIdentifier", template)
        put(item, "ContentTemplateSequence", [template_item])
    put(item, "ContentSequence", children)
    return item


def code_item(relationship: str, name: Code, value: Code,
              children: list[Dataset] | None = None) -> Dataset:
    item = _item(relationship, "CODE", name)
    put(item, "ConceptCodeSequence", [_code_item(value)])
    if children:
        put(item, "ContentSequence", children)
    return item


def num_item(relationship: str, name: Code, value: float | None, unit: Code) -> Dataset:
    """NUM; None: an empty Measured Value Sequence qualified (114010, DCM, "Value unknown")."""
    item = _item(relationship, "NUM", name)
    if value is None:
        put(item, "MeasuredValueSequence", [])
        put(item, "NumericValueQualifierCodeSequence", [_code_item(VALUE_UNKNOWN)])
        return item
    measured = Dataset()
    put(measured, "MeasurementUnitsCodeSequence", [_code_item(unit)])
    number = str(value) if isinstance(value, int) else format_number_as_ds(float(value))
    put(measured, "NumericValue", number)
    put(item, "MeasuredValueSequence", [measured])
    return item


def uidref_item(relationship: str, name: Code, uid: str,
                children: list[Dataset] | None = None) -> Dataset:
    item = _item(relationship, "UIDREF", name)
    put(item, "UID", uid)
    if children:
        put(item, "ContentSequence", children)
    return item


def datetime_item(relationship: str, name: Code, value: str) -> Dataset:
    item = _item(relationship, "DATETIME", name)
    put(item, "DateTime", value)
    return item


def text_item(relationship: str, name: Code, value: str) -> Dataset:
    item = _item(relationship, "TEXT", name)
    put(item, "TextValue", value)
    return item


# --- the templates -------------------------------------------------------------------------

def _observer_context(device: DeviceInfo, device_observer_uid: str) -> list[Dataset]:
    """TID 1002 with TID 1004: the recording device is our equipment."""
    items = [code_item("HAS OBS CONTEXT", OBSERVER_TYPE, DEVICE),
             uidref_item("HAS OBS CONTEXT", DEVICE_OBSERVER_UID, device_observer_uid)]
    for name, value in ((DEVICE_OBSERVER_NAME, device.station_name),
                        (DEVICE_OBSERVER_MANUFACTURER, device.manufacturer),
                        (DEVICE_OBSERVER_MODEL_NAME, device.model_name),
                        (DEVICE_OBSERVER_SERIAL_NUMBER, device.device_serial_number)):
        if value:   # each is U; a TEXT item may not be empty
            items.append(text_item("HAS OBS CONTEXT", name, value))
    items.append(code_item("HAS OBS CONTEXT", DEVICE_ROLE_IN_PROCEDURE, IRRADIATING_DEVICE))
    return items


def _scope_of_accumulation(order: Order, series: SeriesContext) -> Dataset:
    """One report per procedure: scoped to its performed procedure step when there is one,
    else to the study."""
    pps = order.performed_procedure_step
    if pps is not None:
        return code_item("HAS OBS CONTEXT", SCOPE_OF_ACCUMULATION, PERFORMED_PROCEDURE_STEP, [
            uidref_item("HAS PROPERTIES", PPS_SOP_INSTANCE_UID,
                        pps.referenced_sop_instance_uid)])
    return code_item("HAS OBS CONTEXT", SCOPE_OF_ACCUMULATION, STUDY, [
        uidref_item("HAS PROPERTIES", STUDY_INSTANCE_UID, series.study_instance_uid)])


def _dap_gym2(event: IrradiationEvent) -> float | None:
    return None if event.dap_dgycm2 is None else event.dap_dgycm2 * GY_M2_PER_DGY_CM2


def _accumulated_dose(events: Sequence[IrradiationEvent]) -> Dataset:
    """TID 10002 for a single plane, with TID 10007 (integrated projection radiography)."""
    daps = [_dap_gym2(event) for event in events]
    total = None if any(dap is None for dap in daps) else sum(d for d in daps if d is not None)
    return container_item("CONTAINS", ACCUMULATED_XRAY_DOSE_DATA, [
        code_item("HAS CONCEPT MOD", ACQUISITION_PLANE, SINGLE_PLANE),
        num_item("CONTAINS", DOSE_AREA_PRODUCT_TOTAL, total, GRAY_SQUARE_METRE),
        # required for an integrated system; the device has no reference-point dosimetry
        num_item("CONTAINS", DOSE_RP_TOTAL, None, GRAY),
        num_item("CONTAINS", TOTAL_NUMBER_OF_RADIOGRAPHIC_FRAMES, len(events), NO_UNITS),
    ], template="10002")


def _irradiation_event(event: IrradiationEvent, tz: tzinfo) -> Dataset:
    """TID 10003 with the X-ray source rows of TID 10003B that the device reports."""
    tube_current_ma = event.mas / (event.exposure_ms / 1000.0)
    return container_item("CONTAINS", IRRADIATION_EVENT_XRAY_DATA, [
        code_item("HAS CONCEPT MOD", ACQUISITION_PLANE, SINGLE_PLANE),
        uidref_item("CONTAINS", IRRADIATION_EVENT_UID, event.uid),
        datetime_item("CONTAINS", DATETIME_STARTED, format_dt(event.started_at.astimezone(tz))),
        code_item("CONTAINS", IRRADIATION_EVENT_TYPE, STATIONARY_ACQUISITION),
        num_item("CONTAINS", DOSE_AREA_PRODUCT, _dap_gym2(event), GRAY_SQUARE_METRE),
        num_item("CONTAINS", KVP, event.kvp, KILOVOLT),
        # the mean tube current follows from what was reported: mAs / s
        num_item("CONTAINS", XRAY_TUBE_CURRENT, round(tube_current_ma, 3), MILLIAMPERE),
        num_item("CONTAINS", EXPOSURE_TIME, event.exposure_ms, MILLISECOND),
        num_item("CONTAINS", EXPOSURE, round(event.mas * 1000.0, 3), MICROAMPERE_SECOND),
    ], template="10003")


def dose_content(events: Sequence[IrradiationEvent], *, order: Order, device: DeviceInfo,
                 series: SeriesContext, device_observer_uid: str, tz: tzinfo) -> Dataset:
    """The root CONTAINER of TID 10001 (its ContentSequence holds every row we write)."""
    children = [
        code_item("HAS CONCEPT MOD", PROCEDURE_REPORTED, PROJECTION_XRAY, [
            code_item("HAS CONCEPT MOD", HAS_INTENT, DIAGNOSTIC_INTENT)]),
        code_item("CONTAINS", ACQUISITION_DEVICE_TYPE, INTEGRATED_PROJECTION_RADIOGRAPHY),
        *_observer_context(device, device_observer_uid),
        _scope_of_accumulation(order, series),
        code_item("CONTAINS", XRAY_DETECTOR_DATA_AVAILABLE, NO),
        code_item("CONTAINS", XRAY_SOURCE_DATA_AVAILABLE, YES),
        code_item("CONTAINS", XRAY_MECHANICAL_DATA_AVAILABLE, NO),
        _accumulated_dose(events),
        *(_irradiation_event(event, tz) for event in events),
        code_item("CONTAINS", SOURCE_OF_DOSE_INFORMATION, AUTOMATED_DATA_COLLECTION),
    ]
    return container_item(None, XRAY_RADIATION_DOSE_REPORT, children, template="10001")


# --- the modules ---------------------------------------------------------------------------

def _add_sr_document_series(ds: Dataset, order: Order, series: SeriesContext) -> None:
    """SR Document Series (C.17.1): Modality SR, its own series; Referenced Performed
    Procedure Step Sequence is Type 2 (the MPPS of the procedure, or empty)."""
    put(ds, "Modality", SR_MODALITY)
    put(ds, "SeriesInstanceUID", series.series_instance_uid)
    put(ds, "SeriesNumber", series.series_number)
    put(ds, "SeriesDate", date_part(series.series_datetime))
    put(ds, "SeriesTime", time_part(series.series_datetime))
    put(ds, "SeriesDescription", SERIES_DESCRIPTION)
    references = []
    pps = order.performed_procedure_step
    if pps is not None:
        reference = Dataset()
        put(reference, "ReferencedSOPClassUID", pps.referenced_sop_class_uid)
        put(reference, "ReferencedSOPInstanceUID", pps.referenced_sop_instance_uid)
        references.append(reference)
    put(ds, "ReferencedPerformedProcedureStepSequence", references)


def _referenced_request(order: Order, series: SeriesContext) -> Dataset:
    item = Dataset()
    put(item, "StudyInstanceUID", series.study_instance_uid)
    put(item, "ReferencedStudySequence", [])
    put(item, "AccessionNumber", order.accession_number)
    put(item, "PlacerOrderNumberImagingServiceRequest", "")
    put(item, "FillerOrderNumberImagingServiceRequest", "")
    put(item, "RequestedProcedureID", order.requested_procedure_id)
    put(item, "RequestedProcedureDescription", order.requested_procedure_description)
    put(item, "RequestedProcedureCodeSequence",
        modules.code_sequence(order.requested_procedure_codes[:1]))
    return item


def _add_sr_document_general(ds: Dataset, order: Order, series: SeriesContext,
                             instance_number: int, content_dt: str,
                             performed_procedure_codes: tuple[Code, ...]) -> None:
    """SR Document General (C.17.2): complete, unverified (no person signs a device log);
    the request it answers (1C: a scheduled procedure); Performed Procedure Code Sequence
    (Type 2) only with what the caller says was performed."""
    put(ds, "InstanceNumber", instance_number)
    put(ds, "CompletionFlag", "COMPLETE")
    put(ds, "VerificationFlag", "UNVERIFIED")
    put(ds, "ContentDate", date_part(content_dt))
    put(ds, "ContentTime", time_part(content_dt))
    if order.scheduled:
        put(ds, "ReferencedRequestSequence", [_referenced_request(order, series)])
    put(ds, "PerformedProcedureCodeSequence", modules.code_sequence(performed_procedure_codes))


def _add_sr_document_content(ds: Dataset, root: Dataset) -> None:
    """SR Document Content (C.17.3): the root content item's attributes at the top level."""
    for element in root:
        put(ds, element.keyword, element.value)


def _add_synchronization(ds: Dataset, clock_sync: ClockSync) -> None:
    """Synchronization (C.7.4.2): the clock was synchronised to UTC; nothing triggers."""
    put(ds, "SynchronizationFrameOfReferenceUID", UTC_SYNCHRONIZATION_UID)
    put(ds, "SynchronizationTrigger", "NO TRIGGER")
    put(ds, "AcquisitionTimeSynchronized", "Y")
    if clock_sync.time_source:
        put(ds, "TimeSource", clock_sync.time_source)
    put(ds, "TimeDistributionProtocol", clock_sync.distribution_protocol)


def build_dose_sr(
    events: Sequence[IrradiationEvent],
    *,
    order: Order,
    device: DeviceInfo,
    series: SeriesContext,
    sop_instance_uid: str,
    device_observer_uid: str,
    procedure_started: datetime,
    procedure_ended: datetime,
    tz: tzinfo,
    instance_number: int = 1,
    performed_procedure_codes: tuple[Code, ...] = (),
    clock_sync: ClockSync | None = None,
) -> Dataset:
    """The X-Ray Radiation Dose SR of one procedure.

    Parameters
    ----------
    events
        Every exposure of the procedure, in order; their UIDs are the images' Irradiation
        Event UID (0008,3010).
    order, device
        The procedure's patient/study/request, and our equipment (General Equipment and the
        device observer).
    series
        The report's own series in the procedure's study (same Study Instance UID).
    sop_instance_uid
        Fixed by the caller before building, so a resend reuses it.
    device_observer_uid
        A UID that stays the same for this device across reports (TID 1004).
    procedure_started, procedure_ended
        Aware datetimes; the end is the report's content and creation time.
    tz
        The zone every DA/TM/DT is written in; Timezone Offset From UTC says which.
    performed_procedure_codes
        What was performed (confirmed or reported); empty when nobody said.
    clock_sync
        Given when the acquisition clock is known to be synchronised: writes the
        Synchronization module.

    Raises
    ------
    IODError
        Naming the module/template row and attribute, before anything is built; or if the
        built document fails `validate_dose_sr`.
    """
    _check_arguments(events, order, device, series, sop_instance_uid, device_observer_uid,
                     procedure_started, procedure_ended, tz, instance_number,
                     performed_procedure_codes, clock_sync)
    ended_local = procedure_ended.astimezone(tz)
    content_dt = format_dt(ended_local)
    ds = Dataset()
    with building("Patient"):
        modules.add_patient_module(ds, order)
    with building("General Study"):
        modules.add_general_study_module(ds, order, series)
    with building("Patient Study"):
        modules.add_patient_study_module(ds, order)
    with building("SR Document Series"):
        _add_sr_document_series(ds, order, series)
    if clock_sync is not None:
        with building("Synchronization"):
            _add_synchronization(ds, clock_sync)
    with building("General Equipment"):
        modules.add_general_equipment_module(ds, device)
    with building("SR Document General"):
        _add_sr_document_general(ds, order, series, instance_number, content_dt,
                                 performed_procedure_codes)
    with building("SR Document Content"):
        _add_sr_document_content(ds, dose_content(
            events, order=order, device=device, series=series,
            device_observer_uid=device_observer_uid, tz=tz))
    with building("SOP Common"):
        modules.add_sop_common_module(ds, sop_class_uid=XRAY_RADIATION_DOSE_SR,
                                      sop_instance_uid=sop_instance_uid,
                                      created_datetime=content_dt,
                                      timezone_offset=utc_offset_of(ended_local))
    validate_dose_sr(ds)
    return ds


# --- validation ----------------------------------------------------------------------------

#: (module, keyword, type) every dose report must carry
_REQUIRED: tuple[tuple[str, str, int], ...] = (
    ("SOP Common", "SOPClassUID", 1),
    ("SOP Common", "SOPInstanceUID", 1),
    ("SOP Common", "SpecificCharacterSet", 1),
    ("SOP Common", "TimezoneOffsetFromUTC", 1),
    ("Patient", "PatientName", 2),
    ("Patient", "PatientID", 2),
    ("Patient", "PatientBirthDate", 2),
    ("Patient", "PatientSex", 2),
    ("General Study", "StudyInstanceUID", 1),
    ("General Study", "StudyDate", 2),
    ("General Study", "StudyTime", 2),
    ("General Study", "ReferringPhysicianName", 2),
    ("General Study", "StudyID", 2),
    ("General Study", "AccessionNumber", 2),
    ("SR Document Series", "Modality", 1),
    ("SR Document Series", "SeriesInstanceUID", 1),
    ("SR Document Series", "SeriesNumber", 1),
    ("SR Document Series", "ReferencedPerformedProcedureStepSequence", 2),
    ("General Equipment", "Manufacturer", 2),
    ("SR Document General", "InstanceNumber", 1),
    ("SR Document General", "CompletionFlag", 1),
    ("SR Document General", "VerificationFlag", 1),
    ("SR Document General", "ContentDate", 1),
    ("SR Document General", "ContentTime", 1),
    ("SR Document General", "PerformedProcedureCodeSequence", 2),
    ("SR Document Content", "ValueType", 1),
    ("SR Document Content", "ConceptNameCodeSequence", 1),
    ("SR Document Content", "ContinuityOfContent", 1),
    ("SR Document Content", "ContentSequence", 1),
)


def _concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _key(code: Code) -> tuple[str, str]:
    return code.value, code.scheme


def _walk(items: Sequence[Dataset], path: str) -> None:
    """Every content item has a relationship, a value type with its value, units on NUMs."""
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        for keyword in ("RelationshipType", "ValueType", "ConceptNameCodeSequence"):
            if not item.get(keyword):
                raise IODError(f"SR Document Content: {where} has no {keyword}")
        value_type = item.ValueType
        if value_type == "NUM":
            measured = item.MeasuredValueSequence
            if measured and not measured[0].get("MeasurementUnitsCodeSequence"):
                raise IODError(f"SR Document Content: {where} NUM has no units")
            if not measured and not item.get("NumericValueQualifierCodeSequence"):
                raise IODError(f"SR Document Content: {where} NUM has neither a value nor a "
                               "qualifier saying why")
        elif value_type == "UIDREF" and not is_valid_uid(str(item.get("UID", ""))):
            raise IODError(f"SR Document Content: {where} UIDREF {item.get('UID')!r} is not a "
                           "valid UID")
        if "ContentSequence" in item:
            _walk(item.ContentSequence, f"{where}.ContentSequence")


def validate_dose_sr(ds: Dataset) -> None:
    """Check a built dose report before it is queued.

    Raises
    ------
    IODError
        Naming the module (or content item) and attribute at fault.
    """
    if ds.get("SOPClassUID") != XRAY_RADIATION_DOSE_SR:
        raise IODError(f"SOP Common: SOPClassUID {ds.get('SOPClassUID')!r} is not X-Ray "
                       f"Radiation Dose SR Storage {XRAY_RADIATION_DOSE_SR}")
    for module, keyword, attribute_type in _REQUIRED:
        if keyword not in ds:
            raise IODError(f"{module}: {keyword} is missing (Type {attribute_type})")
        value = ds[keyword].value
        if attribute_type == 1 and (value is None or (hasattr(value, "__len__")
                                                      and len(value) == 0)):
            raise IODError(f"{module}: {keyword} is empty (Type 1)")
    if ds.SpecificCharacterSet != SPECIFIC_CHARACTER_SET:
        raise IODError(f"SOP Common: SpecificCharacterSet {ds.SpecificCharacterSet!r} is not "
                       f"{SPECIFIC_CHARACTER_SET!r}")
    if ds.Modality != SR_MODALITY:
        raise IODError(f"SR Document Series: Modality {ds.Modality!r} is not SR")
    if ds.ValueType != "CONTAINER" or _concept(ds) != _key(XRAY_RADIATION_DOSE_REPORT):
        raise IODError("SR Document Content: the root is not the CONTAINER (113701, DCM, "
                       "\"X-Ray Radiation Dose Report\") of TID 10001")
    templates = ds.get("ContentTemplateSequence") or []
    if not templates or templates[0].get("TemplateIdentifier") != "10001":
        raise IODError("SR Document Content: ContentTemplateSequence does not name TID 10001")
    _walk(ds.ContentSequence, "ContentSequence")
    events = [item for item in ds.ContentSequence
              if item.ValueType == "CONTAINER"
              and _concept(item) == _key(IRRADIATION_EVENT_XRAY_DATA)]
    if not events:
        raise IODError("SR Document Content: no Irradiation Event X-Ray Data container "
                       "(TID 10003 is 1-n, M)")
    for index, event in enumerate(events):
        uids = [item.UID for item in event.ContentSequence
                if _concept(item) == _key(IRRADIATION_EVENT_UID)]
        if len(uids) != 1:
            raise IODError(f"SR Document Content: irradiation event {index} has {len(uids)} "
                           "Irradiation Event UIDs, 1 expected")


def event_uids(ds: Dataset) -> list[str]:
    """The Irradiation Event UIDs of a dose report, in document order (for checks)."""
    return [str(item.UID) for container in ds.ContentSequence
            if container.ValueType == "CONTAINER"
            and _concept(container) == _key(IRRADIATION_EVENT_XRAY_DATA)
            for item in container.ContentSequence
            if _concept(item) == _key(IRRADIATION_EVENT_UID)]


def modules_markdown() -> str:
    """The module table of docs/iods.md's dose SR section (the doc is checked against this)."""
    return (
        f"### `dose-sr`: X-Ray Radiation Dose SR (PS3.3 A.35.8)\n\n"
        f"SOP Class {XRAY_RADIATION_DOSE_SR}; Modality {SR_MODALITY}; root template "
        "TID 10001.\n\n| IE | Module | PS3.3 | Usage | We write it |\n|---|---|---|---|---|\n"
        + "".join(f"| {row.ie} | {row.title} | {row.clause} | {row.usage} | {row.written} |\n"
                  for row in MODULE_TABLE))
