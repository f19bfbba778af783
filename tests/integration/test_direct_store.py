"""C-STORE written straight from the spool file (agent.net.direct_store), proven on the wire.

- The P-DATA-TF PDUs it writes are byte for byte those pynetdicom's own send_c_store writes for
  the same file (recorded by a relay in front of DCMTK storescp), at several maximum PDU sizes
  and object sizes that cross its 1 MB batches.
- What the archive keeps is the spooled data set byte for byte: storescp --bit-preserving, and
  Orthanc (the stored file from its REST API), sent by the real sending process.
- The same over DICOM TLS (storescp +tls --bit-preserving): the data set is written through the
  SSL object under its lock while the DUL thread reads it.
- An archive that stops reading, or aborts mid-object, ends the association with the outcome
  unknown (never "stored", never a hang).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import build_context
from support.certs import make_tls_world
from support.peers import (
    LOCALHOST,
    RecordingRelay,
    free_port,
    start_storescp,
    start_storescp_tls,
    stop_process,
    wait_until,
)

from agent.demo.orthanc import start_orthanc
from agent.net.ae import AgentAE, associate
from agent.net.direct_store import WireError, send_c_store_direct, supports
from agent.net.store_process import AssociationRequest, StoreProcess
from agent.net.tls import PeerTls, TlsIdentity

SC = "1.2.840.10008.5.1.4.1.1.7"


def write_sc(path: Path, pixel_bytes: int) -> str:
    """A Secondary Capture whose pixel data is `pixel_bytes` long (even), with a pattern that
    shows any byte moved."""
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Direct^Store"
    ds.PatientID = "DS1"
    ds.Modality = "OT"
    rows = next(r for r in range(1, pixel_bytes + 1)
                if pixel_bytes % r == 0 and pixel_bytes // r <= 65535)
    ds.Rows, ds.Columns = rows, pixel_bytes // rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes((i * 7 + i // 251) % 256 for i in range(pixel_bytes))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def data_set_bytes(path: Path) -> bytes:
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def pdus(stream: bytes) -> list[tuple[int, bytes]]:
    """(type, whole PDU) for each PDU of one direction of a connection."""
    found = []
    offset = 0
    while offset + 6 <= len(stream):
        kind, _, length = struct.unpack(">BBL", stream[offset:offset + 6])
        found.append((kind, bytes(stream[offset:offset + 6 + length])))
        offset += 6 + length
    assert offset == len(stream), "the stream does not end on a PDU boundary"
    return found


def p_data(stream: bytes) -> list[bytes]:
    return [pdu for kind, pdu in pdus(stream) if kind == 0x04]


@pytest.fixture
def chunked_files() -> Iterator[None]:
    # the sending process streams files as they are (store_process.child_main)
    before = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    yield
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = before


def store_through_relay(relay: RecordingRelay, path: Path, *, direct: bool) -> tuple[int, bytes]:
    """One association through the relay, one C-STORE of `path`; (status, what we wrote)."""
    before = len(relay.connections())
    ae = AgentAE("MODALITY1")
    assoc = associate(ae, LOCALHOST, relay.port, "STORESCP",
                      contexts=[build_context(SC, [ExplicitVRLittleEndian])])
    try:
        assert supports(assoc)
        if direct:
            code = send_c_store_direct(assoc, path, 1).status
        else:
            code = assoc.send_c_store(path).Status
    finally:
        assoc.release()
    connections = relay.connections()
    assert len(connections) == before + 1
    upstream = bytes(connections[-1].upstream)
    # release sent: the relay has the whole request once the release answer came back
    assert code is not None
    return int(code), upstream


@pytest.mark.parametrize("max_pdu", [4096, 16384, 131072])
def test_direct_pdus_are_pynetdicoms_own_byte_for_byte(
        tmp_path: Path, chunked_files: None, max_pdu: int) -> None:
    files = []
    # tiny; one PDU's worth and a little; beyond one 1 MB batch; ~2.5 batches
    for n, size in enumerate((64, max_pdu - 6 - 300, 1_100_000, 2_600_000)):
        path = tmp_path / f"sc{n}.dcm"
        write_sc(path, size)
        files.append(path)
    port = free_port()
    scp = start_storescp(tmp_path / "received", port, extra_args=["--max-pdu", str(max_pdu)])
    try:
        with RecordingRelay(port) as relay:
            for path in files:
                own_status, own = store_through_relay(relay, path, direct=False)
                direct_status, direct = store_through_relay(relay, path, direct=True)
                assert own_status == direct_status == 0x0000
                own_data, direct_data = p_data(own), p_data(direct)
                assert len(direct_data) == len(own_data)
                assert direct_data == own_data, f"{path.name}: P-DATA differs"
                assert all(len(pdu) <= max_pdu + 6 for pdu in direct_data)
                # the last PDV is the data set's last fragment (control header 0x02)
                assert direct_data[-1][11] == 0x02
    finally:
        stop_process(scp)


def test_storescp_keeps_the_spooled_data_set_byte_for_byte(tmp_path: Path) -> None:
    spooled = {}
    for n, size in enumerate((100, 40_000, 3_000_000)):
        path = tmp_path / f"sc{n}.dcm"
        spooled[write_sc(path, size)] = path
    port = free_port()
    out = tmp_path / "received"
    scp = start_storescp(out, port, extra_args=["--bit-preserving"])
    sender = StoreProcess("test", report_handler=lambda report: 0, hang_slack_s=3)
    try:
        sender.associate(AssociationRequest(
            ae_title="MODALITY1", host=LOCALHOST, port=port, called_ae="STORESCP",
            contexts=((SC, (ExplicitVRLittleEndian,)),), timeout_s=10))
        outcomes = list(sender.store(list(enumerate(spooled.values()))))
        sender.release()
    finally:
        sender.close()
        stop_process(scp)
    assert [o.status for o in outcomes] == [0, 0, 0]
    for uid, path in spooled.items():
        [received] = [p for p in out.iterdir() if p.name.endswith(uid)]
        assert data_set_bytes(received) == data_set_bytes(path)


def test_orthanc_keeps_the_spooled_data_set_byte_for_byte(tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    spooled = {}
    for n, size in enumerate((100, 40_000, 3_000_000)):
        path = tmp_path / f"sc{n}.dcm"
        spooled[write_sc(path, size)] = path
    orthanc = start_orthanc(tmp_path / "orthanc", dicom_port=dicom_port, http_port=http_port)
    sender = StoreProcess("test", report_handler=lambda report: 0, hang_slack_s=3)
    try:
        sender.associate(AssociationRequest(
            ae_title="MODALITY1", host=LOCALHOST, port=dicom_port, called_ae="ORTHANC",
            contexts=((SC, (ExplicitVRLittleEndian,)),), timeout_s=10))
        outcomes = list(sender.store(list(enumerate(spooled.values()))))
        sender.release()
        assert [o.status for o in outcomes] == [0, 0, 0]
        stored = {}
        for orthanc_id in orthanc.instances():
            tags = orthanc.instance_tags(orthanc_id)
            stored[tags["SOPInstanceUID"]] = orthanc.instance_file(orthanc_id)
        assert set(stored) == set(spooled)
        for uid, path in spooled.items():
            kept = tmp_path / "kept.dcm"
            kept.write_bytes(stored[uid])
            assert data_set_bytes(kept) == data_set_bytes(path), uid
    finally:
        sender.close()
        orthanc.stop()


@pytest.mark.parametrize("over_tls", [False, True], ids=["plain", "tls"])
def test_an_archive_that_stops_reading_ends_the_association_outcome_unknown(
        tmp_path: Path, over_tls: bool) -> None:
    path = tmp_path / "big.dcm"
    write_sc(path, 40_000_000)
    port = free_port()
    # storescp sleeps 30 s before it reads the data set: our writes block once the socket
    # buffers are full, and the 1 s DIMSE timeout must end the wait
    tls = None
    if over_tls:
        world = make_tls_world(tmp_path / "tls", key_type="rsa")
        tls = PeerTls(TlsIdentity(world.client.certificate, world.client.private_key,
                                  world.ca.certificate))
        scp = start_storescp_tls(tmp_path / "received", port,
                                 private_key=world.server.private_key,
                                 certificate=world.server.certificate,
                                 ca_file=world.ca.certificate,
                                 extra_args=["--sleep-during", "30"])
    else:
        scp = start_storescp(tmp_path / "received", port, extra_args=["--sleep-during", "30"])
    ae = AgentAE("MODALITY1")
    ae.dimse_timeout = 1
    try:
        assoc = associate(ae, LOCALHOST, port, "STORESCP",
                          contexts=[build_context(SC, [ExplicitVRLittleEndian])], tls=tls)
        try:
            with pytest.raises(WireError, match="read nothing for 1 s"):
                send_c_store_direct(assoc, path, 1)
            wait_until(lambda: not assoc.is_established, 5, "association still open")
            assert assoc.is_aborted
        finally:
            if assoc.is_established:
                assoc.abort()
    finally:
        stop_process(scp)


def test_child_reports_unknown_outcome_when_the_archive_aborts_mid_object(tmp_path: Path) -> None:
    first, second = tmp_path / "a.dcm", tmp_path / "b.dcm"
    write_sc(first, 3_000_000)
    write_sc(second, 100)
    port = free_port()
    scp = start_storescp(tmp_path / "received", port, extra_args=["--abort-during"])
    sender = StoreProcess("test", report_handler=lambda report: 0, hang_slack_s=3)
    try:
        sender.associate(AssociationRequest(
            ae_title="MODALITY1", host=LOCALHOST, port=port, called_ae="STORESCP",
            contexts=((SC, (ExplicitVRLittleEndian,)),), timeout_s=5))
        outcomes = list(sender.store([(1, first), (2, second)]))
    finally:
        sender.close()
        stop_process(scp)
    # the aborted one: no status, no error (outcome unknown, sent again later); the next one
    # was never sent
    assert outcomes[0].status is None and outcomes[0].error is None
    assert outcomes[1].not_sent
    assert not sender.is_established


def test_over_tls_storescp_keeps_the_spooled_data_set_byte_for_byte(tmp_path: Path) -> None:
    world = make_tls_world(tmp_path / "tls", key_type="rsa")
    tls = PeerTls(TlsIdentity(world.client.certificate, world.client.private_key,
                              world.ca.certificate))
    spooled = {}
    for n, size in enumerate((100, 40_000, 3_000_000, 9_000_000)):
        path = tmp_path / f"sc{n}.dcm"
        spooled[write_sc(path, size)] = path
    port = free_port()
    out = tmp_path / "received"
    scp = start_storescp_tls(out, port, private_key=world.server.private_key,
                             certificate=world.server.certificate, ca_file=world.ca.certificate,
                             extra_args=["--bit-preserving"])
    try:
        # in this process: the TLS association takes the direct path
        assoc = associate(AgentAE("MODALITY1"), LOCALHOST, port, "STORESCP",
                          contexts=[build_context(SC, [ExplicitVRLittleEndian])], tls=tls)
        try:
            assert supports(assoc)
        finally:
            assoc.release()
        sender = StoreProcess("test", report_handler=lambda report: 0, hang_slack_s=3)
        try:
            sender.associate(AssociationRequest(
                ae_title="MODALITY1", host=LOCALHOST, port=port, called_ae="STORESCP",
                contexts=((SC, (ExplicitVRLittleEndian,)),), timeout_s=10, tls=tls))
            outcomes = list(sender.store(list(enumerate(spooled.values()))))
            sender.release()
        finally:
            sender.close()
    finally:
        stop_process(scp)
    assert [o.status for o in outcomes] == [0, 0, 0, 0]
    for uid, path in spooled.items():
        [received] = [p for p in out.iterdir() if p.name.endswith(uid)]
        assert data_set_bytes(received) == data_set_bytes(path)


def test_an_association_the_archive_aborted_is_over_when_the_send_returns(tmp_path: Path) -> None:
    """Whichever way the abort shows (a write that fails, or the state machine's "no answer"
    once the request is out), the association is no longer established when the send returns:
    the sending process asks exactly that before its next object. Before, pynetdicom's reactor
    said so only when it next looked (up to its 200 ms wait), and the next object went out into
    the dead association and waited for the whole DIMSE timeout."""
    path = tmp_path / "big.dcm"
    write_sc(path, 3_000_000)
    seen = []
    for attempt in range(20):
        port = free_port()
        scp = start_storescp(tmp_path / f"received{attempt}", port, extra_args=["--abort-during"])
        try:
            ae = AgentAE("MODALITY1")
            ae.dimse_timeout = 5
            assoc = associate(ae, LOCALHOST, port, "STORESCP",
                              contexts=[build_context(SC, [ExplicitVRLittleEndian])])
            try:
                try:
                    response = send_c_store_direct(assoc, path, 1)
                    seen.append("no answer")
                    assert response.status is None
                except WireError:
                    seen.append("write failed")
                assert not assoc.is_established, f"attempt {attempt}: still established"
            finally:
                if assoc.is_established:
                    assoc.abort()
        finally:
            stop_process(scp)
    assert seen
