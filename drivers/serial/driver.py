"""The `serial` driver: an X-ray generator with a small detector, controlled and read out over a
serial line with the protocol of drivers/PROTOCOL.md.

`open` identifies the device and sets the technique; `read_frame` arms, exposes and collects the
frame's chunks, asking again for what was lost or damaged. The port is opened with
`serial.serial_for_url`, so `/dev/ttyUSB0`, a pty path, `loop://`, `socket://` and `spy://`
all work. Safety rules kept here:

- A command is retransmitted with its original sequence number, so the device answers it again
  without carrying it out twice: a lost ACK to EXPOSE never becomes a second exposure.
- The driver never exposes again by itself. Lost data is asked for with RESEND (the detector
  keeps its last frame); a frame that cannot be completed and verified is dropped and reported,
  never delivered.
- A vanished port is reopened transparently only before EXPOSE is sent; after it, the caller is
  told, since an exposure may have been made.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, cast

import serial

from drivers.base import Driver
from drivers.errors import (
    DeviceDisconnectedError,
    DeviceRefusedError,
    DriverConfigError,
    DriverTimeoutError,
    FrameCorruptError,
    ProtocolError,
)
from drivers.frame import Frame
from drivers.serial.assembly import FrameAssembly
from drivers.serial.codec import (
    MAX_RESEND_CHUNKS,
    SUPPORTED_PROTOCOL_VERSIONS,
    WHOLE_FRAME,
    Abort,
    Ack,
    Arm,
    DataChunk,
    Expose,
    ExposeAccepted,
    FrameEnd,
    FrameHeader,
    Identify,
    Identity,
    Message,
    MessageType,
    Nak,
    NakCode,
    Packet,
    PacketDecoder,
    Resend,
    SetTechnique,
    Technique,
    decode_message,
    encode_message,
)

logger = logging.getLogger(__name__)


class _Port(Protocol):
    """The calls made on what serial_for_url returns (a different class per URL scheme)."""

    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


#: one pyserial read waits at most this long before the loop looks at its deadlines again
POLL_S = 0.02
#: a packet identical to one of the last this many received is a repeat
DUPLICATE_WINDOW = 16
#: FRAME_ENDs in a row that leave the frame incomplete (the device answers but cannot deliver)
#: before it is given up; silence is not counted: it ends at the read's deadline
MAX_REQUESTS_WITHOUT_PROGRESS = 4
#: a quiet line is asked again after timeout_s, then twice as long, up to this many timeout_s
MAX_QUIET_BACKOFF = 4
#: whole-frame CRC-32 failures tolerated, each answered by a request for the whole frame
MAX_FRAME_CRC_FAILURES = 1

#: technique limits of the device family (drivers/PROTOCOL.md, SET_TECHNIQUE); the device
#: itself has the last word and answers NAK to what it cannot do
KVP_RANGE = (40.0, 150.0)
MAS_RANGE = (0.1, 1000.0)
EXPOSURE_MS_RANGE = (1.0, 10000.0)

_COUNTER_NAMES = (
    "garbage_bytes", "header_errors", "oversize_lengths", "crc_errors", "lost_packets",
    "duplicate_packets", "protocol_errors", "stale_messages", "retransmits", "chunk_resends",
    "frame_resends", "repeated_chunks", "frame_crc_errors", "frames_dropped", "reconnects",
    "technique_resets",
)


class SerialDriver(Driver):
    """X-ray generator + detector on a serial line.

    Options: `port` (device path or pyserial URL, required), `baudrate`, `timeout_s` (how long
    to wait for an answer before asking again), `kvp`, `mas`, `exposure_ms` (the technique set
    at open; frames report what the device actually delivered).
    """

    name = "serial"
    emits_radiation = True          # each frame is an X-ray exposure (drivers/PROTOCOL.md)
    option_types: ClassVar[Mapping[str, tuple[type | tuple[type, ...], Any]]] = {
        "port": (str, Driver.REQUIRED),
        "baudrate": (int, 921600),
        "timeout_s": (float, 0.5),
        "kvp": (float, 70.0),
        "mas": (float, 10.0),
        "exposure_ms": (float, 20.0),
    }

    @classmethod
    def _check_option_values(cls, options: Mapping[str, Any]) -> list[str]:
        problems = []
        if not options["port"].strip():
            problems.append('port: expected a device path or pyserial URL, e.g. "/dev/ttyUSB0", '
                            'got ""')
        if not 50 <= options["baudrate"] <= 4_000_000:
            problems.append(f"baudrate: expected 50..4000000, got {options['baudrate']}")
        if not 0.05 <= options["timeout_s"] <= 60:
            problems.append(f"timeout_s: expected 0.05..60 seconds, got {options['timeout_s']}")
        for key, (low, high), unit in (("kvp", KVP_RANGE, "kV"), ("mas", MAS_RANGE, "mAs"),
                                       ("exposure_ms", EXPOSURE_MS_RANGE, "ms")):
            if not low <= options[key] <= high:
                problems.append(f"{key}: expected {low:g}..{high:g} {unit}, got {options[key]:g}")
        return problems

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._port: _Port | None = None
        self._decoder = PacketDecoder()
        self._inbox: deque[Message] = deque()
        # a random start makes a fresh driver's first command unlike a previous one's
        self._host_seq = secrets.randbelow(0x10000)
        self._last_device_seq: int | None = None
        self._recent: deque[tuple[int, int, bytes]] = deque(maxlen=DUPLICATE_WINDOW)
        self._identity: Identity | None = None
        self._technique = Technique.from_physical(
            self.options["kvp"], self.options["mas"], self.options["exposure_ms"])
        self._applied: Technique | None = None
        self._counters = dict.fromkeys(_COUNTER_NAMES, 0)

    # -- what status shows ---------------------------------------------------------------------
    @property
    def identity(self) -> Identity | None:
        """What the device said about itself at the last IDENTIFY."""
        return self._identity

    @property
    def link_counters(self) -> dict[str, int]:
        """Faults seen and repaired on the line since the driver was made."""
        stats = self._decoder.stats
        counters = dict(self._counters)
        counters.update(garbage_bytes=stats.discarded_bytes, header_errors=stats.header_errors,
                        oversize_lengths=stats.oversize, crc_errors=stats.crc_errors)
        return counters

    def _status_detail(self) -> str:
        ident = self._identity
        text = str(self.options["port"])
        if ident is not None:
            text += (f": {ident.model} s/n {ident.serial_number} firmware "
                     f"{ident.firmware_version}, {ident.rows}x{ident.columns} "
                     f"{ident.bits_stored}-bit")
        repairs = ", ".join(f"{value} {key.replace('_', ' ')}"
                            for key, value in self.link_counters.items() if value)
        return text + (f"; link: {repairs}" if repairs else "")

    # -- lifecycle -----------------------------------------------------------------------------
    def _open(self) -> None:
        self._connect(time.monotonic() + max(1.0, 4 * self.options["timeout_s"]))

    def _close(self) -> None:
        if self._port is None:
            return
        try:
            # leave the generator disarmed, whatever the last read left it in
            self._send(Abort())
        except (DeviceDisconnectedError, DriverTimeoutError) as err:
            logger.debug("serial: no ABORT sent while closing: %s", err)
        finally:
            self._close_port()

    def _reconnect(self, deadline: float) -> None:
        self._close_port()
        self._connect(deadline)
        self._counters["reconnects"] += 1

    def _connect(self, deadline: float) -> None:
        port = self.options["port"]
        try:
            self._port = cast(_Port, serial.serial_for_url(
                port, baudrate=self.options["baudrate"], timeout=POLL_S,
                write_timeout=max(1.0, self.options["timeout_s"])))
        except ValueError as err:   # pyserial: unknown URL scheme or bad setting
            raise DriverConfigError(f"port: {port!r} cannot be opened: {err}") from err
        except (serial.SerialException, OSError) as err:
            raise DeviceDisconnectedError(f"serial: cannot open {port}: {err}") from err
        try:
            self._port.reset_input_buffer()
            self._decoder.reset()
            self._inbox.clear()
            self._last_device_seq = None
            self._recent.clear()
            body = self._command(Identify(), deadline)
            if body is None:
                raise DriverTimeoutError(
                    f"serial: no answer to IDENTIFY on {port}; is the device on and is this "
                    "its port?")
            identity = Identity.decode(body)
            if identity.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
                raise ProtocolError(
                    f"serial: the device on {port} speaks protocol version "
                    f"{identity.protocol_version}; this driver speaks "
                    f"{', '.join(map(str, SUPPORTED_PROTOCOL_VERSIONS))}")
            if not self._set_technique(deadline):
                raise DriverTimeoutError(f"serial: no answer to SET_TECHNIQUE on {port}")
            applied = self._applied
            assert applied is not None
        except BaseException:
            self._close_port()
            raise
        self._identity = identity
        logger.info(
            "serial: %s on %s: s/n %s firmware %s, %dx%d %d-bit; technique %.1f kV %.2f mAs "
            "%.1f ms", identity.model, port, identity.serial_number, identity.firmware_version,
            identity.rows, identity.columns, identity.bits_stored, applied.kvp, applied.mas,
            applied.exposure_ms)

    def _set_technique(self, deadline: float) -> bool:
        """Send the configured technique; False at `deadline`. Raises DeviceRefusedError."""
        applied = self._command(SetTechnique(self._technique), deadline)
        if applied is None:
            return False
        self._applied = Technique.decode(applied)
        return True

    def _arm(self, deadline: float) -> bool:
        """ARM; False at `deadline`. A device that lost its technique (it restarted without
        the port closing) is given it again and armed once more."""
        try:
            return self._command(Arm(), deadline) is not None
        except DeviceRefusedError as err:
            if err.code != NakCode.BAD_STATE:
                raise
            logger.info("serial: %s; setting the technique again", err)
            self._counters["technique_resets"] += 1
            if not self._set_technique(deadline):
                return False
            return self._command(Arm(), deadline) is not None

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        try:
            port.close()
        except (serial.SerialException, OSError) as err:
            # the device is gone already; nothing is left to release
            logger.debug("serial: closing %s: %s", self.options["port"], err)

    # -- frames --------------------------------------------------------------------------------
    def _read_frame(self, deadline: float) -> Frame | None:
        try:
            armed = self._arm(deadline)
        except DeviceDisconnectedError as err:
            # Nothing has been exposed yet, so a device replugged since the last frame can be
            # reopened here without the caller noticing.
            logger.info("serial: %s; reopening the port before arming", err)
            self._reconnect(deadline)
            armed = self._arm(deadline)
        if not armed:
            self._send(Abort())
            return None
        try:
            body = self._command(Expose(), deadline)
        except DeviceDisconnectedError as err:
            raise DeviceDisconnectedError(
                f"{err}; lost while sending EXPOSE: an exposure may have been made, check the "
                "device before repeating it") from err
        if body is None:
            self._send(Abort())
            return None
        frame_id = ExposeAccepted.decode(body).frame_id
        try:
            return self._collect(frame_id, deadline)
        except DeviceDisconnectedError as err:
            raise DeviceDisconnectedError(
                f"{err}; lost during the readout of frame {frame_id}: the exposure was made, "
                "check the device before repeating it") from err

    def _collect(self, frame_id: int, deadline: float) -> Frame | None:
        """Gather frame `frame_id` after its EXPOSE was acknowledged; None at `deadline`."""
        timeout_s = self.options["timeout_s"]
        applied = self._applied or self._technique
        # the header follows the exposure itself: allow its duration before asking again
        quiet_by = time.monotonic() + applied.exposure_ms / 1000 + timeout_s
        quiet_interval = timeout_s
        assembly: FrameAssembly | None = None
        requests_without_progress = 0
        crc_failures = 0
        request_seqs: set[int] = set()
        before = self.link_counters
        while True:
            message = self._receive(min(deadline, quiet_by))
            now = time.monotonic()
            if message is None:
                if now >= deadline:
                    self._send(Abort())
                    return None
                # the line went quiet: a damaged length may be holding a partial packet
                self._accept(self._decoder.drop_partial())
                if self._inbox:
                    continue
                # ask again, less and less often: a slow device must not be sent a pile of
                # whole-frame requests it will then answer one after the other
                request_seqs.add(self._request_missing(frame_id, assembly))
                quiet_by = now + quiet_interval
                quiet_interval = min(quiet_interval * 2, MAX_QUIET_BACKOFF * timeout_s)
                continue
            if isinstance(message, FrameHeader | DataChunk | FrameEnd):
                if message.frame_id != frame_id:
                    self._counters["stale_messages"] += 1
                    continue
                quiet_by = now + timeout_s
                quiet_interval = timeout_s
            if isinstance(message, FrameHeader):
                self._check_header_version(message)
                if assembly is None:
                    try:
                        assembly = FrameAssembly(message)
                    except ProtocolError as err:
                        raise self._dropped(frame_id, str(err)) from err
                    requests_without_progress = 0
                elif message != assembly.header:
                    raise self._dropped(frame_id, "its header changed during the transfer")
            elif isinstance(message, DataChunk):
                if assembly is None:
                    continue  # its header was lost: the whole frame is asked for at the end
                try:
                    if assembly.add(message):
                        requests_without_progress = 0
                    else:
                        self._counters["repeated_chunks"] += 1
                except ProtocolError as err:
                    self._counters["protocol_errors"] += 1
                    logger.debug("serial: %s", err)
            elif isinstance(message, FrameEnd):
                if assembly is not None and assembly.complete:
                    if (message.chunk_count == assembly.header.chunk_count
                            and assembly.crc_matches(message.crc32)):
                        if len(request_seqs) > 1:
                            # answers to the other requests may still be queued in the
                            # device: ABORT drops frame packets not yet sent
                            self._send(Abort())
                        return self._make_frame(assembly, before)
                    crc_failures += 1
                    self._counters["frame_crc_errors"] += 1
                    if crc_failures > MAX_FRAME_CRC_FAILURES:
                        raise self._dropped(frame_id,
                                            f"its CRC-32 failed {crc_failures} times")
                    assembly = None
                    request_seqs.add(self._request_missing(frame_id, None))
                    continue
                requests_without_progress += 1
                if requests_without_progress > MAX_REQUESTS_WITHOUT_PROGRESS:
                    raise self._dropped(frame_id, "still incomplete after "
                                                  f"{MAX_REQUESTS_WITHOUT_PROGRESS} requests")
                request_seqs.add(self._request_missing(frame_id, assembly))
            elif isinstance(message, Nak) and message.nak_seq in request_seqs:
                if message.code == NakCode.NOT_READY:
                    continue  # still being read out: the quiet timer asks again
                raise self._dropped(frame_id,
                                    f"the device cannot send it again ({message.reason})")
            elif not (isinstance(message, Ack) and message.ack_seq in request_seqs):
                self._counters["stale_messages"] += 1

    def _check_header_version(self, header: FrameHeader) -> None:
        """A version 2 device sends the 30-byte header, a version 1 device the 26-byte one
        (drivers/PROTOCOL.md §4); anything else is a protocol error and drops the frame."""
        version = self._identity.protocol_version if self._identity is not None else 1
        if (header.dap_centi_dgycm2 is not None) != (version >= 2):
            raise self._dropped(header.frame_id, f"its header is not the one of protocol "
                                                 f"version {version} the device announced")

    def _request_missing(self, frame_id: int, assembly: FrameAssembly | None) -> int:
        """Ask for what `assembly` lacks (the whole frame if None); returns the request's seq."""
        if assembly is None:
            chunks: tuple[int, ...] = (WHOLE_FRAME,)
            self._counters["frame_resends"] += 1
        else:
            # no chunk missing means only FRAME_END was lost: an empty list asks for it alone
            chunks = tuple(assembly.missing()[:MAX_RESEND_CHUNKS])
            self._counters["chunk_resends"] += len(chunks)
        logger.debug("serial: frame %d: asking again for %s", frame_id,
                     "everything" if assembly is None else f"{len(chunks)} chunk(s)")
        return self._send(Resend(frame_id, chunks))

    def _dropped(self, frame_id: int, reason: str) -> FrameCorruptError:
        """Count and log a dropped frame; the error to raise for it."""
        self._counters["frames_dropped"] += 1
        message = (f"serial: frame {frame_id} dropped, no image made from it: {reason}. The "
                   "exposure was made: check the device before repeating it")
        logger.warning("%s", message)
        return FrameCorruptError(message)

    def _make_frame(self, assembly: FrameAssembly, before: Mapping[str, int]) -> Frame:
        header = assembly.header
        try:
            pixels = assembly.pixels()
        except ProtocolError as err:
            raise self._dropped(header.frame_id, str(err)) from err
        ident = self._identity
        spacing = None
        if ident is not None and ident.row_spacing_um and ident.column_spacing_um:
            spacing = (ident.row_spacing_um / 1000, ident.column_spacing_um / 1000)
        technique = header.technique
        parameters: dict[str, object] = {
            "kvp": technique.kvp,
            "mas": technique.mas,
            "exposure_ms": technique.exposure_ms,
            "device_frame_id": header.frame_id,
        }
        if header.dap_dgycm2 is not None:
            # protocol version 2: the dose-area product of this exposure
            parameters["dap_dgycm2"] = header.dap_dgycm2
        repairs = {key: value - before[key] for key, value in self.link_counters.items()
                   if value != before[key]}
        if repairs:
            logger.info("serial: frame %d complete after repairs: %s", header.frame_id,
                        ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in repairs.items()))
        return Frame(
            pixels=pixels,
            bits_stored=header.bits_stored,
            photometric_interpretation="MONOCHROME2",
            t_mono=time.monotonic(),
            t_wall=time.time(),
            sequence_number=self.next_sequence_number,
            pixel_spacing_mm=spacing,
            device_parameters=MappingProxyType(parameters),
        )

    # -- commands and packets ------------------------------------------------------------------
    def _command(self, message: Message, deadline: float) -> bytes | None:
        """Send a command until it is answered; the ACK's body, or None at `deadline`.

        Raises
        ------
        DeviceRefusedError
            If the device answers NAK.
        DeviceDisconnectedError
            If the port fails.
        """
        self._host_seq = (self._host_seq + 1) & 0xFFFF
        seq = self._host_seq
        raw = encode_message(message, seq)
        first = True
        while time.monotonic() < deadline:
            if not first:
                self._counters["retransmits"] += 1
                logger.debug("serial: no answer to %s (seq %d); sending it again",
                             message.TYPE.name, seq)
                self._accept(self._decoder.drop_partial())
            first = False
            self._write(raw)
            reply_by = min(deadline, time.monotonic() + self.options["timeout_s"])
            while (reply := self._receive(reply_by)) is not None:
                if isinstance(reply, Ack) and reply.ack_seq == seq \
                        and reply.command == message.TYPE:
                    return reply.body
                if isinstance(reply, Nak) and reply.nak_seq == seq:
                    try:
                        code = NakCode(reply.code).name
                    except ValueError:
                        code = f"0x{reply.code:02X}"
                    raise DeviceRefusedError(
                        f"serial: the device refused {message.TYPE.name}: "
                        f"{reply.reason or 'no reason given'} ({code})", reply.code)
                self._counters["stale_messages"] += 1
        return None

    def _send(self, message: Message) -> int:
        """Send a message needing no wait for its answer; returns its sequence number."""
        self._host_seq = (self._host_seq + 1) & 0xFFFF
        self._write(encode_message(message, self._host_seq))
        return self._host_seq

    def _write(self, data: bytes) -> None:
        port = self._port
        if port is None:
            raise DeviceDisconnectedError(f"serial: {self.options['port']} is not open")
        try:
            port.write(data)
        except serial.SerialTimeoutException as err:
            raise DriverTimeoutError(
                f"serial: {self.options['port']}: the device stopped reading ({err})") from err
        except (serial.SerialException, OSError) as err:
            raise DeviceDisconnectedError(f"serial: {self.options['port']}: {err}") from err

    def _receive(self, until: float) -> Message | None:
        """The next message, or None if none arrived by `until` (time.monotonic())."""
        while not self._inbox:
            if time.monotonic() >= until:
                return None
            port = self._port
            if port is None:
                raise DeviceDisconnectedError(f"serial: {self.options['port']} is not open")
            try:
                data = port.read(port.in_waiting or 1)
            except (serial.SerialException, OSError) as err:
                raise DeviceDisconnectedError(f"serial: {self.options['port']}: {err}") from err
            if data:
                self._accept(self._decoder.feed(data))
        return self._inbox.popleft()

    def _accept(self, packets: list[Packet]) -> None:
        """Drop repeated packets, count lost ones, decode the rest into the inbox."""
        for packet in packets:
            key = (packet.seq, packet.type, packet.payload)
            if key in self._recent:
                self._counters["duplicate_packets"] += 1
                continue
            self._recent.append(key)
            last = self._last_device_seq
            if last is not None:
                gap = (packet.seq - last) & 0xFFFF
                if 1 < gap < 0x8000:
                    self._counters["lost_packets"] += gap - 1
                elif gap != 1:
                    logger.info("serial: device sequence number went from %d to %d "
                                "(device restarted?)", last, packet.seq)
            self._last_device_seq = packet.seq
            try:
                message = decode_message(packet)
            except ProtocolError as err:
                self._counters["protocol_errors"] += 1
                logger.debug("serial: packet %d: %s", packet.seq, err)
                continue
            if message.TYPE < MessageType.ACK:
                # a command coming back: an echoing line (loop://) or a crossed cable
                self._counters["protocol_errors"] += 1
                continue
            self._inbox.append(message)
