"""Checks a built image must pass before it is queued (`validate_image`): required attributes
of its IOD present, the Image Pixel description consistent with itself and with the Pixel Data,
native or encapsulated. An object that fails is never queued."""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.tag import Tag

from agent.errors import IODError
from agent.iod.iods import (
    DX_FOR_PRESENTATION,
    IODS_BY_SOP_CLASS,
    MULTIFRAME_GRAYSCALE_BYTE_SC,
    MULTIFRAME_GRAYSCALE_WORD_SC,
    MULTIFRAME_TRUE_COLOR_SC,
    SC_IMAGE_STORAGE,
    VIDEO_PHOTOGRAPHIC_IMAGE,
)
from agent.iod.modules import ConversionType
from agent.iod.uids import is_valid_uid
from agent.iod.valuerep import SPECIFIC_CHARACTER_SET

#: (module, keyword, type) of what every image we send must carry. Type 1: present and not
#: empty; type 2: present, may be empty. 2C/1C attributes that we always write are listed with
#: the type they have in our objects.
_COMMON: tuple[tuple[str, str, int], ...] = (
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
    ("General Equipment", "Manufacturer", 2),
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

_SC: tuple[tuple[str, str, int], ...] = (
    ("General Series", "Laterality", 2),
    ("SC Equipment", "ConversionType", 1),
)

_SC_MULTIFRAME: tuple[tuple[str, str, int], ...] = (
    *_SC,
    ("Multi-frame", "NumberOfFrames", 1),
    ("SC Multi-frame Image", "BurnedInAnnotation", 1),
)

_DX: tuple[tuple[str, str, int], ...] = (
    ("DX Series", "PresentationIntentType", 1),
    ("DX Anatomy Imaged", "ImageLaterality", 1),
    ("DX Anatomy Imaged", "AnatomicRegionSequence", 2),
    ("DX Image", "ImageType", 1),
    ("DX Image", "PatientOrientation", 1),
    ("DX Image", "PixelIntensityRelationship", 1),
    ("DX Image", "PixelIntensityRelationshipSign", 1),
    ("DX Image", "RescaleIntercept", 1),
    ("DX Image", "RescaleSlope", 1),
    ("DX Image", "RescaleType", 1),
    ("DX Image", "PresentationLUTShape", 1),
    ("DX Image", "LossyImageCompression", 1),
    ("DX Image", "BurnedInAnnotation", 1),
    ("DX Detector", "DetectorType", 2),
    ("DX Detector", "ImagerPixelSpacing", 1),
    ("VOI LUT", "WindowCenter", 1),
    ("VOI LUT", "WindowWidth", 1),
    ("Acquisition Context", "AcquisitionContextSequence", 2),
)

_VIDEO_PHOTOGRAPHIC: tuple[tuple[str, str, int], ...] = (
    ("Multi-frame", "NumberOfFrames", 1),
    ("Multi-frame", "FrameIncrementPointer", 1),
    ("VL Image", "ImageType", 1),
    ("VL Image", "LossyImageCompression", 2),
    ("VL Image", "AnatomicRegionSequence", 1),
    ("Acquisition Context", "AcquisitionContextSequence", 2),
)

#: `[modality] iod` name -> the attributes, beyond _COMMON, that its objects must carry
_EXTRA: dict[str, tuple[tuple[str, str, int], ...]] = {
    "secondary-capture": _SC,
    "multiframe-grayscale-byte-sc": _SC_MULTIFRAME,
    "multiframe-grayscale-word-sc": _SC_MULTIFRAME,
    "multiframe-true-color-sc": _SC_MULTIFRAME,
    "dx": _DX,
    "video-photographic": _VIDEO_PHOTOGRAPHIC,
}

#: SOP class -> (title, extra required attributes), for the IODs of agent.iod.iods
_IODS: dict[str, tuple[str, tuple[tuple[str, str, int], ...]]] = {
    uid: (spec.title, _EXTRA[spec.name]) for uid, spec in IODS_BY_SOP_CLASS.items()}

#: SOP classes with an SC Equipment module (Conversion Type)
_SC_FAMILY = frozenset(uid for uid, spec in IODS_BY_SOP_CLASS.items()
                       if spec.usage_of("sc-equipment") is not None)

#: Photometric Interpretation -> Samples per Pixel; YBR_RCT only in reversible JPEG 2000
_SAMPLES_FOR = {"MONOCHROME2": 1, "RGB": 3, "YBR_RCT": 3}

#: the Transfer Syntax UID of a reversible JPEG 2000 encoding
_J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _is_empty(value: object) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def validate_image(ds: Dataset) -> None:
    """Check a built image before it is queued.

    The attributes its IOD requires must be present (and not empty where Type 1); the Image
    Pixel description must agree with itself, with the IOD (bit depth, photometric
    interpretation, number of frames) and with the Pixel Data: its length when native, its
    fragment count when encapsulated (one fragment per frame, as `encode_part10` writes).

    Parameters
    ----------
    ds
        An image from `build_image` / `build_secondary_capture`, native, or compressed with
        `compressed_copy` (its file_meta names the transfer syntax).

    Raises
    ------
    IODError
        Naming the module and the attribute at fault.
    """
    sop_class = ds.get("SOPClassUID")
    if sop_class is None:
        raise IODError("SOP Common: SOPClassUID is missing (Type 1)")
    if sop_class not in _IODS:
        raise IODError(
            f"SOP Common: SOPClassUID {sop_class!r} is not an IOD this agent makes "
            f"({', '.join(f'{name} {uid}' for uid, (name, _) in _IODS.items())})"
        )
    _, extra = _IODS[sop_class]
    for module, keyword, attribute_type in (*_COMMON, *extra):
        if keyword not in ds:
            raise IODError(f"{module}: {keyword} is missing (Type {attribute_type})")
        if attribute_type == 1 and _is_empty(ds[keyword].value):
            raise IODError(f"{module}: {keyword} is empty (Type 1)")
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
    if sop_class in _SC_FAMILY and ds.get("ConversionType") not in {
            member.value for member in ConversionType}:
        raise IODError(f"SC Equipment: ConversionType {ds.ConversionType!r} is not a defined term")
    _validate_image_pixel(ds)
    _validate_iod_pixels(ds, sop_class)
    _validate_multiframe(ds, sop_class)
    _validate_modality_lut(ds, sop_class)
    if sop_class == DX_FOR_PRESENTATION:
        _validate_dx(ds)


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    return None if meta is None else meta.get("TransferSyntaxUID")


def _is_encapsulated(ds: Dataset) -> bool:
    element = ds["PixelData"]
    if element.is_undefined_length:
        return True
    uid = _transfer_syntax(ds)
    return uid is not None and getattr(uid, "is_compressed", False)


def number_of_frames(ds: Dataset) -> int:
    """Number of Frames (absent means 1), as an int.

    Raises
    ------
    IODError
        If the value is not a positive integer.
    """
    value = ds.get("NumberOfFrames", 1)
    try:
        count = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError) as err:
        raise IODError(f"Multi-frame: NumberOfFrames {value!r} is not an integer") from err
    if count < 1:
        raise IODError(f"Multi-frame: NumberOfFrames {count} is below 1")
    return count


