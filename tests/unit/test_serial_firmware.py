"""The serial firmware stub's own codec, its fault specs and its phantom (firmware_stubs/).

The stub is written from drivers/PROTOCOL.md separately from the driver's codec; these tests
hold it to the same worked examples, so each side is checked against the document, not only
against the other.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from support.peers import wait_until

from firmware_stubs import serial_protocol as wire
from firmware_stubs.faults import FAULT_KINDS, Fault, parse_fault
from firmware_stubs.serial_device import SerialFirmware
from firmware_stubs.xray_phantom import xray_phantom


def test_check_values() -> None:
    assert wire.crc8_smbus(b"123456789") == 0xF4
    assert wire.crc16_ccitt_false(b"123456789") == 0x29B1
    assert wire.crc32_frame(b"123456789") == 0xCBF43926


def test_worked_examples_of_protocol_md() -> None:
    assert wire.build_packet(wire.IDENTIFY, 1, b"") == bytes.fromhex("a55a 01 0100 0000 74 f2df")
    assert wire.build_packet(wire.SET_TECHNIQUE, 2, wire.pack_technique(700, 1000, 20000)) == \
        bytes.fromhex("a55a 03 0200 0a00 08 bc02 e8030000 204e0000 b903")
    assert wire.build_packet(wire.ACK, 0x0203, bytes.fromhex("0400 05 0700")) == \
        bytes.fromhex("a55a 80 0302 0500 3a 0400 05 0700 5c30")


def test_command_parser_resynchronises_byte_by_byte() -> None:
    arm = wire.build_packet(wire.ARM, 7, b"")
    damaged = bytearray(wire.build_packet(wire.EXPOSE, 8, b""))
    damaged[-1] ^= 1
    parser = wire.CommandParser()
    stream = b"\xa5\xa5\x5a\x00" + bytes(damaged) + arm[:5]
    assert parser.feed(stream) == []
    assert parser.feed(arm[5:]) == [(wire.ARM, 7, b"")]
    assert parser.rejected >= 1


def test_command_parser_finds_a_command_that_started_inside_a_rejected_one() -> None:
    arm = wire.build_packet(wire.ARM, 7, b"")
    truncated = wire.build_packet(wire.SET_TECHNIQUE, 6, bytes(10))[:12]
    assert wire.CommandParser().feed(truncated + arm + bytes(20)) == [(wire.ARM, 7, b"")]


@pytest.mark.parametrize(("spec", "expected"), [
    ("bad_crc@3", Fault("bad_crc", at=3)),
    ("drop_packet:on=chunk,times=2", Fault("drop_packet", on="chunk", times=2)),
    ("stall:seconds=1.5", Fault("stall", seconds=1.5)),
    ("garbage@2:nbytes=300", Fault("garbage", at=2, nbytes=300)),
    ("corrupt_pixels", Fault("corrupt_pixels", on="chunk")),
    ("disconnect@0", Fault("disconnect", at=0)),
])
def test_fault_specs(spec: str, expected: Fault) -> None:
    assert parse_fault(spec) == expected


@pytest.mark.parametrize(("spec", "problem"), [
    ("melt", "unknown fault 'melt'"),
    ("bad_crc@x", "invalid literal"),
    ("bad_crc:on=everything", "on: expected one of"),
    ("bad_crc@0", "at: expected >= 1"),
    ("stall:colour=red", "unknown key 'colour'"),
    ("drop_packet:times", "expected key=value"),
])
def test_bad_fault_specs_say_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        parse_fault(spec)
    assert spec in str(info.value)


def test_every_fault_is_described() -> None:
    assert set(FAULT_KINDS) >= {"garbage", "bad_crc", "drop_packet", "duplicate_packet",
                                "stall", "disconnect"}


def test_phantom_is_exact_per_frame_id_and_within_bits() -> None:
    first = xray_phantom(64, 48, 12, 5)
    assert first.dtype == np.uint16 and first.shape == (64, 48)
    assert np.array_equal(first, xray_phantom(64, 48, 12, 5))
    assert not np.array_equal(first, xray_phantom(64, 48, 12, 6))
    assert int(first.max()) < 4096
    small = xray_phantom(10, 10, 8, 1)
    assert small.dtype == np.uint8


# -- the firmware engine on a socketpair: no pty, no driver ----------------------------------

class Host:
    """A minimal host written in the test, speaking through the stub's own codec."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = _ReplyParser()
        self.seq = 100

    def command(self, packet_type: int, payload: bytes = b"", seq: int | None = None) -> None:
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.sock.sendall(wire.build_packet(packet_type, seq, payload))

    def replies(self, count: int) -> list[tuple[int, int, bytes]]:
        got: list[tuple[int, int, bytes]] = []
        self.sock.settimeout(5)
        while len(got) < count:
            got += self.parser.feed(self.sock.recv(65536))
        return got


class _ReplyParser(wire.CommandParser):
    """The stub's parser reads any packet type: reused here for the replies."""


