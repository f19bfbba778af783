"""The C-STORE-RSP to a directly written C-STORE, taken off the wire by the DUL thread itself.

Why: after agent.net.direct_store took the request's bytes off pynetdicom's per-PDU path, the
response became the larger cost of a sending process on 0.5 MB objects: the DUL thread spent
~0.4 ms per object handing one ~150-byte PDU through its event queue and state machine (DT-2),
the DIMSE provider decoding the command set through pydicom, a message primitive built from it,
and the sending thread ~0.1 ms more turning that into a status Dataset (per-thread CPU and
py-spy, issue 18). DCMTK storescu spends ~1 ms on the whole object.

How: while a direct C-STORE waits for its answer (`expect`), the DUL's `_read_pdu_data` reads
the next PDU as pynetdicom would and, if it is exactly the expected answer in its plainest form,
puts a `StoreResponse` straight in the DIMSE message queue the sender waits on. Anything else
(another PDU type, several PDVs, a data set, another message, an element we do not decode here,
the state machine not in plain data transfer, anything already queued before it) is given back
unread to pynetdicom's own `_read_pdu_data`, which reads the same bytes through the socket's
`unread` buffer (agent.net.ae.NoDelayAssociationSocket) and does all it always did. pynetdicom's
notification events for that one PDU (EVT_PDU_RECV, EVT_DATA_RECV, EVT_DIMSE_RECV, debug logging
only; the agent binds none of them) are not triggered.

The plainest form (PS3.7 9.3.1.2, E.1; PS3.8 9.3.5, E.2): one P-DATA-TF PDU with one PDV on the
request's presentation context, control header "command, last fragment", an Implicit VR Little
Endian group 0000 command set with Command Field C-STORE-RSP (8001H), Message ID Being Responded
To equal to the request's, Command Data Set Type "no data set" (0101H), a Status, and otherwise
only Command Group Length, Affected SOP Class / Instance UID and Error Comment.
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from types import MethodType
from typing import Any

from pydicom.dataset import Dataset

P_DATA_TF = 0x04
#: PS3.8 E.2 message control header: a command, and its last (here only) fragment
COMMAND_LAST = 0x03
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
#: a C-STORE-RSP with a 64-character comment and both UIDs is ~250 bytes; bigger goes the
#: ordinary way
MAX_FAST_PDU_BYTES = 1024

# group 0000 element numbers (PS3.7 E.1)
_GROUP_LENGTH, _SOP_CLASS, _COMMAND_FIELD, _RESPONDED_TO = 0x0000, 0x0002, 0x0100, 0x0120
_DATA_SET_TYPE, _STATUS, _ERROR_COMMENT, _SOP_INSTANCE = 0x0800, 0x0900, 0x0902, 0x1000
_DECODED_HERE = frozenset({_GROUP_LENGTH, _SOP_CLASS, _COMMAND_FIELD, _RESPONDED_TO,
                           _DATA_SET_TYPE, _STATUS, _ERROR_COMMENT, _SOP_INSTANCE})
_US_ELEMENTS = (_COMMAND_FIELD, _RESPONDED_TO, _DATA_SET_TYPE, _STATUS)

_PDU_HEADER_BYTES = 6              # PDU type, reserved, PDU length (PS3.8 9.3.1)
_PDV_HEADER = struct.Struct(">LBB")
_ELEMENT_HEADER = struct.Struct("<HHL")


@dataclass(frozen=True)
class StoreResponse:
    """A C-STORE-RSP decoded here: what pynetdicom's `send_c_store` would return of it."""

    #: None: no response (timeout, abort, an invalid response): the outcome is unknown
    status: int | None
    error_comment: str | None = None

    @classmethod
    def from_dataset(cls, status: Dataset) -> StoreResponse:
        """From what pynetdicom's send_c_store returns (an empty Dataset: no response)."""
        if "Status" not in status:
            return cls(None)
        comment = status.get("ErrorComment")
        return cls(int(status.Status), None if comment is None else str(comment))

    def status_dataset(self) -> Dataset:
        """As Association._check_received_status builds it: Status, and the optional status
        elements the response carried."""
        ds = Dataset()
        if self.status is None:
            return ds
        ds.Status = self.status
        if self.error_comment is not None:
            ds.ErrorComment = self.error_comment
        return ds


