"""`modality-agent import`: existing DICOM files reach the archive byte for byte, in their own
transfer syntax; anything else is refused with the reason and nothing else is disturbed."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from support.agent_process import AGENT_AE, AgentProcess, Destination, make_agent
from support.peers import free_port, wait_until

from agent.demo.orthanc import OrthancServer, RegisteredModality

pytestmark = pytest.mark.integration


def sc_file(path: Path, syntax: str, seed: int) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.PatientName, ds.PatientID, ds.Modality = "Import^Test", "IMP-1", "OT"
    ds.ConversionType = "WSD"
    pixels = np.random.default_rng(seed).integers(0, 4096, (32, 48), dtype=np.uint16)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 32, 48, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def running(tmp_path: Path, orthanc: OrthancServer) -> Iterator[AgentProcess]:
    listener_port = free_port()
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
                       listener_port=listener_port, import_folders=[tmp_path / "incoming"])
    (tmp_path / "incoming").mkdir(exist_ok=True)
    agent.start()
    yield agent
    agent.stop()


def test_import_sends_files_as_they_are(tmp_path: Path, orthanc: OrthancServer,
                                        running: AgentProcess) -> None:
    folder = tmp_path / "incoming"
    files = [sc_file(folder / "a.dcm", ExplicitVRLittleEndian, 1),
             sc_file(folder / "b.dcm", ImplicitVRLittleEndian, 2),
             sc_file(folder / "c.dcm", RLELossless, 3)]
    (folder / "notes.txt").write_text("not an image")
    result = running.cli("import", str(folder), "--json")
    assert result.returncode == 1                   # one file refused
    outcome = {Path(f["path"]).name: f for f in json.loads(result.stdout)["files"]}
    assert "not a DICOM Part 10 file" in outcome["notes.txt"]["error"]
    assert {name for name, f in outcome.items() if "queue_id" in f} == {"a.dcm", "b.dcm", "c.dcm"}
    wait_until(lambda: {r["state"] for r in running.queue_rows()} == {"committed"}, 30,
               f"imports not committed: {running.queue_rows()} {running.log()[-2000:]}")
    for path in files:
        original = dcmread(path)
        orthanc_id = orthanc.find_instance(original.SOPInstanceUID)
        assert orthanc_id is not None
        held = dcmread(io.BytesIO(orthanc.instance_file(orthanc_id)))
        assert held.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert np.array_equal(held.pixel_array, original.pixel_array)
    # the same file again is refused as a duplicate, not sent under a second identity
    again = running.cli("import", str(files[0]))
    assert again.returncode == 1 and "already queued" in again.stdout


def test_import_refuses_inconsistent_files(tmp_path: Path, running: AgentProcess) -> None:
    incoming = tmp_path / "incoming"
    path = sc_file(incoming / "bad.dcm", ExplicitVRLittleEndian, 4)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=None)
    ds.save_as(path)
    truncated = incoming / "cut.dcm"
    truncated.write_bytes(sc_file(tmp_path / "whole.dcm", ExplicitVRLittleEndian, 5)
                          .read_bytes()[:200])
    whole = sc_file(tmp_path / "whole2.dcm", ExplicitVRLittleEndian, 6).read_bytes()
    still_writing = incoming / "writing.dcm"
    still_writing.write_bytes(whole[:-100])           # cut inside the pixel data
    result = running.cli("import", str(path), str(truncated), str(still_writing), "--json")
    files = json.loads(result.stdout)["files"]
    assert result.returncode == 1
    assert "differs from (0008,0018)" in files[0]["error"]
    assert "error" in files[1]
    assert "the file is incomplete" in files[2]["error"]
    assert running.queue_rows() == []
    assert running.process is not None and running.process.poll() is None


def test_import_reads_only_regular_files_inside_the_import_folders(
        tmp_path: Path, running: AgentProcess) -> None:
    """Issue 13, finding 5: another patient's file elsewhere on disk never goes to the PACS, a
    FIFO cannot freeze the API, a symlink cannot lead out of the folder."""
    import os

    elsewhere = sc_file(tmp_path / "elsewhere.dcm", ExplicitVRLittleEndian, 8)
    incoming = tmp_path / "incoming"
    (incoming / "link.dcm").symlink_to(elsewhere)
    os.mkfifo(incoming / "pipe.dcm")
    result = running.cli("import", str(elsewhere), str(incoming / "link.dcm"),
                         str(incoming / "pipe.dcm"), "--json", timeout_s=30)
    files = json.loads(result.stdout)["files"]
    assert result.returncode == 1 and len(files) == 3
    assert all("error" in f for f in files), files
    assert "import_folders" in files[0]["error"] or "outside" in files[0]["error"]
    assert running.queue_rows() == []
    assert running.api("GET", "/api/status")["queue"]["pending"] == 0   # the API still answers


def test_watch_folder_in_the_daemon(tmp_path: Path, orthanc: OrthancServer) -> None:
    """A file dropped into [watch_folder] reaches the archive once; an image without a
    procedure in progress is refused with the reason, never given a guessed patient."""
    from agent.demo.orthanc import RegisteredModality as Modality

    listener_port = free_port()
    orthanc.register_modality(Modality("agent", AGENT_AE, "127.0.0.1", listener_port))
    incoming = tmp_path / "incoming"
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
                       listener_port=listener_port,
                       extra_toml=f'[watch_folder]\npath = "{incoming}"\nsettle_s = 0.3\n')
    agent.start()
    try:
        dropped = sc_file(tmp_path / "drop.dcm", ExplicitVRLittleEndian, 7)
        uid = dcmread(dropped).SOPInstanceUID
        (incoming / "scan.tmp").write_bytes(dropped.read_bytes())
        (incoming / "scan.tmp").rename(incoming / "scan.dcm")     # how careful writers drop
        (incoming / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        wait_until(lambda: (incoming / "done" / "scan.dcm").exists(), 20,
                   f"not imported: {agent.log()[-2000:]}")
        wait_until(lambda: {r["state"] for r in agent.queue_rows()} == {"committed"}, 30,
                   "not committed")
        assert orthanc.find_instance(uid) is not None
        wait_until(lambda: (incoming / "rejected" / "photo.png.reason.txt").exists(), 20,
                   "the image was not rejected")
        reason = (incoming / "rejected" / "photo.png.reason.txt").read_text()
        assert reason.strip()
        assert len(agent.queue_rows()) == 1                        # exactly once
    finally:
        agent.stop()

