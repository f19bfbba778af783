"""One entry point for every image IOD the agent makes (`[modality] iod`): frames and an order
to a Dataset. The IODs are the tables of `agent.iod.iods`; this module checks the arguments
against the IOD's table and then, module by module, adds what each writer writes: nothing is
built as another IOD and patched. No I/O: UIDs and times are arguments."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import tzinfo

import numpy as np
from pydicom.dataset import Dataset

from agent.errors import IODError
from agent.iod import modules
from agent.iod.building import building
from agent.iod.iods import IODS, IODSpec, writes
from agent.iod.modules import ConversionType
from agent.iod.valuerep import check_timezone_offset, format_dt, local_datetime, utc_offset_of
from agent.records import Code, DeviceInfo, Order, SeriesContext
from drivers.frame import Frame

#: `[modality] iod` name -> SOP Class UID
KNOWN_IODS: dict[str, str] = {name: spec.sop_class_uid for name, spec in IODS.items()}

#: IODs that hold every frame of an acquisition in one object
MULTIFRAME_IODS = frozenset(name for name, spec in IODS.items() if spec.max_frames != 1)


@dataclass(frozen=True)
class ImageRequest:
    """Everything one image is built from, checked and coerced: the writers only read it."""

    iod: IODSpec
    frames: tuple[Frame, ...]
    order: Order
    device: DeviceInfo
    series: SeriesContext
    instance_number: int
    sop_instance_uid: str
    conversion: ConversionType
    derived: bool
    content_datetime: str               #: DT of the first frame, local time
    timezone_offset: str                #: "+HHMM": the zone of content_datetime and the rest
    patient_orientation: tuple[str, str] | None
    anatomic_region: Code | None
    irradiation_event_uid: str | None = None   #: the exposure that made the image, if any
    image_laterality: str = "U"                #: DX only; checked by check_image_laterality
    protocol_name: str = ""                    #: General Series (0018,1030); "" writes none

    @property
    def first(self) -> Frame:
        return self.frames[0]


# --- one writer per module key: adds that module's attributes --------------------------------

def _general_series(ds: Dataset, r: ImageRequest) -> None:
    modules.add_general_series_module(
        ds, r.order, r.device, r.series, modality=r.iod.modality,
        laterality_unknown=not r.iod.image_laterality and r.anatomic_region is None,
        protocol_name=r.protocol_name)


def _general_image(ds: Dataset, r: ImageRequest) -> None:
    modules.add_general_image_module(
        ds, instance_number=r.instance_number, content_datetime=r.content_datetime,
        derived=r.derived, monochrome=r.first.photometric_interpretation == "MONOCHROME2",
        patient_orientation=r.patient_orientation)


def _sop_common(ds: Dataset, r: ImageRequest) -> None:
    modules.add_sop_common_module(ds, sop_class_uid=r.iod.sop_class_uid,
                                  sop_instance_uid=r.sop_instance_uid,
                                  created_datetime=r.content_datetime,
                                  timezone_offset=r.timezone_offset)


def _vl_image(ds: Dataset, r: ImageRequest) -> None:
    if r.anatomic_region is None:   # refused by the checks; this tells mypy
        raise IODError("VL Image: AnatomicRegionSequence is missing")
    modules.add_vl_image_module(ds, r.anatomic_region)


_WRITERS: dict[str, Callable[[Dataset, ImageRequest], None]] = {
    "patient": lambda ds, r: modules.add_patient_module(ds, r.order),
    "patient-study": lambda ds, r: modules.add_patient_study_module(ds, r.order),
    "general-study": lambda ds, r: modules.add_general_study_module(ds, r.order, r.series),
    "general-series": _general_series,
    "dx-series": lambda ds, r: modules.add_dx_series_module(ds),
    "general-equipment": lambda ds, r: modules.add_general_equipment_module(ds, r.device),
    "sc-equipment": lambda ds, r: modules.add_sc_equipment_module(ds, r.conversion),
    "general-acquisition": lambda ds, r: modules.add_general_acquisition_module(
        ds, acquisition_datetime=r.content_datetime,
        irradiation_event_uid=r.irradiation_event_uid),
    "general-image": _general_image,
    "image-pixel": lambda ds, r: modules.add_image_pixel_module(ds, r.frames),
    "multi-frame": lambda ds, r: modules.add_multiframe_module(ds, r.frames),
    "cine": lambda ds, r: modules.add_cine_module(ds, r.frames),
    "sc-image": lambda ds, r: modules.add_sc_image_module(ds, r.first),
    "sc-multi-frame-image": lambda ds, r: modules.add_sc_multiframe_image_module(ds, r.first),
    "modality-lut": lambda ds, r: modules.add_modality_lut_module(ds, r.first),
    "voi-lut": lambda ds, r: modules.add_voi_lut_module(ds, r.first),
    "dx-anatomy-imaged": lambda ds, r: modules.add_dx_anatomy_imaged_module(
        ds, r.anatomic_region, r.image_laterality),
    "dx-image": lambda ds, r: modules.add_dx_image_module(ds, r.first),
    "dx-detector": lambda ds, r: modules.add_dx_detector_module(ds, r.first),
    "x-ray-acquisition-dose": lambda ds, r: modules.add_xray_acquisition_dose_module(
        ds, r.first),
    "acquisition-context": lambda ds, r: modules.add_acquisition_context_module(ds),
    "vl-image": _vl_image,
    "sop-common": _sop_common,
}

#: module checks beyond the common ones, run before anything is built
_CHECKS: dict[str, Callable[[Sequence[Frame]], None]] = {
    "sc-image": lambda frames: modules.check_sc_image(frames[0]),
    "dx-image": lambda frames: modules.check_dx_frame(frames[0]),
    "vl-image": modules.check_vl_frames,
}


def writer_keys() -> frozenset[str]:
    """The module keys this builder can write (docs and tests compare them to the tables)."""
    return frozenset(_WRITERS)


# --- checks ----------------------------------------------------------------------------------

def _spec_of(iod: object) -> IODSpec:
    if not isinstance(iod, str) or iod not in IODS:
        raise IODError(f"SOP Common: SOPClassUID: IOD {iod!r} is not one of "
                       f"{', '.join(IODS)}")
    return IODS[iod]


def _check_frames_fit_iod(spec: IODSpec, frames: Sequence[Frame]) -> None:
    """The frame count and Image Pixel values the IOD's table allows."""
    if spec.max_frames == 1 and len(frames) != 1:
        raise IODError(f"Multi-frame: NumberOfFrames: {spec.name} holds one frame, got "
                       f"{len(frames)}; use a multi-frame IOD")
    first = frames[0]
    rule = spec.pixels
    if rule.module != "Image Pixel":
        return    # that module's check (in _CHECKS) enforces it, with its own name
    photometric, bits_stored = first.photometric_interpretation, first.bits_stored
    bits_allocated = first.pixels.dtype.itemsize * 8
    low, high = rule.bits_stored
    if photometric not in rule.photometric:
        where = "PhotometricInterpretation" if len(rule.photometric) == 1 and \
            rule.photometric[0] == "RGB" else "BitsStored/PhotometricInterpretation"
        raise IODError(f"Image Pixel: {where}: {spec.name} needs {rule.text}, got "
                       f"{photometric}" + ("" if where.startswith("Photometric") else
                                           f" {bits_stored}/{bits_allocated}")
                       + f" ({rule.clause})")
    if bits_allocated not in rule.bits_allocated or not low <= bits_stored <= high:
        raise IODError(f"Image Pixel: BitsStored/PhotometricInterpretation: {spec.name} needs "
                       f"{rule.text}, got {photometric} {bits_stored}/{bits_allocated} "
                       f"({rule.clause})")


