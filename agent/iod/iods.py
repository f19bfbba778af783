"""The IODs the agent makes, as data: each IOD is its SOP class, the modules of its PS3.3
Annex A table with their usage (M mandatory, C conditional, U user option), and whether we
write each one. Modelled on highdicom's `_standard/iod_module_map.json` (same module keys).

`agent.iod.images.build_image` walks these tables and calls one writer per module, adding
attributes and never removing one; `docs/iods.md` is generated from the same tables
(`tests/unit/test_iod_tables.py` fails when the doc differs). No I/O; imports no agent code but
records-free data, so anything may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pydicom import uid as sop

#: SOP Class UIDs, from pydicom's table (PS3.4 B.5), never typed in by hand
SC_IMAGE_STORAGE = str(sop.SecondaryCaptureImageStorage)
MULTIFRAME_GRAYSCALE_BYTE_SC = str(sop.MultiFrameGrayscaleByteSecondaryCaptureImageStorage)
MULTIFRAME_GRAYSCALE_WORD_SC = str(sop.MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
MULTIFRAME_TRUE_COLOR_SC = str(sop.MultiFrameTrueColorSecondaryCaptureImageStorage)
DX_FOR_PRESENTATION = str(sop.DigitalXRayImageStorageForPresentation)
VIDEO_PHOTOGRAPHIC_IMAGE = str(sop.VideoPhotographicImageStorage)


class Usage(StrEnum):
    """A module's usage in an IOD (PS3.3 A.1.3)."""

    MANDATORY = "M"
    CONDITIONAL = "C"
    USER_OPTION = "U"


class FrameFacts(Protocol):
    """What a module condition may look at: the frames of one object."""

    @property
    def photometric_interpretation(self) -> str: ...


@dataclass(frozen=True)
class Condition:
    """When we write a C or U module: the standard's condition, or our choice, in words (for
    the doc) and as a test on the frames (for the builder)."""

    text: str
    applies: Callable[[Sequence[FrameFacts]], bool]


#: our conditions; each names why in `text`
MORE_THAN_ONE_FRAME = Condition(
    "more than one frame (Frame Increment Pointer names Frame Time or Frame Time Vector)",
    lambda frames: len(frames) > 1)
GRAYSCALE = Condition("grayscale (MONOCHROME2): identity rescale",
                      lambda frames: frames[0].photometric_interpretation == "MONOCHROME2")


@dataclass(frozen=True)
class ModuleUsage:
    """One row of an IOD's module table."""

    key: str                       #: highdicom's module key, e.g. "general-series"
    ie: str                        #: Information Entity: Patient, Study, Series, ...
    usage: Usage
    written: bool | Condition      #: always / never / when the condition holds


@dataclass(frozen=True)
class ModuleInfo:
    """A module's name and where the standard defines it."""

    title: str
    clause: str


#: every module any of our IODs lists (key -> title, PS3.3 clause)
MODULES: dict[str, ModuleInfo] = {
    "patient": ModuleInfo("Patient", "C.7.1.1"),
    "clinical-trial-subject": ModuleInfo("Clinical Trial Subject", "C.7.1.3"),
    "general-study": ModuleInfo("General Study", "C.7.2.1"),
    "patient-study": ModuleInfo("Patient Study", "C.7.2.2"),
    "clinical-trial-study": ModuleInfo("Clinical Trial Study", "C.7.2.3"),
    "general-series": ModuleInfo("General Series", "C.7.3.1"),
    "clinical-trial-series": ModuleInfo("Clinical Trial Series", "C.7.3.2"),
    "dx-series": ModuleInfo("DX Series", "C.8.11.1"),
    "frame-of-reference": ModuleInfo("Frame of Reference", "C.7.4.1"),
    "synchronization": ModuleInfo("Synchronization", "C.7.4.2"),
    "general-equipment": ModuleInfo("General Equipment", "C.7.5.1"),
    "sc-equipment": ModuleInfo("SC Equipment", "C.8.6.1"),
    "general-acquisition": ModuleInfo("General Acquisition", "C.7.10.1"),
    "general-image": ModuleInfo("General Image", "C.7.6.1"),
    "general-reference": ModuleInfo("General Reference", "C.12.4"),
    "image-plane": ModuleInfo("Image Plane", "C.7.6.2"),
    "image-pixel": ModuleInfo("Image Pixel", "C.7.6.3"),
    "cine": ModuleInfo("Cine", "C.7.6.5"),
    "multi-frame": ModuleInfo("Multi-frame", "C.7.6.6"),
    "device": ModuleInfo("Device", "C.7.6.12"),
    "specimen": ModuleInfo("Specimen", "C.7.6.22"),
    "sc-image": ModuleInfo("SC Image", "C.8.6.2"),
    "sc-multi-frame-image": ModuleInfo("SC Multi-frame Image", "C.8.6.3"),
    "sc-multi-frame-vector": ModuleInfo("SC Multi-frame Vector", "C.8.6.4"),
    "overlay-plane": ModuleInfo("Overlay Plane", "C.9.2"),
    "modality-lut": ModuleInfo("Modality LUT", "C.11.1"),
    "voi-lut": ModuleInfo("VOI LUT", "C.11.2"),
    "icc-profile": ModuleInfo("ICC Profile", "C.11.15"),
    "dx-anatomy-imaged": ModuleInfo("DX Anatomy Imaged", "C.8.11.2"),
    "dx-image": ModuleInfo("DX Image", "C.8.11.3"),
    "dx-detector": ModuleInfo("DX Detector", "C.8.11.4"),
    "x-ray-acquisition-dose": ModuleInfo("X-Ray Acquisition Dose", "C.8.7.8"),
    "acquisition-context": ModuleInfo("Acquisition Context", "C.7.6.14"),
    "vl-image": ModuleInfo("VL Image", "C.8.12.1"),
    "sop-common": ModuleInfo("SOP Common", "C.12.1"),
    "common-instance-reference": ModuleInfo("Common Instance Reference", "C.12.2"),
    "frame-extraction": ModuleInfo("Frame Extraction", "C.12.3"),
}


@dataclass(frozen=True)
class PixelRule:
    """The Image Pixel values an IOD accepts (its Annex A "Image Pixel Module" constraints)."""

    photometric: tuple[str, ...]
    bits_allocated: tuple[int, ...]
    bits_stored: tuple[int, int]    #: lowest, highest
    text: str                       #: for messages and the doc, e.g. "MONOCHROME2 8/8 bits"
    clause: str
    #: the module that states the constraint: "Image Pixel" (A.8.x.4, checked from this
    #: rule) or an IOD module whose own check enforces it (DX Image, VL Image)
    module: str = "Image Pixel"


@dataclass(frozen=True)
class IODSpec:
    """One IOD we make: its `[modality] iod` name, SOP class and module table."""

    name: str
    title: str
    clause: str
    sop_class_uid: str
    modules: tuple[ModuleUsage, ...]
    pixels: PixelRule
    min_frames: int
    max_frames: int | None          #: None: any number
    #: Modality (0008,0060) the IOD fixes (DX, XC), or None: the device's `[modality]`
    modality: str | None = None
    #: Patient Orientation (0020,0020) type: 1 in DX Image, 2C (written empty) elsewhere
    patient_orientation_required: bool = False
    #: Anatomic Region Sequence: "required", "optional" or "unused" by this IOD
    anatomic_region: str = "unused"
    #: the IOD carries Image Laterality (so General Series Laterality, 2C, stays out)
    image_laterality: bool = False

    def usage_of(self, key: str) -> ModuleUsage | None:
        """The row for module `key`, or None if the IOD has no such module."""
        return next((row for row in self.modules if row.key == key), None)


def _rows(*rows: tuple[str, str, str, bool | Condition]) -> tuple[ModuleUsage, ...]:
    return tuple(ModuleUsage(key, ie, Usage(usage), written) for key, ie, usage, written in rows)


#: the Patient/Study/Series/Equipment rows every image IOD of ours starts with
_COMMON_HEAD = (
    ("patient", "Patient", "M", True),
    ("clinical-trial-subject", "Patient", "U", False),
    ("general-study", "Study", "M", True),
    ("patient-study", "Study", "U", True),
    ("clinical-trial-study", "Study", "U", False),
    ("general-series", "Series", "M", True),
    ("clinical-trial-series", "Series", "U", False),
)

