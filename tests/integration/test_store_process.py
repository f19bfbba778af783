"""The sending process (agent.net.store_process) against DCMTK storescp: objects arrive, a
dead or hung child becomes a clear error and not a lost object, and no child outlives its
parent — also when the parent is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from support.certs import make_tls_world
from support.peers import LOCALHOST, free_port, start_storescp, stop_process, wait_until

from agent.errors import PeerUnreachable, TlsHandshakeError
from agent.net.commitment import CommitmentReport
from agent.net.store_process import AssociationRequest, StoreProcess, StoreProcessError
from agent.net.tls import PeerTls, TlsIdentity

SC = "1.2.840.10008.5.1.4.1.1.7"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


def write_sc(path: Path, *, syntax: str = ExplicitVRLittleEndian) -> str:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 64, 64     # CharLS wants more than a few pixels
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256)) * 16
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


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


def request(port: int, contexts: tuple[tuple[str, tuple[str, ...]], ...] = (
        (SC, (ExplicitVRLittleEndian,)), (SC, (ImplicitVRLittleEndian,))),
            timeout_s: float = 5) -> AssociationRequest:
    return AssociationRequest(ae_title="MODALITY1", host=LOCALHOST, port=port,
                              called_ae="STORESCP", contexts=contexts, timeout_s=timeout_s)


def received_uids(out: Path) -> set[str]:
    return {p.name.split(".", 1)[1] for p in out.iterdir()} if out.exists() else set()


def test_objects_arrive_and_each_gets_its_outcome(tmp_path: Path, storescp: tuple[int, Path],
                                                  sender: StoreProcess) -> None:
    port, out = storescp
    paths = [tmp_path / f"{i}.dcm" for i in range(5)]
    uids = {write_sc(p) for p in paths}
    sender.associate(request(port))
    assert sender.is_established
    assert sender.max_pdu == 16384          # storescp's default, as negotiated
    outcomes = list(sender.store(list(enumerate(paths))))
    assert [o.key for o in outcomes] == [0, 1, 2, 3, 4]
    assert all(o.status == 0 and not o.error and not o.not_sent for o in outcomes)
    sender.release()
    assert received_uids(out) == uids
    # the same child serves the next association
    more = tmp_path / "more.dcm"
    uids.add(write_sc(more))
    sender.associate(request(port))
    assert [o.status for o in sender.store([(9, more)])] == [0]
    sender.release()
    assert received_uids(out) == uids


def test_unreadable_file_and_unfitting_syntax_are_told_apart(
        tmp_path: Path, storescp: tuple[int, Path], sender: StoreProcess) -> None:
    port, out = storescp
    good = tmp_path / "good.dcm"
    uids = {write_sc(good)}
    # JPEG-LS, not proposed: sent as a decompressed copy under the same UID
    compressed = tmp_path / "jls.dcm"
    uids.add(write_sc(compressed, syntax=ExplicitVRLittleEndian))
    ds = dcmread(compressed)
    ds.compress(JPEG_LS_LOSSLESS, generate_instance_uid=False)
    ds.save_as(compressed, enforce_file_format=True)
    # ...and one whose "JPEG-LS" pixel data is garbage: it cannot be decompressed
    corrupt = tmp_path / "corrupt.dcm"
    write_sc(corrupt)
    ds = dcmread(corrupt)
    ds.file_meta.TransferSyntaxUID = JPEG_LS_LOSSLESS
    ds.PixelData = encapsulate([b"not a JPEG-LS codestream"])
    ds.save_as(corrupt, enforce_file_format=True)
    sender.associate(request(port, ((SC, (ExplicitVRLittleEndian,)),)))
    outcomes = {o.key: o for o in sender.store(
        [(1, tmp_path / "missing.dcm"), (2, compressed), (3, corrupt), (4, good)])}
    assert outcomes[1].error == "unreadable" and "missing.dcm" in outcomes[1].detail
    assert outcomes[2].status == 0 and not outcomes[2].error
    assert outcomes[3].error == "no-context" and "decompress" in outcomes[3].detail
    assert outcomes[4].status == 0
    sender.release()
    assert received_uids(out) == uids


def test_no_archive_is_raised_by_type_and_said_in_words(sender: StoreProcess) -> None:
    with pytest.raises(PeerUnreachable, match=r"^no connection to 127\.0\.0\.1:\d+ "
                                              r"\(connection refused\)$"):
        sender.associate(request(free_port()))
    assert not sender.is_established


def test_a_killed_child_is_an_error_and_the_next_call_starts_another(
        tmp_path: Path, storescp: tuple[int, Path], sender: StoreProcess) -> None:
    port, out = storescp
    path = tmp_path / "a.dcm"
    uid = write_sc(path)
    sender.wait_ready()
    first_pid = sender.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    with pytest.raises(StoreProcessError, match="ended unexpectedly"):
        sender.associate(request(port))
    sender.associate(request(port))
    assert sender.pid not in (None, first_pid)
    assert [o.status for o in sender.store([(1, path)])] == [0]
    sender.release()
    assert received_uids(out) == {uid}


def test_a_hung_child_is_given_up(tmp_path: Path, storescp: tuple[int, Path],
                                  sender: StoreProcess) -> None:
    port, _ = storescp
    sender.wait_ready()
    pid = sender.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreProcessError, match="gave no answer"):
            sender.associate(request(port, timeout_s=1))       # 3 x 1 s + 3 s slack
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "the hung child to be killed")


PARENT = textwrap.dedent("""
    import sys, time
    from agent.net.store_process import StoreProcess
    sender = StoreProcess("orphan test", report_handler=lambda report: 0)
    sender.wait_ready()
    print(sender.pid, flush=True)
    time.sleep(600)
""")


def test_no_child_outlives_a_killed_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert Path(f"/proc/{child_pid}").exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        # a child is reaped by init once orphaned: /proc/<pid> disappears
        wait_until(lambda: not Path(f"/proc/{child_pid}").exists()
                   or _is_zombie(child_pid), 10, f"child {child_pid} to end")
    finally:
        stop_process(parent)
        if parent.stdout is not None:
            parent.stdout.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def test_the_child_stores_over_tls_with_its_own_context_and_never_in_plaintext(
        tmp_path: Path, sender: StoreProcess) -> None:
    """The request carries the PeerTls (a picklable record); the child builds the SSL context.
    Against a plaintext archive the same request is a TLS error and nothing arrives."""
    world = make_tls_world(tmp_path / "tls", key_type="rsa")
    tls = PeerTls(TlsIdentity(world.client.certificate, world.client.private_key,
                              world.ca.certificate))
    port, out = free_port(), tmp_path / "received-tls"
    server = world.server
    process = start_storescp(out, port, extra_args=[
        "+tls", str(server.private_key), str(server.certificate), "+cf", str(server.ca_file)])
    try:
        path = tmp_path / "a.dcm"
        uid = write_sc(path)
        sender.associate(replace(request(port), tls=tls))
        assert [o.status for o in sender.store([(1, path)])] == [0]
        sender.release()
        assert received_uids(out) == {uid}
    finally:
        stop_process(process)
    plain_port, plain_out = free_port(), tmp_path / "received-plain"
    plaintext = start_storescp(plain_out, plain_port)
    try:
        with pytest.raises(TlsHandshakeError, match="connection closed during the handshake"):
            sender.associate(replace(request(plain_port), tls=tls))
        assert not sender.is_established
        assert received_uids(plain_out) == set()
    finally:
        stop_process(plaintext)