def _check_laterality(spec: IODSpec, laterality: object, region: Code | None) -> str:
    """Image Laterality for an IOD that writes it; refused for one that does not (never
    silently dropped)."""
    if not spec.image_laterality:
        if laterality is not None:
            raise IODError(f"ImageLaterality: only DX writes Image Laterality; {spec.name} "
                           f"has none (got {laterality!r})")
        return "U"
    return modules.check_image_laterality(laterality, region)


def _check_region(spec: IODSpec, region: Code | None) -> Code | None:
    """Anatomic Region Sequence as the IOD uses it; None for an IOD that has none."""
    if spec.anatomic_region == "unused":
        return None    # the SC family has no Anatomic Region Sequence: ignored
    module = "VL Image" if spec.anatomic_region == "required" else "DX Anatomy Imaged"
    modules.check_anatomic_region(module, region, required=spec.anatomic_region == "required")
    return region


def _content_time(frame: Frame, tz: tzinfo | None,
                  timezone_offset: str | None) -> tuple[str, str]:
    """Content Date/Time of the first frame in `tz`, and the UTC offset of that zone then.

    A given `timezone_offset` must be the zone's: the offset describes every DA/TM value of
    the object (C.12.1.1.8), and one that disagrees with them would shift the study in time."""
    if not isinstance(frame.t_wall, int | float) or not np.isfinite(frame.t_wall):
        raise IODError(f"General Image: ContentTime: frame t_wall {frame.t_wall!r} is not a time")
    try:
        moment = local_datetime(frame.t_wall, tz)
        offset = utc_offset_of(moment)
    except (OverflowError, OSError, ValueError) as err:
        raise IODError(
            f"General Image: ContentTime: frame t_wall {frame.t_wall!r} is out of range"
        ) from err
    if timezone_offset is not None:
        check_timezone_offset("SOP Common", timezone_offset)
        if timezone_offset != offset:
            raise IODError(f"SOP Common: TimezoneOffsetFromUTC {timezone_offset!r} disagrees "
                           f"with the zone the times are written in ({offset} at the first "
                           "frame); pass the same zone as tz")
    return format_dt(moment), offset


