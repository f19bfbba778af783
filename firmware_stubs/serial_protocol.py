"""The device end of the serial wire protocol, written from drivers/PROTOCOL.md alone.

Nothing here comes from drivers/: a codec shared by both ends would hide its own bugs. The
receive side is a byte-at-a-time state machine, the way the firmware's UART interrupt handler
parses commands; the CRC-16 is its own table.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque

SYNC0 = 0xA5
SYNC1 = 0x5A
MAX_PAYLOAD = 2048
#: the newest version this firmware speaks (PROTOCOL.md §6); version 1 has no DAP
PROTOCOL_VERSION = 2
#: FRAME_HEADER DAP value of a version 2 device that measured none (PROTOCOL.md §4)
DAP_NOT_MEASURED = 0xFFFFFFFF

# message types (PROTOCOL.md, "Message types")
IDENTIFY = 0x01
STATUS = 0x02
SET_TECHNIQUE = 0x03
ARM = 0x04
EXPOSE = 0x05
ABORT = 0x06
RESEND = 0x07
ACK = 0x80
NAK = 0x81
FRAME_HEADER = 0x90
DATA_CHUNK = 0x91
FRAME_END = 0x92

# NAK codes
NAK_BAD_STATE = 0x01
NAK_OUT_OF_RANGE = 0x02
NAK_UNKNOWN_COMMAND = 0x03
NAK_BAD_PAYLOAD = 0x04
NAK_NOT_HELD = 0x05
NAK_NOT_READY = 0x06
NAK_INTERLOCK = 0x07
NAK_BUSY = 0x08

# device states reported by STATUS
STATE_IDLE = 0
STATE_ARMED = 1
STATE_EXPOSING = 2

WHOLE_FRAME = 0xFFFF


def _make_crc16_table() -> list[int]:
    table = []
    for index in range(256):
        value = index << 8
        for _ in range(8):
            value = (value << 1) ^ 0x1021 if value & 0x8000 else value << 1
        table.append(value & 0xFFFF)
    return table


_CRC16_TABLE = _make_crc16_table()


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): PROTOCOL.md, packet CRC."""
    crc = 0xFFFF
    table = _CRC16_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def crc8_smbus(data: bytes) -> int:
    """CRC-8/SMBUS (poly 0x07, init 0x00), bit by bit: PROTOCOL.md, header CRC."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def crc32_frame(data: bytes) -> int:
    """CRC-32/ISO-HDLC over a frame's pixel bytes: PROTOCOL.md, FRAME_END."""
    return zlib.crc32(data) & 0xFFFFFFFF


def header_bytes(packet_type: int, seq: int, length: int) -> bytes:
    """Sync, type, seq, length and header CRC: the first 8 bytes of a packet."""
    fields = bytes([packet_type, seq & 0xFF, seq >> 8, length & 0xFF, length >> 8])
    return bytes([SYNC0, SYNC1]) + fields + bytes([crc8_smbus(fields)])


def build_packet(packet_type: int, seq: int, payload: bytes) -> bytes:
    """A complete packet; the CRC-16 covers everything after the sync, little-endian."""
    head = header_bytes(packet_type, seq, len(payload))
    crc = crc16_ccitt_false(head[2:] + payload)
    return head + payload + bytes([crc & 0xFF, crc >> 8])


class CommandParser:
    """Receive state machine: hunt for A5, then 5A, collect 6 header bytes, then the body.

    On a bad header CRC, an oversized length or a bad packet CRC it goes back to hunting from
    the byte after the rejected A5, so a command right behind line noise is not lost.
    """

    def __init__(self) -> None:
        self._candidate = bytearray()
        self._need = 0
        self.rejected = 0

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Bytes in; complete (type, seq, payload) commands out."""
        commands: list[tuple[int, int, bytes]] = []
        pending = deque(data)
        while pending:
            result = self._step(pending.popleft())
            if result is None:
                continue
            if result == "reject":
                self.rejected += 1
                replay = self._candidate[1:]
                self._candidate = bytearray()
                self._need = 0
                pending.extendleft(reversed(replay))
                continue
            assert not isinstance(result, str)
            commands.append(result)
        return commands

    def _step(self, byte: int) -> tuple[int, int, bytes] | str | None:
        cand = self._candidate
        if not cand:
            if byte == SYNC0:
                cand.append(byte)
            return None
        if len(cand) == 1:
            if byte == SYNC1:
                cand.append(byte)
            elif byte == SYNC0:
                pass  # A5 A5 5A: the second A5 may be the real start
            else:
                cand.clear()
            return None
        cand.append(byte)
        if len(cand) == 8:
            if crc8_smbus(bytes(cand[2:7])) != cand[7]:
                return "reject"
            length = cand[5] | cand[6] << 8
            if length > MAX_PAYLOAD:
                return "reject"
            self._need = 8 + length + 2
            return None
        if len(cand) < 8 or len(cand) < self._need:
            return None
        received = cand[-2] | cand[-1] << 8
        if crc16_ccitt_false(bytes(cand[2:-2])) != received:
            return "reject"
        command = (cand[2], cand[3] | cand[4] << 8, bytes(cand[8:-2]))
        self._candidate = bytearray()
        self._need = 0
        return command


def pack_technique(kv_tenths: int, mas_hundredths: int, exposure_us: int) -> bytes:
    return struct.pack("<HII", kv_tenths, mas_hundredths, exposure_us)


def unpack_technique(payload: bytes) -> tuple[int, int, int]:
    kv_tenths, mas_hundredths, exposure_us = struct.unpack("<HII", payload)
    return kv_tenths, mas_hundredths, exposure_us


def pack_text(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw
