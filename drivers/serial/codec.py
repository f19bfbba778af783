"""The serial wire protocol (drivers/PROTOCOL.md) as pure functions: bytes <-> packets <-> messages.

No I/O and no clock, so it can be fuzzed (pynetdicom's pdu.py, pyserial's threaded.Protocol).
`PacketDecoder` finds packets in an arbitrary byte stream: it checks the header CRC-8 and the
packet CRC-16, and after any mismatch resumes the search one byte after the rejected sync, so a
valid packet is never lost behind garbage or a corrupted packet.
"""

from __future__ import annotations

import binascii
import enum
import struct
import zlib
from dataclasses import dataclass, field
from typing import ClassVar, Self

from drivers.errors import ProtocolError

SYNC = b"\xa5\x5a"
#: sync (2), type (1), seq (2), length (2), header CRC-8 (1)
HEADER_SIZE = 8
#: CRC-16 after the payload
TRAILER_SIZE = 2
#: the longest payload: keeps a packet (2058 bytes, 16 464 bits) inside the 32 751-bit range
#: where CRC-16/CCITT detects every 1-, 2- and 3-bit error (Hamming distance 4)
MAX_PAYLOAD = 2048
#: largest chunk of pixel data: the payload less frame id (2) and chunk index (2)
MAX_CHUNK_DATA = MAX_PAYLOAD - 4
#: the version this host announces it speaks best (drivers/PROTOCOL.md §6)
PROTOCOL_VERSION = 2
#: every version this host speaks: a version 1 device (no dose-area product) keeps working
SUPPORTED_PROTOCOL_VERSIONS = (1, 2)
#: FRAME_HEADER dap_centi_dgycm2 of a version 2 device that measured no dose-area product
DAP_NOT_MEASURED = 0xFFFFFFFF
#: `Resend.chunks` entry asking for the whole frame (header, every chunk, end)
WHOLE_FRAME = 0xFFFF
#: at most this many chunk indices in one RESEND
MAX_RESEND_CHUNKS = 64


class MessageType(enum.IntEnum):
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


class NakCode(enum.IntEnum):
    BAD_STATE = 0x01
    OUT_OF_RANGE = 0x02
    UNKNOWN_COMMAND = 0x03
    BAD_PAYLOAD = 0x04
    NOT_HELD = 0x05
    NOT_READY = 0x06
    INTERLOCK = 0x07
    BUSY = 0x08


class DeviceState(enum.IntEnum):
    IDLE = 0
    ARMED = 1
    EXPOSING = 2
    FAULT = 3


# -- checksums -------------------------------------------------------------------------------

def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8 = _crc8_table()


def crc8(data: bytes | bytearray | memoryview) -> int:
    """CRC-8/SMBUS: poly 0x07, init 0x00, not reflected, xorout 0 (check "123456789" -> 0xF4)."""
    crc = 0
    for byte in bytes(data):
        crc = _CRC8[crc ^ byte]
    return crc


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, xorout 0 (check 0x29B1)."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/ISO-HDLC (zlib, IEEE 802.3): the whole-frame check (check 0xCBF43926)."""
    return zlib.crc32(data) & 0xFFFFFFFF


# -- packets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    """One checked packet: its type code (possibly unknown to us), sequence number, payload."""

    type: int
    seq: int
    payload: bytes


def encode_packet(type_code: int, seq: int, payload: bytes) -> bytes:
    """The bytes of one packet.

    Raises
    ------
    ValueError
        If a field does not fit (type 0..255, seq 0..65535, payload up to MAX_PAYLOAD bytes).
    """
    if not 0 <= type_code <= 0xFF:
        raise ValueError(f"type: expected 0..255, got {type_code}")
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"seq: expected 0..65535, got {seq}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload: at most {MAX_PAYLOAD} bytes, got {len(payload)}")
    header = struct.pack("<BHH", type_code, seq, len(payload))
    body = header + bytes([crc8(header)]) + payload
    return SYNC + body + struct.pack("<H", crc16(body))


@dataclass
class DecoderStats:
    """What the decoder threw away, cumulative since it was made."""

    #: bytes skipped while looking for a valid packet (garbage, rejected packets' first bytes)
    discarded_bytes: int = 0
    #: a sync pattern followed by a header whose CRC-8 failed
    header_errors: int = 0
    #: a valid header announcing more than MAX_PAYLOAD bytes
    oversize: int = 0
    #: a complete packet whose CRC-16 failed
    crc_errors: int = 0


