"""Secondary Capture: build -> Part 10 bytes -> file -> read back and compare; dciodvfy on
every file; the scheduled and unscheduled cases; bad input refused before building."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from agent.errors import IODError
from agent.iod import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    SC_IMAGE_STORAGE,
    ConversionType,
    UIDSource,
    build_secondary_capture,
    encode_part10,
    is_valid_uid,
    new_series_context,
    validate_image,
)
from agent.records import DeviceInfo, Order, SeriesContext
from drivers.frame import Frame
from drivers.simulated import phantom

DCIODVFY = Path("/usr/bin/dciodvfy")
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

#: dciodvfy warnings our SC images are known to carry (see the report in the commit):
#: Laterality is present but empty (we cannot know the body part; absent is an Error), and an
#: empty Study ID (Type 2) would not be enough to build a DICOMDIR
KNOWN_WARNINGS = (
    "attribute <Laterality>",
    "needed to build DICOMDIR - Study ID",
)

#: a fixed zone, so that dates and times in the object do not depend on the test machine
TZ = timezone(timedelta(hours=2))
T_WALL = 1_700_000_000.123456          # 2023-11-14T22:13:20.123456Z = 2023-11-15 00:13:20 +02
STARTED_AT = datetime(2023, 11, 15, 0, 10, 5, 250000)

SCHEDULED_STUDY_UID = "1.2.826.0.1.3680043.10.999.1.20231115.1"

DEVICE = DeviceInfo(
    modality="OT",
    manufacturer="Example Medical",
    model_name="Example-1",
    device_serial_number="0001",
    station_name="ROOM1",
    institution_name="Klinikum Süd",
    software_versions="fw 2.1",
)

UNSCHEDULED = Order(patient_name="Doe^Jane", patient_id="P-0001",
                    patient_birth_date="19800229", patient_sex="F")

SCHEDULED = Order(
    patient_name="Müller^Jürgen",
    patient_id="PID-4711",
    patient_birth_date="19611231",
    patient_sex="M",
    issuer_of_patient_id="HOSP",
    study_instance_uid=SCHEDULED_STUDY_UID,
    accession_number="ACC-2023-42",
    requested_procedure_id="RP-17",
    requested_procedure_description="Röntgen Thorax",
    referring_physician_name="Schäfer^Anna^^Dr.",
    sps_id="SPS-17-1",
    sps_description="Thorax p.a.",
    scheduled=True,
)


# --- helpers -----------------------------------------------------------------------------

def mono_frame(rows: int, columns: int, bits_stored: int, *, index: int = 3,
               spacing: tuple[float, float] | None = (0.143, 0.143)) -> Frame:
    return Frame(
        pixels=phantom(rows, columns, bits_stored, index),
        bits_stored=bits_stored,
        photometric_interpretation="MONOCHROME2",
        t_mono=12.5,
        t_wall=T_WALL,
        sequence_number=index,
        pixel_spacing_mm=spacing,
        device_parameters=MappingProxyType({"kvp": 70.0, "exposure_ms": 20.0}),
    )


def rgb_frame(rows: int, columns: int) -> Frame:
    gray = phantom(rows, columns, 8, 1)
    pixels = np.stack([gray, gray[::-1, :], gray[:, ::-1]], axis=-1)
    return Frame(pixels=pixels, bits_stored=8, photometric_interpretation="RGB", t_mono=1.0,
                 t_wall=T_WALL, sequence_number=0)


def series_for(order: Order, uids: UIDSource | None = None, *, study_id: str = "") -> SeriesContext:
    return new_series_context(uids or UIDSource(), order, started_at=STARTED_AT,
                              series_number=7, study_id=study_id, tz=TZ)


def build(frame: Frame, order: Order = UNSCHEDULED, **overrides: Any) -> Dataset:
    uids = UIDSource()
    arguments: dict[str, Any] = {
        "order": order,
        "device": DEVICE,
        "series": series_for(order, uids),
        "instance_number": 1,
        "sop_instance_uid": uids.new_uid(),
        "tz": TZ,
    }
    arguments.update(overrides)
    return build_secondary_capture(frame, **arguments)


def write(tmp_path: Path, ds: Dataset, name: str = "image.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(encode_part10(ds))
    return path


def run_dciodvfy(path: Path) -> str:
    if not DCIODVFY.exists():
        pytest.fail(f"{DCIODVFY} is missing: install the Debian package dicom3tools "
                    "(apt-get install dicom3tools); every IOD must be checked with it")
    proc = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.stdout + proc.stderr


def assert_dciodvfy_clean(path: Path) -> None:
    output = run_dciodvfy(path)
    lines = output.splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy reports errors for {path.name}:\n{output}"
    # dciodvfy names the IOD it checked against; without it, nothing was verified
    assert "SCImage" in lines, f"dciodvfy did not recognise a Secondary Capture:\n{output}"
    unexpected = [line for line in lines if line.startswith("Warning")
                  and not any(known in line for known in KNOWN_WARNINGS)]
    assert not unexpected, f"dciodvfy reports new warnings for {path.name}:\n{output}"


# --- build -> Part 10 -> read back -----------------------------------------------------------

FRAMES: dict[str, Callable[[], Frame]] = {
    "mono8 odd 33x17": lambda: mono_frame(33, 17, 8),
    "mono8 1x1": lambda: mono_frame(1, 1, 8, spacing=None),
    "mono8 bits6 64x64": lambda: mono_frame(64, 64, 6),
    "mono16 bits12 64x48": lambda: mono_frame(64, 48, 12),
    "mono16 bits12 odd 31x29": lambda: mono_frame(31, 29, 12),
    "mono16 bits16 40x57": lambda: mono_frame(40, 57, 16, spacing=None),
    "rgb8 odd 21x13": lambda: rgb_frame(21, 13),
    "rgb8 48x64": lambda: rgb_frame(48, 64),
}


@pytest.mark.parametrize("kind", FRAMES)
def test_round_trip_through_a_part10_file(kind: str, tmp_path: Path) -> None:
    frame = FRAMES[kind]()
    ds = build(frame)
    validate_image(ds)
    path = write(tmp_path, ds)

    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert back.SOPClassUID == SC_IMAGE_STORAGE
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.Rows == frame.rows
    assert back.Columns == frame.columns
    assert back.SamplesPerPixel == frame.samples_per_pixel
    assert back.PhotometricInterpretation == frame.photometric_interpretation
    assert back.BitsAllocated == frame.pixels.dtype.itemsize * 8
    assert back.BitsStored == frame.bits_stored
    assert back.HighBit == frame.bits_stored - 1
    assert back.PixelRepresentation == 0
    assert back["PixelData"].VR == ("OB" if back.BitsAllocated == 8 else "OW")
    assert len(back.PixelData) % 2 == 0
    assert len(back.PixelData) - frame.pixels.nbytes in (0, 1)

    pixels = back.pixel_array
    assert pixels.dtype == frame.pixels.dtype
    assert pixels.shape == frame.pixels.shape
    np.testing.assert_array_equal(pixels, frame.pixels)

    assert_dciodvfy_clean(path)


def test_odd_8bit_pixel_data_is_padded_with_one_zero_byte(tmp_path: Path) -> None:
    frame = mono_frame(33, 17, 8)          # 561 bytes
    ds = build(frame)
    assert len(ds.PixelData) == 562
    assert ds.PixelData[:561] == frame.pixels.tobytes()
    assert ds.PixelData[561:] == b"\x00"
    back = pydicom.dcmread(write(tmp_path, ds))
    assert back.PixelData == ds.PixelData


def test_16bit_pixel_data_is_little_endian() -> None:
    pixels = np.array([[0x0102, 0x0FFF], [0x0000, 0x0A0B]], dtype=np.uint16)
    frame = dataclasses.replace(mono_frame(2, 2, 12), pixels=pixels)
    ds = build(frame)
    assert ds.PixelData == bytes([0x02, 0x01, 0xFF, 0x0F, 0x00, 0x00, 0x0B, 0x0A])


def test_colour_image_attributes(tmp_path: Path) -> None:
    back = pydicom.dcmread(write(tmp_path, build(rgb_frame(21, 13))))
    assert back.SamplesPerPixel == 3
    assert back.PlanarConfiguration == 0
    for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "PresentationLUTShape"):
        assert keyword not in back, keyword


def test_grayscale_presentation_and_rescale(tmp_path: Path) -> None:
    back = pydicom.dcmread(write(tmp_path, build(mono_frame(16, 16, 12))))
    assert back.PresentationLUTShape == "IDENTITY"
    assert back.RescaleIntercept == 0
    assert back.RescaleSlope == 1
    assert back.RescaleType == "US"
    assert "PlanarConfiguration" not in back


def test_pixel_spacing_when_known_and_absent_otherwise() -> None:
    assert [float(v) for v in build(mono_frame(8, 8, 8, spacing=(0.1, 0.25))).PixelSpacing] \
        == [0.1, 0.25]
    assert "PixelSpacing" not in build(mono_frame(8, 8, 8, spacing=None))


def test_file_meta_and_preamble(tmp_path: Path) -> None:
    ds = build(mono_frame(8, 8, 8))
    data = encode_part10(ds)
    assert data[:128] == b"\x00" * 128
    assert data[128:132] == b"DICM"
    meta = pydicom.dcmread(write(tmp_path, ds)).file_meta
    assert meta.MediaStorageSOPClassUID == SC_IMAGE_STORAGE
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == "MODAGENT_010" == IMPLEMENTATION_VERSION_NAME
    assert is_valid_uid(IMPLEMENTATION_CLASS_UID)
    assert IMPLEMENTATION_CLASS_UID.startswith("2.25.")


def test_encoding_is_deterministic_and_leaves_the_dataset_alone() -> None:
    ds = build(mono_frame(8, 8, 8))
    keys_before = list(ds.keys())
    first = encode_part10(ds)
    assert encode_part10(ds) == first
    assert list(ds.keys()) == keys_before
    assert "file_meta" not in vars(ds)


def test_times_come_from_the_frame_and_the_series_in_local_time() -> None:
    ds = build(mono_frame(8, 8, 8))
    # T_WALL is 2023-11-14 22:13:20.123456 UTC, i.e. 00:13:20 the next day at +02:00
    assert ds.ContentDate == "20231115"
    assert ds.ContentTime == "001320.123456"
    assert ds.AcquisitionDateTime == "20231115001320.123456"
    assert ds.InstanceCreationDate == "20231115"
    assert ds.InstanceCreationTime == "001320.123456"
    assert ds.StudyDate == ds.SeriesDate == "20231115"
    assert ds.StudyTime == ds.SeriesTime == "001005.250000"


def test_general_image_and_equipment() -> None:
    ds = build(mono_frame(8, 8, 8), instance_number=12)
    assert ds.InstanceNumber == 12
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert ds.BurnedInAnnotation == "NO"
    assert ds.PatientOrientation == ""
    assert ds.Modality == "OT"
    assert ds.ConversionType == "DI"
    assert ds.Manufacturer == "Example Medical"
    assert ds.ManufacturerModelName == "Example-1"
    assert ds.DeviceSerialNumber == "0001"
    assert ds.StationName == "ROOM1"
    assert ds.InstitutionName == "Klinikum Süd"
    assert ds.SoftwareVersions == "fw 2.1"
    assert ds.SeriesNumber == 7
    derived = build(mono_frame(8, 8, 8), derived=True, conversion_type="WSD")
    assert list(derived.ImageType) == ["DERIVED", "PRIMARY"]
    assert derived.ConversionType == "WSD"
    assert build(mono_frame(8, 8, 8), conversion_type=ConversionType.DIGITIZED_VIDEO) \
        .ConversionType == "DV"


def test_empty_type3_equipment_attributes_are_left_out() -> None:
    device = dataclasses.replace(DEVICE, institution_name="", station_name="",
                                 software_versions="")
    ds = build(mono_frame(8, 8, 8), device=device)
    for keyword in ("InstitutionName", "StationName", "SoftwareVersions"):
        assert keyword not in ds, keyword
    assert "Manufacturer" in ds


# --- character sets ------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "Müller^Jürgen",
    "Γιάννης^Παπαδόπουλος",
    "山田^太郎",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
])
def test_unicode_names_round_trip_exactly(name: str, tmp_path: Path) -> None:
    order = dataclasses.replace(UNSCHEDULED, patient_name=name,
                                referring_physician_name=name)
    ds = build(mono_frame(8, 8, 8), order)
    path = write(tmp_path, ds)
    raw = path.read_bytes()
    assert name.encode("utf-8") in raw          # UTF-8 on the wire, not '?' or escapes
    assert b"?" not in raw.split(b"DICM", 1)[1][:2000]
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == name
    assert str(back.ReferringPhysicianName) == name
    assert_dciodvfy_clean(path)


def test_text_outside_the_character_set_raises_instead_of_writing_question_marks() -> None:
    # e.g. a dataset whose character set is Latin-1 but whose name is Greek
    ds = build(mono_frame(8, 8, 8))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Γιάννης^Παπαδόπουλος"
    with pytest.raises(IODError, match=r"PatientName cannot be encoded in ISO_IR 100") as info:
        encode_part10(ds)
    assert "Γιάννης" not in str(info.value)     # no patient data in the message


def test_unencodable_text_in_a_sequence_is_named_with_its_path() -> None:
    ds = build(mono_frame(8, 8, 8), SCHEDULED, series=series_for(SCHEDULED))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.RequestAttributesSequence[0].ScheduledProcedureStepDescription = "Θώρακας"
    with pytest.raises(IODError, match=r"RequestAttributesSequence\[0\]\."
                                       r"ScheduledProcedureStepDescription"):
        encode_part10(ds)


def test_lone_surrogate_in_a_name_is_refused_before_building() -> None:
    order = dataclasses.replace(UNSCHEDULED, patient_name="M\udcfcller^J")
    with pytest.raises(IODError, match=r"Patient: PatientName .*cannot encode"):
        build(mono_frame(8, 8, 8), order)


# --- scheduled and unscheduled ----------------------------------------------------------------

def test_unscheduled_order_gets_a_new_study_uid_and_an_empty_accession_number(
        tmp_path: Path) -> None:
    uids = UIDSource()
    first = series_for(UNSCHEDULED, uids)
    second = series_for(UNSCHEDULED, uids)
    assert is_valid_uid(first.study_instance_uid)
    assert first.study_instance_uid != second.study_instance_uid
    assert first.series_instance_uid not in (first.study_instance_uid,
                                             second.series_instance_uid)
    ds = build(mono_frame(8, 8, 8), series=first)
    back = pydicom.dcmread(write(tmp_path, ds))
    assert back.StudyInstanceUID == first.study_instance_uid
    assert back.SeriesInstanceUID == first.series_instance_uid
    assert "AccessionNumber" in back and back.AccessionNumber == ""
    assert "ReferringPhysicianName" in back and back.ReferringPhysicianName == ""
    assert "StudyID" in back and back.StudyID == ""
    assert "RequestAttributesSequence" not in back
    assert "StudyDescription" not in back


def test_unscheduled_order_with_unknown_demographics_keeps_type2_attributes_empty() -> None:
    order = Order(patient_name="", patient_id="")
    ds = build(mono_frame(8, 8, 8), order)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        assert keyword in ds and ds[keyword].value in ("", None), keyword
    validate_image(ds)


def test_scheduled_order_keeps_its_study_uid_and_fills_request_attributes(
        tmp_path: Path) -> None:
    series = series_for(SCHEDULED, study_id="RP-17")
    assert series.study_instance_uid == SCHEDULED_STUDY_UID
    ds = build(mono_frame(20, 30, 12), SCHEDULED, series=series)
    path = write(tmp_path, ds)
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == SCHEDULED_STUDY_UID
    assert back.AccessionNumber == "ACC-2023-42"
    assert back.StudyDescription == "Röntgen Thorax"
    assert back.StudyID == "RP-17"
    assert back.PatientName == "Müller^Jürgen"
    assert back.PatientID == "PID-4711"
    assert back.IssuerOfPatientID == "HOSP"
    assert back.PatientBirthDate == "19611231"
    assert back.PatientSex == "M"
    assert back.ReferringPhysicianName == "Schäfer^Anna^^Dr."
    (item,) = back.RequestAttributesSequence
    assert item.RequestedProcedureID == "RP-17"
    assert item.ScheduledProcedureStepID == "SPS-17-1"
    assert item.ScheduledProcedureStepDescription == "Thorax p.a."
    assert item.RequestedProcedureDescription == "Röntgen Thorax"
    assert item.AccessionNumber == "ACC-2023-42"
    assert item.StudyInstanceUID == SCHEDULED_STUDY_UID
    assert_dciodvfy_clean(path)


def test_scheduled_order_without_study_uid_is_refused() -> None:
    order = dataclasses.replace(SCHEDULED, study_instance_uid=None)
    with pytest.raises(IODError, match="General Study: StudyInstanceUID"):
        series_for(order)


def test_series_with_another_study_uid_is_refused_for_a_scheduled_order() -> None:
    series = dataclasses.replace(series_for(SCHEDULED),
                                 study_instance_uid=UIDSource().new_uid())
    with pytest.raises(IODError, match="General Study: StudyInstanceUID"):
        build(mono_frame(8, 8, 8), SCHEDULED, series=series)


def test_series_context_from_an_aware_start_time_is_in_local_time() -> None:
    started = datetime(2023, 11, 14, 22, 10, 5, tzinfo=UTC)
    series = new_series_context(UIDSource(), UNSCHEDULED, started_at=started,
                                series_number=1, tz=TZ)
    assert series.study_datetime == series.series_datetime == "20231115001005.000000"
    assert series.series_number == 1


# --- bad input is refused before building, naming module and attribute -------------------------

def test_bits_stored_above_bits_allocated() -> None:
    frame = mono_frame(8, 8, 16)
    object.__setattr__(frame, "bits_stored", 17)    # a driver that broke the Frame contract
    with pytest.raises(IODError, match=r"^Image Pixel: BitsStored 17 exceeds BitsAllocated 16$"):
        build(frame)


def test_pixel_values_above_bits_stored() -> None:
    frame = mono_frame(8, 8, 12)
    frame.pixels[3, 4] = 4096                       # Frame does not check values; we do
    with pytest.raises(IODError, match=r"Image Pixel: PixelData holds 4096.*BitsStored 12"):
        build(frame)


def test_rgb_with_16_bit_samples() -> None:
    frame = rgb_frame(4, 4)
    object.__setattr__(frame, "pixels", frame.pixels.astype(np.uint16))
    with pytest.raises(IODError, match="Image Pixel: BitsStored 8 / BitsAllocated 16"):
        build(frame)


def test_wrong_shape_for_the_photometric_interpretation() -> None:
    frame = mono_frame(4, 4, 8)
    object.__setattr__(frame, "photometric_interpretation", "RGB")
    with pytest.raises(IODError, match="Image Pixel: SamplesPerPixel"):
        build(frame)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"instance_number": 0}, "General Image: InstanceNumber"),
    ({"instance_number": True}, "General Image: InstanceNumber"),
    ({"instance_number": 2**31}, "General Image: InstanceNumber"),
    ({"sop_instance_uid": "1.2.03.4"}, "SOP Common: SOPInstanceUID"),
    ({"sop_instance_uid": ""}, "SOP Common: SOPInstanceUID"),
    ({"conversion_type": "XX"}, "SC Equipment: ConversionType 'XX'"),
    ({"device": dataclasses.replace(DEVICE, modality="")}, "General Series: Modality"),
    ({"device": dataclasses.replace(DEVICE, modality="ot")}, "General Series: Modality"),
    ({"device": dataclasses.replace(DEVICE, station_name="STATION-NAME-17CH")},
     "General Equipment: StationName"),
    ({"device": dataclasses.replace(DEVICE, manufacturer="A\\B")},
     "General Equipment: Manufacturer"),
])
def test_bad_arguments(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(IODError, match=message):
        build(mono_frame(8, 8, 8), **overrides)


@pytest.mark.parametrize(("changes", "message"), [
    ({"patient_sex": "X"}, "Patient: PatientSex"),
    ({"patient_birth_date": "19701332"}, "Patient: PatientBirthDate"),
    ({"patient_birth_date": "1970-01-01"}, "Patient: PatientBirthDate"),
    ({"patient_id": "SECRET-" + "9" * 60}, "Patient: PatientID has 67 characters"),
    ({"patient_id": "SECRET\\1"}, "Patient: PatientID contains"),
    ({"patient_name": "SECRET" * 11 + "^A"}, "Patient: PatientName has a component group"),
    ({"patient_name": "SECRET^A^B^C^D^E"}, "Patient: PatientName has 6 components"),
    ({"patient_name": "SECRET\nA"}, "Patient: PatientName contains a control character"),
    ({"accession_number": "A1"}, "General Study: AccessionNumber 'A1' given for an unscheduled"),
    ({"sps_id": "S1"}, "General Study: ScheduledProcedureStepID 'S1' given for an unscheduled"),
])
def test_bad_unscheduled_orders(changes: dict[str, Any], message: str) -> None:
    order = dataclasses.replace(UNSCHEDULED, **changes)
    with pytest.raises(IODError, match=message) as info:
        build(mono_frame(8, 8, 8), order)
    assert "SECRET" not in str(info.value)          # patient data stays out of messages


@pytest.mark.parametrize(("changes", "message"), [
    ({"sps_id": ""}, "RequestAttributesSequence ScheduledProcedureStepID is Type 1"),
    ({"requested_procedure_id": ""}, "RequestAttributesSequence RequestedProcedureID is Type 1"),
    ({"accession_number": "A" * 17}, "General Study: AccessionNumber"),
])
def test_bad_scheduled_orders(changes: dict[str, Any], message: str) -> None:
    order = dataclasses.replace(SCHEDULED, **changes)
    with pytest.raises(IODError, match=message):
        build(mono_frame(8, 8, 8), order, series=series_for(order))


@pytest.mark.parametrize(("arguments", "message"), [
    ({"series_number": -1}, "General Series: SeriesNumber"),
    ({"study_id": "S" * 17}, "General Study: StudyID"),
])
def test_bad_series_arguments(arguments: dict[str, Any], message: str) -> None:
    full = {"started_at": STARTED_AT, "series_number": 1, "tz": TZ, **arguments}
    with pytest.raises(IODError, match=message):
        new_series_context(UIDSource(), UNSCHEDULED, **full)


# --- validate_image -------------------------------------------------------------------------

def _delete(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        del ds[keyword]
    return change


def _set(keyword: str, value: Any) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        # a new element that skips pydicom's own validation: we want the bad value in
        elem = ds[keyword]
        ds[keyword] = DataElement(elem.tag, elem.VR, value, validation_mode=config.IGNORE)
    return change


def _truncate_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:-2]


@pytest.mark.parametrize(("change", "message"), [
    (_delete("PatientID"), "^Patient: PatientID is missing"),
    (_delete("AccessionNumber"), "^General Study: AccessionNumber is missing"),
    (_delete("Laterality"), "^General Series: Laterality is missing"),
    (_set("ConversionType", ""), "^SC Equipment: ConversionType is empty"),
    (_set("Modality", ""), "^General Series: Modality is empty"),
    (_set("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), "^SOP Common: SOPClassUID"),
    (_set("SOPInstanceUID", "1.2.03"), "^SOP Common: SOPInstanceUID"),
    (_set("SpecificCharacterSet", "ISO_IR 100"), "^SOP Common: SpecificCharacterSet"),
    (_set("Rows", 17), "^Image Pixel: PixelData has 6144 bytes"),
    (_set("HighBit", 15), "^Image Pixel: HighBit 15"),
    (_set("BitsStored", 17), "^Image Pixel: BitsStored 17 exceeds BitsAllocated 16"),
    (_set("BitsAllocated", 12), "^Image Pixel: BitsAllocated 12"),
    (_set("SamplesPerPixel", 3), "^Image Pixel: SamplesPerPixel 3"),
    (_set("PhotometricInterpretation", "MONOCHROME1"), "^Image Pixel: PhotometricInterp"),
    (_set("PixelRepresentation", 1), "^Image Pixel: PixelRepresentation"),
    (_truncate_pixels, "^Image Pixel: PixelData has 6142 bytes"),
    (_delete("RescaleType"), "^Modality LUT: RescaleType is missing"),
])
def test_validate_image_names_the_attribute(change: Callable[[Dataset], None],
                                            message: str) -> None:
    ds = build(mono_frame(64, 48, 12))
    validate_image(ds)                              # valid as built
    change(ds)
    with pytest.raises(IODError, match=message):
        validate_image(ds)


def test_validate_image_checks_planar_configuration_and_pixel_vr() -> None:
    ds = build(rgb_frame(4, 6))
    validate_image(ds)
    del ds.PlanarConfiguration
    with pytest.raises(IODError, match=r"^Image Pixel: PlanarConfiguration"):
        validate_image(ds)
    mono = build(mono_frame(4, 4, 12))
    mono["PixelData"].VR = "OB"
    with pytest.raises(IODError, match=r"^Image Pixel: PixelData has VR OB"):
        validate_image(mono)


# --- the package does no I/O and never reaches the network -----------------------------------

IOD_DIR = Path(__file__).resolve().parents[2] / "agent" / "iod"
FORBIDDEN_IMPORTS = ("agent.net", "agent.queue", "pynetdicom", "socket", "time", "os",
                     "subprocess", "requests", "urllib")
FORBIDDEN_CALLS = {"open", "now", "today", "utcnow", "time", "sleep"}


@pytest.mark.parametrize("path", sorted(IOD_DIR.glob("*.py")), ids=lambda p: p.name)
def test_iod_module_does_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            assert not any(name == bad or name.startswith(bad + ".")
                           for bad in FORBIDDEN_IMPORTS), f"{path.name} imports {name}"
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert called not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno} calls {called}()"