def _check_common(spec: IODSpec, frames: Sequence[Frame], order: Order, device: DeviceInfo,
                  series: SeriesContext, instance_number: int, sop_instance_uid: str) -> None:
    """The modules every image IOD of ours has: patient to SOP Common."""
    modules.check_patient(order)
    modules.check_patient_study(order)
    modules.check_general_study(order, series)
    modules.check_general_series(order, device, series)
    modules.check_general_equipment(device)
    modules.check_general_image(instance_number)
    modules.check_sop_common(sop_instance_uid)
    if sop_instance_uid in (series.study_instance_uid, series.series_instance_uid):
        raise IODError("SOP Common: SOPInstanceUID equals the study or series UID")
    for row in spec.modules:
        check = _CHECKS.get(row.key)
        if check is not None and writes(spec, row.key, frames):
            check(frames)


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
    timezone_offset: str | None = None,
    irradiation_event_uid: str | None = None,
    image_laterality: str | None = None,
    protocol_name: str = "",
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
    order, device, series, instance_number, sop_instance_uid, derived
        As for `build_secondary_capture`. Modality is the device's, except where the IOD
        fixes it (DX for "dx", XC for "video-photographic").
    conversion_type
        SC Equipment Conversion Type for the SC family; None means "DI" (digital interface).
        Not used by IODs without SC Equipment ("dx", "video-photographic").
    patient_orientation
        For "dx" only, where Patient Orientation (0020,0020) is Type 1: row and column
        directions, e.g. ("L", "F"). None: the frame's device_parameters["patient_orientation"];
        if the device does not report it either, building a DX is refused. The other IODs
        write it empty (Type 2C: unknown).
    anatomic_region
        The body part imaged, one code (e.g. ``Code("51185008", "SCT", "Chest")``): required
        for "video-photographic" (VL Image, Type 1C), written into DX's Anatomic Region
        Sequence when given (empty otherwise, Type 2), ignored by the SC family.
    tz
        The zone of "local time" for every date and time the object holds; None means this
        machine's zone. Timezone Offset From UTC (0008,0201) is written in every object: the
        offset of this zone at the first frame (no clock is read).
    timezone_offset
        "+HHMM"/"-HHMM": optional, a cross-check; it must equal the offset `tz` gives.
    irradiation_event_uid
        The exposure that made this image (General Acquisition, (0008,3010), Type 3): the
        same UID as its TID 10003 event in the procedure's dose SR. None writes nothing.
    image_laterality
        For "dx" only: Image Laterality (0020,0062), "R", "L", "B" or "U". "U" means unpaired
        (PS3.3 C.8.11.2), accepted only with an unpaired `anatomic_region`; None: "U" for a
        known unpaired region, refused for a paired one and for no region at all (the side
        must be given; "U" would claim an unpaired region). An acquisition decides both before
        the exposure (`agent.acquisition.Acquisition.anatomy_for`), so it never gets here
        without them.
    protocol_name
        Protocol Name (0018,1030) of General Series (Type 3): the same value the procedure's
        MPPS lists for the series; "" writes none.

    Returns
    -------
    pydicom.dataset.Dataset
        Without file meta; see `encode_part10`. Check it with `validate_image`.

    Raises
    ------
    IODError
        Before anything is built: an unknown IOD, frames that differ from each other
        ("Image Pixel: Rows: frame 3 has 480, frame 0 has 512"), frames the IOD cannot hold,
        or an argument a module refuses; the message names the module and the attribute.
    """
    spec = _spec_of(iod)
    modules.check_frames_compatible(frames)
    _check_frames_fit_iod(spec, frames)
    region = _check_region(spec, anatomic_region)
    laterality = _check_laterality(spec, image_laterality, region)
    orientation = None
    if spec.patient_orientation_required:
        orientation = modules.check_patient_orientation(
            patient_orientation if patient_orientation is not None
            else frames[0].device_parameters.get("patient_orientation"))
    _check_common(spec, frames, order, device, series, instance_number, sop_instance_uid)
    if irradiation_event_uid is not None:
        modules.check_irradiation_event_uid(irradiation_event_uid, sop_instance_uid)
    conversion = modules.check_sc_equipment(
        ConversionType.DIGITAL_INTERFACE if conversion_type is None else conversion_type) \
        if spec.usage_of("sc-equipment") is not None else ConversionType.DIGITAL_INTERFACE
    content_datetime, offset = _content_time(frames[0], tz, timezone_offset)
    request = ImageRequest(
        iod=spec, frames=tuple(frames), order=order, device=device, series=series,
        instance_number=instance_number, sop_instance_uid=sop_instance_uid,
        conversion=conversion, derived=derived,
        content_datetime=content_datetime, timezone_offset=offset,
        patient_orientation=orientation, anatomic_region=region,
        irradiation_event_uid=irradiation_event_uid, image_laterality=laterality,
        protocol_name=modules.check_protocol_name(protocol_name))
    return assemble(request)


def assemble(request: ImageRequest) -> Dataset:
    """Add, in the IOD table's order, every module the table says we write (no checks: those
    ran on the arguments). A module without a writer is a bug in the table."""
    ds = Dataset()
    spec = request.iod
    for row in spec.modules:
        if not writes(spec, row.key, request.frames):
            continue
        writer = _WRITERS.get(row.key)
        if writer is None:
            raise IODError(f"{spec.title}: module {row.key} is marked written but has no "
                           "writer (a bug in agent.iod.iods)")
        with building(row.key):
            writer(ds, request)
    return ds


def pixel_array_of(frames: Sequence[Frame]) -> np.ndarray:
    """The frames as one array, as pydicom's `pixel_array` gives a decoded object back:
    (rows, columns[, 3]) for one frame, (frames, rows, columns[, 3]) for more."""
    if len(frames) == 1:
        return frames[0].pixels
    return np.stack([frame.pixels for frame in frames])
