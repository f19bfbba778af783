"""A sending process (agent.net.store_process) holds no numpy and no pixel codec
(agent.pixel_codecs): what it imports is mapped into its memory, one process per association.
Read from outside, in /proc/PID/maps, so the child needs no hook; a compressed object that must
be decompressed is still sent (by a helper process: agent.net.transcode)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from support.peers import LOCALHOST, free_port, start_storescp, stop_process

from agent.net.commitment import CommitmentReport
from agent.net.store_process import AssociationRequest, StoreProcess

SC = "1.2.840.10008.5.1.4.1.1.7"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
PIXELS = bytes(range(256)) * 16
#: site-packages folders (or extension files) of numpy and the codecs pydicom would load
CODEC_PACKAGES = ("numpy", "numpy.libs", "pylibjpeg", "openjpeg", "_openjpeg", "libjpeg", "rle",
                  "jpeg_ls", "_CharLS", "PIL", "pillow.libs", "gdcm")


def write_sc(path: Path, *, compressed: bool = False) -> str:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 64, 64     # CharLS wants more than a few pixels
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = PIXELS
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if compressed:
        ds.compress(JPEG_LS_LOSSLESS, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def mapped_codecs(pid: int) -> set[str]:
    """The codec packages whose files (extension modules, bundled libraries) `pid` maps."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if "site-packages/" in path:
            top = path.split("site-packages/", 1)[1].split("/", 1)[0].split(".cpython-")[0]
            if top in CODEC_PACKAGES:
                found.add(top)
    return found


def no_reports(report: CommitmentReport) -> int:
    raise AssertionError(f"no report expected, got {report}")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    out = tmp_path / "received"
    process = start_storescp(out, port)
    yield port, out
    stop_process(process)


@pytest.fixture
def sender() -> Iterator[StoreProcess]:
    process = StoreProcess("test", report_handler=no_reports, hang_slack_s=3)
    yield process
    process.close()


def test_a_sending_process_maps_no_codec_also_after_a_decompressed_copy(
        tmp_path: Path, storescp: tuple[int, Path], sender: StoreProcess) -> None:
    port, out = storescp
    plain = [tmp_path / f"{i}.dcm" for i in range(3)]
    uids = [write_sc(p) for p in plain]
    # the archive takes Explicit VR Little Endian only
    sender.associate(AssociationRequest(
        ae_title="MODALITY1", host=LOCALHOST, port=port, called_ae="STORESCP",
        contexts=((SC, (ExplicitVRLittleEndian,)),), timeout_s=5))
    assert [o.status for o in sender.store(list(enumerate(plain)))] == [0, 0, 0]
    assert sender.pid is not None
    assert mapped_codecs(sender.pid) == set()
    # JPEG-LS: sent as a decompressed copy under the same UID, decoded outside this process
    compressed = tmp_path / "jls.dcm"
    uids.append(write_sc(compressed, compressed=True))
    [outcome] = sender.store([(3, compressed)])
    assert outcome.status == 0 and not outcome.error
    sender.release()
    assert mapped_codecs(sender.pid) == set()
    received = {p.name.split(".", 1)[1]: p for p in out.iterdir()}
    assert sorted(received) == sorted(uids)
    assert dcmread(received[uids[-1]]).PixelData == PIXELS


def test_mapped_codecs_sees_them_where_they_are_loaded() -> None:
    # the check above can fail: this (pytest) process has pydicom's codecs mapped
    assert {"numpy", "_openjpeg"} <= mapped_codecs(os.getpid())
