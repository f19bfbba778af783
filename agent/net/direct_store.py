"""C-STORE with the data set written to the socket straight from the spooled file.

Why: pynetdicom sends a data set as one P-DATA primitive per PDU (16 KB with Orthanc and
storescp), each handed through the DUL's queue, its state machine and a PDU encode on the
reactor thread: ~95 µs of Python per PDU, ~1.9 ms of the sending thread and ~1.2 ms of the
reactor per 0.5 MB object, against ~1.2 ms per whole object for DCMTK storescu (issue 18,
profile in README "Performance"). Here pynetdicom still negotiates, releases, aborts and reads
every PDU the archive sends; the request's bytes are written by us: the command set as
pynetdicom encodes it, then the data set in the same fragments pynetdicom would make (PS3.8
9.3.5, E.2: PDV of at most max PDU - 6 bytes, control header 0x00 / 0x02 on the last), ~1 MB
of the file per `sendmsg` call, headers and file slices as separate buffers so nothing is
copied and the GIL is released in the kernel call. The file meta information is read here too
(`read_file_meta`), and the plain C-STORE-RSP is decoded without pydicom, within a batch by
the sending thread itself, else by the DUL thread (agent.net.direct_response).

Whole messages are never interleaved with the DUL's own writes (an N-EVENT-REPORT-RSP, an
A-ABORT): both go through `WriteLock` of the association's socket (agent.net.ae), held here for
the whole message. The association's reactor is paused exactly as pynetdicom's own
`send_c_store` pauses it, so the response is taken by us and nobody else.

Over TLS (an ssl.SSLSocket has no sendmsg) each ~1 MB batch is joined and written with
sendall under the socket's SSL lock, which the DUL's reads take too: OpenSSL does not allow
two threads in one SSL object at once.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID

from agent.net import direct_response
from agent.net.direct_response import StoreResponse

#: a spool file's path, as str or os.PathLike
StrPath = str | os.PathLike[str]

#: bytes of the file read and written per sendmsg call (a whole number of fragments is used)
BATCH_BYTES = 1024 * 1024
#: fragment size when the archive announces no maximum (0 = unlimited, PS3.8 D.1)
UNLIMITED_FRAGMENT_BYTES = 1024 * 1024
#: the most buffers one sendmsg takes (Linux IOV_MAX is 1024)
MAX_IOV = 1024

P_DATA_TF = 0x04
#: message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment
DATA_MORE, DATA_LAST, COMMAND_LAST = 0x00, 0x02, 0x03

#: non-blocking, no SIGPIPE; an int once: the IntFlag "|" costs ~0.7 us a call
_SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)

_HEADER = struct.Struct(">BBLLBB")     # PDU type, reserved, PDU length, PDV length, id, control


class WireError(OSError):
    """Writing the request failed: the connection is gone or the archive stopped reading for
    longer than the DIMSE timeout. The association is aborted; the object's outcome is
    unknown (part of it may have arrived)."""


def supports(assoc: Any) -> bool:
    """Whether this association can take the direct path (a socket we created, with the
    locks agent.net.ae.NoDelayAssociationSocket gives it)."""
    transport = assoc.dul.socket
    sock = getattr(transport, "socket", None)
    return (isinstance(sock, socket.socket)
            and getattr(transport, "write_lock", None) is not None
            and getattr(transport, "ssl_lock", None) is not None
            and callable(getattr(transport, "unread", None)))


def pdu_header(context_id: int, control: int, length: int) -> bytes:
    """The 12 bytes before a PDV's data: P-DATA-TF header and the one PDV item's header."""
    return _HEADER.pack(P_DATA_TF, 0, length + 6, length + 2, context_id, control)


def _element(keyword: str, value: bytes) -> bytes:
    # Implicit VR Little Endian, group 0000 (PS3.7 6.3.1, PS3.5 7.1.3)
    tag = tag_for_keyword(keyword)
    assert tag is not None and tag >> 16 == 0x0000, keyword
    return struct.pack("<HHL", 0x0000, tag & 0xFFFF, len(value)) + value


def _element_header(keyword: str) -> bytes:
    # the tag of an element whose length is packed per message (after it, "<L")
    tag = tag_for_keyword(keyword)
    assert tag is not None and tag >> 16 == 0x0000, keyword
    return struct.pack("<HH", 0x0000, tag & 0xFFFF)


# the parts of the command set that are the same in every C-STORE-RQ, encoded once: per
# object only the two UIDs, the message ID and the group length are packed (issue 18: the
# sending thread's Python per object)
_SOP_CLASS_TAG = _element_header("AffectedSOPClassUID")
_MESSAGE_ID_TAG = _element_header("MessageID") + struct.pack("<L", 2)
_SOP_INSTANCE_TAG = _element_header("AffectedSOPInstanceUID")
_COMMAND_FIELD = _element("CommandField", struct.pack("<H", 0x0001))            # C-STORE-RQ
_PRIORITY_AND_TYPE = (_element("Priority", struct.pack("<H", 0x0002))           # low
                      + _element("CommandDataSetType", struct.pack("<H", 0x0001)))  # data set
_GROUP_LENGTH_TAG = _element_header("CommandGroupLength") + struct.pack("<L", 4)
_LENGTH = struct.Struct("<L")
_MESSAGE_ID = struct.Struct("<H")


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\x00" if len(encoded) % 2 else encoded     # UI pads with NUL


def command_bytes(msg_id: int, sop_class: str, sop_instance: str) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), encoded here instead of by pynetdicom's
    message classes, which cost ~0.4 ms per object through pydicom; the test holds it byte for
    byte to pynetdicom's own encoding (priority low, Command Data Set Type 0x0001 "present",
    no Move Originator).

    Raises
    ------
    ValueError
        A UID that is not ASCII.
    """
    sop_class_value, sop_instance_value = _uid(sop_class), _uid(sop_instance)
    body = b"".join((                               # in tag order
        _SOP_CLASS_TAG, _LENGTH.pack(len(sop_class_value)), sop_class_value,
        _COMMAND_FIELD,
        _MESSAGE_ID_TAG, _MESSAGE_ID.pack(msg_id),
        _PRIORITY_AND_TYPE,
        _SOP_INSTANCE_TAG, _LENGTH.pack(len(sop_instance_value)), sop_instance_value,
    ))
    return _GROUP_LENGTH_TAG + _LENGTH.pack(len(body)) + body


def send_c_store_direct(assoc: Any, path: StrPath, msg_id: int, *,
                        more_follow: bool = False) -> StoreResponse:
    """Send the Part 10 file at `path` by C-STORE on `assoc`; the response's status (None: no
    response, the association aborted) and Error Comment, whichever way it was read.

    The calling thread reads the answer itself where it can (direct_response.take_reading).
    With `more_follow` it stays the socket's reader after a normal return, for the next
    C-STORE it sends at once: the caller must then call `direct_response.end_reading` before
    it does anything else on the association (the DUL does not read the socket meanwhile).

    `path` may be a plain str, as the sending process passes it: pathlib interns every part of
    a path, and a unique spool file name per object made each sending process's table of
    interned strings grow once by ~0.9 MB of RSS (issue 18 item 4b).

    Raises
    ------
    OSError
        The file cannot be read (nothing was sent).
    ValueError
        No accepted presentation context for the file's SOP class in its own transfer syntax
        (nothing was sent): the caller converts the file and uses pynetdicom's path.
    AttributeError
        The file has no SOP Class / Instance UID or transfer syntax in its meta information.
    WireError
        Writing failed part way; the association is aborted.
    """
    # one descriptor for the meta information and the data set, opened before anything is
    # sent (os-level: a Python file object costs more than the reads here)
    keep_reading = False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            response = _send_open_file(assoc, fd, path, msg_id)
        finally:
            _drop_cached(fd)
            os.close(fd)
        keep_reading = more_follow
        return response
    finally:
        if not keep_reading:
            direct_response.end_reading(assoc)


