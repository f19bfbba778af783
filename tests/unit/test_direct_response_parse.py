"""The C-STORE-RSP decoded without pydicom (agent.net.direct_response.parse_store_response):
what it accepts it reads exactly as pynetdicom's own path would, and it declines (None, so
pynetdicom reads it) everything else, never raising on hostile bytes. Also the sending side's
file meta reader (agent.net.direct_store.read_file_meta) against pynetdicom's split_dataset.
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP, N_EVENT_REPORT_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE, N_EVENT_REPORT
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from agent.net.ae import NoDelayAssociationSocket
from agent.net.direct_response import Expected, StoreResponse, parse_store_response
from agent.net.direct_store import read_file_meta

SC = "1.2.840.10008.5.1.4.1.1.7"
CONTEXT = 5
EXPECTED = Expected(context_id=CONTEXT, message_id=17)


def pdu_bodies(primitive: object, message: DIMSEMessage, context_id: int = CONTEXT,
               max_pdu: int = 16384) -> list[bytes]:
    """The P-DATA-TF PDUs (without their 6-byte header) pynetdicom writes for `primitive`."""
    message.primitive_to_message(primitive)
    bodies = []
    for p_data in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        bodies.append(pdu.encode()[6:])
    return bodies


def store_rsp(status: int = 0x0000, msg_id: int = 17, **optional: object) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = SC
    rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901"
    rsp.Status = status
    for keyword, value in optional.items():
        setattr(rsp, keyword, value)
    return rsp


def pynetdicoms_status(body: bytes) -> Dataset:
    """The status Dataset pynetdicom's send_c_store returns for this response PDU (decode_msg,
    message_to_primitive, Association._check_received_status)."""
    pdu = P_DATA_TF()
    pdu.decode(struct.pack(">BBL", 0x04, 0, len(body)) + body)
    primitive: P_DATA = pdu.to_primitive()
    message = DIMSEMessage()
    assert message.decode_msg(primitive)
    rsp = message.message_to_primitive()
    status = Dataset()
    status.Status = rsp.Status
    for keyword in rsp.STATUS_OPTIONAL_KEYWORDS:
        if getattr(rsp, keyword, None) is not None:
            setattr(status, keyword, getattr(rsp, keyword))
    return status


@pytest.mark.parametrize(("status", "comment"), [
    (0x0000, None), (0xB000, None), (0xB000, "Coercion of data elements"),
    (0xA700, "Out of resources"), (0xC000, "x" * 64), (0x0107, "odd"),
])
def test_a_plain_response_reads_as_pynetdicom_reads_it(status: int, comment: str | None
                                                        ) -> None:
    optional = {} if comment is None else {"ErrorComment": comment}
    [body] = pdu_bodies(store_rsp(status, **optional), C_STORE_RSP())
    parsed = parse_store_response(body, EXPECTED)
    assert parsed == StoreResponse(status, comment)
    assert parsed is not None and parsed.status_dataset() == pynetdicoms_status(body)


def test_a_response_without_optional_uids_is_read_too() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 17
    rsp.Status = 0x0000
    [body] = pdu_bodies(rsp, C_STORE_RSP())
    assert parse_store_response(body, EXPECTED) == StoreResponse(0x0000)


@pytest.mark.parametrize("case", [
    "other message id", "other context", "offending element", "echo response",
    "event report request", "two fragments", "empty comment",
])
def test_anything_else_is_left_to_pynetdicom(case: str) -> None:
    expected = EXPECTED
    if case == "other message id":
        [body] = pdu_bodies(store_rsp(msg_id=18), C_STORE_RSP())
    elif case == "other context":
        [body] = pdu_bodies(store_rsp(), C_STORE_RSP(), context_id=7)
    elif case == "offending element":
        [body] = pdu_bodies(store_rsp(0xA900, OffendingElement=[0x00100010]), C_STORE_RSP())
    elif case == "echo response":
        echo = C_ECHO()
        echo.MessageIDBeingRespondedTo = 17
        echo.Status = 0
        [body] = pdu_bodies(echo, C_ECHO_RSP())
    elif case == "event report request":
        report = N_EVENT_REPORT()
        report.MessageID = 17
        report.AffectedSOPClassUID = "1.2.840.10008.1.20.1"
        report.AffectedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
        report.EventTypeID = 1
        body = pdu_bodies(report, N_EVENT_REPORT_RQ())[0]
    elif case == "two fragments":
        # the command set split over two PDVs (max PDU 64): pynetdicom reassembles it
        bodies = pdu_bodies(store_rsp(), C_STORE_RSP(), max_pdu=64)
        assert len(bodies) > 1
        body = bodies[0]
    else:
        [body] = pdu_bodies(store_rsp(0xB000), C_STORE_RSP())
        comment = struct.pack("<HHL", 0x0000, 0x0902, 0)
        body = patch_group(body, body[6:] + comment)
    assert parse_store_response(body, expected) is None


def patch_group(body: bytes, command_set: bytes) -> bytes:
    """A PDU body (one PDV) carrying `command_set` instead (the header lengths fixed up)."""
    return struct.pack(">LBB", len(command_set) + 2, body[4], body[5]) + command_set


def test_hostile_bytes_never_raise() -> None:
    [body] = pdu_bodies(store_rsp(0xB000, ErrorComment="warn"), C_STORE_RSP())
    for cut in range(len(body)):
        assert parse_store_response(body[:cut], EXPECTED) is None
    rng = random.Random(18)
    for _ in range(3000):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        result = parse_store_response(bytes(mutated), EXPECTED)
        assert result is None or isinstance(result, StoreResponse)
    # element lengths that point past the end, a non-ASCII comment
    huge = patch_group(body, struct.pack("<HHL", 0x0000, 0x0900, 0xFFFFFFF0) + b"\0\0")
    assert parse_store_response(huge, EXPECTED) is None
    latin = patch_group(body, body[6:] + struct.pack("<HHL", 0x0000, 0x0902, 2) + "é ".encode(
        "latin-1"))
    assert parse_store_response(latin, EXPECTED) is None


# --- given back bytes: NoDelayAssociationSocket.unread ------------------------------------

def bare_socket(sock: socket.socket) -> NoDelayAssociationSocket:
    transport = NoDelayAssociationSocket.__new__(NoDelayAssociationSocket)
    transport.socket = sock
    return transport


def test_unread_bytes_come_first_then_the_connection() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = bare_socket(ours)
        theirs.sendall(b"WORLD")
        transport.unread(b"HELLO ")
        assert transport.recv(3) == b"HEL"
        assert transport.recv(8) == b"LO WORLD"
        theirs.sendall(b"again")
        assert transport.recv(5) == b"again"


def test_unread_error_is_met_where_the_read_met_it() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        transport = bare_socket(ours)
        transport.unread(b"\x04\x00", ConnectionResetError("reset by peer"))
        assert transport.recv(2) == b"\x04\x00"
        with pytest.raises(ConnectionResetError):
            transport.recv(4)
        theirs.sendall(b"next")
        assert transport.recv(4) == b"next"


def test_unread_short_read_stays_short_on_a_closed_connection() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        transport = bare_socket(ours)
        theirs.close()
        transport.unread(b"abc")
        assert transport.recv(10) == b"abc"


def test_bytes_given_back_twice_keep_their_order() -> None:
    # the sending thread gives back a whole A-ABORT PDU it read; the DUL's reader takes its
    # 6-byte header, sees it is not an answer and gives the header back: all 10 bytes must
    # come again, in order (the header once replaced the 4 bytes behind it)
    a_abort = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0])
    ours, theirs = socket.socketpair()
    ours.settimeout(2)                  # a lost byte fails the test instead of hanging it
    with ours, theirs:
        transport = bare_socket(ours)
        transport.unread(a_abort)
        head = transport.recv(6)
        transport.unread(head)
        assert transport.recv(6) == a_abort[:6]
        assert transport.recv(4) == a_abort[6:]
        theirs.sendall(b"next")
        assert transport.recv(4) == b"next"


def test_an_error_given_back_stays_behind_the_bytes_before_it() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(2)
    with ours, theirs:
        transport = bare_socket(ours)
        transport.unread(b"\x07\x00", ConnectionResetError("reset by peer"))
        transport.unread(transport.recv(1))
        assert transport.recv(2) == b"\x07\x00"
        with pytest.raises(ConnectionResetError):
            transport.recv(4)


# --- file meta read without pydicom ----------------------------------------------------------

def write_part10(path: Path, syntax: str, *, extra_meta: bool = False) -> None:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "META1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    if extra_meta:
        ds.file_meta.SourceApplicationEntityTitle = "SRC"
        ds.file_meta.PrivateInformationCreatorUID = generate_uid()
        ds.file_meta.PrivateInformation = b"\x01\x02" * 40
    if syntax == JPEGBaseline8Bit:
        ds.PixelData = encapsulate([b"\xff\xd8" + b"\0" * 100 + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    JPEGBaseline8Bit])
@pytest.mark.parametrize("extra_meta", [False, True])
def test_file_meta_reads_as_split_dataset(tmp_path: Path, syntax: str, extra_meta: bool
                                          ) -> None:
    path = tmp_path / "x.dcm"
    write_part10(path, syntax, extra_meta=extra_meta)
    meta = read_file_meta(path)
    file_meta, offset = split_dataset(path)
    assert meta.offset == offset
    assert meta.sop_class == file_meta.MediaStorageSOPClassUID
    assert meta.sop_instance == file_meta.MediaStorageSOPInstanceUID
    assert meta.transfer_syntax == file_meta.TransferSyntaxUID


def assert_read_as_split_dataset(path: Path) -> None:
    try:
        file_meta, offset = split_dataset(path)
    except Exception as err:  # noqa: BLE001 - whatever it raises, ours raises too
        with pytest.raises(type(err)):
            read_file_meta(path)
        return
    meta = read_file_meta(path)
    assert meta.offset == offset
    assert meta.sop_class == str(file_meta.get("MediaStorageSOPClassUID", "") or "")
    assert meta.transfer_syntax == str(file_meta.get("TransferSyntaxUID", "") or "")


# pydicom warns about the truncated UIDs it reads from cut files
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_file_meta_of_odd_files_is_read_as_split_dataset_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    write_part10(path, ExplicitVRLittleEndian, extra_meta=True)
    good = path.read_bytes()
    _meta, offset = split_dataset(path)
    odd = tmp_path / "odd.dcm"
    # cut anywhere in the preamble or the meta information, or just after it
    for cut in [*range(0, offset + 2), offset + 40]:
        odd.write_bytes(good[:cut])
        assert_read_as_split_dataset(odd)
    odd.write_bytes(good[132:])                 # no preamble
    assert_read_as_split_dataset(odd)
    odd.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    assert_read_as_split_dataset(odd)
    with pytest.raises(OSError):
        read_file_meta(tmp_path / "missing.dcm")