_SC_MULTIFRAME_MODULES = _rows(
    *_COMMON_HEAD,
    ("general-equipment", "Equipment", "U", True),
    ("sc-equipment", "Equipment", "M", True),
    ("frame-of-reference", "Frame of Reference", "C", False),
    ("synchronization", "Frame of Reference", "U", False),
    ("general-acquisition", "Acquisition", "M", True),
    ("general-image", "Image", "M", True),
    ("general-reference", "Image", "U", False),
    ("image-pixel", "Image", "M", True),
    ("cine", "Image", "C", MORE_THAN_ONE_FRAME),
    ("multi-frame", "Image", "M", True),
    ("device", "Image", "U", False),
    ("specimen", "Image", "U", False),
    ("sc-image", "Image", "U", True),
    ("sc-multi-frame-image", "Image", "M", True),
    ("sc-multi-frame-vector", "Image", "C", False),
    ("voi-lut", "Image", "C", False),
    ("sop-common", "Image", "M", True),
    ("common-instance-reference", "Image", "U", False),
    ("frame-extraction", "Image", "C", False),
)

_IOD_LIST = (
    IODSpec(
        name="secondary-capture", title="Secondary Capture Image", clause="A.8.1",
        sop_class_uid=SC_IMAGE_STORAGE, min_frames=1, max_frames=1,
        pixels=PixelRule(("MONOCHROME2", "RGB"), (8, 16), (1, 16),
                         "MONOCHROME2 8/16 bit, RGB 8 bit", "A.8.1"),
        modules=_rows(
            *_COMMON_HEAD,
            ("general-equipment", "Equipment", "U", True),
            ("sc-equipment", "Equipment", "M", True),
            ("frame-of-reference", "Frame of Reference", "C", False),
            ("synchronization", "Frame of Reference", "U", False),
            ("general-acquisition", "Acquisition", "M", True),
            ("general-image", "Image", "M", True),
            ("general-reference", "Image", "U", False),
            ("image-plane", "Image", "U", False),
            ("image-pixel", "Image", "M", True),
            ("device", "Image", "U", False),
            ("specimen", "Image", "U", False),
            ("sc-image", "Image", "M", True),
            ("overlay-plane", "Image", "U", False),
            ("modality-lut", "Image", "U", GRAYSCALE),
            ("voi-lut", "Image", "U", False),
            ("icc-profile", "Image", "U", False),
            ("sop-common", "Image", "M", True),
            ("common-instance-reference", "Image", "U", False),
        ),
    ),
    IODSpec(
        name="multiframe-grayscale-byte-sc",
        title="Multi-frame Grayscale Byte Secondary Capture Image", clause="A.8.3",
        sop_class_uid=MULTIFRAME_GRAYSCALE_BYTE_SC, min_frames=1, max_frames=None,
        pixels=PixelRule(("MONOCHROME2",), (8,), (8, 8), "MONOCHROME2 8/8 bits", "A.8.3.4"),
        modules=_SC_MULTIFRAME_MODULES,
    ),
    IODSpec(
        name="multiframe-grayscale-word-sc",
        title="Multi-frame Grayscale Word Secondary Capture Image", clause="A.8.4",
        sop_class_uid=MULTIFRAME_GRAYSCALE_WORD_SC, min_frames=1, max_frames=None,
        pixels=PixelRule(("MONOCHROME2",), (16,), (9, 16),
                         "MONOCHROME2, BitsAllocated 16 and BitsStored 9..16", "A.8.4.4"),
        modules=_SC_MULTIFRAME_MODULES,
    ),
    IODSpec(
        name="multiframe-true-color-sc",
        title="Multi-frame True Color Secondary Capture Image", clause="A.8.5",
        sop_class_uid=MULTIFRAME_TRUE_COLOR_SC, min_frames=1, max_frames=None,
        pixels=PixelRule(("RGB",), (8,), (8, 8), "RGB", "A.8.5.4"),
        modules=tuple(row for row in _SC_MULTIFRAME_MODULES if row.key != "voi-lut")
        + _rows(("icc-profile", "Image", "U", False)),
    ),
    IODSpec(
        name="dx", title="Digital X-Ray Image (For Presentation)", clause="A.26",
        sop_class_uid=DX_FOR_PRESENTATION, min_frames=1, max_frames=1,
        pixels=PixelRule(("MONOCHROME2",), (8, 16), (6, 16), "MONOCHROME2, 6-16 bits stored",
                         "C.8.11.3.1.1", module="DX Image"),
        modality="DX", patient_orientation_required=True, anatomic_region="optional",
        image_laterality=True,
        modules=_rows(
            *_COMMON_HEAD,
            ("dx-series", "Series", "M", True),
            ("frame-of-reference", "Frame of Reference", "U", False),
            ("general-equipment", "Equipment", "M", True),
            ("general-acquisition", "Acquisition", "M", True),
            ("general-image", "Image", "M", True),
            ("general-reference", "Image", "U", False),
            ("image-pixel", "Image", "M", True),
            ("device", "Image", "U", False),
            ("specimen", "Image", "U", False),
            ("dx-anatomy-imaged", "Image", "M", True),
            ("dx-image", "Image", "M", True),
            ("dx-detector", "Image", "M", True),
            ("x-ray-acquisition-dose", "Image", "U", True),
            ("overlay-plane", "Image", "C", False),
            # A.26.1: VOI LUT is required For Presentation
            ("voi-lut", "Image", "C", True),
            ("acquisition-context", "Image", "M", True),
            ("sop-common", "Image", "M", True),
            ("common-instance-reference", "Image", "U", False),
        ),
    ),
    IODSpec(
        name="video-photographic", title="Video Photographic Image", clause="A.32.7",
        sop_class_uid=VIDEO_PHOTOGRAPHIC_IMAGE, min_frames=2, max_frames=None,
        pixels=PixelRule(("MONOCHROME2", "RGB"), (8,), (8, 8), "RGB or MONOCHROME2, 8 bit",
                         "C.8.12.1.1.4", module="VL Image"),
        modality="XC", anatomic_region="required",
        modules=_rows(
            *_COMMON_HEAD,
            ("synchronization", "Frame of Reference", "U", False),
            ("general-equipment", "Equipment", "M", True),
            ("general-acquisition", "Acquisition", "M", True),
            ("general-image", "Image", "M", True),
            ("general-reference", "Image", "U", False),
            ("cine", "Image", "M", True),
            ("multi-frame", "Image", "M", True),
            ("image-pixel", "Image", "M", True),
            ("acquisition-context", "Image", "M", True),
            ("device", "Image", "U", False),
            ("specimen", "Image", "C", False),
            ("vl-image", "Image", "M", True),
            ("icc-profile", "Image", "U", False),
            ("sop-common", "Image", "M", True),
            ("common-instance-reference", "Image", "U", False),
            ("frame-extraction", "Image", "C", False),
        ),
    ),
)