@dataclass
class PacketDecoder:
    """Turns a byte stream, fed in pieces of any size, into checked packets."""

    max_payload: int = MAX_PAYLOAD
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buffer: bytearray = field(default_factory=bytearray)

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a packet."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget buffered bytes (after reopening the port); the stats are kept."""
        self._buffer.clear()

    def drop_partial(self) -> list[Packet]:
        """Give up on a partial packet the line went quiet on: search again from its second byte.

        A header damaged in a way its CRC-8 missed can announce a longer packet than was sent;
        the caller calls this when nothing arrived for a while, so such a wait is bounded.
        Returns the packets found in what was buffered behind it.
        """
        if self._buffer:
            self._discard(1)
        return self.feed(b"")

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add bytes; return every packet now complete and valid, in order. Never raises."""
        self._buffer.extend(data)
        packets: list[Packet] = []
        buf = self._buffer
        while True:
            start = buf.find(SYNC)
            if start < 0:
                # keep a trailing first sync byte: its partner may come in the next piece
                keep = 1 if buf and buf[-1] == SYNC[0] else 0
                self._discard(len(buf) - keep)
                break
            if start:
                self._discard(start)
            if len(buf) < HEADER_SIZE:
                break
            if crc8(buf[2:7]) != buf[7]:
                self.stats.header_errors += 1
                self._discard(1)
                continue
            type_code, seq, length = struct.unpack_from("<BHH", buf, 2)
            if length > self.max_payload:
                self.stats.oversize += 1
                self._discard(1)
                continue
            end = HEADER_SIZE + length + TRAILER_SIZE
            if len(buf) < end:
                break
            (received_crc,) = struct.unpack_from("<H", buf, HEADER_SIZE + length)
            if crc16(buf[2 : HEADER_SIZE + length]) != received_crc:
                self.stats.crc_errors += 1
                self._discard(1)
                continue
            packets.append(Packet(type_code, seq, bytes(buf[HEADER_SIZE : HEADER_SIZE + length])))
            del buf[:end]
        return packets

    def _discard(self, count: int) -> None:
        if count > 0:
            del self._buffer[:count]
            self.stats.discarded_bytes += count


# -- message bodies --------------------------------------------------------------------------

def _check_size(what: str, payload: bytes, size: int) -> None:
    if len(payload) != size:
        raise ProtocolError(f"{what}: expected {size} bytes, got {len(payload)}")


def _pack_text(what: str, text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"{what}: at most 255 UTF-8 bytes, got {len(raw)}")
    return bytes([len(raw)]) + raw


def _unpack_text(what: str, payload: bytes, offset: int) -> tuple[str, int]:
    if offset >= len(payload):
        raise ProtocolError(f"{what}: missing")
    length = payload[offset]
    end = offset + 1 + length
    if end > len(payload):
        raise ProtocolError(f"{what}: {length} bytes announced, {len(payload) - offset - 1} left")
    try:
        return payload[offset + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError as err:
        raise ProtocolError(f"{what}: not UTF-8 ({err})") from err


@dataclass(frozen=True)
class Technique:
    """Exposure technique in the protocol's fixed-point units."""

    kv_tenths: int          # kVp x 10 (u16)
    mas_hundredths: int     # mAs x 100 (u32)
    exposure_us: int        # exposure time in microseconds (u32)

    SIZE: ClassVar[int] = 10

    @classmethod
    def from_physical(cls, kvp: float, mas: float, exposure_ms: float) -> Self:
        return cls(round(kvp * 10), round(mas * 100), round(exposure_ms * 1000))

    @property
    def kvp(self) -> float:
        return self.kv_tenths / 10

    @property
    def mas(self) -> float:
        return self.mas_hundredths / 100

    @property
    def exposure_ms(self) -> float:
        return self.exposure_us / 1000

    def encode(self) -> bytes:
        return struct.pack("<HII", self.kv_tenths, self.mas_hundredths, self.exposure_us)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _check_size("technique", payload, cls.SIZE)
        return cls(*struct.unpack("<HII", payload))


