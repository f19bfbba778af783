"""Golden outputs: each IOD x a few pixel formats x every transfer syntax, built with fixed UIDs,
times and zone, must give the same Part 10 bytes as the recorded ones (tests/data/iod-golden/).

Written on the code that built every IOD as a Secondary Capture and patched it (issue 16,
item 4), so that the table-driven builders can be proven to make the same objects. A change
to an object must be deliberate: regenerate with IOD_GOLDEN_UPDATE=1, look at the dump diff
(`git diff tests/data/iod-golden/`) and say in the commit why the bytes changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import timedelta, timezone
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from agent.iod import KNOWN_TRANSFER_SYNTAXES, build_image, encode_part10, encoder_status
from agent.records import Code, DeviceInfo, MppsImageRefs, Order, SeriesContext
from drivers.frame import Frame
from drivers.simulated import phantom

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "iod-golden"
HASHES = GOLDEN_DIR / "sha256.json"
UPDATE = os.environ.get("IOD_GOLDEN_UPDATE") == "1"

TZ = timezone(timedelta(hours=1))
T_WALL = 1_700_000_000.25
INTERVAL_S = 0.04

DEVICE = DeviceInfo(modality="OT", manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1",
                    institution_name="Klinikum Süd", software_versions="fw 2.1")

SERIES = SeriesContext(study_instance_uid="1.2.3.4.100", series_instance_uid="1.2.3.4.200",
                       study_id="S1", series_number=3,
                       study_datetime="20231114231000.000000",
                       series_datetime="20231114231005.500000")

UNSCHEDULED = Order(patient_name="Doe^Jane", patient_id="P-0001",
                    patient_birth_date="19800229", patient_sex="F")

SCHEDULED = Order(
    patient_name="Müller^Jürgen", patient_id="PID-4711", patient_birth_date="19611231",
    patient_sex="M", issuer_of_patient_id="HOSP", study_instance_uid="1.2.3.4.100",
    accession_number="ACC-42", requested_procedure_id="RP-17",
    requested_procedure_description="Röntgen Thorax", referring_physician_name="Schäfer^Anna",
    sps_id="SPS-17-1", sps_description="Thorax p.a.", scheduled=True,
    requested_procedure_codes=(Code("RPX1", "99LOCAL", "Chest two views"),),
    scheduled_protocol_codes=(Code("P1", "99LOCAL", "PA"),),
    performed_procedure_step=MppsImageRefs(
        referenced_sop_class_uid="1.2.840.10008.3.1.2.3.3",
        referenced_sop_instance_uid="1.2.3.4.300", pps_id="PPS1", pps_start_date="20231114",
        pps_start_time="231000.000000", pps_description="Thorax"),
)

CHEST = Code("51185008", "SCT", "Chest")
DOSE = MappingProxyType({"kvp": 81.0, "mas": 12.5, "exposure_ms": 32.0})


def mono(bits_stored: int, index: int, *, uneven: bool = False, dose: bool = True) -> Frame:
    pixels = phantom(36, 40, bits_stored, index)
    offset = index * INTERVAL_S + (0.013 * index * index if uneven else 0.0)
    return Frame(pixels=pixels, bits_stored=bits_stored, photometric_interpretation="MONOCHROME2",
                 t_mono=50.0 + offset, t_wall=T_WALL + offset, sequence_number=index,
                 pixel_spacing_mm=(0.139, 0.139),
                 device_parameters=DOSE if dose else MappingProxyType({}))


def rgb(index: int) -> Frame:
    gray = phantom(36, 40, 8, index)
    pixels = np.stack([gray, gray[::-1, :], gray[:, ::-1]], axis=-1)
    return Frame(pixels=pixels, bits_stored=8, photometric_interpretation="RGB",
                 t_mono=50.0 + index * INTERVAL_S, t_wall=T_WALL + index * INTERVAL_S,
                 sequence_number=index)


#: case name -> (iod, frames, order, extra build_image arguments)
CASES: dict[str, tuple[str, Callable[[], list[Frame]], Order, dict[str, object]]] = {
    "sc-mono8": ("secondary-capture", lambda: [mono(8, 0)], UNSCHEDULED, {}),
    "sc-mono12-scheduled": ("secondary-capture", lambda: [mono(12, 1)], SCHEDULED,
                            {"conversion_type": "SYN"}),
    "sc-rgb": ("secondary-capture", lambda: [rgb(0)], UNSCHEDULED, {"derived": True}),
    "mf-byte-3": ("multiframe-grayscale-byte-sc", lambda: [mono(8, i) for i in range(3)],
                  SCHEDULED, {}),
    "mf-byte-1": ("multiframe-grayscale-byte-sc", lambda: [mono(8, 0)], UNSCHEDULED, {}),
    "mf-word-3-uneven": ("multiframe-grayscale-word-sc",
                         lambda: [mono(12, i, uneven=True) for i in range(3)], UNSCHEDULED, {}),
    "mf-word-16": ("multiframe-grayscale-word-sc", lambda: [mono(16, i) for i in range(2)],
                   SCHEDULED, {}),
    "mf-rgb-3": ("multiframe-true-color-sc", lambda: [rgb(i) for i in range(3)], UNSCHEDULED,
                 {"conversion_type": "DV"}),
    "dx-mono12-region": ("dx", lambda: [mono(12, 0)], SCHEDULED,
                         {"anatomic_region": CHEST, "patient_orientation": ("P", "F")}),
    # a DX states its side (issue 16): this one's changed from "U" (claimed unpaired) to "L"
    "dx-mono16-nodose": ("dx", lambda: [mono(16, 2, dose=False)], UNSCHEDULED,
                         {"patient_orientation": ("L", "F"), "image_laterality": "L"}),
    "vp-rgb-3": ("video-photographic", lambda: [rgb(i) for i in range(3)], SCHEDULED,
                 {"anatomic_region": CHEST}),
    "vp-mono8-2": ("video-photographic", lambda: [mono(8, i) for i in range(2)], UNSCHEDULED,
                   {"anatomic_region": CHEST}),
}

SYNTAXES = tuple(KNOWN_TRANSFER_SYNTAXES)


def build_case(name: str, syntax: str) -> bytes:
    iod, frames, order, extra = CASES[name]
    ds = build_image(iod, frames(), order=order, device=DEVICE, series=SERIES,
                     instance_number=4, sop_instance_uid="1.2.3.4.500", tz=TZ,
                     **extra)  # type: ignore[arg-type]
    return encode_part10(ds, syntax)


def dump(payload: bytes) -> str:
    """Every element but Pixel Data, one a line, for a readable diff when a hash changes."""
    ds = pydicom.dcmread(DicomBytesIO(payload))
    del ds.PixelData
    return f"{ds.file_meta}\n{ds}\n"


def _recorded() -> dict[str, str]:
    return json.loads(HASHES.read_text()) if HASHES.exists() else {}


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("name", CASES)
def test_objects_match_the_golden_bytes(name: str, syntax: str) -> None:
    if not encoder_status(syntax).available:
        pytest.skip(f"{syntax}: {encoder_status(syntax).reason}")
    payload = build_case(name, syntax)
    digest = hashlib.sha256(payload).hexdigest()
    key = f"{name}/{syntax}"
    dump_path = GOLDEN_DIR / f"{name}.{syntax}.txt"
    if UPDATE:
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        hashes = _recorded()
        hashes[key] = digest
        HASHES.write_text(json.dumps(dict(sorted(hashes.items())), indent=1) + "\n")
        dump_path.write_text(dump(payload))
    recorded = _recorded().get(key)
    assert recorded is not None, f"no golden hash for {key}: run with IOD_GOLDEN_UPDATE=1"
    assert digest == recorded, (
        f"{key}: the object changed; dump now vs golden:\n{dump(payload)}\n---\n"
        f"{dump_path.read_text()}"
    )