@dataclass(frozen=True)
class Expected:
    """The answer a direct C-STORE waits for."""

    context_id: int
    message_id: int


def parse_store_response(pdu_body: bytes | bytearray, expected: Expected
                         ) -> StoreResponse | None:
    """The response in `pdu_body` (a P-DATA-TF PDU after its 6-byte header) if it is exactly
    `expected` in the plain form the module's docstring gives; None for anything else (then
    pynetdicom decodes it)."""
    if len(pdu_body) < _PDV_HEADER.size:
        return None
    item_length, context_id, control = _PDV_HEADER.unpack_from(pdu_body, 0)
    if (item_length != len(pdu_body) - 4 or context_id != expected.context_id
            or control != COMMAND_LAST):
        return None
    values: dict[int, bytes] = {}
    offset, end = _PDV_HEADER.size, len(pdu_body)
    while offset < end:
        if end - offset < _ELEMENT_HEADER.size:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(pdu_body, offset)
        offset += _ELEMENT_HEADER.size
        if (group != 0x0000 or element not in _DECODED_HERE or element in values
                or length > end - offset):
            return None
        values[element] = bytes(pdu_body[offset:offset + length])
        offset += length
    if any(len(values.get(e, b"")) != 2 for e in _US_ELEMENTS):
        return None
    command, responded_to, data_set_type, status = (
        struct.unpack("<H", values[e])[0] for e in _US_ELEMENTS)
    if (command != C_STORE_RSP or responded_to != expected.message_id
            or data_set_type != NO_DATA_SET):
        return None
    comment: str | None = None
    if _ERROR_COMMENT in values:
        try:
            # LO in the default repertoire (PS3.5 6.1.2); padding as pydicom strips it
            comment = values[_ERROR_COMMENT].decode("ascii").rstrip(" \x00")
        except UnicodeDecodeError:
            return None
        if not comment:
            return None             # an empty element: what pynetdicom makes of it decides
    return StoreResponse(status, comment)


def expect(assoc: Any, expected: Expected | None) -> None:
    """Set (before the request's first byte is written) or clear the answer awaited."""
    assoc.dul._agent_expected = expected


def fast_responses(assoc: Any) -> int:
    """How many responses this association's DUL took by the fast path (for tests and bench)."""
    return int(getattr(assoc.dul, "_agent_fast_responses", 0))


def install(assoc: Any) -> None:
    """Give the association's DUL the response-aware `_read_pdu_data` (once; any thread: the
    DUL looks the method up on every read). The socket must support `unread`."""
    dul = assoc.dul
    if getattr(dul, "_agent_expected", _MISSING) is not _MISSING:
        return
    dul._agent_expected = None
    dul._agent_fast_responses = 0
    original = dul._read_pdu_data
    dul._read_pdu_data = MethodType(_reading(original), dul)


_MISSING = object()


def _reading(original: Any) -> Any:
    def _read_pdu_data(dul: Any) -> None:
        transport = dul.socket
        lock = getattr(transport, "read_lock", None)
        if lock is None:
            _read_on_dul(dul, transport, original)
            return
        with lock:
            if transport.direct_reader:
                # the socket looked readable before the sending thread took it over: the
                # sending thread reads this PDU (take_reading)
                return
            if not transport.has_unread() and not _still_readable(transport):
                # it looked readable, and the sending thread read what was there (and gave
                # the socket back) before we got the lock: a read now would block until the
                # archive sends again, which may wait for us (an A-RELEASE-RP, say)
                return
            _read_on_dul(dul, transport, original)

    return _read_pdu_data


def _still_readable(transport: Any) -> bool:
    sock = transport.socket
    if not isinstance(sock, socket.socket):
        return True             # closed under us: pynetdicom's read reports it
    try:
        if isinstance(sock, ssl.SSLSocket) and _tls_pending(transport, sock):
            return True
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True             # closed under us: pynetdicom's read reports it
    return bool(readable)


