"""Each C-STORE outcome from the sending process carries its round trip (issue 18): the bench
counts stalls and per-object latency from it. A send that never went out has none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from support.peers import LOCALHOST, free_port, start_storescp, stop_process

from agent.net.commitment import CommitmentReport
from agent.net.store_process import AssociationRequest, SendError, StoreProcess

pytestmark = pytest.mark.integration

SC = "1.2.840.10008.5.1.4.1.1.7"


def write_sc(path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 16, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(256)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def no_reports(report: CommitmentReport) -> int:
    raise AssertionError(f"no report expected, got {report}")


@pytest.fixture
def storescp_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = start_storescp(tmp_path / "received", port)
    yield port
    stop_process(process)


def test_outcomes_carry_the_round_trip(tmp_path: Path, storescp_port: int) -> None:
    files = []
    for index in range(3):
        path = tmp_path / f"{index}.dcm"
        write_sc(path)
        files.append((index, path))
    files.append((9, tmp_path / "missing.dcm"))         # unreadable: nothing sent
    sender = StoreProcess("timing", report_handler=no_reports, hang_slack_s=3)
    try:
        sender.associate(AssociationRequest(
            ae_title="MODALITY1", host=LOCALHOST, port=storescp_port, called_ae="STORESCP",
            contexts=((SC, (ExplicitVRLittleEndian,)), (SC, (ImplicitVRLittleEndian,))),
            timeout_s=5))
        outcomes = list(sender.store(files))
        sender.release()
    finally:
        sender.close()
    sent = [o for o in outcomes if o.error is None]
    assert [o.status for o in sent] == [0x0000] * 3
    assert all(0.0 < o.seconds < 5.0 for o in sent)
    unreadable = [o for o in outcomes if o.error is not None]
    assert [(o.key, o.error, o.seconds) for o in unreadable] == [(9, SendError.UNREADABLE, 0.0)]
