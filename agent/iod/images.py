"""One entry point for every image IOD the agent makes (`[modality] iod`): frames and an order
to a Dataset. The Secondary Capture family (PS3.3 A.8.1-A.8.5) and Digital X-Ray For
Presentation (A.26). No I/O: UIDs and times are arguments."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import tzinfo

import numpy as np
from pydicom.dataset import Dataset

from agent.errors import IODError
from agent.iod import modules
from agent.iod.modules import (
    DX_FOR_PRESENTATION,
    MULTIFRAME_GRAYSCALE_BYTE_SC,
    MULTIFRAME_GRAYSCALE_WORD_SC,
    MULTIFRAME_TRUE_COLOR_SC,
    SC_IMAGE_STORAGE,
    VIDEO_PHOTOGRAPHIC_IMAGE,
    ConversionType,
    format_dt,
    local_datetime,
)
from agent.iod.secondary_capture import _building, build_secondary_capture
from agent.records import Code, DeviceInfo, Order, SeriesContext
from drivers.frame import Frame

#: `[modality] iod` name -> SOP Class UID
KNOWN_IODS: dict[str, str] = {
    "secondary-capture": SC_IMAGE_STORAGE,
    "multiframe-grayscale-byte-sc": MULTIFRAME_GRAYSCALE_BYTE_SC,
    "multiframe-grayscale-word-sc": MULTIFRAME_GRAYSCALE_WORD_SC,
    "multiframe-true-color-sc": MULTIFRAME_TRUE_COLOR_SC,
    "dx": DX_FOR_PRESENTATION,
    "video-photographic": VIDEO_PHOTOGRAPHIC_IMAGE,
}

#: IODs that hold every frame of an acquisition in one object
MULTIFRAME_IODS = frozenset({"multiframe-grayscale-byte-sc", "multiframe-grayscale-word-sc",
                             "multiframe-true-color-sc", "video-photographic"})


def _check_frames_fit_iod(iod: str, frames: Sequence[Frame]) -> None:
    """The Image Pixel constraints each IOD puts on the frames (A.8.3.4, A.8.4.4, A.8.5.4)."""
    first = frames[0]
    photometric, bits_stored = first.photometric_interpretation, first.bits_stored
    bits_allocated = first.pixels.dtype.itemsize * 8
    if iod in ("secondary-capture", "dx") and len(frames) != 1:
        raise IODError(f"Multi-frame: NumberOfFrames: {iod} holds one frame, got "
                       f"{len(frames)}; use a multi-frame IOD")
    if iod == "multiframe-grayscale-byte-sc":
        if photometric != "MONOCHROME2" or (bits_allocated, bits_stored) != (8, 8):
            raise IODError(f"Image Pixel: BitsStored/PhotometricInterpretation: {iod} needs "
                           f"MONOCHROME2 8/8 bits, got {photometric} "
                           f"{bits_stored}/{bits_allocated} (A.8.3.4)")
    elif iod == "multiframe-grayscale-word-sc":
        if photometric != "MONOCHROME2" or bits_allocated != 16 or not 9 <= bits_stored <= 16:
            raise IODError(f"Image Pixel: BitsStored/PhotometricInterpretation: {iod} needs "
                           f"MONOCHROME2, BitsAllocated 16 and BitsStored 9..16, got "
                           f"{photometric} {bits_stored}/{bits_allocated} (A.8.4.4)")
    elif iod == "multiframe-true-color-sc":
        if photometric != "RGB":
            raise IODError(f"Image Pixel: PhotometricInterpretation: {iod} needs RGB, got "
                           f"{photometric} (A.8.5.4)")
    elif iod == "dx":
        modules.check_dx_frame(first)
    elif iod == "video-photographic":
        modules.check_vl_frames(frames)


def build_image(
    iod: str,
    frames: Sequence[Frame],
    *,
    order: Order,
    device: DeviceInfo,
    series: SeriesContext,
    instance_number: int,
    sop_instance_uid: str,
    conversion_type: ConversionType | str | None = None,
    derived: bool = False,
    tz: tzinfo | None = None,
    patient_orientation: tuple[str, str] | None = None,
    anatomic_region: Code | None = None,
) -> Dataset:
    """Build one image object of the IOD named `iod` from `frames`.

    Parameters
    ----------
    iod
        One of KNOWN_IODS: "secondary-capture" and "dx" take exactly one frame; the
        multi-frame SC IODs take every frame of one acquisition (one or more).
    frames
        The frames, in acquisition order; all with the same size, dtype, bits stored and
        photometric interpretation, and strictly increasing t_mono (Frame Time comes from it).
    order, device, series, instance_number, sop_instance_uid, derived, tz
        As for `build_secondary_capture`. For "dx", Modality is always DX (the IOD fixes it).
    conversion_type
        SC Equipment Conversion Type for the SC family; None means "DI" (digital interface).
        Not used for "dx" (DX is not a secondary capture).
    patient_orientation
        For "dx" only, where Patient Orientation (0020,0020) is Type 1: row and column
        directions, e.g. ("L", "F"). None: the frame's device_parameters["patient_orientation"];
        if the device does not report it either, building a DX is refused. The other IODs
        write it empty (Type 2C: unknown).
    anatomic_region
        The body part imaged, one code (e.g. ``Code("51185008", "SCT", "Chest")``): required
        for "video-photographic" (VL Image, Type 1C), written into DX's Anatomic Region
        Sequence when given (empty otherwise, Type 2), ignored by the SC family.

    Returns
    -------
    pydicom.dataset.Dataset
        Without file meta; see `encode_part10`. Check it with `validate_image`.

    Raises
    ------
    IODError
        Before anything is built: an unknown IOD, frames that differ from each other
        ("Image Pixel: Rows: frame 3 has 480, frame 0 has 512"), frames the IOD cannot hold,
        or any argument `build_secondary_capture` refuses.
    """
    if iod not in KNOWN_IODS:
        raise IODError(f"SOP Common: SOPClassUID: IOD {iod!r} is not one of "
                       f"{', '.join(KNOWN_IODS)}")
    modules.check_frames_compatible(frames)
    _check_frames_fit_iod(iod, frames)
    if iod == "video-photographic":
        modules.check_anatomic_region("VL Image", anatomic_region, required=True)
    elif iod == "dx":
        modules.check_anatomic_region("DX Anatomy Imaged", anatomic_region, required=False)
    conversion = ConversionType.DIGITAL_INTERFACE if conversion_type is None \
        else conversion_type
    if iod == "dx":
        orientation = modules.check_patient_orientation(
            patient_orientation if patient_orientation is not None
            else frames[0].device_parameters.get("patient_orientation"))
        # validate every common argument the same way SC does, then rewrite as DX
        base = build_secondary_capture(
            frames[0], order=order, device=device, series=series,
            instance_number=instance_number, sop_instance_uid=sop_instance_uid,
            conversion_type=conversion, derived=derived, tz=tz)
        return _to_dx(base, frames[0], orientation, anatomic_region)
    base = build_secondary_capture(
        frames[0], order=order, device=device, series=series,
        instance_number=instance_number, sop_instance_uid=sop_instance_uid,
        conversion_type=conversion, derived=derived, tz=tz)
    if iod == "secondary-capture":
        return base
    if iod == "video-photographic":
        if anatomic_region is None:   # refused by check_anatomic_region; this tells mypy
            raise IODError("VL Image: AnatomicRegionSequence is missing")
        return _to_video_photographic(base, frames, tz, anatomic_region)
    return _to_multiframe(base, iod, frames, tz)


def _to_multiframe(ds: Dataset, iod: str, frames: Sequence[Frame],
                   tz: tzinfo | None) -> Dataset:
    """A single-frame SC of frame 0, turned into the multi-frame SC IOD with every frame."""
    ds.SOPClassUID = KNOWN_IODS[iod]
    # Acquisition and Content Date/Time: when the first frame was read out
    ds.AcquisitionDateTime = format_dt(local_datetime(frames[0].t_wall, tz))
    with _building("Image Pixel"):
        modules.add_multiframe_pixel_data(ds, frames)
    with _building("Multi-frame"):
        modules.add_multiframe_and_cine_modules(ds, frames)
    with _building("SC Multi-frame Image"):
        modules.add_sc_multiframe_image_module(ds, frames[0])
    if iod == "multiframe-true-color-sc":
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType",
                        "PresentationLUTShape"):
            if keyword in ds:
                del ds[keyword]
    return ds


def _to_video_photographic(ds: Dataset, frames: Sequence[Frame], tz: tzinfo | None,
                           anatomic_region: Code) -> Dataset:
    """A single-frame SC of frame 0 rewritten as Video Photographic Image (A.32.7): Cine and
    Multi-frame modules, VL Image; no SC Equipment, SC Image or Modality LUT."""
    ds.SOPClassUID = VIDEO_PHOTOGRAPHIC_IMAGE
    ds.AcquisitionDateTime = format_dt(local_datetime(frames[0].t_wall, tz))
    for keyword in ("ConversionType", "PixelSpacing", "RescaleIntercept", "RescaleSlope",
                    "RescaleType"):
        if keyword in ds:
            del ds[keyword]
    with _building("Image Pixel"):
        modules.add_multiframe_pixel_data(ds, frames)
    with _building("Multi-frame"):
        modules.add_multiframe_and_cine_modules(ds, frames)
    with _building("VL Image"):
        modules.add_vl_image_module(ds, anatomic_region)
    with _building("Acquisition Context"):
        modules.add_acquisition_context_module(ds)
    return ds


def _to_dx(ds: Dataset, frame: Frame, orientation: tuple[str, str],
           anatomic_region: Code | None) -> Dataset:
    """A single-frame SC of `frame` rewritten as Digital X-Ray Image For Presentation."""
    ds.SOPClassUID = DX_FOR_PRESENTATION
    # SC-only attributes: SC Equipment (Conversion Type) and SC Image (Pixel Spacing: DX says
    # Imager Pixel Spacing, at the detector; Pixel Spacing would claim a calibration)
    for keyword in ("ConversionType", "PixelSpacing"):
        if keyword in ds:
            del ds[keyword]
    with _building("DX Series"):
        modules.add_dx_series_module(ds)
    with _building("DX Anatomy Imaged"):
        modules.add_dx_anatomy_imaged_module(ds, anatomic_region)
    with _building("DX Image"):
        modules.add_dx_image_module(ds, frame)
        ds.PatientOrientation = list(orientation)
    with _building("DX Detector"):
        modules.add_dx_detector_module(ds, frame)
    with _building("X-Ray Acquisition Dose"):
        modules.add_xray_acquisition_dose_module(ds, frame)
    with _building("Acquisition Context"):
        modules.add_acquisition_context_module(ds)
    return ds


def pixel_array_of(frames: Sequence[Frame]) -> np.ndarray:
    """The frames as one array, as pydicom's `pixel_array` gives a decoded object back:
    (rows, columns[, 3]) for one frame, (frames, rows, columns[, 3]) for more."""
    if len(frames) == 1:
        return frames[0].pixels
    return np.stack([frame.pixels for frame in frames])