def _read_on_dul(dul: Any, transport: Any, original: Any) -> None:
    """The DUL's read of one PDU: the expected answer by the fast path, else pynetdicom's."""
    expected: Expected | None = dul._agent_expected
    if expected is None or transport is None:
        original()
        return
    try:
        head = transport.recv(6)
    except (OSError, TimeoutError) as err:
        transport.unread(b"", err)      # pynetdicom's own read meets the same error
        original()
        return
    if len(head) < 6 or head[0] != P_DATA_TF:
        transport.unread(head)
        original()
        return
    length = int.from_bytes(head[2:6], "big")
    if length > MAX_FAST_PDU_BYTES:
        transport.unread(head)
        original()
        return
    try:
        body = transport.recv(length)
    except (OSError, TimeoutError) as err:
        transport.unread(head, err)
        original()
        return
    response = parse_store_response(body, expected) if len(body) == length else None
    if response is None or not _in_plain_transfer(dul):
        transport.unread(head + body)
        original()
        return
    dul._agent_expected = None          # one answer per request
    dul._agent_fast_responses += 1
    # queue.Queue's own put: it wakes the sender blocked in get(); the association reactor
    # (paused for this C-STORE) has nothing to do with the answer, so it is not woken
    # (agent.net.quiet_reactor.WakingQueue would) and sleeps on
    queue.Queue.put(dul.assoc.dimse.msg_queue, (expected.context_id, response))


def _in_plain_transfer(dul: Any) -> bool:
    # Sta6 (data transfer) with nothing received before this PDU still waiting to be handled,
    # so putting the answer in the message queue now keeps the order pynetdicom would keep
    return (dul.state_machine.current_state == "Sta6" and dul.event_queue.empty()
            and dul._recv_pdu.empty() and dul.assoc.dimse.message is None)


# -- the answer read on the sending thread -----------------------------------------------------
#
# Why: with the answer read by the DUL thread, every object costs a wake-up of that thread
# (out of select, the read, a queue hand-off to the sending thread, a 1 ms sleep and back into
# select): ~0.2-0.3 ms of CPU per object on the DUL thread and ~2.5 context switches (issue
# 18, per-thread CPU of a sending process into Orthanc). While a sending process sends a batch
# of C-STOREs, the sending thread reads the socket itself: the DUL leaves the socket alone
# (agent.net.quiet_reactor.wait_ready, and `_read_pdu_data` above under the read lock) and
# sleeps. Whatever is not exactly the expected answer in its plainest form is given back
# unread, and the socket with it: the DUL reads those bytes (and everything after them) as it
# always did, and the sending thread waits for pynetdicom's message queue.


def take_reading(assoc: Any) -> bool:
    """Let the calling (sending) thread read the association's socket from now on; False if
    it may not: pynetdicom's own loops (they poll the socket), bytes given back and not yet
    read, or the DUL in the middle of reading a PDU (never waited for: it may wait on a slow
    peer). Over TLS every read takes the socket's SSL lock, as the DUL's do."""
    transport = assoc.dul.socket
    if transport is None:
        return False
    if getattr(transport, "direct_reader", False):
        return True
    sock = getattr(transport, "socket", None)
    if getattr(transport, "waker", None) is None or not isinstance(sock, socket.socket):
        return False
    lock = transport.read_lock
    if not lock.acquire(blocking=False):
        return False
    try:
        if transport.has_unread():
            return False
        transport.direct_reader = True
        return True
    finally:
        lock.release()


def end_reading(assoc: Any, data: bytes | bytearray = b"",
                error: BaseException | None = None) -> None:
    """Give the socket back to the DUL, with the bytes read from it that are not ours (and the
    error reading met), and wake the DUL so that it reads them and waits on the socket again.
    Nothing if the calling thread does not read it."""
    transport = assoc.dul.socket
    if transport is None or not getattr(transport, "direct_reader", False):
        return
    with transport.read_lock:
        if data or error is not None:
            transport.unread(data, error)
        transport.direct_reader = False
    waker = transport.waker
    if waker is not None:
        waker.wake_dul()


