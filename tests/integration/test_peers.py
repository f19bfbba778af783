"""Smoke tests of the peers the other integration tests rely on: Orthanc, DCMTK storescp,
dciodvfy, and the fixtures that start them."""

from __future__ import annotations

import contextlib
import http.server
import io
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from support.peers import (
    DCMTK,
    LOCALHOST,
    Peer,
    free_port,
    nodelay_env,
    run_dciodvfy,
    start_storescp,
    stop_process,
)

from agent.demo.orthanc import OrthancError, OrthancServer, RegisteredModality, start_orthanc

pytestmark = pytest.mark.integration

SCU_AE = "PEERTEST"


def make_secondary_capture(path: Path) -> str:
    """Write a tiny valid 8x8 MONOCHROME2 Secondary Capture; return its SOP Instance UID."""
    sop_instance_uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "PEERS^SMOKE"          # synthetic
    ds.PatientID = "PEERS-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "CHEST"           # else dciodvfy wants Laterality (PEERS.md)
    ds.Manufacturer = "modality-agent tests"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype=np.uint8).reshape(8, 8).tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return sop_instance_uid


def environment_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def storescu(path: Path, port: int, called_ae: str) -> None:
    """Send one file with DCMTK storescu (full path: the venv's pynetdicom one shadows it)."""
    result = subprocess.run(
        [str(DCMTK / "storescu"), "-aet", SCU_AE, "-aec", called_ae, LOCALHOST, str(port),
         str(path)],
        capture_output=True, text=True, timeout=30, check=False, env=nodelay_env(),
    )
    assert result.returncode == 0, f"storescu failed: {result.stdout}{result.stderr}"


@pytest.fixture
def sc_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "sc.dcm"
    return path, make_secondary_capture(path)


def test_orthanc_starts_answers_rest_and_c_echo(orthanc: OrthancServer) -> None:
    system = orthanc.system()
    assert system["DicomAet"] == "ORTHANC"
    assert system["DicomPort"] == orthanc.dicom_port
    assert system["HttpPort"] == orthanc.http_port
    assert orthanc.instances() == []
    # Without it every DIMSE exchange with pynetdicom stalls ~40 ms (PEERS.md).
    assert b"TCP_NODELAY=1" in environment_of(orthanc.pid)

    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOCALHOST, orthanc.dicom_port, ae_title=orthanc.ae_title)
    assert assoc.is_established, "Orthanc did not accept the association"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    ae.shutdown()
    assert status.Status == 0x0000

    orthanc.stop()
    assert not orthanc.is_running()
    orthanc.stop()  # idempotent


def test_orthanc_receives_storescu_file(
    orthanc: OrthancServer, sc_file: tuple[Path, str]
) -> None:
    path, sop_instance_uid = sc_file
    assert orthanc.find_instance(sop_instance_uid) is None

    storescu(path, orthanc.dicom_port, orthanc.ae_title)

    orthanc_id = orthanc.find_instance(sop_instance_uid)
    assert orthanc_id is not None, "Orthanc does not hold the instance storescu sent"
    assert orthanc.instances() == [orthanc_id]
    stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc_id)))
    assert stored.SOPInstanceUID == sop_instance_uid
    assert orthanc.instance_tags(orthanc_id)["SOPInstanceUID"] == sop_instance_uid

    orthanc.delete_instance(orthanc_id)
    assert orthanc.find_instance(sop_instance_uid) is None
    with pytest.raises(OrthancError) as excinfo:
        orthanc.instance_file(orthanc_id)
    assert excinfo.value.http_status == 404


def test_storescp_receives_storescu_file(storescp: Peer, sc_file: tuple[Path, str]) -> None:
    path, sop_instance_uid = sc_file

    assert storescp.pid is not None
    assert b"TCP_NODELAY=1" in environment_of(storescp.pid)

    storescu(path, storescp.port, storescp.ae_title)

    # storescp writes the file before it sends the C-STORE-RSP storescu waited for.
    written = list(storescp.out_dir.iterdir())
    assert [p.name for p in written] == [f"SC.{sop_instance_uid}"]
    dump = subprocess.run(
        [str(DCMTK / "dcmdump"), str(written[0])],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert dump.returncode == 0, dump.stderr
    assert sop_instance_uid in dump.stdout


def test_registered_modality_is_reachable_from_orthanc(
    orthanc: OrthancServer, storescp: Peer
) -> None:
    def orthanc_echoes(name: str) -> int:
        """Orthanc performs a C-ECHO to the registered peer; the HTTP status says how it went."""
        request = urllib.request.Request(
            f"{orthanc.rest_url}/modalities/{name}/echo", data=b"{}", method="POST"
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    orthanc.register_modality(
        RegisteredModality("scp", storescp.ae_title, storescp.host, storescp.port)
    )
    orthanc.register_modality(
        RegisteredModality("nobody", "NOBODY", LOCALHOST, free_port(exclude={storescp.port}))
    )
    assert orthanc_echoes("scp") == 200
    assert orthanc_echoes("nobody") != 200


def test_dciodvfy_passes_valid_and_flags_broken_iod(tmp_path: Path) -> None:
    path = tmp_path / "sc.dcm"
    make_secondary_capture(path)
    assert run_dciodvfy(path) == []

    ds = pydicom.dcmread(path)
    del ds.ConversionType  # Type 1 in the SC Equipment module
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken, enforce_file_format=True)
    errors = run_dciodvfy(broken)
    assert any("ConversionType" in line for line in errors), errors


class _AnswersEverything(http.server.BaseHTTPRequestHandler):
    """Plays a stale Orthanc: `GET /system` answers 200 with a JSON object."""

    def do_GET(self) -> None:
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def squatter(kind: str) -> Iterator[int]:
    """Hold a port: a bare listener (accepts TCP, never answers) or an HTTP server."""
    if kind == "tcp":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            sock.listen()
            yield sock.getsockname()[1]
        return
    server = http.server.HTTPServer(("", 0), _AnswersEverything)
    thread = threading.Thread(target=server.serve_forever, name="http-squatter")
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("busy", "kind"), [("dicom", "tcp"), ("http", "tcp"), ("http", "http")]
)
def test_start_orthanc_reports_a_port_in_use(tmp_path: Path, busy: str, kind: str) -> None:
    # A port that accepts TCP, or even answers GET /system, is not proof that *our* Orthanc
    # serves it: only a check that Orthanc's own PID listens tells them apart.
    with squatter(kind) as busy_port:
        other_port = free_port(exclude={busy_port})
        dicom_port, http_port = (
            (busy_port, other_port) if busy == "dicom" else (other_port, busy_port)
        )
        with pytest.raises(OrthancError) as excinfo:
            start_orthanc(
                tmp_path / "orthanc", dicom_port=dicom_port, http_port=http_port, timeout_s=10
            )
    message = str(excinfo.value)
    assert "Orthanc exited" in message, message
    assert "already in use" in message, "the log tail is missing"


def test_start_storescp_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("", 0))
        squatter.listen()
        busy_port = squatter.getsockname()[1]
        with pytest.raises(AssertionError, match="Address already in use"):
            process = start_storescp(tmp_path / "out", busy_port)
            stop_process(process)  # reached only if the check is broken
