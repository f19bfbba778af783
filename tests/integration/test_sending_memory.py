"""A sending process's memory stays flat as associations come and go (issue 18 item 4b).

The forwarder opens an association per round of work (at 50 objects/s with commitment, one per
~3 objects), and each one leaves pynetdicom objects in reference cycles that only a collection
of the oldest generation frees. The sending processes are forked with the imports frozen, and
before agent.net.zygote set their collector that collection came only after ~1,000
associations, and RSS grew until then: measured here over associations 200 -> 600, +376 to +528
KB (3 runs) before, +60 to +84 KB after.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from support.peers import LOCALHOST, free_port, start_storescp, stop_process

from agent.net.store_process import AssociationRequest, StoreProcess

SC = "1.2.840.10008.5.1.4.1.1.7"
#: associations opened before the first and between the two measurements
WARM_UP = 200
MEASURED = 400
#: RSS growth allowed over MEASURED associations (before the fix: ~500 KB)
LIMIT_KB = 200


def write_small_sc(path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Sending^Memory"
    ds.PatientID = "SM1"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256)) * 16
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Rss in /proc/{pid}/smaps_rollup")


def test_rss_of_a_sending_process_stays_flat_over_hundreds_of_associations(
        tmp_path: Path) -> None:
    path = tmp_path / "sc.dcm"
    write_small_sc(path)
    port = free_port()
    # --ignore: storescp reads every object and answers Success without writing it
    scp = start_storescp(tmp_path / "received", port, extra_args=["--ignore"])
    sender = StoreProcess("test", report_handler=lambda report: 0, hang_slack_s=5)
    request = AssociationRequest(ae_title="MODALITY1", host=LOCALHOST, port=port,
                                 called_ae="STORESCP", contexts=((SC, (ExplicitVRLittleEndian,)),),
                                 timeout_s=10)

    def one_round(key: int) -> None:
        # what the forwarder does per round of work: associate, send, release
        sender.associate(request)
        outcomes = list(sender.store([(key, path)]))
        sender.release()
        assert [o.status for o in outcomes] == [0], outcomes

    try:
        for key in range(WARM_UP):
            one_round(key)
        assert sender.pid is not None
        before = rss_kb(sender.pid)
        for key in range(WARM_UP, WARM_UP + MEASURED):
            one_round(key)
        after = rss_kb(sender.pid)
    finally:
        sender.close()
        stop_process(scp)
    assert after - before <= LIMIT_KB, (
        f"the sending process grew by {after - before} KB over {MEASURED} associations "
        f"({before} -> {after} KB)")