def read_answer(assoc: Any, expected: Expected, timeout_s: float | None
                ) -> StoreResponse | None:
    """The answer to a direct C-STORE, read by the calling thread (which `take_reading`
    made the socket's reader). None: it was not the plain answer, or reading failed; then
    what was read is given back and the DUL reads from now on (the caller waits for
    pynetdicom's message queue, as before).

    Raises
    ------
    TimeoutError
        Nothing came for `timeout_s` (the DIMSE timeout); the socket is the DUL's again.
    """
    dul = assoc.dul
    transport = dul.socket
    sock: socket.socket | None = transport.socket
    poller = select.poll()
    try:
        if sock is None:
            raise ValueError("socket closed")
        poller.register(sock, select.POLLIN)
    except (OSError, ValueError):
        end_reading(assoc)              # closed under us: the DUL's state machine says how
        return None
    tls_sock = sock if isinstance(sock, ssl.SSLSocket) else None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    data = bytearray()
    need = _PDU_HEADER_BYTES
    while len(data) < need:
        # decrypted bytes OpenSSL holds already are invisible to poll (pynetdicom #528)
        if not (tls_sock is not None and _tls_pending(transport, tls_sock)):
            wait_ms = (-1 if deadline is None
                       else max(0, int((deadline - time.monotonic()) * 1000)))
            if not poller.poll(wait_ms):
                if deadline is not None and time.monotonic() >= deadline:
                    end_reading(assoc, data)
                    raise TimeoutError(f"no answer within {timeout_s:g} s")
                continue
        # the answer whole in one call, usually; more than one PDU is given back below
        want = _PDU_HEADER_BYTES + MAX_FAST_PDU_BYTES - len(data)
        try:
            chunk = (_recv_tls(transport, tls_sock, want, deadline) if tls_sock is not None
                     else sock.recv(want))
        except BlockingIOError:
            continue
        except TimeoutError:
            # a TLS record begun and not finished within the DIMSE timeout
            end_reading(assoc, data)
            raise TimeoutError(f"no answer within {timeout_s:g} s") from None
        except OSError as err:
            if isinstance(err, ssl.SSLError):
                transport.tls_error = err           # as the DUL's read records it (issue 14)
            end_reading(assoc, data, err)           # the DUL's read meets the same error
            return None
        if not chunk:
            end_reading(assoc, data)                # closed: the DUL sees that too
            return None
        data += chunk
        if need == _PDU_HEADER_BYTES and len(data) >= _PDU_HEADER_BYTES:
            length = int.from_bytes(data[2:6], "big")
            if data[0] != P_DATA_TF or length > MAX_FAST_PDU_BYTES:
                end_reading(assoc, data)
                return None
            need += length
    response = parse_store_response(data[_PDU_HEADER_BYTES:need], expected)
    if response is None or not _in_plain_transfer(dul):
        end_reading(assoc, data)
        return None
    dul._agent_expected = None
    dul._agent_fast_responses += 1
    # as the DUL does after every PDU it reads: the network timeout counts from the last one
    dul._idle_timer.restart()
    if len(data) > need:
        end_reading(assoc, data[need:])             # the archive said more: pynetdicom's
    return response


def _tls_pending(transport: Any, sock: ssl.SSLSocket) -> bool:
    with transport.ssl_lock:
        return bool(sock.pending())


def _recv_tls(transport: Any, sock: ssl.SSLSocket, size: int, deadline: float | None
              ) -> bytes:
    """One SSL read under the SSL lock (OpenSSL never in one SSL object from two threads),
    bounded by the deadline: poll saw bytes, but they may be part of a record, or a record
    that carries no data (a TLS 1.3 session ticket)."""
    with transport.ssl_lock:
        previous = sock.gettimeout()
        sock.settimeout(None if deadline is None
                        else max(0.001, deadline - time.monotonic()))
        try:
            return sock.recv(size)
        finally:
            sock.settimeout(previous)