def _drop_cached(fd: int) -> None:
    """On the wire, the file's pages are of no use in the page cache: a resend reads it from
    disk, and the next frame's spool write reuses the pages (agent.queue.spool.drop_cached
    says why that matters; the same advice here, the queue not being the network's to
    import). Advice only: refused, nothing changes."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def _send_open_file(assoc: Any, fd: int, path: StrPath, msg_id: int) -> StoreResponse:
    meta = _read_file_meta(fd, path)
    missing = [kw for kw, value in (("MediaStorageSOPClassUID", meta.sop_class),
                                    ("MediaStorageSOPInstanceUID", meta.sop_instance),
                                    ("TransferSyntaxUID", meta.transfer_syntax)) if not value]
    if missing:
        raise AttributeError(f"{path}: file meta information lacks {', '.join(missing)}")
    sop_class, sop_instance, offset = meta.sop_class, meta.sop_instance, meta.offset
    context_id = _context_id(assoc, sop_class, meta.transfer_syntax)
    command = command_bytes(msg_id, sop_class, sop_instance)
    length = os.fstat(fd).st_size - offset

    direct_response.install(assoc)
    _pause_reactor(assoc)
    expected = direct_response.Expected(context_id, msg_id)
    # before the first byte: the answer may come while the last ones are still written
    direct_response.expect(assoc, expected)
    reading_here = direct_response.take_reading(assoc)
    try:
        _write_message(assoc, _FileSlice(fd, path, offset), length, context_id, command)
        response = None
        if reading_here:
            response = direct_response.read_answer(assoc, expected, assoc.dimse_timeout)
        if response is None:
            _cx, response = assoc.dimse.get_msg(block=True)
    except TimeoutError:
        # read here, no answer within the DIMSE timeout: as pynetdicom's own wait would end
        response = None
    except WireError:
        direct_response.end_reading(assoc)
        assoc._reactor_checkpoint.set()
        # a half-sent message cannot be taken back: the association ends here (outside
        # the write lock, which the A-ABORT's own write needs)
        assoc.abort()
        raise
    finally:
        direct_response.expect(assoc, None)
        assoc._reactor_checkpoint.set()
    if response is None:
        assoc._handle_no_response()
        if assoc.acse.is_aborted() or assoc.is_aborted:
            # the archive aborted or closed the connection (pynetdicom's state machine put the
            # A-ABORT / A-P-ABORT indication before waking us): the association is over now,
            # not only once its reactor next looks, so the caller's next "still established?"
            # does not send another object into it (seen at a 200 ms reactor wait)
            assoc.is_established = False
        return StoreResponse(None)
    if isinstance(response, StoreResponse):
        return response
    # declined by the fast path: pynetdicom decoded it
    return StoreResponse.from_dataset(assoc._check_received_status(response))


def _context_id(assoc: Any, sop_class: str, transfer_syntax: str) -> int:
    """The presentation context pynetdicom would choose for a file sent as it is (its own
    syntax, no conversion), remembered per association: the accepted contexts never change
    during one, and pynetdicom's choice builds and validates two pydicom UIDs per object.

    Raises
    ------
    ValueError
        No accepted context for that SOP class in that transfer syntax (not remembered).
    """
    chosen: dict[tuple[str, str], int] | None = getattr(assoc, "_agent_context_ids", None)
    if chosen is None:
        chosen = assoc._agent_context_ids = {}
    key = (sop_class, transfer_syntax)
    context_id = chosen.get(key)
    if context_id is None:
        context = assoc._get_valid_context(sop_class, UID(transfer_syntax), "scu",
                                           allow_conversion=False)
        context_id = chosen[key] = int(context.context_id)
    return context_id


class _FileSlice:
    """The data set's bytes of an open spool file, read in order with pread (no seek, no file
    object)."""

    def __init__(self, fd: int, path: StrPath, offset: int) -> None:
        self.fd, self.name, self.position = fd, str(path), offset

    def readinto(self, buffer: memoryview) -> int:
        got = os.preadv(self.fd, [buffer], self.position)
        self.position += got
        return got


@dataclass(frozen=True)
class FileMeta:
    """What a C-STORE needs of a Part 10 file's meta information ("" for an element absent)."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    offset: int                 # where the data set starts