@pytest.fixture(params=[2], ids=["v2"])
def protocol_version(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def firmware_on_socket(protocol_version: int) -> Iterator[tuple[SerialFirmware, Host]]:
    ours, theirs = socket.socketpair()
    firmware = SerialFirmware(rows=8, columns=10, bits_stored=12, chunk_size=64,
                              protocol_version=protocol_version)
    stop = threading.Event()
    thread = threading.Thread(target=firmware.run, args=(theirs.fileno(), stop), daemon=True)
    thread.start()
    try:
        yield firmware, Host(ours)
    finally:
        stop.set()
        thread.join(5)
        ours.close()
        theirs.close()


def test_a_repeated_expose_is_answered_again_not_exposed_again(
        firmware_on_socket: tuple[SerialFirmware, Host]) -> None:
    firmware, host = firmware_on_socket
    host.command(wire.SET_TECHNIQUE, wire.pack_technique(704, 1000, 20000))
    host.command(wire.ARM)
    assert [r[0] for r in host.replies(2)] == [wire.ACK, wire.ACK]
    host.command(wire.EXPOSE)
    expose_seq = host.seq
    # ACK, header, 3 chunks (160 bytes / 64), end
    replies = host.replies(6)
    assert replies[0][2][:3] == bytes([expose_seq & 0xFF, expose_seq >> 8, wire.EXPOSE])
    host.command(wire.EXPOSE, seq=expose_seq)        # same SEQ: its ACK was "lost"
    again = host.replies(1)[0]
    assert again[2] == replies[0][2]                  # the same answer...
    assert again[1] != replies[0][1]                  # ...in a new packet
    assert firmware.counters["exposures"] == 1
    assert firmware.counters["replayed_commands"] == 1
    header = replies[1][2]
    assert header[16:18] == (700).to_bytes(2, "little")   # 70.4 kV applied as 70 kV


def test_out_of_range_technique_is_refused_with_reasons(
        firmware_on_socket: tuple[SerialFirmware, Host]) -> None:
    firmware, host = firmware_on_socket
    host.command(wire.SET_TECHNIQUE, wire.pack_technique(1600, 10000, 10000))
    (reply,) = host.replies(1)
    assert reply[0] == wire.NAK
    assert reply[2][3] == wire.NAK_OUT_OF_RANGE
    assert b"tube voltage 160 kV outside 40..150" in reply[2]
    host.command(wire.ARM)
    assert host.replies(1)[0][2][3] == wire.NAK_BAD_STATE
    wait_until(lambda: firmware.counters["commands"] == 2, 5, "both commands counted")


# -- protocol version 2: the dose-area product --------------------------------------------------

def expose_once(host: Host) -> list[tuple[int, int, bytes]]:
    """IDENTIFY, technique 80 kV 10 mAs 20 ms, ARM, EXPOSE; the replies through FRAME_END."""
    host.command(wire.IDENTIFY)
    host.command(wire.SET_TECHNIQUE, wire.pack_technique(800, 1000, 20000))
    host.command(wire.ARM)
    host.command(wire.EXPOSE)
    return host.replies(4 + 1 + 3 + 1)     # 4 ACKs, header, 3 chunks, end


@pytest.mark.parametrize("protocol_version", [2], indirect=True)
def test_version_2_announces_itself_and_reports_a_plausible_dap(
        firmware_on_socket: tuple[SerialFirmware, Host]) -> None:
    firmware, host = firmware_on_socket
    replies = expose_once(host)
    identity, header = replies[0][2], replies[4][2]
    assert identity[3] == 2                              # after ack_seq (2) and type (1)
    assert replies[4][0] == wire.FRAME_HEADER and len(header) == 30
    dap = int.from_bytes(header[26:30], "little")
    assert dap == firmware.dap_centi_dgycm2(800, 1000)
    # 0.8 mGy at 1 m over 8 x 10 pixels of 150 um (0.018 cm²): below 0.01 dGy·cm², so the
    # smallest value the field can say that is not zero
    assert dap == 1
    big = SerialFirmware(rows=512, columns=512, pixel_spacing_um=(150, 150))
    # a chest-sized technique on a 7.7 cm field: ~0.36 dGy·cm² (tens of uGy·m² per image)
    assert big.dap_centi_dgycm2(700, 1000) == 36
    assert big.dap_centi_dgycm2(1000, 1000) > big.dap_centi_dgycm2(700, 1000)
    assert big.dap_centi_dgycm2(700, 2000) == pytest.approx(2 * 36, abs=1)


@pytest.mark.parametrize("protocol_version", [1], indirect=True)
def test_version_1_firmware_sends_the_old_header_without_dap(
        firmware_on_socket: tuple[SerialFirmware, Host]) -> None:
    _, host = firmware_on_socket
    replies = expose_once(host)
    assert replies[0][2][3] == 1
    assert replies[4][0] == wire.FRAME_HEADER and len(replies[4][2]) == 26
