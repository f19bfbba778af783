"""Secondary Capture Image Storage (PS3.3 A.8.1): a device frame and an order to a Dataset,
and the checks an SC image must pass before it is queued."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, tzinfo

import numpy as np
from pydicom.dataset import Dataset

from agent.errors import IODError
from agent.iod import modules
from agent.iod.modules import (
    SC_IMAGE_STORAGE,
    SPECIFIC_CHARACTER_SET,
    ConversionType,
    check_uid,
    format_dt,
    local_datetime,
)
from agent.iod.uids import UIDSource, is_valid_uid
from agent.records import DeviceInfo, Order, SeriesContext
from drivers.frame import Frame


def new_series_context(uids: UIDSource, order: Order, *, started_at: datetime,
                       series_number: int, study_id: str = "",
                       tz: tzinfo | None = None) -> SeriesContext:
    """Fix the UIDs and times shared by the instances of one new series.

    Parameters
    ----------
    uids
        Where new UIDs come from.
    order
        The worklist item or unscheduled order. Its Study Instance UID is used when set
        (scheduled case: the worklist's UID, never a new one; IHE SWF, DICOM-NOTES 3.9);
        otherwise a new study UID is made.
    started_at
        When the series started, as local wall-clock time. A naive datetime is taken as is;
        an aware one is converted to `tz`.
    series_number
        Series Number, 0 .. 2**31-1.
    study_id
        Study ID (SH, at most 16 characters); empty when unknown (Type 2).
    tz
        The zone of "local time"; None means this machine's zone.

    Returns
    -------
    SeriesContext

    Raises
    ------
    IODError
        If a scheduled order has no Study Instance UID, the order's UID is invalid, or
        `series_number`/`study_id` are out of range.
    """
    modules.check_integer("General Series", "SeriesNumber", series_number, 0, modules.MAX_IS)
    modules.check_text("General Study", "StudyID", study_id, 16)
    if not isinstance(started_at, datetime):
        raise IODError(
            f"General Study: StudyDateTime: started_at must be a datetime, got "
            f"{type(started_at).__name__}"
        )
    if order.study_instance_uid:
        check_uid("General Study", "StudyInstanceUID", order.study_instance_uid)
        study_uid = order.study_instance_uid
    elif order.scheduled:
        raise IODError(
            "General Study: StudyInstanceUID missing from a scheduled order; the worklist's "
            "UID must be used, never a new one"
        )
    else:
        study_uid = uids.new_uid()
    local_start = started_at if started_at.tzinfo is None else started_at.astimezone(tz)
    started = format_dt(local_start)
    return SeriesContext(
        study_instance_uid=study_uid,
        series_instance_uid=uids.new_uid(),
        study_id=study_id,
        series_number=series_number,
        study_datetime=started,
        series_datetime=started,
    )


def build_secondary_capture(
    frame: Frame,
    *,
    order: Order,
    device: DeviceInfo,
    series: SeriesContext,
    instance_number: int,
    sop_instance_uid: str,
    conversion_type: ConversionType | str = ConversionType.DIGITAL_INTERFACE,
    derived: bool = False,
    tz: tzinfo | None = None,
) -> Dataset:
    """Build a single-frame Secondary Capture Image Storage instance from one frame.

    Parameters
    ----------
    frame
        The pixels (MONOCHROME2 uint8/uint16, or RGB uint8) and when they were acquired.
    order
        Patient and procedure (worklist item, or unscheduled).
    device
        Equipment identity and the Modality.
    series
        From `new_series_context`: study and series UIDs, numbers and times.
    instance_number
        Instance Number, 1 .. 2**31-1.
    sop_instance_uid
        The instance's UID, made by the caller before building so that a resend reuses it.
    conversion_type
        SC Equipment Conversion Type. Default "DI" (digital interface): the device hands its
        pixel values over as data (serial link, SDK). Pass "DV" for frames from a video
        frame grabber, "SYN" for synthetic (simulated) frames, "WSD" for screen captures.
    derived
        Image Type DERIVED\\PRIMARY instead of ORIGINAL\\PRIMARY: for pixels made from other
        images (e.g. an imported file) rather than acquired by the device.
    tz
        The zone of "local time" for Content/Acquisition/Instance Creation Date and Time;
        None means this machine's zone.

    Returns
    -------
    pydicom.dataset.Dataset
        Without file meta; see `encode_part10`.

    Raises
    ------
    IODError
        Before anything is built, if the frame or an argument is invalid; the message names
        the IOD module and the attribute, e.g. "Image Pixel: BitsStored 17 exceeds
        BitsAllocated 16".
    """
    # every check first: a half-built dataset is never returned
    modules.check_image_pixel(frame)
    modules.check_sc_image(frame)
    modules.check_patient(order)
    modules.check_patient_study(order)
    modules.check_general_study(order, series)
    modules.check_general_series(order, device, series)
    modules.check_general_equipment(device)
    conversion = modules.check_sc_equipment(conversion_type)
    modules.check_general_image(instance_number)
    modules.check_sop_common(sop_instance_uid)
    if sop_instance_uid in (series.study_instance_uid, series.series_instance_uid):
        raise IODError("SOP Common: SOPInstanceUID equals the study or series UID")
    if not isinstance(frame.t_wall, int | float) or not np.isfinite(frame.t_wall):
        raise IODError(f"General Image: ContentTime: frame t_wall {frame.t_wall!r} is not a time")
    try:
        content_dt = format_dt(local_datetime(frame.t_wall, tz))
    except (OverflowError, OSError, ValueError) as err:
        raise IODError(
            f"General Image: ContentTime: frame t_wall {frame.t_wall!r} is out of range"
        ) from err

    ds = Dataset()
    with _building("SOP Common"):
        modules.add_sop_common_module(ds, sop_class_uid=SC_IMAGE_STORAGE,
                                      sop_instance_uid=sop_instance_uid,
                                      created_datetime=content_dt)
    with _building("Patient"):
        modules.add_patient_module(ds, order)
    with _building("Patient Study"):
        modules.add_patient_study_module(ds, order)
    with _building("General Study"):
        modules.add_general_study_module(ds, order, series)
    with _building("General Series"):
        modules.add_general_series_module(ds, order, device, series)
    with _building("General Equipment"):
        modules.add_general_equipment_module(ds, device)
    with _building("SC Equipment"):
        modules.add_sc_equipment_module(ds, conversion)
    with _building("General Image"):
        modules.add_general_image_module(
            ds, instance_number=instance_number, content_datetime=content_dt,
            derived=derived, monochrome=frame.photometric_interpretation == "MONOCHROME2")
    with _building("Image Pixel"):
        modules.add_image_pixel_module(ds, frame)
    with _building("SC Image"):
        modules.add_sc_image_module(ds, frame)
    with _building("Modality LUT"):
        modules.add_modality_lut_module(ds, frame)
    return ds


@contextmanager
def _building(module: str) -> Iterator[None]:
    """A safety net behind the checks: pydicom refused a value (every element is created with
    validation RAISE, see modules._put)."""
    try:
        yield
    except ValueError as err:
        # pydicom's message may quote the value; a Patient value must not reach a log
        detail = "" if module in ("Patient", "Patient Study") else f": {err}"
        raise IODError(f"{module}: pydicom rejected a value{detail}") from err


# --- validation of a built image -------------------------------------------------------------

#: (module, keyword, type) of what every SC image we send must carry. Type 1: present and not
#: empty; type 2: present, may be empty. 2C/1C attributes that we always write are listed with
#: the type they have in our objects.
_REQUIRED: tuple[tuple[str, str, int], ...] = (
    ("SOP Common", "SOPClassUID", 1),
    ("SOP Common", "SOPInstanceUID", 1),
    ("SOP Common", "SpecificCharacterSet", 1),
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
    ("General Series", "Modality", 1),
    ("General Series", "SeriesInstanceUID", 1),
    ("General Series", "SeriesNumber", 2),
    ("General Series", "Laterality", 2),
    ("General Equipment", "Manufacturer", 2),
    ("SC Equipment", "ConversionType", 1),
    ("General Image", "InstanceNumber", 2),
    ("General Image", "PatientOrientation", 2),
    ("Image Pixel", "SamplesPerPixel", 1),
    ("Image Pixel", "PhotometricInterpretation", 1),
    ("Image Pixel", "Rows", 1),
    ("Image Pixel", "Columns", 1),
    ("Image Pixel", "BitsAllocated", 1),
    ("Image Pixel", "BitsStored", 1),
    ("Image Pixel", "HighBit", 1),
    ("Image Pixel", "PixelRepresentation", 1),
    ("Image Pixel", "PixelData", 1),
)

_SAMPLES_FOR = {"MONOCHROME2": 1, "RGB": 3}


def _is_empty(value: object) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def validate_image(ds: Dataset) -> None:
    """Check a built Secondary Capture image before it is queued.

    Required attributes must be present (and not empty where Type 1); the Image Pixel
    description must agree with itself and with the length of Pixel Data.

    Parameters
    ----------
    ds
        A single-frame SC image, e.g. from `build_secondary_capture`.

    Raises
    ------
    IODError
        Naming the module and the attribute at fault.
    """
    for module, keyword, attribute_type in _REQUIRED:
        if keyword not in ds:
            raise IODError(f"{module}: {keyword} is missing (Type {attribute_type})")
        if attribute_type == 1 and _is_empty(ds[keyword].value):
            raise IODError(f"{module}: {keyword} is empty (Type 1)")
    if ds.SOPClassUID != SC_IMAGE_STORAGE:
        raise IODError(
            f"SOP Common: SOPClassUID {ds.SOPClassUID!r} is not Secondary Capture Image "
            f"Storage {SC_IMAGE_STORAGE}"
        )
    if ds.SpecificCharacterSet != SPECIFIC_CHARACTER_SET:
        raise IODError(
            f"SOP Common: SpecificCharacterSet {ds.SpecificCharacterSet!r} is not "
            f"{SPECIFIC_CHARACTER_SET!r}"
        )
    for module, keyword in (("SOP Common", "SOPInstanceUID"),
                            ("General Study", "StudyInstanceUID"),
                            ("General Series", "SeriesInstanceUID")):
        if not is_valid_uid(str(ds[keyword].value)):
            raise IODError(f"{module}: {keyword} {ds[keyword].value!r} is not a valid UID")
    if ds.get("ConversionType") not in {member.value for member in ConversionType}:
        raise IODError(f"SC Equipment: ConversionType {ds.ConversionType!r} is not a defined term")
    _validate_image_pixel(ds)
    _validate_modality_lut(ds)


def _validate_image_pixel(ds: Dataset) -> None:
    module = "Image Pixel"
    photometric = ds.PhotometricInterpretation
    if photometric not in _SAMPLES_FOR:
        raise IODError(f"{module}: PhotometricInterpretation {photometric!r} is not "
                       "MONOCHROME2 or RGB")
    samples = ds.SamplesPerPixel
    if samples != _SAMPLES_FOR[photometric]:
        raise IODError(f"{module}: SamplesPerPixel {samples} does not fit "
                       f"PhotometricInterpretation {photometric}")
    if samples > 1:
        if ds.get("PlanarConfiguration") != 0:
            raise IODError(f"{module}: PlanarConfiguration must be 0 for {photometric}, got "
                           f"{ds.get('PlanarConfiguration')!r}")
    elif "PlanarConfiguration" in ds:
        raise IODError(f"{module}: PlanarConfiguration present with SamplesPerPixel 1")
    rows, columns = ds.Rows, ds.Columns
    for keyword, count in (("Rows", rows), ("Columns", columns)):
        if not 1 <= count <= 65535:
            raise IODError(f"{module}: {keyword} {count} is outside 1..65535")
    bits_allocated, bits_stored = ds.BitsAllocated, ds.BitsStored
    if bits_allocated not in (8, 16):
        raise IODError(f"{module}: BitsAllocated {bits_allocated} is not 8 or 16")
    if not 1 <= bits_stored <= bits_allocated:
        raise IODError(
            f"{module}: BitsStored {bits_stored} exceeds BitsAllocated {bits_allocated}"
            if bits_stored > bits_allocated else f"{module}: BitsStored {bits_stored} < 1"
        )
    if ds.HighBit != bits_stored - 1:
        raise IODError(f"{module}: HighBit {ds.HighBit} is not BitsStored - 1 "
                       f"({bits_stored - 1})")
    if ds.PixelRepresentation != 0:
        raise IODError(f"{module}: PixelRepresentation {ds.PixelRepresentation} is not 0 "
                       "(unsigned)")
    if photometric == "RGB" and (bits_allocated, bits_stored) != (8, 8):
        raise IODError(f"{module}: BitsStored {bits_stored}: RGB must be 8 bits (A.8.5.4)")
    if "NumberOfFrames" in ds and ds.NumberOfFrames not in (None, 1, "1"):
        raise IODError(f"Multi-frame: NumberOfFrames {ds.NumberOfFrames} in a single-frame SC")
    element = ds["PixelData"]
    expected_vr = "OB" if bits_allocated == 8 else "OW"
    if element.VR != expected_vr:
        raise IODError(f"{module}: PixelData has VR {element.VR}; {expected_vr} expected for "
                       f"BitsAllocated {bits_allocated}")
    expected = rows * columns * samples * (bits_allocated // 8)
    padded = expected + expected % 2
    length = len(element.value)
    if length != padded:
        raise IODError(
            f"{module}: PixelData has {length} bytes; Rows {rows} x Columns {columns} x "
            f"SamplesPerPixel {samples} x BitsAllocated {bits_allocated} need {padded}"
        )


def _validate_modality_lut(ds: Dataset) -> None:
    present = [keyword for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType")
               if keyword in ds]
    if ds.PhotometricInterpretation != "MONOCHROME2":
        if present:
            raise IODError(f"Modality LUT: {present[0]} present in a colour image")
        return
    if present and len(present) != 3:
        missing = {"RescaleIntercept", "RescaleSlope", "RescaleType"} - set(present)
        raise IODError(f"Modality LUT: {sorted(missing)[0]} is missing (Type 1C)")