@dataclass(frozen=True)
class Identity:
    """Body of the ACK to IDENTIFY."""

    protocol_version: int
    rows: int
    columns: int
    bits_stored: int
    row_spacing_um: int      # 0 = unknown
    column_spacing_um: int   # 0 = unknown
    model: str
    serial_number: str
    firmware_version: str

    _FORMAT: ClassVar[str] = "<BHHBHH"
    FIXED_SIZE: ClassVar[int] = struct.calcsize(_FORMAT)

    def encode(self) -> bytes:
        return (
            struct.pack(self._FORMAT, self.protocol_version, self.rows, self.columns,
                        self.bits_stored, self.row_spacing_um, self.column_spacing_um)
            + _pack_text("model", self.model)
            + _pack_text("serial_number", self.serial_number)
            + _pack_text("firmware_version", self.firmware_version)
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        if len(payload) < cls.FIXED_SIZE:
            raise ProtocolError(f"identity: expected at least {cls.FIXED_SIZE} bytes, got "
                                f"{len(payload)}")
        version, rows, columns, bits, row_um, column_um = struct.unpack_from(cls._FORMAT, payload)
        model, offset = _unpack_text("identity model", payload, cls.FIXED_SIZE)
        serial_number, offset = _unpack_text("identity serial number", payload, offset)
        firmware, offset = _unpack_text("identity firmware version", payload, offset)
        if offset != len(payload):
            raise ProtocolError(f"identity: {len(payload) - offset} unexpected trailing bytes")
        return cls(version, rows, columns, bits, row_um, column_um, model, serial_number,
                   firmware)


@dataclass(frozen=True)
class DeviceStatus:
    """Body of the ACK to STATUS."""

    state: int
    technique_set: bool
    technique: Technique
    frames_exposed: int      # u32
    held_frame_id: int       # u16; frame kept for RESEND (meaningless if frames_exposed == 0)

    SIZE: ClassVar[int] = 2 + Technique.SIZE + 6

    def encode(self) -> bytes:
        return (bytes([self.state, int(self.technique_set)]) + self.technique.encode()
                + struct.pack("<IH", self.frames_exposed, self.held_frame_id))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _check_size("status", payload, cls.SIZE)
        if payload[1] not in (0, 1):
            raise ProtocolError(f"status: technique_set must be 0 or 1, got {payload[1]}")
        frames, held = struct.unpack_from("<IH", payload, 2 + Technique.SIZE)
        return cls(payload[0], bool(payload[1]), Technique.decode(payload[2:12]), frames, held)


@dataclass(frozen=True)
class ExposeAccepted:
    """Body of the ACK to EXPOSE: the id the frame of this exposure will carry."""

    frame_id: int

    def encode(self) -> bytes:
        return struct.pack("<H", self.frame_id)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _check_size("expose ack", payload, 2)
        return cls(*struct.unpack("<H", payload))


# -- messages --------------------------------------------------------------------------------

class Message:
    """A decoded packet payload; each subclass names its type code."""

    TYPE: ClassVar[MessageType]

    def payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _check_size(cls.TYPE.name, payload, 0)
        return cls()


@dataclass(frozen=True)
class Identify(Message):
    TYPE: ClassVar[MessageType] = MessageType.IDENTIFY


@dataclass(frozen=True)
class GetStatus(Message):
    TYPE: ClassVar[MessageType] = MessageType.STATUS


@dataclass(frozen=True)
class Arm(Message):
    TYPE: ClassVar[MessageType] = MessageType.ARM


@dataclass(frozen=True)
class Expose(Message):
    TYPE: ClassVar[MessageType] = MessageType.EXPOSE


@dataclass(frozen=True)
class Abort(Message):
    TYPE: ClassVar[MessageType] = MessageType.ABORT


@dataclass(frozen=True)
class SetTechnique(Message):
    TYPE: ClassVar[MessageType] = MessageType.SET_TECHNIQUE
    technique: Technique

    def payload(self) -> bytes:
        return self.technique.encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        return cls(Technique.decode(payload))


@dataclass(frozen=True)
class Resend(Message):
    """Ask for chunks of a held frame again; `WHOLE_FRAME` alone asks for all of it."""

    TYPE: ClassVar[MessageType] = MessageType.RESEND
    frame_id: int
    chunks: tuple[int, ...]

    def payload(self) -> bytes:
        if len(self.chunks) > MAX_RESEND_CHUNKS:
            raise ValueError(f"chunks: at most {MAX_RESEND_CHUNKS}, got {len(self.chunks)}")
        return struct.pack(f"<HB{len(self.chunks)}H", self.frame_id, len(self.chunks),
                           *self.chunks)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        if len(payload) < 3:
            raise ProtocolError(f"RESEND: expected at least 3 bytes, got {len(payload)}")
        frame_id, count = struct.unpack_from("<HB", payload)
        if count > MAX_RESEND_CHUNKS:
            raise ProtocolError(f"RESEND: at most {MAX_RESEND_CHUNKS} chunks, got {count}")
        _check_size("RESEND", payload, 3 + 2 * count)
        return cls(frame_id, struct.unpack_from(f"<{count}H", payload, 3))


@dataclass(frozen=True)
class Ack(Message):
    """The device carried out the command sent with sequence number `ack_seq`."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    ack_seq: int
    command: int
    body: bytes = b""

    def payload(self) -> bytes:
        return struct.pack("<HB", self.ack_seq, self.command) + self.body

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        if len(payload) < 3:
            raise ProtocolError(f"ACK: expected at least 3 bytes, got {len(payload)}")
        ack_seq, command = struct.unpack_from("<HB", payload)
        return cls(ack_seq, command, payload[3:])


@dataclass(frozen=True)
class Nak(Message):
    """The device refused the command sent with sequence number `nak_seq`."""

    TYPE: ClassVar[MessageType] = MessageType.NAK
    nak_seq: int
    command: int
    code: int
    reason: str = ""

    def payload(self) -> bytes:
        return struct.pack("<HBB", self.nak_seq, self.command, self.code) + \
            self.reason.encode("utf-8")

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        if len(payload) < 4:
            raise ProtocolError(f"NAK: expected at least 4 bytes, got {len(payload)}")
        nak_seq, command, code = struct.unpack_from("<HBB", payload)
        try:
            reason = payload[4:].decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(f"NAK: reason is not UTF-8 ({err})") from err
        return cls(nak_seq, command, code, reason)


@dataclass(frozen=True)
class FrameHeader(Message):
    """Starts a frame: its geometry, how it is cut into chunks, the technique delivered and,
    from protocol version 2, the dose-area product of the exposure."""

    TYPE: ClassVar[MessageType] = MessageType.FRAME_HEADER
    frame_id: int
    rows: int
    columns: int
    bits_stored: int
    bytes_per_pixel: int
    chunk_count: int
    chunk_size: int
    total_bytes: int
    technique: Technique
    #: version 2: DAP in 0.01 dGy·cm² (u32; DAP_NOT_MEASURED: none); None: a version 1 header
    dap_centi_dgycm2: int | None = None

    SIZE: ClassVar[int] = 16 + Technique.SIZE
    SIZE_V2: ClassVar[int] = SIZE + 4
    _FORMAT: ClassVar[str] = "<HHHBBHHI"

    @property
    def dap_dgycm2(self) -> float | None:
        """The dose-area product in dGy·cm², or None if the device reported none."""
        if self.dap_centi_dgycm2 is None or self.dap_centi_dgycm2 == DAP_NOT_MEASURED:
            return None
        return self.dap_centi_dgycm2 / 100

    def payload(self) -> bytes:
        body = struct.pack(self._FORMAT, self.frame_id, self.rows, self.columns,
                           self.bits_stored, self.bytes_per_pixel, self.chunk_count,
                           self.chunk_size, self.total_bytes) + self.technique.encode()
        if self.dap_centi_dgycm2 is not None:
            body += struct.pack("<I", self.dap_centi_dgycm2)
        return body

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        if len(payload) not in (cls.SIZE, cls.SIZE_V2):
            raise ProtocolError(f"FRAME_HEADER: expected {cls.SIZE} bytes (version 1) or "
                                f"{cls.SIZE_V2} (version 2), got {len(payload)}")
        frame_id, rows, columns, bits, bytes_per_pixel, count, chunk_size, total = \
            struct.unpack_from(cls._FORMAT, payload)
        dap = None
        if len(payload) == cls.SIZE_V2:
            (dap,) = struct.unpack_from("<I", payload, cls.SIZE)
        return cls(frame_id, rows, columns, bits, bytes_per_pixel, count, chunk_size, total,
                   Technique.decode(payload[16:cls.SIZE]), dap)


@dataclass(frozen=True)
class DataChunk(Message):
    TYPE: ClassVar[MessageType] = MessageType.DATA_CHUNK
    frame_id: int
    index: int
    data: bytes

    def payload(self) -> bytes:
        return struct.pack("<HH", self.frame_id, self.index) + self.data

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        if len(payload) < 4:
            raise ProtocolError(f"DATA_CHUNK: expected at least 4 bytes, got {len(payload)}")
        frame_id, index = struct.unpack_from("<HH", payload)
        return cls(frame_id, index, payload[4:])


@dataclass(frozen=True)
class FrameEnd(Message):
    TYPE: ClassVar[MessageType] = MessageType.FRAME_END
    frame_id: int
    chunk_count: int
    crc32: int

    def payload(self) -> bytes:
        return struct.pack("<HHI", self.frame_id, self.chunk_count, self.crc32)

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        _check_size("FRAME_END", payload, 8)
        return cls(*struct.unpack("<HHI", payload))


MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (Identify, GetStatus, SetTechnique, Arm, Expose, Abort, Resend, Ack, Nak,
                FrameHeader, DataChunk, FrameEnd)
}


def encode_message(message: Message, seq: int) -> bytes:
    """The packet bytes of `message` with sequence number `seq`.

    Raises
    ------
    ValueError
        If a field does not fit its wire format.
    """
    try:
        payload = message.payload()
    except struct.error as err:
        raise ValueError(f"{message.TYPE.name}: a field does not fit: {err}") from err
    return encode_packet(message.TYPE, seq, payload)


def decode_message(packet: Packet) -> Message:
    """The message a checked packet carries.

    Raises
    ------
    ProtocolError
        If the type is unknown or the payload does not match it.
    """
    cls = MESSAGE_CLASSES.get(packet.type)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{packet.type:02X}")
    return cls.from_payload(packet.payload)
