"""Listener DoS (RELIABILITY.md §1.4 "Listener pitfalls", test 14; issue 13 finding 7) against the
real daemon process and real sockets: stalled connections must not hold the association slots,
and a peer must not make the daemon buffer P-DATA without bound."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support.agent_process import AGENT_AE, AgentProcess, Destination, make_agent
from support.peers import LOCALHOST, free_port, wait_until

pytestmark = pytest.mark.integration

ARCHIVE_AE = "ARCHIVE"
#: one more than the listener's maximum_associations (8)
STALLERS = 9
MIB = 1024 * 1024


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[AgentProcess, int]]:
    # the archive itself is never called: no object is queued in these tests
    listener_port = free_port()
    process = make_agent(tmp_path, [Destination("pacs", free_port(exclude=[listener_port]),
                                                ARCHIVE_AE)], listener_port=listener_port)
    process.start()
    try:
        yield process, listener_port
    finally:
        process.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def echo_succeeds(port: int) -> bool:
    """One C-ECHO as the configured archive AE; True if it got status 0x0000."""
    ae = AE(ae_title=ARCHIVE_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.connection_timeout = 5
    assoc = ae.associate(LOCALHOST, port, ae_title=AGENT_AE)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the daemon has closed its end (EOF or reset); drains what it sent first."""
    sock.settimeout(0.05)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def pdata_command_fragment(length: int) -> bytes:
    """A P-DATA-TF PDU with one PDV: `length` bytes of a command set, *not* the last fragment,
    so the receiver has to keep it until a last fragment arrives."""
    pdv = struct.pack(">LBB", length + 2, 1, 0x01) + b"\x00" * length
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def test_stalled_pdu_headers_do_not_hold_the_association_slots(
        agent: tuple[AgentProcess, int]) -> None:
    process, port = agent
    assert echo_succeeds(port), process.log()
    stallers = [socket.create_connection((LOCALHOST, port), timeout=5) for _ in range(STALLERS)]
    try:
        for sock in stallers:
            # the first 6 bytes of an A-ASSOCIATE-RQ header announcing 200 bytes, then nothing
            sock.sendall(struct.pack(">BBL", 0x01, 0, 200))
        # a real archive's association gets through within RELIABILITY.md test 14's 10 s while
        # the stallers still hold their sockets open (pynetdicom alone: 60 s per recv)
        wait_until(lambda: echo_succeeds(port), 10,
                   "a C-ECHO from the archive while 9 stalled connections are open",
                   poll_s=0.5)
        # ... because the daemon dropped them
        for sock in stallers:
            wait_until(lambda s=sock: closed_by_peer(s), 10, "the daemon to drop a staller")
    finally:
        for sock in stallers:
            sock.close()
    assert process.process is not None and process.process.poll() is None


def test_endless_pdata_fragments_are_not_buffered(agent: tuple[AgentProcess, int]) -> None:
    process, port = agent
    assert process.process is not None
    pid = process.process.pid
    ae = AE(ae_title=ARCHIVE_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOCALHOST, port, ae_title=AGENT_AE)
    assert assoc.is_established, process.log()
    raw = assoc.dul.socket.socket
    rss_before = rss_bytes(pid)
    # 200 MiB of command fragments in PDUs within the 1 MiB maximum the listener announced
    fragment = pdata_command_fragment(MIB - 64)
    sent = 0
    try:
        raw.settimeout(10)
        while sent < 200 * MIB:
            raw.sendall(fragment)
            sent += len(fragment)
    except OSError:
        # the daemon aborted the association (our DUL may already have closed the socket on
        # its A-ABORT): what should happen
        pass
    finally:
        assoc.abort()
        # pynetdicom's DUL closes its socket only after a clean shutdown(), which fails once
        # the daemon has aborted: closed here, or the garbage collector warns later
        raw.close()
    growth = rss_bytes(pid) - rss_before
    assert growth < 32 * MIB, f"daemon RSS grew by {growth / MIB:.0f} MiB ({sent} bytes sent)"
    wait_until(lambda: "P-DATA" in process.log(), 10, "a WARNING about the P-DATA cap")
    warnings = [line for line in process.log().splitlines() if "P-DATA" in line]
    assert any("WARNING" in line for line in warnings), warnings
    # the listener still serves the archive afterwards
    assert echo_succeeds(port), process.log()


def test_pdu_longer_than_the_announced_maximum_is_refused(
        agent: tuple[AgentProcess, int]) -> None:
    process, port = agent
    ae = AE(ae_title=ARCHIVE_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOCALHOST, port, ae_title=AGENT_AE)
    assert assoc.is_established, process.log()
    raw = assoc.dul.socket.socket
    try:
        # a header claiming 2 MiB: over the listener's 1 MiB maximum PDU, so nothing is read
        raw.sendall(struct.pack(">BBL", 0x04, 0, 2 * MIB))
        wait_until(lambda: "exceeds" in process.log(), 10, "a WARNING about the PDU length")
    finally:
        assoc.abort()
        raw.close()
    assert any("WARNING" in line and "exceeds" in line for line in process.log().splitlines())
    assert echo_succeeds(port), process.log()