#: `[modality] iod` name -> its table
IODS: dict[str, IODSpec] = {spec.name: spec for spec in _IOD_LIST}

#: SOP Class UID -> its table
IODS_BY_SOP_CLASS: dict[str, IODSpec] = {spec.sop_class_uid: spec for spec in _IOD_LIST}


def writes(spec: IODSpec, key: str, frames: Sequence[FrameFacts]) -> bool:
    """Whether an object of `spec` made of `frames` carries module `key`."""
    row = spec.usage_of(key)
    if row is None or row.written is False:
        return False
    return row.written is True or row.written.applies(frames)


def _written_text(row: ModuleUsage) -> str:
    if row.written is True:
        return "yes"
    if row.written is False:
        return "no"
    return f"when {row.written.text}"


def modules_markdown() -> str:
    """docs/iods.md's module tables, made from IODS (the doc is checked against this)."""
    parts: list[str] = []
    for spec in IODS.values():
        frames = f"{spec.min_frames}" if spec.min_frames == spec.max_frames else \
            f"≥ {spec.min_frames}"
        parts.append(
            f"### `{spec.name}`: {spec.title} (PS3.3 {spec.clause})\n\n"
            f"SOP Class {spec.sop_class_uid}; frames {frames}; pixels {spec.pixels.text} "
            f"({spec.pixels.clause})"
            + (f"; Modality {spec.modality}" if spec.modality else "; Modality from the device")
            + ".\n\n| IE | Module | PS3.3 | Usage | We write it |\n|---|---|---|---|---|\n"
            + "".join(f"| {row.ie} | {MODULES[row.key].title} | {MODULES[row.key].clause} "
                      f"| {row.usage.value} | {_written_text(row)} |\n" for row in spec.modules))
    return "\n".join(parts)


def iod_list_markdown() -> str:
    """The IODs `[modality] iod` may name, one row each (docs/worklist.md: every one of them
    carries the worklist item), from IODS."""
    return "| `[modality] iod` | IOD (PS3.3) | SOP Class UID | Frames |\n|---|---|---|---|\n" + \
        "".join(f"| `{spec.name}` | {spec.title} ({spec.clause}) | {spec.sop_class_uid} | "
                f"{spec.min_frames if spec.min_frames == spec.max_frames else '1 or more'} |\n"
                for spec in IODS.values())