def _validate_image_pixel(ds: Dataset) -> None:
    module = "Image Pixel"
    photometric = ds.PhotometricInterpretation
    if photometric not in _SAMPLES_FOR:
        raise IODError(f"{module}: PhotometricInterpretation {photometric!r} is not "
                       "MONOCHROME2, RGB or YBR_RCT")
    if photometric == "YBR_RCT" and _transfer_syntax(ds) != _J2K_LOSSLESS:
        raise IODError(f"{module}: PhotometricInterpretation YBR_RCT outside reversible "
                       "JPEG 2000 (A.8.5.4)")
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
    if samples == 3 and (bits_allocated, bits_stored) != (8, 8):
        raise IODError(f"{module}: BitsStored {bits_stored}: RGB must be 8 bits (A.8.5.4)")
    frames = number_of_frames(ds)
    element = ds["PixelData"]
    if _is_encapsulated(ds):
        # PS3.5 A.4: an encapsulated frame is one or more fragments; encode_part10 writes
        # one fragment per frame, so the counts must agree
        try:
            fragments = _count_fragments(bytes(element.value))
        except (ValueError, TypeError, struct.error) as err:
            raise IODError(f"{module}: PixelData is not a valid encapsulated value: {err}") \
                from err
        if fragments != frames:
            raise IODError(f"{module}: PixelData has {fragments} fragments for "
                           f"NumberOfFrames {frames} (one fragment per frame expected)")
        return
    expected_vr = "OB" if bits_allocated == 8 else "OW"
    if element.VR != expected_vr:
        raise IODError(f"{module}: PixelData has VR {element.VR}; {expected_vr} expected for "
                       f"BitsAllocated {bits_allocated}")
    expected = rows * columns * samples * (bits_allocated // 8) * frames
    padded = expected + expected % 2
    length = len(element.value)
    if length != padded:
        shown = f" x NumberOfFrames {frames}" if frames > 1 else ""
        raise IODError(
            f"{module}: PixelData has {length} bytes; Rows {rows} x Columns {columns} x "
            f"SamplesPerPixel {samples} x BitsAllocated {bits_allocated}{shown} need {padded}"
        )


def _count_fragments(value: bytes) -> int:
    """Fragments after the Basic Offset Table item (PS3.5 A.4)."""
    tag_group, tag_element, length = struct.unpack("<HHL", value[:8])
    if (tag_group, tag_element) != (0xFFFE, 0xE000):
        raise ValueError("no Basic Offset Table item at the start")
    count, _ = parse_fragments(value[8 + length:])
    return count


def _validate_iod_pixels(ds: Dataset, sop_class: str) -> None:
    """What each IOD fixes of the Image Pixel module (A.8.3.4, A.8.4.4, A.8.5.4, C.8.11.3)."""
    photometric, bits_allocated, bits_stored = (ds.PhotometricInterpretation,
                                                ds.BitsAllocated, ds.BitsStored)
    if sop_class == MULTIFRAME_GRAYSCALE_BYTE_SC and (
            photometric != "MONOCHROME2" or (bits_allocated, bits_stored) != (8, 8)):
        raise IODError(f"Image Pixel: BitsStored {bits_stored}/BitsAllocated "
                       f"{bits_allocated} {photometric}: Grayscale Byte SC is MONOCHROME2 8/8")
    if sop_class == MULTIFRAME_GRAYSCALE_WORD_SC and (
            photometric != "MONOCHROME2" or bits_allocated != 16
            or not 9 <= bits_stored <= 16):
        raise IODError(f"Image Pixel: BitsStored {bits_stored}/BitsAllocated "
                       f"{bits_allocated} {photometric}: Grayscale Word SC is MONOCHROME2, "
                       "16 bits allocated, 9..16 stored")
    if sop_class == MULTIFRAME_TRUE_COLOR_SC and ds.SamplesPerPixel != 3:
        raise IODError(f"Image Pixel: PhotometricInterpretation {photometric}: True Color SC "
                       "is RGB (YBR_RCT in reversible JPEG 2000)")
    if sop_class == VIDEO_PHOTOGRAPHIC_IMAGE and (bits_allocated, bits_stored) != (8, 8):
        raise IODError(f"VL Image: BitsStored {bits_stored}/BitsAllocated {bits_allocated}: "
                       "VL images are 8/8 bits")
    if sop_class == DX_FOR_PRESENTATION and (photometric != "MONOCHROME2"
                                             or bits_stored < 6):
        raise IODError(f"DX Image: PhotometricInterpretation {photometric} / BitsStored "
                       f"{bits_stored}: DX is MONOCHROME2 with 6..16 bits here")


def _validate_multiframe(ds: Dataset, sop_class: str) -> None:
    frames = number_of_frames(ds)
    if sop_class in (SC_IMAGE_STORAGE, DX_FOR_PRESENTATION):
        if frames != 1:
            raise IODError(f"Multi-frame: NumberOfFrames {frames} in a single-frame "
                           f"{_IODS[sop_class][0]}")
        return
    if frames == 1 and sop_class != VIDEO_PHOTOGRAPHIC_IMAGE:
        return
    # C.8.6.3: Frame Increment Pointer 1C, required when Number of Frames > 1; the Cine
    # module is required when it points to Frame Time or Frame Time Vector (A.8.5.3)
    if "FrameIncrementPointer" not in ds:
        raise IODError(f"SC Multi-frame Image: FrameIncrementPointer is missing (Type 1C, "
                       f"NumberOfFrames {frames})")
    if not ds.FrameIncrementPointer:
        raise IODError("Multi-frame: FrameIncrementPointer is empty (Type 1)")
    pointer = Tag(ds.FrameIncrementPointer)
    if pointer == Tag("FrameTime"):
        value = ds.get("FrameTime")
        if value is None or float(value) <= 0:
            raise IODError(f"Cine: FrameTime {value!r} is missing or not positive (Type 1C)")
    elif pointer == Tag("FrameTimeVector"):
        vector = ds.get("FrameTimeVector")
        count = 0 if vector is None else len(vector)
        if count != frames:
            raise IODError(f"Cine: FrameTimeVector has {count} values for NumberOfFrames "
                           f"{frames} (Type 1C)")
    else:
        raise IODError(f"SC Multi-frame Image: FrameIncrementPointer {pointer} is neither "
                       "FrameTime nor FrameTimeVector")


def _validate_modality_lut(ds: Dataset, sop_class: str) -> None:
    present = [keyword for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType")
               if keyword in ds]
    if ds.SamplesPerPixel != 1:
        if present:
            raise IODError(f"Modality LUT: {present[0]} present in a colour image")
        return
    module = "SC Multi-frame Image" if sop_class in (
        MULTIFRAME_GRAYSCALE_BYTE_SC, MULTIFRAME_GRAYSCALE_WORD_SC) else "Modality LUT"
    if sop_class == VIDEO_PHOTOGRAPHIC_IMAGE:
        if present:
            raise IODError(f"Modality LUT: {present[0]} present in a VL image (no such module)")
        return
    if sop_class != SC_IMAGE_STORAGE:
        # C.8.6.3 / C.8.11.3: grayscale multi-frame SC and DX require the identity rescale
        # and Presentation LUT Shape IDENTITY
        missing = [keyword for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType",
                                           "PresentationLUTShape") if keyword not in ds]
        if missing:
            raise IODError(f"{module}: {missing[0]} is missing (Type 1C)")
        if float(ds.RescaleIntercept) != 0 or float(ds.RescaleSlope) != 1:
            raise IODError(f"{module}: RescaleIntercept {ds.RescaleIntercept} / RescaleSlope "
                           f"{ds.RescaleSlope} must be 0 / 1")
        if ds.PresentationLUTShape != "IDENTITY":
            raise IODError(f"{module}: PresentationLUTShape {ds.PresentationLUTShape!r} is "
                           "not IDENTITY")
        return
    if present and len(present) != 3:
        missing = sorted({"RescaleIntercept", "RescaleSlope", "RescaleType"} - set(present))
        raise IODError(f"Modality LUT: {missing[0]} is missing (Type 1C)")


def _validate_dx(ds: Dataset) -> None:
    if ds.Modality != "DX":
        raise IODError(f"DX Series: Modality {ds.Modality!r} is not DX")
    if ds.PresentationIntentType != "FOR PRESENTATION":
        raise IODError(f"DX Series: PresentationIntentType {ds.PresentationIntentType!r} is "
                       "not FOR PRESENTATION")
    if "Laterality" in ds:
        raise IODError("General Series: Laterality present with Image Laterality (Type 2C)")
    if len(ds.ImagerPixelSpacing) != 2:
        raise IODError(f"DX Detector: ImagerPixelSpacing {ds.ImagerPixelSpacing!r} is not "
                       "two values")
