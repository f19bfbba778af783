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
import struct
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
        expected: Expected | None = dul._agent_expected
        transport = dul.socket
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

    return _read_pdu_data


def _in_plain_transfer(dul: Any) -> bool:
    # Sta6 (data transfer) with nothing received before this PDU still waiting to be handled,
    # so putting the answer in the message queue now keeps the order pynetdicom would keep
    return (dul.state_machine.current_state == "Sta6" and dul.event_queue.empty()
            and dul._recv_pdu.empty() and dul.assoc.dimse.message is None)
