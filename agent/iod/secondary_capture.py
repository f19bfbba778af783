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
    ConversionType,
    check_uid,
    format_dt,
    local_datetime,
)
from agent.iod.uids import UIDSource
from agent.iod.validation import validate_image
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



# validate_image moved to agent.iod.validation (it covers every IOD now); kept importable here
__all__ = ["build_secondary_capture", "new_series_context", "validate_image"]