#: the first read for the file meta information (ours is ~200 bytes), and the most read for
#: it: a longer group is left to pydicom
_META_FIRST_READ_BYTES, _META_READ_BYTES = 2048, 16384
_PREAMBLE_BYTES = 132           # 128-byte preamble and "DICM" (PS3.10 7.1)
#: Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                       b"UN", b"UR", b"UT", b"UV"})
_META_ELEMENTS = {0x0002: "sop_class", 0x0003: "sop_instance", 0x0010: "transfer_syntax"}


def read_file_meta(path: StrPath) -> FileMeta:
    """The file meta information as pynetdicom's split_dataset reads it (group 0002 elements
    in Explicit VR Little Endian after the preamble, up to the first element of another
    group), decoded here: through pydicom it cost ~0.15 ms per object (issue 18). Anything
    unusual (no "DICM", an undefined length, a meta group over 16 KB) is read by
    split_dataset itself, with its errors.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_file_meta(fd, path)
    finally:
        os.close(fd)


def _read_file_meta(fd: int, path: StrPath) -> FileMeta:
    head = os.pread(fd, _META_FIRST_READ_BYTES, 0)
    meta = _parse_file_meta(head, _META_FIRST_READ_BYTES)
    if meta is None and len(head) == _META_FIRST_READ_BYTES:
        head = os.pread(fd, _META_READ_BYTES, 0)
        meta = _parse_file_meta(head, _META_READ_BYTES)
    if meta is not None:
        return meta
    from pathlib import Path

    from pynetdicom.dsutils import split_dataset

    file_meta, offset = split_dataset(Path(path))     # the rare file: a Path costs nothing
    return FileMeta(str(file_meta.get("MediaStorageSOPClassUID", "") or ""),
                    str(file_meta.get("MediaStorageSOPInstanceUID", "") or ""),
                    str(file_meta.get("TransferSyntaxUID", "") or ""), offset)


def _parse_file_meta(head: bytes, asked: int) -> FileMeta | None:
    if len(head) < _PREAMBLE_BYTES or head[128:132] != b"DICM":
        return None
    found = {"sop_class": "", "sop_instance": "", "transfer_syntax": ""}
    offset = _PREAMBLE_BYTES
    while True:
        if offset == len(head):
            if len(head) == asked:
                return None             # may go on beyond what was read
            return FileMeta(offset=offset, **found)     # a file of meta information only
        if len(head) - offset < 8:
            return None
        group, element = struct.unpack_from("<HH", head, offset)
        if group != 0x0002:
            return FileMeta(offset=offset, **found)
        vr = head[offset + 4:offset + 6]
        if vr in _LONG_VRS:
            if len(head) - offset < 12:
                return None
            (length,) = struct.unpack_from("<L", head, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", head, offset + 6)
            start = offset + 8
        if length == 0xFFFFFFFF or start + length > len(head):
            return None
        name = _META_ELEMENTS.get(element)
        if name is not None:
            if vr != b"UI":
                return None
            try:
                value = head[start:start + length].decode("ascii").strip("\x00 ")
            except UnicodeDecodeError:
                return None
            if "\\" in value:
                return None             # several values: pydicom's reading decides
            found[name] = value
        offset = start + length


def _pause_reactor(assoc: Any) -> None:
    # as Association.send_c_store: the reactor stops taking DIMSE messages, so the response
    # is ours (agent.net.pynetdicom_fixes makes that hold also for a reactor past its check)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)


def _write_message(assoc: Any, file: Any, length: int, context_id: int,
                   command: bytes) -> None:
    transport = assoc.dul.socket
    sock: socket.socket = transport.socket
    max_pdu = int(assoc.acceptor.maximum_length or 0)
    fragment = max_pdu - 6 if max_pdu else UNLIMITED_FRAGMENT_BYTES
    if fragment <= 0:
        raise WireError(f"archive announced a maximum PDU of {max_pdu} bytes")
    # a command set of a C-STORE (~200 bytes) always fits one fragment of a legal max PDU
    timeout_s = assoc.dimse_timeout
    per_batch = max(1, min(BATCH_BYTES // fragment, MAX_IOV // 2))
    view = _batch_buffer(min(per_batch * fragment, length))
    if isinstance(sock, ssl.SSLSocket):
        def send(sock: Any, buffers: list[Any], timeout_s: float | None) -> None:
            _send_tls(sock, buffers, timeout_s, transport.ssl_lock)
    else:
        send = _send_all
    with transport.write_lock:
        try:
            send(sock, [pdu_header(context_id, COMMAND_LAST, len(command)), command],
                 timeout_s)
            remaining = length
            if remaining == 0:
                # Command Data Set Type says a data set follows: send it, empty and last
                send(sock, [pdu_header(context_id, DATA_LAST, 0)], timeout_s)
            while remaining > 0:
                want = min(remaining, len(view))
                got = file.readinto(view[:want])
                if got != want:
                    # the spool file changed under us (it never should): part of the message
                    # is out already, so this too ends the association
                    raise WireError(f"{file.name}: file shorter than it was ({got} of {want} "
                                    "bytes read)")
                buffers: list[Any] = []
                for start in range(0, got, fragment):
                    end = min(start + fragment, got)
                    last = remaining - end == 0
                    buffers.append(pdu_header(context_id, DATA_LAST if last else DATA_MORE,
                                              end - start))
                    buffers.append(view[start:end])
                send(sock, buffers, timeout_s)
                remaining -= got
        except WireError:
            raise
        except (OSError, ValueError) as err:
            # ValueError: the DUL closed the socket under us (the archive aborted), so it
            # has no descriptor left to poll or write
            raise WireError(f"sending the C-STORE request failed: {err}") from err
        finally:
            view.release()


#: per thread, the buffer a batch of the file is read into: kept between objects, because a
#: new one per object (zero-filled, ~1 MB) cost the sending thread as much as the kernel's
#: copy of the data into the socket (issue 18, perf of a sending process into Orthanc)
_BUFFERS = threading.local()


def _batch_buffer(size: int) -> memoryview:
    """A writable view of `size` bytes (release it after use), from this thread's buffer,
    which only grows (to at most one batch, ~1 MB)."""
    buffer: bytearray | None = getattr(_BUFFERS, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _BUFFERS.buffer = bytearray(size)
    return memoryview(buffer)[:size]


def _send_tls(sock: ssl.SSLSocket, buffers: list[Any], timeout_s: float | None,
              ssl_lock: Any) -> None:
    """One sendall of the joined buffers (an SSLSocket has no sendmsg; one ~1 MB copy) under
    the SSL lock, with the DIMSE timeout as the socket's timeout meanwhile: the DUL's reads
    take the same lock, so nothing else uses the socket until it is restored."""
    data = b"".join(buffers)
    with ssl_lock:
        previous = sock.gettimeout()
        sock.settimeout(timeout_s)
        try:
            sock.sendall(data)
        except TimeoutError as err:
            raise TimeoutError(f"the archive read nothing for {timeout_s:g} s") from err
        finally:
            sock.settimeout(previous)


def _send_all(sock: socket.socket, buffers: list[Any], timeout_s: float | None) -> None:
    """sendmsg until every byte of `buffers` (bytes or one-byte-per-item views) is written;
    non-blocking calls with a poll in between so that an archive that stops reading is
    noticed after `timeout_s`."""
    flags = _SEND_FLAGS
    try:
        sent = sock.sendmsg(buffers, (), flags)
    except BlockingIOError:
        sent = 0
    if sent == sum(map(len, buffers)):
        return              # the usual case: the socket took the whole batch at once
    pending = _unsent([memoryview(b).cast("B") for b in buffers], sent)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    try:
        while pending:
            if not poller.poll(None if timeout_s is None else timeout_s * 1000):
                raise TimeoutError(f"the archive read nothing for {timeout_s:g} s")
            try:
                sent = sock.sendmsg(pending, (), flags)
            except BlockingIOError:
                sent = 0
            pending = _unsent(pending, sent)
    finally:
        poller.unregister(sock)


def _unsent(pending: list[memoryview], sent: int) -> list[memoryview]:
    """What is left of `pending` after its first `sent` bytes went out."""
    while sent and pending:
        head = pending[0]
        if sent >= len(head):
            sent -= len(head)
            pending.pop(0)
        else:
            pending[0] = head[sent:]
            sent = 0
    return pending
