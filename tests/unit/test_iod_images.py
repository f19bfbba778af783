"""build_image for every IOD x bit depth x photometric x transfer syntax: dciodvfy reports no
error, DCMTK dcmdump parses the file, pixels round-trip exactly, the SOP Instance UID survives
compression; frames that do not fit together or into the IOD are refused before building;
validate_image catches what an object must not be queued with."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID
from test_iod import DEVICE, SCHEDULED, TZ, UNSCHEDULED, series_for

from agent.errors import IODError
from agent.iod import (
    KNOWN_IODS,
    KNOWN_TRANSFER_SYNTAXES,
    MULTIFRAME_IODS,
    UIDSource,
    build_image,
    compressed_copy,
    encode_part10,
    encoder_status,
    validate_image,
)
from agent.records import Code
from drivers.frame import Frame
from drivers.simulated import phantom

DCIODVFY = Path("/usr/bin/dciodvfy")
DCMDUMP = Path("/usr/bin/dcmdump")   # DCMTK by full path (PEERS.md, name clash)

#: what dciodvfy names for each IOD: the proof it checked the object against that IOD
DCIODVFY_IOD_NAMES = {
    "secondary-capture": "SCImage",
    "multiframe-grayscale-byte-sc": "MultiframeGrayscaleByteSCImage",
    "multiframe-grayscale-word-sc": "MultiframeGrayscaleWordSCImage",
    "multiframe-true-color-sc": "MultiframeTrueColorSCImage",
    "dx": "DXImageForPresentation",
    "video-photographic": "VideoPhotographicImage",
}

CHEST = Code("51185008", "SCT", "Chest")

FRAME_INTERVAL_S = 0.04        # 25 frames/s
ORIENTATION = ("L", "F")


def mono(rows: int, columns: int, bits_stored: int, index: int = 0, *,
         t_mono: float | None = None) -> Frame:
    return Frame(
        pixels=phantom(rows, columns, bits_stored, index),
        bits_stored=bits_stored,
        photometric_interpretation="MONOCHROME2",
        t_mono=100.0 + index * FRAME_INTERVAL_S if t_mono is None else t_mono,
        t_wall=1_700_000_000.0 + index * FRAME_INTERVAL_S,
        sequence_number=index,
        pixel_spacing_mm=(0.139, 0.139),
        device_parameters=MappingProxyType({"kvp": 81.0, "mas": 12.5, "exposure_ms": 32.0}),
    )


def rgb(rows: int, columns: int, index: int = 0) -> Frame:
    gray = phantom(rows, columns, 8, index)
    pixels = np.stack([gray, gray[::-1, :], gray[:, ::-1]], axis=-1)
    return Frame(pixels=pixels, bits_stored=8, photometric_interpretation="RGB",
                 t_mono=100.0 + index * FRAME_INTERVAL_S,
                 t_wall=1_700_000_000.0 + index * FRAME_INTERVAL_S, sequence_number=index)


def frames_of(kind: str, count: int, rows: int = 40, columns: int = 33) -> list[Frame]:
    if kind == "rgb":
        return [rgb(rows, columns, index) for index in range(count)]
    bits = int(kind.removeprefix("mono"))
    return [mono(rows, columns, bits, index) for index in range(count)]


def build(iod: str, frames: list[Frame], **overrides: Any) -> Dataset:
    uids = UIDSource()
    arguments: dict[str, Any] = {
        "order": UNSCHEDULED,
        "device": DEVICE,
        "series": series_for(UNSCHEDULED, uids),
        "instance_number": 1,
        "sop_instance_uid": uids.new_uid(),
        "tz": TZ,
    }
    if iod == "dx":
        arguments["patient_orientation"] = ORIENTATION
        if "anatomic_region" not in overrides and "image_laterality" not in overrides:
            # a DX states its side (issue 16): neither region nor side is refused
            arguments["image_laterality"] = "R"
    if iod == "video-photographic":
        arguments["anatomic_region"] = CHEST
    arguments.update(overrides)
    return build_image(iod, frames, **arguments)


def expected_array(frames: list[Frame]) -> np.ndarray:
    return frames[0].pixels if len(frames) == 1 else np.stack([f.pixels for f in frames])


def dciodvfy(path: Path) -> tuple[list[str], list[str], list[str]]:
    if not DCIODVFY.exists():
        pytest.fail(f"{DCIODVFY} is missing: apt-get install dicom3tools")
    proc = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                          errors="replace", timeout=60, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    return (lines, [line for line in lines if line.startswith("Error")],
            [line for line in lines if line.startswith("Warning")])


def dcmdump(path: Path) -> str:
    if not DCMDUMP.exists():
        pytest.fail(f"{DCMDUMP} is missing: apt-get install dcmtk")
    proc = subprocess.run([str(DCMDUMP), "-q", str(path)], capture_output=True, text=True,
                          errors="replace", timeout=60, check=False)
    assert proc.returncode == 0, f"dcmdump cannot parse {path.name}:\n{proc.stderr}"
    return proc.stdout


def require_encoder(transfer_syntax: str) -> None:
    status = encoder_status(transfer_syntax)
    if not status.available:
        pytest.skip(f"{transfer_syntax}: {status.reason}")


# --- the matrix ---------------------------------------------------------------------------

#: IOD -> frame kinds it takes (photometric and bits stored) and how many frames
CASES: list[tuple[str, str, int]] = [
    ("secondary-capture", "mono8", 1),
    ("secondary-capture", "mono12", 1),
    ("secondary-capture", "mono16", 1),
    ("secondary-capture", "rgb", 1),
    ("multiframe-grayscale-byte-sc", "mono8", 3),
    ("multiframe-grayscale-byte-sc", "mono8", 1),
    ("multiframe-grayscale-word-sc", "mono12", 3),
    ("multiframe-grayscale-word-sc", "mono16", 2),
    ("multiframe-true-color-sc", "rgb", 3),
    ("dx", "mono8", 1),
    ("dx", "mono12", 1),
    ("dx", "mono16", 1),
    ("video-photographic", "rgb", 3),
    ("video-photographic", "mono8", 2),
]

MATRIX = [pytest.param(iod, kind, count, syntax, id=f"{iod}-{kind}x{count}-{syntax}")
          for iod, kind, count in CASES for syntax in KNOWN_TRANSFER_SYNTAXES]


@pytest.mark.parametrize(("iod", "kind", "count", "syntax"), MATRIX)
def test_every_iod_and_syntax_is_valid_and_round_trips(iod: str, kind: str, count: int,
                                                       syntax: str, tmp_path: Path) -> None:
    require_encoder(syntax)
    frames = frames_of(kind, count)
    ds = build(iod, frames)
    validate_image(ds)
    payload = encode_part10(ds, syntax)
    path = tmp_path / "image.dcm"
    path.write_bytes(payload)

    lines, errors, warnings = dciodvfy(path)
    for line in warnings:
        print(f"dciodvfy {iod} {kind}x{count} {syntax}: {line}")  # noqa: T201 - asked for
    assert not errors, "\n".join(lines)
    assert DCIODVFY_IOD_NAMES[iod] in lines, f"dciodvfy did not check {iod}:\n" + "\n".join(lines)
    dump = dcmdump(path)
    assert "(7fe0,0010)" in dump and "(0002,0010)" in dump, dump[-2000:]

    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == KNOWN_TRANSFER_SYNTAXES[syntax]
    assert back.SOPClassUID == KNOWN_IODS[iod]
    assert back.SOPInstanceUID == ds.SOPInstanceUID       # compress() kept it (DICOM-NOTES §6)
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert int(back.get("NumberOfFrames", 1)) == count
    np.testing.assert_array_equal(back.pixel_array, expected_array(frames))
    validate_image(back)     # a compressed object passes too: fragments = frames
    assert "PixelData" in ds and ds["PixelData"].VR in ("OB", "OW")   # caller's ds untouched


def test_compressing_leaves_the_callers_dataset_alone() -> None:
    require_encoder("rle")
    ds = build("multiframe-true-color-sc", frames_of("rgb", 2))
    before = ds.PixelData
    compressed = compressed_copy(ds, "rle")
    assert ds.PixelData is before and "file_meta" not in ds.__dict__
    assert compressed.SOPInstanceUID == ds.SOPInstanceUID
    assert compressed["PixelData"].is_undefined_length


def test_j2k_colour_is_ybr_rct_and_decodes_back_to_rgb(tmp_path: Path) -> None:
    require_encoder("jpeg2000-lossless")
    frames = frames_of("rgb", 2)
    ds = build("multiframe-true-color-sc", frames)
    path = tmp_path / "c.dcm"
    path.write_bytes(encode_part10(ds, "jpeg2000-lossless"))
    back = pydicom.dcmread(path)
    assert back.PhotometricInterpretation == "YBR_RCT"
    assert ds.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(back.pixel_array, expected_array(frames))


def test_j2k_refuses_frames_openjpeg_cannot_encode() -> None:
    require_encoder("jpeg2000-lossless")
    ds = build("secondary-capture", frames_of("mono8", 1, rows=31, columns=64))
    with pytest.raises(IODError, match=r"^Image Pixel: Rows/Columns 31x64: jpeg2000"):
        encode_part10(ds, "jpeg2000-lossless")


def test_unknown_transfer_syntax_and_iod_are_refused() -> None:
    ds = build("secondary-capture", frames_of("mono8", 1))
    with pytest.raises(IODError, match=r"TransferSyntaxUID: 'jpeg-baseline' is not one of"):
        encode_part10(ds, "jpeg-baseline")
    with pytest.raises(IODError, match=r"IOD 'ct' is not one of"):
        build("ct", frames_of("mono8", 1))


def test_encoder_status_names_every_syntax_with_a_reason() -> None:
    for name, uid in KNOWN_TRANSFER_SYNTAXES.items():
        status = encoder_status(name)
        assert status.uid == uid and status.reason
    assert encoder_status("explicit-little").available
    assert encoder_status("rle").available      # pydicom's own encoder, no plug-in


# --- multi-frame: Cine, Frame Increment Pointer -------------------------------------------

def test_equal_intervals_give_frame_time() -> None:
    ds = build("multiframe-grayscale-word-sc", frames_of("mono12", 4))
    assert ds.NumberOfFrames == 4
    assert Tag(ds.FrameIncrementPointer) == Tag("FrameTime")
    assert float(ds.FrameTime) == pytest.approx(40.0)
    assert ds.RecommendedDisplayFrameRate == 25
    assert "FrameTimeVector" not in ds
    assert ds.BurnedInAnnotation == "NO" and ds.PresentationLUTShape == "IDENTITY"
    assert (ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType) == (0, 1, "US")


def test_uneven_intervals_give_frame_time_vector(tmp_path: Path) -> None:
    times = [10.0, 10.040, 10.100, 10.130]
    frames = [mono(40, 33, 8, index, t_mono=t) for index, t in enumerate(times)]
    ds = build("multiframe-grayscale-byte-sc", frames)
    assert Tag(ds.FrameIncrementPointer) == Tag("FrameTimeVector")
    assert [float(v) for v in ds.FrameTimeVector] == pytest.approx([0, 40, 60, 30])
    path = tmp_path / "v.dcm"
    path.write_bytes(encode_part10(ds))
    lines, errors, _ = dciodvfy(path)
    assert not errors, "\n".join(lines)


def test_one_frame_multiframe_has_no_frame_increment_pointer() -> None:
    ds = build("multiframe-grayscale-byte-sc", frames_of("mono8", 1))
    assert ds.NumberOfFrames == 1 and "FrameIncrementPointer" not in ds
    validate_image(ds)


def test_colour_multiframe_has_no_grayscale_attributes() -> None:
    ds = build("multiframe-true-color-sc", frames_of("rgb", 2))
    for keyword in ("RescaleIntercept", "RescaleSlope", "PresentationLUTShape"):
        assert keyword not in ds
    assert (ds.SamplesPerPixel, ds.PlanarConfiguration, ds.BitsStored) == (3, 0, 8)


# --- DX -----------------------------------------------------------------------------------

def test_dx_attributes_come_from_the_device_parameters() -> None:
    ds = build("dx", frames_of("mono12", 1), order=SCHEDULED,
               series=series_for(SCHEDULED))
    assert ds.Modality == "DX" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.KVP == 81 and ds.ExposureTime == 32 and ds.ExposureInuAs == 12500
    assert float(ds.ExposureTimeInuS) == 32000
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.139, 0.139]
    assert list(ds.PatientOrientation) == list(ORIENTATION)
    assert ds.ImageLaterality == "R" and "Laterality" not in ds
    assert "ConversionType" not in ds and "PixelSpacing" not in ds
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (2048, 4096)
    assert ds.RequestAttributesSequence[0].RequestedProcedureID == "RP-17"


def test_dx_without_parameters_leaves_the_dose_out() -> None:
    frame = dataclasses.replace(frames_of("mono12", 1)[0],
                                device_parameters=MappingProxyType({}))
    ds = build("dx", [frame])
    for keyword in ("KVP", "ExposureTime", "Exposure", "ExposureInuAs"):
        assert keyword not in ds


def test_dx_orientation_from_the_device() -> None:
    frame = frames_of("mono12", 1)[0]
    frame = dataclasses.replace(frame, device_parameters=MappingProxyType(
        {**frame.device_parameters, "patient_orientation": "P\\F"}))
    ds = build("dx", [frame], patient_orientation=None)
    assert list(ds.PatientOrientation) == ["P", "F"]


@pytest.mark.parametrize(("change", "overrides", "message"), [
    (lambda f: dataclasses.replace(f, pixel_spacing_mm=None), {},
     r"^DX Detector: ImagerPixelSpacing is Type 1"),
    (lambda f: f, {"patient_orientation": None}, r"^DX Image: PatientOrientation None"),
    (lambda f: f, {"patient_orientation": ("X", "F")}, r"^DX Image: PatientOrientation"),
    (lambda f: dataclasses.replace(f, device_parameters=MappingProxyType({"kvp": -3.0})), {},
     r"^X-Ray Acquisition Dose: KVP: device parameter kvp -3.0"),
    (lambda f: dataclasses.replace(f, pixels=(f.pixels >> 8).astype(np.uint16),
                                   bits_stored=4), {},
     r"^DX Image: BitsStored 4 is below 6"),
])
def test_dx_refusals(change: Callable[[Frame], Frame], overrides: dict[str, Any],
                     message: str) -> None:
    frame = change(frames_of("mono12", 1)[0])
    with pytest.raises(IODError, match=message):
        build("dx", [frame], **overrides)


def test_dx_anatomic_region_when_given() -> None:
    ds = build("dx", frames_of("mono12", 1), anatomic_region=CHEST)
    assert ds.AnatomicRegionSequence[0].CodeValue == "51185008"
    assert build("dx", frames_of("mono12", 1)).AnatomicRegionSequence == []


def test_video_photographic_attributes() -> None:
    ds = build("video-photographic", frames_of("rgb", 3))
    assert ds.Modality == "XC" and ds.NumberOfFrames == 3
    assert Tag(ds.FrameIncrementPointer) == Tag("FrameTime")
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Chest"
    for keyword in ("ConversionType", "RescaleSlope", "PixelSpacing"):
        assert keyword not in ds


@pytest.mark.parametrize(("frames", "overrides", "message"), [
    (lambda: frames_of("rgb", 1), {}, r"^Cine: FrameTime: a video photographic image needs"),
    (lambda: frames_of("mono12", 2), {}, r"^VL Image: BitsStored 12/BitsAllocated 16"),
    (lambda: frames_of("rgb", 2), {"anatomic_region": None},
     r"^VL Image: AnatomicRegionSequence is Type 1C"),
    (lambda: frames_of("rgb", 2), {"anatomic_region": Code("", "SCT", "Chest")},
     r"^VL Image: AnatomicRegionSequence\[0\].CodeValue is Type 1"),
])
def test_video_photographic_refusals(frames: Callable[[], list[Frame]],
                                     overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(IODError, match=message):
        build("video-photographic", frames(), **overrides)


def test_dx_refuses_colour() -> None:
    with pytest.raises(IODError, match=r"^DX Image: PhotometricInterpretation 'RGB'"):
        build("dx", frames_of("rgb", 1))


# --- broken frames refused before building ------------------------------------------------

@pytest.mark.parametrize(("iod", "frames", "message"), [
    ("multiframe-grayscale-word-sc",
     lambda: [mono(40, 33, 12, 0), mono(40, 33, 12, 1), mono(48, 33, 12, 2)],
     r"^Image Pixel: Rows: frame 2 has 48, frame 0 has 40"),
    ("multiframe-grayscale-word-sc",
     lambda: [mono(40, 33, 12, 0), mono(40, 32, 12, 1)],
     r"^Image Pixel: Columns: frame 1 has 32, frame 0 has 33"),
    ("multiframe-grayscale-byte-sc",
     lambda: [mono(40, 33, 8, 0), mono(40, 33, 12, 1)],
     r"^Image Pixel: BitsAllocated: frame 1 has 16 \(uint16\), frame 0 has 8 \(uint8\)"),
    ("multiframe-grayscale-word-sc",
     lambda: [mono(40, 33, 12, 0), mono(40, 33, 16, 1)],
     r"^Image Pixel: BitsStored: frame 1 has 16, frame 0 has 12"),
    ("multiframe-true-color-sc",
     lambda: [rgb(40, 33, 0), mono(40, 33, 8, 1)],
     r"^Image Pixel: PhotometricInterpretation: frame 1 has MONOCHROME2, frame 0 has RGB"),
    ("multiframe-grayscale-byte-sc",
     lambda: [mono(40, 33, 8, 0, t_mono=5.0), mono(40, 33, 8, 1, t_mono=5.0)],
     r"^Cine: FrameTime: frame 1 t_mono 5.0 is not after frame 0"),
    ("multiframe-grayscale-byte-sc", lambda: [], r"^Multi-frame: NumberOfFrames: at least one"),
    ("multiframe-grayscale-byte-sc", lambda: [mono(40, 33, 12, 0)],
     r"^Image Pixel: BitsStored/PhotometricInterpretation: multiframe-grayscale-byte-sc"),
    ("multiframe-grayscale-word-sc", lambda: [mono(40, 33, 8, 0)],
     r"^Image Pixel: BitsStored/PhotometricInterpretation: multiframe-grayscale-word-sc"),
    ("multiframe-true-color-sc", lambda: [mono(40, 33, 8, 0)],
     r"^Image Pixel: PhotometricInterpretation: multiframe-true-color-sc needs RGB"),
    ("secondary-capture", lambda: [mono(40, 33, 8, 0), mono(40, 33, 8, 1)],
     r"^Multi-frame: NumberOfFrames: secondary-capture holds one frame, got 2"),
])
def test_broken_frames_are_refused_naming_the_attribute(
        iod: str, frames: Callable[[], list[Frame]], message: str) -> None:
    with pytest.raises(IODError, match=message):
        build(iod, frames())


def test_wrong_dtype_changed_in_place_is_refused() -> None:
    frame = mono(40, 33, 8, 0)
    object.__setattr__(frame, "pixels", frame.pixels.astype(np.int16))
    with pytest.raises(IODError, match=r"^Image Pixel: BitsAllocated: pixel dtype int16"):
        build("multiframe-grayscale-byte-sc", [mono(40, 33, 8, 1), frame])


# --- validate_image on the new IODs -------------------------------------------------------

def _set(keyword: str, value: Any) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        setattr(ds, keyword, value)
    return change


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        del ds[keyword]
    return change


@pytest.mark.parametrize(("iod", "kind", "change", "message"), [
    ("multiframe-grayscale-word-sc", "mono12", _set("NumberOfFrames", 2),
     r"^Image Pixel: PixelData has 7920 bytes; .* x NumberOfFrames 2 need 5280"),
    ("multiframe-grayscale-word-sc", "mono12", _delete("NumberOfFrames"),
     r"^Multi-frame: NumberOfFrames is missing"),
    ("multiframe-grayscale-word-sc", "mono12", _delete("FrameIncrementPointer"),
     r"^SC Multi-frame Image: FrameIncrementPointer is missing"),
    ("multiframe-grayscale-word-sc", "mono12", _delete("FrameTime"),
     r"^Cine: FrameTime None"),
    ("multiframe-grayscale-word-sc", "mono12", _delete("BurnedInAnnotation"),
     r"^SC Multi-frame Image: BurnedInAnnotation is missing"),
    ("multiframe-grayscale-word-sc", "mono12", _delete("PresentationLUTShape"),
     r"^SC Multi-frame Image: PresentationLUTShape is missing"),
    ("multiframe-grayscale-word-sc", "mono12", _set("RescaleSlope", "2"),
     r"^SC Multi-frame Image: RescaleIntercept 0 / RescaleSlope 2"),
    ("multiframe-grayscale-word-sc", "mono12", _set("BitsStored", 8),
     r"^Image Pixel: HighBit 11"),
    ("multiframe-grayscale-byte-sc", "mono8", _set("SOPClassUID", KNOWN_IODS["dx"]),
     r"^DX Series: PresentationIntentType is missing"),
    ("dx", "mono12", _delete("ImagerPixelSpacing"),
     r"^DX Detector: ImagerPixelSpacing is missing"),
    ("dx", "mono12", _set("PatientOrientation", ""),
     r"^DX Image: PatientOrientation is empty"),
    ("dx", "mono12", _set("Modality", "CR"), r"^DX Series: Modality 'CR' is not DX"),
    ("video-photographic", "rgb", _delete("AnatomicRegionSequence"),
     r"^VL Image: AnatomicRegionSequence is missing"),
    ("video-photographic", "rgb", _delete("FrameIncrementPointer"),
     r"^Multi-frame: FrameIncrementPointer is missing"),
    ("video-photographic", "rgb", _delete("FrameTime"), r"^Cine: FrameTime None"),
    ("secondary-capture", "mono12", _set("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
     r"^SOP Common: SOPClassUID '1.2.840.10008.5.1.4.1.1.2' is not an IOD this agent makes"),
])
def test_validate_image_names_module_and_attribute(iod: str, kind: str,
                                                   change: Callable[[Dataset], None],
                                                   message: str) -> None:
    ds = build(iod, frames_of(kind, 3 if iod in MULTIFRAME_IODS else 1))
    validate_image(ds)
    change(ds)
    with pytest.raises(IODError, match=message):
        validate_image(ds)


def test_validate_image_counts_fragments_of_encapsulated_pixel_data() -> None:
    require_encoder("rle")
    ds = compressed_copy(build("multiframe-grayscale-byte-sc", frames_of("mono8", 3)), "rle")
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(KNOWN_TRANSFER_SYNTAXES["rle"])
    validate_image(ds)
    ds.NumberOfFrames = 4
    with pytest.raises(IODError, match=r"^Image Pixel: PixelData has 3 fragments for "
                                       r"NumberOfFrames 4"):
        validate_image(ds)


@pytest.mark.parametrize(("iod", "count", "rows", "columns"), [
    ("dx", 1, 3000, 3000),                                     # 18 MB of 16-bit pixels
    ("multiframe-grayscale-word-sc", 300, 512, 512),           # 157 MB in one object
], ids=["dx-3000x3000", "mf-300x512x512"])
def test_large_objects_are_valid_and_exact(tmp_path: Path, iod: str, count: int, rows: int,
                                           columns: int) -> None:
    # speed is measured in bench/ (build scenario); this checks correctness at full size
    frames = [mono(rows, columns, 16, index) for index in range(count)]
    ds = build(iod, frames)
    validate_image(ds)
    path = tmp_path / "large.dcm"
    path.write_bytes(encode_part10(ds))
    read = pydicom.dcmread(path)
    pixels = read.pixel_array
    expected = np.stack([f.pixels for f in frames]) if count > 1 else frames[0].pixels
    assert pixels.shape == expected.shape and np.array_equal(pixels, expected)
    _, errors, _ = dciodvfy(path)
    assert errors == []


class _MissingEncoder:
    is_available = False
    missing_dependencies = ("pyjpegls - requires pyjpegls>=1.2",)


def test_a_missing_plugin_is_a_status_and_a_named_refusal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.iod.transfer_syntax.get_encoder", lambda uid: _MissingEncoder())
    status = encoder_status("jpeg-ls-lossless")
    assert not status.available
    assert "pyjpegls" in status.reason and "[compression]" in status.reason
    ds = build("secondary-capture", frames_of("mono8", 1))
    with pytest.raises(IODError, match=r"^Part 10: TransferSyntaxUID jpeg-ls-lossless: no "
                                       r"encoder installed"):
        encode_part10(ds, "jpeg-ls-lossless")
    assert encoder_status("explicit-little").available   # needs no encoder
