"""Secondary Capture Image Storage (PS3.3 A.8.1): a device frame and an order to a Dataset,
and the checks an SC image must pass before it is queued."""

from __future__ import annotations

from datetime import datetime, tzinfo

from pydicom.dataset import Dataset

from agent.errors import IODError
from agent.iod import modules
from agent.iod.images import build_image
from agent.iod.modules import ConversionType
from agent.iod.uids import UIDSource
from agent.iod.validation import validate_image
from agent.iod.valuerep import check_uid, format_dt
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
    timezone_offset: str | None = None,
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
        None means this machine's zone. Timezone Offset From UTC (0008,0201) is this zone's
        offset at the frame's time.
    timezone_offset
        Optional cross-check, "+HHMM"/"-HHMM"; must equal the offset `tz` gives.

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
    # one frame of the "secondary-capture" table; every check runs before building
    return build_image(
        "secondary-capture", [frame], order=order, device=device, series=series,
        instance_number=instance_number, sop_instance_uid=sop_instance_uid,
        conversion_type=conversion_type, derived=derived, tz=tz,
        timezone_offset=timezone_offset)


# validate_image moved to agent.iod.validation (it covers every IOD now); kept importable here
__all__ = ["build_secondary_capture", "new_series_context", "validate_image"]
