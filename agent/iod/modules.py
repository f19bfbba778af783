"""One small function per IOD module (PS3.3 Annex C).

`check_*` functions reject bad input before anything is built and name the module and the
attribute; `add_*` functions write one module's attributes into a Dataset and assume their
check passed. Messages never repeat the value of a Patient-module attribute: they may end
up in a log, and patient data must not (STYLE.md, Logging).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import format_number_as_ds

from agent.errors import IODError

# the region tables and the side check live in agent.iod.anatomy (the station asks them before
# an exposure); re-exported for this module's callers
from agent.iod.anatomy import IMAGE_LATERALITIES as IMAGE_LATERALITIES
from agent.iod.anatomy import PAIRED_REGIONS as PAIRED_REGIONS
from agent.iod.anatomy import UNPAIRED_REGIONS as UNPAIRED_REGIONS
from agent.iod.anatomy import check_image_laterality as check_image_laterality
from agent.iod.iods import (
    DX_FOR_PRESENTATION,
    MULTIFRAME_GRAYSCALE_BYTE_SC,
    MULTIFRAME_GRAYSCALE_WORD_SC,
    MULTIFRAME_TRUE_COLOR_SC,
    SC_IMAGE_STORAGE,
    VIDEO_PHOTOGRAPHIC_IMAGE,
)
from agent.iod.valuerep import (
    MAX_IS,
    MAX_VALUE_LENGTH,
    SPECIFIC_CHARACTER_SET,
    check_cs,
    check_dt,
    check_integer,
    check_pn,
    check_text,
    check_uid,
    date_part,
    format_dt,
    local_datetime,
    put,
    time_part,
)
from agent.records import Code, DeviceInfo, Order, SeriesContext, SOPReference
from drivers.frame import Frame

#: Type of Patient ID (0010,0022) defined terms (PS3.3 C.7.1.1)
TYPES_OF_PATIENT_ID = ("TEXT", "RFID", "BARCODE")


class ConversionType(StrEnum):
    """SC Equipment Conversion Type (0008,0064), PS3.3 C.8.6.1.1."""

    DIGITIZED_VIDEO = "DV"
    DIGITAL_INTERFACE = "DI"
    DIGITIZED_FILM = "DF"
    WORKSTATION = "WSD"
    SCANNED_DOCUMENT = "SD"
    SCANNED_IMAGE = "SI"
    DRAWING = "DRW"
    SYNTHETIC_IMAGE = "SYN"


# --- Patient (C.7.1.1) ---------------------------------------------------------------------

def check_patient(order: Order) -> None:
    """Patient Name/ID/Birth Date/Sex are Type 2 (may be empty); the rest must be valid."""
    check_pn("Patient", "PatientName", order.patient_name)
    check_text("Patient", "PatientID", order.patient_id, 64, phi=True)
    check_text("Patient", "IssuerOfPatientID", order.issuer_of_patient_id, 64)
    birth_date = order.patient_birth_date
    if not isinstance(birth_date, str):
        raise IODError("Patient: PatientBirthDate must be text YYYYMMDD or empty")
    if birth_date:
        try:
            valid = len(birth_date) == 8 and birth_date.isdigit() and bool(
                datetime.strptime(birth_date, "%Y%m%d"))
        except ValueError:
            valid = False
        if not valid:
            raise IODError("Patient: PatientBirthDate is not a valid date YYYYMMDD")
    if order.patient_sex not in ("", "M", "F", "O"):
        raise IODError("Patient: PatientSex must be M, F, O or empty")
    for index, other in enumerate(order.other_patient_ids):
        where = f"OtherPatientIDsSequence[{index}]"
        # Type 1 inside the item (PS3.3 Table C.7-1): an item without an ID says nothing
        check_text("Patient", f"{where}.PatientID", other.patient_id, 64, phi=True,
                   required=True)
        check_text("Patient", f"{where}.IssuerOfPatientID", other.issuer_of_patient_id, 64)
        if other.type_of_patient_id not in TYPES_OF_PATIENT_ID:
            raise IODError(f"Patient: {where}.TypeOfPatientID {other.type_of_patient_id!r} is "
                           f"not one of {', '.join(TYPES_OF_PATIENT_ID)}")


def add_patient_module(ds: Dataset, order: Order) -> None:
    """Patient module: copied from the order (IHE SWF: from the worklist, unchanged)."""
    put(ds, "PatientName", order.patient_name)
    put(ds, "PatientID", order.patient_id)
    if order.issuer_of_patient_id:
        put(ds, "IssuerOfPatientID", order.issuer_of_patient_id)
    put(ds, "PatientBirthDate", order.patient_birth_date)
    put(ds, "PatientSex", order.patient_sex)
    if order.other_patient_ids:
        items = []
        for other in order.other_patient_ids:
            item = Dataset()
            put(item, "PatientID", other.patient_id)
            if other.issuer_of_patient_id:
                put(item, "IssuerOfPatientID", other.issuer_of_patient_id)
            put(item, "TypeOfPatientID", other.type_of_patient_id)
            items.append(item)
        put(ds, "OtherPatientIDsSequence", items)


# --- Patient Study (C.7.2.2) ---------------------------------------------------------------

def check_patient_study(order: Order) -> None:
    """Admission ID (LO, Type 3): it identifies a hospital stay, so it is never shown."""
    check_text("Patient Study", "AdmissionID", order.admission_id, 64, phi=True)


def add_patient_study_module(ds: Dataset, order: Order) -> None:
    """Patient Study module: only Admission ID, copied from the worklist when it has one."""
    if order.admission_id:
        put(ds, "AdmissionID", order.admission_id)


# --- Code Sequence Macro (PS3.3 Table 8.8-1) and SOP Instance Reference (Table 10-11) --------

def check_codes(module: str, keyword: str, codes: tuple[Code, ...]) -> None:
    """Each code needs a value, a scheme and a meaning (Type 1C/1C/1 in the macro)."""
    if not isinstance(codes, tuple):
        raise IODError(f"{module}: {keyword} must be a tuple of codes, got "
                       f"{type(codes).__name__}")
    for index, code in enumerate(codes):
        where = f"{keyword}[{index}]"
        if not isinstance(code, Code):
            raise IODError(f"{module}: {where} must be a Code, got {type(code).__name__}")
        check_text(module, f"{where}.CodeValue", code.value, 16, required=True)
        check_text(module, f"{where}.CodingSchemeDesignator", code.scheme, 16, required=True)
        check_text(module, f"{where}.CodingSchemeVersion", code.scheme_version, 16)
        check_text(module, f"{where}.CodeMeaning", code.meaning, 64, required=True)


def code_sequence(codes: tuple[Code, ...]) -> list[Dataset]:
    """Code Sequence items for `codes` (checked by `check_codes`)."""
    items = []
    for code in codes:
        item = Dataset()
        put(item, "CodeValue", code.value)
        put(item, "CodingSchemeDesignator", code.scheme)
        if code.scheme_version:
            put(item, "CodingSchemeVersion", code.scheme_version)
        put(item, "CodeMeaning", code.meaning)
        items.append(item)
    return items


def check_references(module: str, keyword: str, references: tuple[SOPReference, ...]) -> None:
    """Both UIDs of each reference are Type 1 and must be valid."""
    if not isinstance(references, tuple):
        raise IODError(f"{module}: {keyword} must be a tuple of references, got "
                       f"{type(references).__name__}")
    for index, reference in enumerate(references):
        where = f"{keyword}[{index}]"
        if not isinstance(reference, SOPReference):
            raise IODError(f"{module}: {where} must be a SOPReference, got "
                           f"{type(reference).__name__}")
        check_uid(module, f"{where}.ReferencedSOPClassUID", reference.sop_class_uid)
        check_uid(module, f"{where}.ReferencedSOPInstanceUID", reference.sop_instance_uid)


# --- General Study (C.7.2.1) ------------------------------------------------------------

def check_general_study(order: Order, series: SeriesContext) -> None:
    """Study UID valid (and the worklist's one when scheduled); no dummy values unscheduled."""
    check_uid("General Study", "StudyInstanceUID", series.study_instance_uid)
    if order.scheduled and order.study_instance_uid \
            and series.study_instance_uid != order.study_instance_uid:
        raise IODError(
            "General Study: StudyInstanceUID of the series differs from the scheduled "
            f"order's {order.study_instance_uid!r}; a scheduled study keeps the worklist's UID"
        )
    check_dt("General Study", "StudyDateTime", series.study_datetime)
    check_pn("General Study", "ReferringPhysicianName", order.referring_physician_name)
    check_text("General Study", "StudyID", series.study_id, 16)
    check_text("General Study", "AccessionNumber", order.accession_number, 16)
    check_text("General Study", "StudyDescription", order.requested_procedure_description, 64)
    check_references("General Study", "ReferencedStudySequence", order.referenced_studies)
    check_codes("General Study", "ProcedureCodeSequence", order.requested_procedure_codes)
    if not order.scheduled:
        # IHE SWF unscheduled case, Request Attributes Macro note: no made-up values
        for keyword, value in (("AccessionNumber", order.accession_number),
                               ("RequestedProcedureID", order.requested_procedure_id),
                               ("ScheduledProcedureStepID", order.sps_id)):
            if value:
                raise IODError(
                    f"General Study: {keyword} {value!r} given for an unscheduled order; "
                    "an unscheduled acquisition leaves it empty (IHE SWF)"
                )


def add_general_study_module(ds: Dataset, order: Order, series: SeriesContext) -> None:
    """General Study module; Study Description from the Requested Procedure Description
    (RAD TF-2x Appendix A)."""
    put(ds, "StudyInstanceUID", series.study_instance_uid)
    put(ds, "StudyDate", date_part(series.study_datetime))
    put(ds, "StudyTime", time_part(series.study_datetime))
    put(ds, "ReferringPhysicianName", order.referring_physician_name)
    put(ds, "StudyID", series.study_id)
    put(ds, "AccessionNumber", order.accession_number if order.scheduled else "")
    if order.requested_procedure_description:
        put(ds, "StudyDescription", order.requested_procedure_description)
    if order.referenced_studies:
        # Type 3; copied from the worklist unchanged (RAD TF-2x Appendix A)
        references = []
        for reference in order.referenced_studies:
            item = Dataset()
            put(item, "ReferencedSOPClassUID", reference.sop_class_uid)
            put(item, "ReferencedSOPInstanceUID", reference.sop_instance_uid)
            references.append(item)
        put(ds, "ReferencedStudySequence", references)
    if order.requested_procedure_codes:
        # Procedure Code Sequence from the Requested Procedure Code Sequence (Appendix A)
        put(ds, "ProcedureCodeSequence", code_sequence(order.requested_procedure_codes))


# --- General Series (C.7.3.1) -----------------------------------------------------------

def check_general_series(order: Order, device: DeviceInfo, series: SeriesContext) -> None:
    """Modality is Type 1; a scheduled order must carry the IDs of its Request Attributes."""
    check_cs("General Series", "Modality", device.modality, required=True)
    check_uid("General Series", "SeriesInstanceUID", series.series_instance_uid)
    if series.series_instance_uid == series.study_instance_uid:
        raise IODError("General Series: SeriesInstanceUID equals the StudyInstanceUID")
    check_integer("General Series", "SeriesNumber", series.series_number, 0, MAX_IS)
    check_dt("General Series", "SeriesDateTime", series.series_datetime)
    if order.scheduled:
        # Request Attributes Macro (PS3.3 Table 10-9): both IDs are 1C, "required if
        # procedure was scheduled"
        for keyword, value in (("RequestedProcedureID", order.requested_procedure_id),
                               ("ScheduledProcedureStepID", order.sps_id)):
            check_text("General Series", f"RequestAttributesSequence {keyword}", value, 16,
                        required=True)
        check_text("General Series", "RequestAttributesSequence ScheduledProcedureStep"
                    "Description", order.sps_description, 64)
        check_codes("General Series", "RequestAttributesSequence ScheduledProtocolCodeSequence",
                    order.scheduled_protocol_codes)


def add_general_series_module(ds: Dataset, order: Order, device: DeviceInfo,
                              series: SeriesContext, *, modality: str | None = None,
                              laterality_unknown: bool = True,
                              protocol_name: str = "") -> None:
    """General Series module, with the Request Attributes Sequence for a scheduled order.

    `modality`: the value the IOD fixes (DX, XC), else the device's. `laterality_unknown`:
    write Laterality empty. It is Type 2C, required for paired body parts when Image
    Laterality is absent; when we know neither the body part nor an Image Laterality,
    present-but-empty says "unknown", while absence makes dciodvfy report an error for SC
    (PEERS.md, dciodvfy). An IOD with Image Laterality (DX) or a named region (VL) leaves
    it out: dciodvfy refuses it next to either."""
    put(ds, "Modality", modality or device.modality)
    put(ds, "SeriesInstanceUID", series.series_instance_uid)
    put(ds, "SeriesNumber", series.series_number)
    if laterality_unknown:
        put(ds, "Laterality", "")
    put(ds, "SeriesDate", date_part(series.series_datetime))
    put(ds, "SeriesTime", time_part(series.series_datetime))
    if protocol_name:
        # Type 3: written only with the value the MPPS sends for this series (issue 16)
        put(ds, "ProtocolName", protocol_name)
    if order.scheduled:
        item = Dataset()
        put(item, "RequestedProcedureID", order.requested_procedure_id)
        if order.accession_number:
            put(item, "AccessionNumber", order.accession_number)
        put(item, "StudyInstanceUID", series.study_instance_uid)
        if order.requested_procedure_description:
            put(item, "RequestedProcedureDescription", order.requested_procedure_description)
        put(item, "ScheduledProcedureStepID", order.sps_id)
        if order.requested_procedure_codes:
            put(item, "RequestedProcedureCodeSequence",
                 code_sequence(order.requested_procedure_codes))
        if order.sps_description:
            put(item, "ScheduledProcedureStepDescription", order.sps_description)
        if order.scheduled_protocol_codes:
            put(item, "ScheduledProtocolCodeSequence",
                 code_sequence(order.scheduled_protocol_codes))
        put(ds, "RequestAttributesSequence", [item])
    pps = order.performed_procedure_step
    if pps is not None:
        # RAD TF-2x Appendix A: every image names its MPPS; a series never spans two
        reference = Dataset()
        put(reference, "ReferencedSOPClassUID", pps.referenced_sop_class_uid)
        put(reference, "ReferencedSOPInstanceUID", pps.referenced_sop_instance_uid)
        put(ds, "ReferencedPerformedProcedureStepSequence", [reference])
        put(ds, "PerformedProcedureStepID", pps.pps_id)
        put(ds, "PerformedProcedureStepStartDate", pps.pps_start_date)
        put(ds, "PerformedProcedureStepStartTime", pps.pps_start_time)
        if pps.pps_description:
            put(ds, "PerformedProcedureStepDescription", pps.pps_description)


# --- General Equipment (C.7.5.1) and SC Equipment (C.8.6.1) ------------------------------

def check_general_equipment(device: DeviceInfo) -> None:
    """Lengths and characters of the device's identity (from `[modality]` of the config)."""
    module = "General Equipment"
    check_text(module, "Manufacturer", device.manufacturer, 64)
    check_text(module, "InstitutionName", device.institution_name, 64)
    check_text(module, "StationName", device.station_name, 16)
    check_text(module, "ManufacturerModelName", device.model_name, 64)
    check_text(module, "DeviceSerialNumber", device.device_serial_number, 64)
    check_text(module, "SoftwareVersions", device.software_versions, 64)


def add_general_equipment_module(ds: Dataset, device: DeviceInfo) -> None:
    """General Equipment module: Manufacturer is Type 2, the rest Type 3 (left out if empty)."""
    put(ds, "Manufacturer", device.manufacturer)
    optional = (("InstitutionName", device.institution_name),
                ("StationName", device.station_name),
                ("ManufacturerModelName", device.model_name),
                ("DeviceSerialNumber", device.device_serial_number),
                ("SoftwareVersions", device.software_versions))
    for keyword, value in optional:
        if value:
            put(ds, keyword, value)


def check_sc_equipment(conversion_type: object) -> ConversionType:
    """Coerce `conversion_type` to the enum; Conversion Type is Type 1."""
    allowed = {member.value: member for member in ConversionType}
    if not isinstance(conversion_type, str) or conversion_type not in allowed:
        raise IODError(
            f"SC Equipment: ConversionType {conversion_type!r} is not one of "
            f"{', '.join(allowed)}"
        )
    return allowed[conversion_type]


def add_sc_equipment_module(ds: Dataset, conversion_type: ConversionType) -> None:
    """SC Equipment module. Its Modality (0008,0060) is General Series' attribute too."""
    put(ds, "ConversionType", conversion_type.value)


# --- General Image (C.7.6.1) -------------------------------------------------------------

def check_general_image(instance_number: object) -> None:
    """Instance Number: a positive IS."""
    check_integer("General Image", "InstanceNumber", instance_number, 1, MAX_IS)


def add_general_image_module(ds: Dataset, *, instance_number: int, content_datetime: str,
                             derived: bool, monochrome: bool,
                             patient_orientation: tuple[str, str] | None = None) -> None:
    """General Image module. ORIGINAL: the pixels are the device's own acquisition (C.7.6.1.1.2);
    DERIVED for pixels made from other images (e.g. an imported screenshot). Grayscale gets
    Presentation LUT Shape IDENTITY (Type 3 here, C.7.6.1.1.11): display as stored,
    MONOCHROME2 = low values dark, as C.8.6.3 asks of grayscale SC."""
    put(ds, "InstanceNumber", instance_number)
    # Type 2C: no Image Orientation (Patient) here; empty when we do not know it (Type 1 in
    # DX Image, where the caller must know it)
    put(ds, "PatientOrientation",
        "" if patient_orientation is None else list(patient_orientation))
    put(ds, "ContentDate", date_part(content_datetime))
    put(ds, "ContentTime", time_part(content_datetime))
    put(ds, "ImageType", ["DERIVED" if derived else "ORIGINAL", "PRIMARY"])
    # the frame carries no text burned in by us; a device that overlays text would say YES
    put(ds, "BurnedInAnnotation", "NO")
    # never lossy here; a later lossy re-encode must set "01" and never reset it (C.7.6.1.1.5)
    put(ds, "LossyImageCompression", "00")
    if monochrome:
        put(ds, "PresentationLUTShape", "IDENTITY")


# --- General Acquisition (C.7.10.1) -----------------------------------------------------

def check_irradiation_event_uid(uid: object, sop_instance_uid: str) -> None:
    """Irradiation Event UID (0008,3010): a valid UID, not the image's own."""
    check_uid("General Acquisition", "IrradiationEventUID", uid)
    if uid == sop_instance_uid:
        raise IODError("General Acquisition: IrradiationEventUID equals the SOPInstanceUID; "
                       "an exposure has its own UID")


def add_general_acquisition_module(ds: Dataset, *, acquisition_datetime: str,
                                   irradiation_event_uid: str | None = None) -> None:
    """General Acquisition module: Acquisition DateTime (Type 3), when the first frame was
    read out, and Irradiation Event UID (Type 3) when the image was made by an exposure
    (the dose SR's TID 10003 names the same UID)."""
    put(ds, "AcquisitionDateTime", acquisition_datetime)
    if irradiation_event_uid is not None:
        put(ds, "IrradiationEventUID", irradiation_event_uid)


# --- Image Pixel (C.7.6.3) ---------------------------------------------------------------

def check_image_pixel(frame: Frame) -> None:
    """The frame's pixels against its description, with the DICOM attribute that would be
    wrong. Frame checks itself on construction; this repeats what the encoding relies on,
    because a frame's array can be changed in place afterwards."""
    module = "Image Pixel"
    pixels = frame.pixels
    if not isinstance(pixels, np.ndarray):
        raise IODError(f"{module}: PixelData must be a numpy array, got {type(pixels).__name__}")
    if pixels.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise IODError(
            f"{module}: BitsAllocated: pixel dtype {pixels.dtype} is neither uint8 (8) nor "
            "uint16 (16)"
        )
    bits_allocated = pixels.dtype.itemsize * 8
    photometric = frame.photometric_interpretation
    if photometric == "MONOCHROME2":
        if pixels.ndim != 2:
            raise IODError(
                f"{module}: SamplesPerPixel: MONOCHROME2 needs (rows, columns) pixels, got "
                f"shape {pixels.shape}"
            )
    elif photometric == "RGB":
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise IODError(
                f"{module}: SamplesPerPixel: RGB needs (rows, columns, 3) pixels, got shape "
                f"{pixels.shape}"
            )
        if bits_allocated != 8 or frame.bits_stored != 8:
            # true colour SC: Bits Allocated 8, Bits Stored 8 (PS3.3 A.8.5.4)
            raise IODError(
                f"{module}: BitsStored {frame.bits_stored} / BitsAllocated {bits_allocated}: "
                "RGB must be 8/8"
            )
    else:
        raise IODError(
            f"{module}: PhotometricInterpretation {photometric!r} is not MONOCHROME2 or RGB"
        )
    rows, columns = int(pixels.shape[0]), int(pixels.shape[1])
    for keyword, count in (("Rows", rows), ("Columns", columns)):
        if not 1 <= count <= 65535:
            raise IODError(f"{module}: {keyword} {count} is outside 1..65535")
    bits_stored = frame.bits_stored
    if isinstance(bits_stored, bool) or not isinstance(bits_stored, int) or bits_stored < 1:
        raise IODError(f"{module}: BitsStored must be a positive integer, got {bits_stored!r}")
    if bits_stored > bits_allocated:
        raise IODError(
            f"{module}: BitsStored {bits_stored} exceeds BitsAllocated {bits_allocated}"
        )
    if pixels.nbytes > MAX_VALUE_LENGTH:
        raise IODError(
            f"{module}: PixelData of {pixels.nbytes} bytes exceeds the {MAX_VALUE_LENGTH}-byte "
            "limit of one value"
        )
    largest = int(pixels.max())
    if largest >= 1 << bits_stored:
        # High Bit = Bits Stored - 1: bits above it are not pixel data and would be masked
        raise IODError(
            f"{module}: PixelData holds {largest}, above the largest value "
            f"{(1 << bits_stored) - 1} of BitsStored {bits_stored}"
        )


def pixel_data_bytes(frame: Frame) -> bytes:
    """The frame as a Pixel Data value: little endian, colour-by-pixel (Planar Configuration
    0), padded to even length with one zero byte (PS3.5 §8.1.1)."""
    data = _little_endian(frame.pixels).tobytes()    # C order, one copy
    if len(data) % 2:
        data += b"\x00"
    return data


def _little_endian(pixels: np.ndarray) -> np.ndarray:
    """`pixels` in little-endian byte order, the same array when it is so already. Not
    `np.ascontiguousarray(pixels, dtype=...newbyteorder("<"))`: numpy copies for an explicit
    '<' dtype even when the array's native one is the same, and a frame that is not
    C-contiguous was copied again by tobytes(): 4 MB per 1024² 16-bit frame where 2 do (and
    on a virtual machine every fresh page is a costly fault)."""
    little = pixels.dtype.newbyteorder("<")
    return pixels if pixels.dtype == little else pixels.astype(little)


def _frame_bytes(pixels: np.ndarray) -> memoryview | bytes:
    """The pixels' bytes in C order: a view when they lie so in memory, else one copy."""
    pixels = _little_endian(pixels)
    if pixels.flags.c_contiguous:
        return pixels.data.cast("B")
    return pixels.tobytes()


def add_image_pixel_module(ds: Dataset, frames: Frame | Sequence[Frame]) -> None:
    """Image Pixel module: unsigned samples, OB for 8-bit and OW for 16-bit Pixel Data; with
    several frames, concatenated frame after frame (PS3.5 §8.2)."""
    frames = [frames] if isinstance(frames, Frame) else list(frames)
    frame = frames[0]
    bits_allocated = frame.pixels.dtype.itemsize * 8
    put(ds, "SamplesPerPixel", frame.samples_per_pixel)
    put(ds, "PhotometricInterpretation", frame.photometric_interpretation)
    put(ds, "Rows", frame.rows)
    put(ds, "Columns", frame.columns)
    put(ds, "BitsAllocated", bits_allocated)
    put(ds, "BitsStored", frame.bits_stored)
    put(ds, "HighBit", frame.bits_stored - 1)
    put(ds, "PixelRepresentation", 0)
    if frame.samples_per_pixel > 1:
        put(ds, "PlanarConfiguration", 0)
    data = pixel_data_bytes(frame) if len(frames) == 1 else _stacked_bytes(frames)
    put(ds, "PixelData", data, vr="OB" if bits_allocated == 8 else "OW")


def _stacked_bytes(frames: Sequence[Frame]) -> bytes:
    # the pixels frame after frame, copied once (np.stack, then tobytes, made two or three)
    data = b"".join([_frame_bytes(frame.pixels) for frame in frames])
    if len(data) % 2:
        data += b"\x00"
    return data


# --- SC Image (C.8.6.2) ------------------------------------------------------------------

def check_sc_image(frame: Frame) -> None:
    """Pixel spacing, if given: two positive numbers."""
    spacing = frame.pixel_spacing_mm
    if spacing is None:
        return
    try:
        valid = len(spacing) == 2 and all(float(value) > 0 for value in spacing)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise IODError(f"SC Image: PixelSpacing {spacing!r} is not two positive numbers (mm)")


def add_sc_image_module(ds: Dataset, frame: Frame) -> None:
    """SC Image module: Pixel Spacing (Type 3) when the device knows it. Nominal Scanned
    Pixel Spacing is for scanned film or paper (Conversion Type DF/SD/SI), not for a device's
    own frames, so it is left out."""
    if frame.pixel_spacing_mm is not None:
        spacing = [format_number_as_ds(float(value)) for value in frame.pixel_spacing_mm]
        put(ds, "PixelSpacing", spacing)


# --- Modality LUT (C.11.1) ---------------------------------------------------------------

def add_modality_lut_module(ds: Dataset, frame: Frame) -> None:
    """Identity rescale for grayscale (C.8.6.3 requires it of grayscale multi-frame SC; in
    single-frame SC the module is optional and says the same: stored values are the output):
    intercept 0, slope 1, unspecified units "US". Colour images have no Modality LUT."""
    if frame.photometric_interpretation == "MONOCHROME2":
        put(ds, "RescaleIntercept", "0")
        put(ds, "RescaleSlope", "1")
        put(ds, "RescaleType", "US")


# --- SOP Common (C.12.1) -----------------------------------------------------------------

def check_sop_common(sop_instance_uid: object) -> None:
    """The SOP Instance UID, fixed by the caller before building (so a resend reuses it)."""
    check_uid("SOP Common", "SOPInstanceUID", sop_instance_uid)


def add_sop_common_module(ds: Dataset, *, sop_class_uid: str, sop_instance_uid: str,
                          created_datetime: str, timezone_offset: str | None = None) -> None:
    """SOP Common module. Specific Character Set (0008,0005) governs every text value of the
    object (PS3.5 §6.1); ISO_IR 192 is UTF-8. Timezone Offset From UTC (0008,0201, Type 3):
    the zone of every DA/TM/DT value in the object, which are local times without an offset
    (C.12.1.1.8); without it a reader cannot place them in time (issue 16 item 3)."""
    put(ds, "SpecificCharacterSet", SPECIFIC_CHARACTER_SET)
    put(ds, "SOPClassUID", sop_class_uid)
    put(ds, "SOPInstanceUID", sop_instance_uid)
    put(ds, "InstanceCreationDate", date_part(created_datetime))
    put(ds, "InstanceCreationTime", time_part(created_datetime))
    if timezone_offset is not None:
        put(ds, "TimezoneOffsetFromUTC", timezone_offset)


# --- Multi-frame (C.7.6.6), Cine (C.7.6.5), SC Multi-frame Image (C.8.6.3) ------------------

#: two frame intervals closer than this (ms) count as one Frame Time; otherwise the exact
#: intervals go into Frame Time Vector (C.7.6.5.1.2)
FRAME_TIME_TOLERANCE_MS = 0.5


def check_frames_compatible(frames: Sequence[Frame]) -> None:
    """All frames of one object share one Image Pixel description, and come in time order.

    Raises IODError naming the attribute and the first frame that differs from frame 0, e.g.
    "Image Pixel: Rows: frame 3 has 480, frame 0 has 512".
    """
    if not isinstance(frames, Sequence) or isinstance(frames, str | bytes) or not frames:
        raise IODError("Multi-frame: NumberOfFrames: at least one frame is needed")
    for index, frame in enumerate(frames):
        if not isinstance(frame, Frame):
            raise IODError(f"Image Pixel: PixelData: frame {index} is a "
                           f"{type(frame).__name__}, not a Frame")
        check_image_pixel(frame)
    first = frames[0]

    def described(frame: Frame) -> tuple[tuple[str, object], ...]:
        return (("PhotometricInterpretation", frame.photometric_interpretation),
                ("SamplesPerPixel", frame.pixels.shape[2] if frame.pixels.ndim == 3 else 1),
                ("BitsAllocated", f"{frame.pixels.dtype.itemsize * 8} ({frame.pixels.dtype})"),
                ("BitsStored", frame.bits_stored),
                ("Rows", frame.rows),
                ("Columns", frame.columns))

    reference = described(first)
    for index, frame in enumerate(frames[1:], start=1):
        for (keyword, want), (_, have) in zip(reference, described(frame), strict=True):
            if have != want:
                raise IODError(f"Image Pixel: {keyword}: frame {index} has {have}, "
                               f"frame 0 has {want}")
    total = sum(frame.pixels.nbytes for frame in frames)
    if total > MAX_VALUE_LENGTH:
        raise IODError(f"Image Pixel: PixelData of {total} bytes exceeds the "
                       f"{MAX_VALUE_LENGTH}-byte limit of one value")
    if len(frames) > MAX_IS:
        raise IODError(f"Multi-frame: NumberOfFrames {len(frames)} exceeds {MAX_IS}")
    for index in range(1, len(frames)):
        before, after = frames[index - 1].t_mono, frames[index].t_mono
        if not (np.isfinite(before) and np.isfinite(after)) or after <= before:
            raise IODError(f"Cine: FrameTime: frame {index} t_mono {after!r} is not after "
                           f"frame {index - 1} t_mono {before!r}")


def frame_intervals_ms(frames: Sequence[Frame]) -> list[float]:
    """Milliseconds between consecutive frames, from the monotonic clock (t_mono)."""
    return [(frames[i].t_mono - frames[i - 1].t_mono) * 1000.0 for i in range(1, len(frames))]


def _equal_intervals(frames: Sequence[Frame]) -> bool:
    intervals = frame_intervals_ms(frames)
    mean = sum(intervals) / len(intervals)
    return max(abs(value - mean) for value in intervals) <= FRAME_TIME_TOLERANCE_MS


def add_multiframe_module(ds: Dataset, frames: Sequence[Frame]) -> None:
    """Multi-frame module: Number of Frames; with more than one frame, Frame Increment Pointer
    to Frame Time (equal intervals) or Frame Time Vector (the Cine module writes them). One
    frame: no pointer (1C, required only when Number of Frames > 1, C.8.6.3)."""
    put(ds, "NumberOfFrames", len(frames))
    if len(frames) < 2:
        return
    pointer = "FrameTime" if _equal_intervals(frames) else "FrameTimeVector"
    put(ds, "FrameIncrementPointer", tag_for_keyword(pointer))


def add_cine_module(ds: Dataset, frames: Sequence[Frame]) -> None:
    """Cine module (PS3.3 A.8.5.3 requires it when the pointer names a frame time): Frame Time,
    the mean interval, or Frame Time Vector; Recommended Display Frame Rate."""
    intervals = frame_intervals_ms(frames)
    mean = sum(intervals) / len(intervals)
    if _equal_intervals(frames):
        put(ds, "FrameTime", format_number_as_ds(round(mean, 3)))
    else:
        # C.7.6.5.1.2: the first value is 0, each next one the time since the frame before
        put(ds, "FrameTimeVector",
             ["0"] + [format_number_as_ds(round(value, 3)) for value in intervals])
    put(ds, "RecommendedDisplayFrameRate", max(1, round(1000.0 / mean)))


def add_multiframe_and_cine_modules(ds: Dataset, frames: Sequence[Frame]) -> None:
    """Multi-frame, and Cine when there is more than one frame (kept for older callers)."""
    add_multiframe_module(ds, frames)
    if len(frames) > 1:
        add_cine_module(ds, frames)


def add_sc_multiframe_image_module(ds: Dataset, frame: Frame) -> None:
    """SC Multi-frame Image module: Burned In Annotation (Type 1, written by General Image as
    well); for grayscale, Presentation LUT Shape IDENTITY and an identity rescale (1C,
    C.8.6.3), which `add_general_image_module` and `add_modality_lut_module` write."""
    put(ds, "BurnedInAnnotation", "NO")
    if frame.photometric_interpretation == "MONOCHROME2":
        put(ds, "PresentationLUTShape", "IDENTITY")
        put(ds, "RescaleIntercept", "0")
        put(ds, "RescaleSlope", "1")
        put(ds, "RescaleType", "US")


def add_multiframe_pixel_data(ds: Dataset, frames: Sequence[Frame]) -> None:
    """Image Pixel module for all frames (kept for older callers)."""
    add_image_pixel_module(ds, frames)


# --- DX (PS3.3 A.26, C.8.11) -----------------------------------------------------------

#: device_parameters keys the DX builder reads, with their units
DX_PARAMETERS = {"kvp": "kV", "mas": "mAs", "exposure_ms": "ms"}


def check_dx_frame(frame: Frame) -> None:
    """DX Image: grayscale only, 6..16 bits stored (C.8.11.3.1.1); DX Detector: Imager Pixel
    Spacing is Type 1; device parameters, if given, are positive numbers."""
    if frame.photometric_interpretation != "MONOCHROME2":
        raise IODError(f"DX Image: PhotometricInterpretation "
                       f"{frame.photometric_interpretation!r}: DX is MONOCHROME1/2 only")
    if frame.bits_stored < 6:
        raise IODError(f"DX Image: BitsStored {frame.bits_stored} is below 6 (C.8.11.3.1.1)")
    if frame.pixel_spacing_mm is None:
        raise IODError("DX Detector: ImagerPixelSpacing is Type 1, but the frame has no "
                       "pixel_spacing_mm; the device must report its detector pitch")
    check_sc_image(frame)
    for key, unit in DX_PARAMETERS.items():
        value = frame.device_parameters.get(key)
        if value is None:
            continue
        keyword = {"kvp": "KVP", "mas": "ExposureInuAs", "exposure_ms": "ExposureTime"}[key]
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not np.isfinite(value) or value <= 0:
            raise IODError(f"X-Ray Acquisition Dose: {keyword}: device parameter {key} "
                           f"{value!r} is not a positive number of {unit}")


def add_dx_series_module(ds: Dataset) -> None:
    """DX Series: Modality DX (Type 1, enumerated; the IOD table fixes it, General Series
    writes it), Presentation Intent Type."""
    put(ds, "Modality", "DX")
    put(ds, "PresentationIntentType", "FOR PRESENTATION")


def check_patient_orientation(value: object) -> tuple[str, str]:
    """Patient Orientation (0020,0020): row and column directions, each of A P R L H F
    (PS3.3 C.7.6.1.1.1), e.g. ("L", "F")."""
    if isinstance(value, str):
        value = tuple(value.split("\\"))
    if not isinstance(value, tuple | list) or len(value) != 2 or not all(
            isinstance(part, str) and 1 <= len(part) <= 3 and set(part) <= set("APRLHF")
            for part in value):
        raise IODError(f"DX Image: PatientOrientation {value!r} is not two directions of "
                       "A, P, R, L, H, F (row, column), e.g. ('L', 'F')")
    return (value[0], value[1])


def check_protocol_name(value: object) -> str:
    """Protocol Name (0018,1030), LO: up to 64 characters, no backslash or control character.

    Raises
    ------
    IODError
        Naming General Series: ProtocolName and what is wrong.
    """
    if not isinstance(value, str) or len(value) > 64 or "\\" in value or any(
            ord(ch) < 32 for ch in value):
        raise IODError(f"General Series: ProtocolName: expected up to 64 characters without "
                       f"backslash or control characters (LO), got {value!r:.80}")
    return value.strip()


def add_dx_anatomy_imaged_module(ds: Dataset, anatomic_region: Code | None,
                                 image_laterality: str = "U") -> None:
    """DX Anatomy Imaged: Image Laterality (Type 1) as `check_image_laterality` decided;
    Anatomic Region Sequence (Type 2) holds the caller's code or is empty. General Series
    Laterality must then be absent (2C): the IOD table says Image Laterality, so General Series
    leaves it out."""
    put(ds, "ImageLaterality", image_laterality)
    put(ds, "AnatomicRegionSequence",
         [] if anatomic_region is None else code_sequence((anatomic_region,)))


def add_dx_image_module(ds: Dataset, frame: Frame) -> None:
    """DX Image: the pixel values are linear in X-ray intensity, higher = more intensity;
    identity rescale and Presentation LUT Shape IDENTITY (MONOCHROME2), a full-range window
    (see `add_voi_lut_module`). Patient Orientation (Type 1 here) is General Image's."""
    put(ds, "PixelIntensityRelationship", "LIN")
    put(ds, "PixelIntensityRelationshipSign", 1)
    put(ds, "RescaleIntercept", "0")
    put(ds, "RescaleSlope", "1")
    put(ds, "RescaleType", "US")
    put(ds, "PresentationLUTShape", "IDENTITY")
    put(ds, "BurnedInAnnotation", "NO")
    put(ds, "LossyImageCompression", "00")


def add_voi_lut_module(ds: Dataset, frame: Frame) -> None:
    """VOI LUT (required For Presentation, A.26.1): a full-range window, centre 2^(bits-1),
    width 2^bits."""
    largest = (1 << frame.bits_stored) - 1
    put(ds, "WindowCenter", format_number_as_ds((largest + 1) / 2))
    put(ds, "WindowWidth", format_number_as_ds(float(largest + 1)))


def add_dx_detector_module(ds: Dataset, frame: Frame) -> None:
    """DX Detector: Detector Type Type 2 (unknown: empty); Imager Pixel Spacing from the
    frame (checked present by `check_dx_frame`)."""
    put(ds, "DetectorType", "")
    if frame.pixel_spacing_mm is None:
        raise IODError("DX Detector: ImagerPixelSpacing is Type 1 and missing")
    spacing = [format_number_as_ds(float(value)) for value in frame.pixel_spacing_mm]
    put(ds, "ImagerPixelSpacing", spacing)


def add_xray_acquisition_dose_module(ds: Dataset, frame: Frame) -> None:
    """X-Ray Acquisition Dose (all Type 3): KVP, Exposure Time, Exposure, from the frame's
    device_parameters; a parameter the device did not report is left out."""
    parameters = frame.device_parameters
    if parameters.get("kvp") is not None:
        put(ds, "KVP", format_number_as_ds(float(parameters["kvp"])))
    if parameters.get("exposure_ms") is not None:
        exposure_ms = float(parameters["exposure_ms"])
        put(ds, "ExposureTime", max(1, round(exposure_ms)))              # IS, ms
        put(ds, "ExposureTimeInuS", format_number_as_ds(exposure_ms * 1000))  # DS, us
    if parameters.get("mas") is not None:
        mas = float(parameters["mas"])
        put(ds, "Exposure", max(1, round(mas)))                            # IS, mAs
        put(ds, "ExposureInuAs", round(mas * 1000))                        # IS, uAs


def add_acquisition_context_module(ds: Dataset) -> None:
    """Acquisition Context: the sequence is Type 2; we describe no context."""
    put(ds, "AcquisitionContextSequence", [])


# --- Video Photographic Image (PS3.3 A.32.7): VL Image (C.8.12.1), Cine, Multi-frame ----------


def check_vl_frames(frames: Sequence[Frame]) -> None:
    """VL Image: 8 bits allocated and stored (C.8.12.1.1.4); Cine needs a frame time, so a
    video takes at least two frames."""
    first = frames[0]
    if first.pixels.dtype.itemsize != 1 or first.bits_stored != 8:
        raise IODError(f"VL Image: BitsStored {first.bits_stored}/BitsAllocated "
                       f"{first.pixels.dtype.itemsize * 8}: VL images are 8/8 bits")
    if len(frames) < 2:
        raise IODError("Cine: FrameTime: a video photographic image needs at least 2 frames "
                       "to know its frame time")


def check_anatomic_region(module: str, region: object, *, required: bool) -> None:
    """Anatomic Region Sequence: one code (e.g. SCT 51185008 "Chest"), Type 1C in VL Image."""
    if region is None:
        if required:
            raise IODError(f"{module}: AnatomicRegionSequence is Type 1C and needs a code "
                           "(pass anatomic_region, e.g. Code('51185008', 'SCT', 'Chest'))")
        return
    if not isinstance(region, Code):
        raise IODError(f"{module}: AnatomicRegionSequence must be a Code, got "
                       f"{type(region).__name__}")
    check_codes(module, "AnatomicRegionSequence", (region,))


def add_vl_image_module(ds: Dataset, anatomic_region: Code) -> None:
    """VL Image module: the Modality of a Video Photographic image is XC (external camera);
    Lossy Image Compression "00"; the anatomic region the caller names (one item). General
    Series Laterality (2C) is for paired body parts when Image Laterality is absent; we do not
    know the side, and dciodvfy refuses it present for an unpaired region, so General Series
    leaves it out (the region is named). Modality XC is fixed by the IOD table."""
    put(ds, "LossyImageCompression", "00")
    put(ds, "AnatomicRegionSequence", code_sequence((anatomic_region,)))


# the names these had before agent.iod.valuerep and agent.iod.iods existed (agent.mpps uses some)
__all__ = [
    "DX_FOR_PRESENTATION", "MAX_IS", "MAX_VALUE_LENGTH", "MULTIFRAME_GRAYSCALE_BYTE_SC",
    "MULTIFRAME_GRAYSCALE_WORD_SC", "MULTIFRAME_TRUE_COLOR_SC", "SC_IMAGE_STORAGE",
    "SPECIFIC_CHARACTER_SET", "VIDEO_PHOTOGRAPHIC_IMAGE", "check_integer", "check_text",
    "check_uid", "format_dt", "local_datetime",
]
