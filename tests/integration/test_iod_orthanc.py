"""Objects from build_image, each in a transfer syntax, sent with pynetdicom in that syntax to a
real Orthanc: it stores them under the same SOP Instance UID, counts their frames and renders a
PNG preview (except JPEG 2000: Debian's Orthanc 1.10.1 has no J2K decoder without the GDCM
plug-in, which is not packaged; it answers 415)."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from pynetdicom import AE
from support.peers import LOCALHOST

from agent.demo.orthanc import OrthancServer
from agent.iod import (
    KNOWN_TRANSFER_SYNTAXES,
    UIDSource,
    build_image,
    encode_part10,
    encoder_status,
    new_series_context,
)
from agent.records import Code, DeviceInfo, Order
from drivers.frame import Frame
from drivers.simulated import phantom

SCU_AE = "IODTEST"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DEVICE = DeviceInfo(modality="OT", manufacturer="Example Medical", model_name="Example-1",
                    device_serial_number="0001", station_name="ROOM1",
                    institution_name="Klinikum", software_versions="fw 2.1")
ORDER = Order(patient_name="Doe^Jane", patient_id="P-0001", patient_birth_date="19800229",
              patient_sex="F")


def mono(bits_stored: int, index: int) -> Frame:
    return Frame(pixels=phantom(64, 48, bits_stored, index), bits_stored=bits_stored,
                 photometric_interpretation="MONOCHROME2", t_mono=50.0 + index * 0.04,
                 t_wall=1_700_000_000.0 + index * 0.04, sequence_number=index,
                 pixel_spacing_mm=(0.2, 0.2),
                 device_parameters=MappingProxyType({"kvp": 70.0, "mas": 10.0,
                                                     "exposure_ms": 20.0}))


def rgb(index: int) -> Frame:
    gray = phantom(64, 48, 8, index)
    pixels = np.stack([gray, gray[::-1], gray[:, ::-1]], axis=-1)
    return dataclasses.replace(mono(8, index), pixels=pixels, photometric_interpretation="RGB",
                               pixel_spacing_mm=None)


CASES: list[tuple[str, Callable[[], list[Frame]], str]] = [
    ("multiframe-grayscale-word-sc", lambda: [mono(12, i) for i in range(3)], "rle"),
    ("multiframe-true-color-sc", lambda: [rgb(i) for i in range(2)], "jpeg-ls-lossless"),
    ("multiframe-grayscale-byte-sc", lambda: [mono(8, i) for i in range(4)], "explicit-little"),
    ("dx", lambda: [mono(12, 0)], "jpeg2000-lossless"),
    ("dx", lambda: [mono(16, 0)], "jpeg-ls-lossless"),
    ("secondary-capture", lambda: [rgb(0)], "rle"),
    ("video-photographic", lambda: [rgb(i) for i in range(3)], "explicit-little"),
]


def http_get(orthanc: OrthancServer, path: str) -> tuple[str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(orthanc.rest_url + path, timeout=30) as response:
        return response.headers.get("Content-Type", ""), response.read()


def send(path: Path, ds_sop_class: str, transfer_syntax_uid: str,
         orthanc: OrthancServer) -> None:
    """C-STORE the file's bytes with pynetdicom over one presentation context in the file's own
    transfer syntax (DCMTK storescu adds uncompressed syntaxes to the same context; Orthanc
    then picks Explicit VR LE and storescu cannot decode RLE/J2K to convert)."""
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(ds_sop_class, transfer_syntax_uid)
    assoc = ae.associate(LOCALHOST, orthanc.dicom_port, ae_title=orthanc.ae_title)
    assert assoc.is_established, "Orthanc refused the association"
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status is not None and status.Status == 0x0000, f"C-STORE status {status}"


def test_orthanc_stores_and_previews_each_iod_and_syntax(orthanc: OrthancServer,
                                                         tmp_path: Path) -> None:
    uids = UIDSource()
    series = new_series_context(uids, ORDER, started_at=datetime(2024, 5, 6, 7, 8, 9),
                                series_number=1)
    for number, (iod, make_frames, syntax) in enumerate(CASES, start=1):
        status = encoder_status(syntax)
        if not status.available:
            pytest.skip(f"{syntax}: {status.reason}")
        frames = make_frames()
        sop_instance_uid = uids.new_uid()
        ds = build_image(iod, frames, order=ORDER, device=DEVICE, series=series,
                         instance_number=number, sop_instance_uid=sop_instance_uid,
                         patient_orientation=("L", "F") if iod == "dx" else None,
                         # a DX states its region (issue 16): the chest, unpaired ("U")
                         anatomic_region=Code("51185008", "SCT", "Chest")
                         if iod in ("video-photographic", "dx") else None)
        path = tmp_path / f"{number}-{iod}-{syntax}.dcm"
        path.write_bytes(encode_part10(ds, syntax))

        send(path, ds.SOPClassUID, KNOWN_TRANSFER_SYNTAXES[syntax], orthanc)

        orthanc_id = orthanc.find_instance(sop_instance_uid)
        assert orthanc_id is not None, f"Orthanc does not hold {iod} in {syntax}"
        _, body = http_get(orthanc, f"/instances/{orthanc_id}/frames")
        assert len(json.loads(body)) == len(frames), f"{iod} {syntax}: frame count"
        print(f"{iod} {syntax}: stored as {orthanc_id}")  # noqa: T201
        if syntax == "jpeg2000-lossless":
            with pytest.raises(urllib.error.HTTPError) as refused:
                http_get(orthanc, f"/instances/{orthanc_id}/preview")
            assert refused.value.code == 415, "Orthanc can decode J2K now: preview it too"
            continue
        content_type, png = http_get(orthanc, f"/instances/{orthanc_id}/preview")
        assert content_type.startswith("image/png"), f"{iod} {syntax}: {content_type}"
        assert png.startswith(PNG_SIGNATURE), f"{iod} {syntax}: preview is not a PNG"
