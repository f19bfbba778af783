"""Firmware stub of the serial X-ray device (generator + detector), from drivers/PROTOCOL.md.

`SerialFirmware` is the device: it answers commands, exposes, reads out phantom frames in
chunks, keeps its last frame for RESEND, and answers a repeated command (same sequence number)
from its reply cache instead of carrying it out again. It runs on any file descriptor; `pty_host`
puts it on the master end of a pseudo-terminal. Faults are injected through a thread-safe method
API (`inject`, `unplug`, `replug`, `clear_faults`) or as text (firmware_stubs/faults.py).

`main(link)` runs it on a new pty until SIGINT/SIGTERM: `modality-agent simulate serial`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import random
import select
import signal
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import numpy as np

from firmware_stubs import serial_protocol as wire
from firmware_stubs.faults import FAULT_KINDS, Fault, make_fault, parse_fault
from firmware_stubs.pty_host import serve
from firmware_stubs.xray_phantom import xray_phantom

logger = logging.getLogger(__name__)

#: device limits (PROTOCOL.md, SET_TECHNIQUE)
KV_TENTHS_RANGE = (400, 1500)
MAS_HUNDREDTHS_RANGE = (10, 100_000)
EXPOSURE_US_RANGE = (1_000, 10_000_000)
MAX_TUBE_CURRENT_MA = 1000.0
#: the stub's dose model (not part of the protocol): air kerma at 1 m per mAs at 80 kV, a
#: typical tungsten tube with ~2.5 mm Al total filtration, growing with the square of the kV
AIR_KERMA_GY_PER_MAS_AT_80KV = 80e-6
#: the field when the detector's pixel spacing is unknown: 35 cm x 43 cm at 1 m
DEFAULT_FIELD_CM2 = 35.0 * 43.0
#: the select() period: how quickly stop requests and timers are noticed
TICK_S = 0.005


@dataclass
class _Outgoing:
    kind: str            # "ack", "nak", "header", "chunk", "end"
    packet_type: int
    payload: bytes
    frame_id: int | None = None


@dataclass(frozen=True)
class _HeldFrame:
    frame_id: int
    data: bytes
    technique: bytes     # packed, as delivered
    dap_centi_dgycm2: int   # dose-area product of the exposure, 0.01 dGy·cm²


class SerialFirmware:
    """The device. All public methods are thread-safe; `run` is called by the pty host.

    Parameters
    ----------
    rows, columns, bits_stored
        Detector geometry; frames are `xray_phantom(rows, columns, bits_stored, frame_id)`.
    chunk_size
        Pixel bytes per DATA_CHUNK (1..2044).
    pixel_spacing_um
        Reported by IDENTIFY; (0, 0) = unknown.
    readout_s
        Time from the end of the exposure to the first chunk.
    faults
        Textual fault specs armed at power-on, e.g. ``["bad_crc@3"]``.
    seed
        Seeds the garbage bytes and bit positions of injected faults.
    protocol_version
        What IDENTIFY announces: 2 (default) adds the dose-area product to FRAME_HEADER; 1 is
        the older firmware without it; any other value is sent as is (a host must refuse it).
    """

    def __init__(
        self,
        *,
        rows: int = 512,
        columns: int = 512,
        bits_stored: int = 12,
        chunk_size: int = 2040,
        pixel_spacing_um: tuple[int, int] = (150, 150),
        readout_s: float = 0.0,
        faults: Iterable[str] = (),
        seed: int = 0,
        model: str = "XR-STUB-1",
        serial_number: str = "STUB-0001",
        firmware_version: str = "1.0.0",
        protocol_version: int = wire.PROTOCOL_VERSION,
    ) -> None:
        if not (1 <= rows <= 4096 and 1 <= columns <= 4096 and 1 <= bits_stored <= 16):
            raise ValueError(f"rows, columns: expected 1..4096, bits_stored 1..16; got {rows}, "
                             f"{columns}, {bits_stored}")
        if not 1 <= chunk_size <= wire.MAX_PAYLOAD - 4:
            raise ValueError(f"chunk_size: expected 1..{wire.MAX_PAYLOAD - 4}, got {chunk_size}")
        self.rows, self.columns, self.bits_stored = rows, columns, bits_stored
        self.chunk_size = chunk_size
        self.pixel_spacing_um = pixel_spacing_um
        self.readout_s = readout_s
        self.model, self.serial_number = model, serial_number
        self.firmware_version = firmware_version
        self.protocol_version = protocol_version
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._faults: list[Fault] = [parse_fault(spec) for spec in faults]
        self._fired: list[str] = []
        # device state, touched by the run thread under _lock
        self._seq = 0
        self._state = wire.STATE_IDLE
        self._technique: bytes | None = None
        self._next_frame_id = 0
        self._exposing_id: int | None = None
        self._exposure_done_at = 0.0
        self._held: _HeldFrame | None = None
        self._outbox: deque[_Outgoing] = deque()
        self._last_command: tuple[int, int, bytes] | None = None
        self._last_reply: _Outgoing | None = None
        self._stalled_until: float | None = None
        self._unplug_at_once = False
        self._replug_at: float | None = None
        self._replugged = threading.Event()
        self._tty_path: str | None = None
        self._counters = {"exposures": 0, "commands": 0, "replayed_commands": 0,
                          "packets_sent": 0, "ignored_bytes": 0, "rejected_commands": 0,
                          "restarts": 0, "aborted_exposures": 0}

    # -- the test's API ------------------------------------------------------------------------
    def inject(self, fault: str, at: int = 1, *, on: str | None = None, times: int = 1,
               seconds: float | None = None, nbytes: int = 64) -> None:
        """Arm a fault (see firmware_stubs/faults.py); `fault` may also be a textual spec.

        Raises
        ------
        ValueError
            For an unknown fault or a bad argument.
        """
        if ("@" in fault or ":" in fault) and (at, on, times, seconds, nbytes) == (
                1, None, 1, None, 64):
            armed = parse_fault(fault)
        else:
            armed = make_fault(fault, at, on=on, times=times, seconds=seconds, nbytes=nbytes)
        with self._lock:
            if armed.at == 0:
                self._fire_now(armed, time.monotonic())
            else:
                self._faults.append(armed)

    def clear_faults(self) -> None:
        """Disarm every fault and end a stall (a disconnect ends with `replug`)."""
        with self._lock:
            self._faults.clear()
            self._stalled_until = None

    def unplug(self, seconds: float | None = None) -> None:
        """Drop off the line now; back after `seconds`, or at `replug()` if None."""
        self.inject("disconnect", 0, seconds=seconds)

    def replug(self) -> None:
        """End a disconnect: the pty host opens a new pty (and moves the link to it)."""
        self._replugged.set()

    @property
    def tty_path(self) -> str | None:
        """The slave path the device is on now; None while unplugged or not served."""
        with self._lock:
            return self._tty_path

    @property
    def counters(self) -> dict[str, int]:
        """exposures, commands, replayed_commands, packets_sent, ignored_bytes, ..."""
        with self._lock:
            return dict(self._counters)

    @property
    def faults_fired(self) -> list[str]:
        """One line per fault that fired, e.g. "bad_crc on chunk seq 7"."""
        with self._lock:
            return list(self._fired)

    @property
    def armed_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def expected_frame(self, frame_id: int) -> np.ndarray[Any, Any]:
        """The pixels frame `frame_id` carries."""
        return xray_phantom(self.rows, self.columns, self.bits_stored, frame_id)

    def dap_centi_dgycm2(self, kv_tenths: int, mas_hundredths: int) -> int:
        """The dose-area product the stub reports for a technique, in 0.01 dGy·cm²: air kerma
        at 1 m (AIR_KERMA_GY_PER_MAS_AT_80KV x (kV/80)² x mAs) times the detector's area at
        1 m (rows x columns x pixel spacing; DEFAULT_FIELD_CM2 when the spacing is unknown)."""
        kerma_gy = AIR_KERMA_GY_PER_MAS_AT_80KV * (kv_tenths / 800) ** 2 * mas_hundredths / 100
        row_um, column_um = self.pixel_spacing_um
        field_cm2 = (self.rows * row_um * self.columns * column_um / 1e8
                     if row_um and column_um else DEFAULT_FIELD_CM2)
        return max(1, round(kerma_gy * field_cm2 * 10 * 100))   # Gy·cm² -> 0.01 dGy·cm²

    # -- the pty host's API --------------------------------------------------------------------
    def attach(self, tty_path: str | None) -> None:
        with self._lock:
            self._tty_path = tty_path

    def run(self, fd: int, stop: threading.Event) -> str:
        """Serve on `fd` until `stop` is set ("stopped") or the device unplugs ("disconnect")."""
        os.set_blocking(fd, False)
        parser = wire.CommandParser()
        wire_out = bytearray()
        while not stop.is_set():
            now = time.monotonic()
            with self._lock:
                if self._unplug_at_once:
                    self._unplug_at_once = False
                    return "disconnect"
                stalled = self._tick(now)
                if not wire_out and not stalled and self._outbox:
                    wire_out = bytearray(self._next_wire_bytes(now))
                if self._unplug_at_once:
                    continue
            readable, writable, _ = select.select([fd], [fd] if wire_out else [], [], TICK_S)
            if readable:
                data = self._read(fd)
                with self._lock:
                    if self._stalled(time.monotonic()):
                        self._counters["ignored_bytes"] += len(data)
                    else:
                        for command in parser.feed(data):
                            self._handle(command, time.monotonic())
                        self._counters["rejected_commands"] = parser.rejected
            if writable and wire_out:
                try:
                    written = os.write(fd, wire_out[:4096])
                except BlockingIOError:
                    written = 0
                del wire_out[:written]
        return "stopped"

    def wait_for_replug(self, stop: threading.Event) -> bool:
        """Block while unplugged; True when it is time to come back, False if stopped."""
        while not stop.is_set():
            with self._lock:
                due = self._replug_at is not None and time.monotonic() >= self._replug_at
            if due or self._replugged.wait(TICK_S):
                with self._lock:
                    self._replug_at = None
                self._replugged.clear()
                return True
        return False

    # -- the device ----------------------------------------------------------------------------
    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return b""
        except OSError as err:
            # EIO on a master means no slave is open; the host keeps one open, so this is
            # only seen while it tears the pty down
            if err.errno != errno.EIO:
                raise
            return b""

    def _stalled(self, now: float) -> bool:
        return self._stalled_until is not None and now < self._stalled_until

    def _tick(self, now: float) -> bool:
        """Advance timers; True while stalled."""
        if self._stalled_until is not None and now >= self._stalled_until:
            self._stalled_until = None
        if self._state == wire.STATE_EXPOSING and now >= self._exposure_done_at:
            self._read_out()
        stalled = self._stalled(now)
        if stalled:
            self._outbox.clear()   # a hung device sends nothing
        return stalled

    def _handle(self, command: tuple[int, int, bytes], now: float) -> None:
        self._counters["commands"] += 1
        packet_type = command[0]
        if packet_type != wire.IDENTIFY and command == self._last_command \
                and self._last_reply is not None:
            # the host sent it again: its answer was lost, not the command. Answer again,
            # never act twice (an EXPOSE must not become a second exposure).
            self._counters["replayed_commands"] += 1
            self._outbox.append(self._last_reply)
            return
        reply, extra = self._execute(command, now)
        self._last_command = command
        self._last_reply = reply
        self._outbox.append(reply)
        self._outbox.extend(extra)

    def _ack(self, command: tuple[int, int, bytes], body: bytes = b"") -> _Outgoing:
        return _Outgoing("ack", wire.ACK, struct.pack("<HB", command[1], command[0]) + body)

    def _nak(self, command: tuple[int, int, bytes], code: int, reason: str) -> _Outgoing:
        return _Outgoing("nak", wire.NAK, struct.pack("<HBB", command[1], command[0], code)
                         + reason.encode("utf-8"))

    def _execute(self, command: tuple[int, int, bytes],
                 now: float) -> tuple[_Outgoing, list[_Outgoing]]:
        packet_type, _, payload = command
        fixed_sizes = {wire.IDENTIFY: 0, wire.STATUS: 0, wire.SET_TECHNIQUE: 10, wire.ARM: 0,
                       wire.EXPOSE: 0, wire.ABORT: 0}
        if packet_type in fixed_sizes and len(payload) != fixed_sizes[packet_type]:
            return self._nak(command, wire.NAK_BAD_PAYLOAD,
                             f"expected {fixed_sizes[packet_type]} payload bytes"), []
        if packet_type == wire.IDENTIFY:
            # never replayed (see _handle): a new session starts with a fresh reply cache
            return self._ack(command, self._identity()), []
        if packet_type == wire.STATUS:
            return self._ack(command, self._status()), []
        if packet_type == wire.SET_TECHNIQUE:
            return self._set_technique(command), []
        if packet_type == wire.ARM:
            return self._arm(command), []
        if packet_type == wire.EXPOSE:
            return self._expose(command, now), []
        if packet_type == wire.ABORT:
            self._abort()
            return self._ack(command), []
        if packet_type == wire.RESEND:
            return self._resend(command)
        return self._nak(command, wire.NAK_UNKNOWN_COMMAND,
                         f"unknown command 0x{packet_type:02X}"), []

    def _identity(self) -> bytes:
        return (struct.pack("<BHHBHH", self.protocol_version, self.rows, self.columns,
                            self.bits_stored, *self.pixel_spacing_um)
                + wire.pack_text(self.model) + wire.pack_text(self.serial_number)
                + wire.pack_text(self.firmware_version))

    def _status(self) -> bytes:
        technique = self._technique or wire.pack_technique(0, 0, 0)
        held = self._held.frame_id if self._held else 0
        return (bytes([self._state, int(self._technique is not None)]) + technique
                + struct.pack("<IH", self._counters["exposures"], held))

    def _set_technique(self, command: tuple[int, int, bytes]) -> _Outgoing:
        if self._state == wire.STATE_EXPOSING:
            return self._nak(command, wire.NAK_BUSY, "exposure in progress")
        kv, mas, us = wire.unpack_technique(command[2])
        problems = []
        for value, (low, high), what, scale, unit in (
                (kv, KV_TENTHS_RANGE, "tube voltage", 10, "kV"),
                (mas, MAS_HUNDREDTHS_RANGE, "tube current-time product", 100, "mAs"),
                (us, EXPOSURE_US_RANGE, "exposure time", 1000, "ms")):
            if not low <= value <= high:
                problems.append(f"{what} {value / scale:g} {unit} outside "
                                f"{low / scale:g}..{high / scale:g}")
        if not problems:
            current_ma = (mas / 100) / (us / 1e6)
            if current_ma > MAX_TUBE_CURRENT_MA:
                problems.append(f"tube current {current_ma:.0f} mA above "
                                f"{MAX_TUBE_CURRENT_MA:.0f} mA")
        if problems:
            return self._nak(command, wire.NAK_OUT_OF_RANGE, "; ".join(problems))
        # the generator sets the tube voltage in whole kilovolts
        applied = wire.pack_technique(round(kv / 10) * 10, mas, us)
        self._technique = applied
        self._state = wire.STATE_IDLE   # a new technique must be armed again
        return self._ack(command, applied)

    def _arm(self, command: tuple[int, int, bytes]) -> _Outgoing:
        if self._state == wire.STATE_EXPOSING:
            return self._nak(command, wire.NAK_BUSY, "exposure in progress")
        if self._technique is None:
            return self._nak(command, wire.NAK_BAD_STATE, "no technique set")
        for fault in self._faults:
            if fault.kind == "interlock":
                fault.countdown -= 1
                if fault.countdown <= 0:
                    self._spend(fault, "arm", command[1])
                    return self._nak(command, wire.NAK_INTERLOCK, "door interlock open")
        self._state = wire.STATE_ARMED
        return self._ack(command)

    def _expose(self, command: tuple[int, int, bytes], now: float) -> _Outgoing:
        if self._state != wire.STATE_ARMED:
            return self._nak(command, wire.NAK_BAD_STATE, "not armed")
        assert self._technique is not None
        frame_id = self._next_frame_id
        self._next_frame_id = (frame_id + 1) & 0xFFFF
        _, _, exposure_us = wire.unpack_technique(self._technique)
        self._state = wire.STATE_EXPOSING
        self._exposing_id = frame_id
        self._exposure_done_at = now + exposure_us / 1e6 + self.readout_s
        self._counters["exposures"] += 1
        return self._ack(command, struct.pack("<H", frame_id))

    def _abort(self) -> None:
        if self._state == wire.STATE_EXPOSING:
            self._exposing_id = None     # the exposure is cut short: no frame
            self._counters["aborted_exposures"] += 1
        self._state = wire.STATE_IDLE
        self._outbox = deque(item for item in self._outbox if item.frame_id is None)

    def _read_out(self) -> None:
        frame_id = self._exposing_id
        self._state = wire.STATE_IDLE
        self._exposing_id = None
        if frame_id is None or self._technique is None:
            return
        pixels = self.expected_frame(frame_id)
        wire_dtype = "u1" if self.bits_stored <= 8 else "<u2"
        kv_tenths, mas_hundredths, _ = wire.unpack_technique(self._technique)
        self._held = _HeldFrame(frame_id, pixels.astype(wire_dtype).tobytes(), self._technique,
                                self.dap_centi_dgycm2(kv_tenths, mas_hundredths))
        self._outbox.extend(self._frame_packets(self._held, None))

    def _chunk_count(self, held: _HeldFrame) -> int:
        return -(-len(held.data) // self.chunk_size)

    def _frame_packets(self, held: _HeldFrame, chunks: Sequence[int] | None) -> list[_Outgoing]:
        """Header + every chunk + end if `chunks` is None, else those chunks + end."""
        count = self._chunk_count(held)
        packets = []
        if chunks is None:
            bytes_per_pixel = 1 if self.bits_stored <= 8 else 2
            packets.append(_Outgoing("header", wire.FRAME_HEADER, struct.pack(
                "<HHHBBHHI", held.frame_id, self.rows, self.columns, self.bits_stored,
                bytes_per_pixel, count, self.chunk_size, len(held.data)) + held.technique
                + self._dap_field(held), held.frame_id))
            chunks = range(count)
        for index in chunks:
            data = held.data[index * self.chunk_size : (index + 1) * self.chunk_size]
            packets.append(_Outgoing("chunk", wire.DATA_CHUNK,
                                     struct.pack("<HH", held.frame_id, index) + data,
                                     held.frame_id))
        packets.append(_Outgoing("end", wire.FRAME_END, struct.pack(
            "<HHI", held.frame_id, count, wire.crc32_frame(held.data)), held.frame_id))
        return packets

    def _dap_field(self, held: _HeldFrame) -> bytes:
        """FRAME_HEADER bytes 26..29 from protocol version 2 on; nothing for version 1."""
        if self.protocol_version < 2:
            return b""
        return struct.pack("<I", held.dap_centi_dgycm2)

    def _resend(self, command: tuple[int, int, bytes]) -> tuple[_Outgoing, list[_Outgoing]]:
        payload = command[2]
        if len(payload) < 3 or len(payload) != 3 + 2 * payload[2] or payload[2] > 64:
            return self._nak(command, wire.NAK_BAD_PAYLOAD, "malformed RESEND"), []
        frame_id = payload[0] | payload[1] << 8
        chunks = list(struct.unpack_from(f"<{payload[2]}H", payload, 3))
        if frame_id == self._exposing_id:
            return self._nak(command, wire.NAK_NOT_READY, f"frame {frame_id} not read out yet"), []
        held = self._held
        if held is None or held.frame_id != frame_id:
            holding = "nothing" if held is None else f"frame {held.frame_id}"
            return self._nak(command, wire.NAK_NOT_HELD,
                             f"frame {frame_id} is not held (holding {holding})"), []
        if wire.WHOLE_FRAME in chunks:
            return self._ack(command), self._frame_packets(held, None)
        count = self._chunk_count(held)
        if any(index >= count for index in chunks):
            return self._nak(command, wire.NAK_OUT_OF_RANGE,
                             f"frame {frame_id} has chunks 0..{count - 1}"), []
        return self._ack(command), self._frame_packets(held, chunks)

    # -- faults on the way out -----------------------------------------------------------------
    def _next_wire_bytes(self, now: float) -> bytes:
        item = self._outbox.popleft()
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        self._counters["packets_sent"] += 1
        out = wire.build_packet(item.packet_type, seq, item.payload)
        for fault in list(self._faults):
            if fault.kind == "interlock" or not fault.matches(item.kind):
                continue
            fault.countdown -= 1
            if fault.countdown > 0:
                continue
            self._spend(fault, item.kind, seq)
            out = self._apply(fault, item, seq, out, now)
        return out

    def _spend(self, fault: Fault, target: str, seq: int) -> None:
        self._fired.append(f"{fault.kind} on {target} seq {seq}")
        logger.debug("stub: %s", self._fired[-1])
        fault.times -= 1
        if fault.times > 0:
            fault.countdown = 1      # and the next matching one
        else:
            self._faults.remove(fault)

    def _apply(self, fault: Fault, item: _Outgoing, seq: int, out: bytes, now: float) -> bytes:
        kind = fault.kind
        if kind == "garbage":
            return self._garbage(fault.nbytes) + out
        if kind == "bad_crc":
            damaged = bytearray(out)
            position = self._rng.randrange(8, len(damaged))   # payload or CRC, never the sync
            damaged[position] ^= 1 << self._rng.randrange(8)
            return bytes(damaged)
        if kind == "drop_packet":
            return b""
        if kind == "duplicate_packet":
            return out + out
        if kind == "truncate":
            return out[: max(1, len(out) // 2)]
        if kind == "huge_length":
            return wire.header_bytes(wire.ACK, self._rng.randrange(0x10000), 0xFFFF) + out
        if kind == "corrupt_pixels":
            if item.kind != "chunk" or len(item.payload) <= 4:
                return out
            payload = bytearray(item.payload)
            payload[self._rng.randrange(4, len(payload))] ^= 1 << self._rng.randrange(8)
            return wire.build_packet(item.packet_type, seq, bytes(payload))
        self._fire_now(fault, now)   # stall, disconnect or restart
        return b""

    def _fire_now(self, fault: Fault, now: float) -> None:
        if fault.kind == "stall":
            self._stalled_until = float("inf") if fault.seconds is None else now + fault.seconds
            self._outbox.clear()
        elif fault.kind == "disconnect":
            self._unplug_at_once = True
            self._replug_at = None if fault.seconds is None else now + fault.seconds
            self._replugged.clear()
        elif fault.kind == "restart":
            self._seq = 0
            self._state = wire.STATE_IDLE
            self._technique = None
            self._next_frame_id = 0
            self._exposing_id = None
            self._held = None
            self._outbox.clear()
            self._last_command = None
            self._last_reply = None
            self._counters["restarts"] += 1
        if fault.at == 0:
            self._fired.append(f"{fault.kind} at once")

    def _garbage(self, nbytes: int) -> bytes:
        """Random bytes with a false sync and a bad header inside, ending in a lone A5."""
        noise = bytearray(self._rng.randbytes(nbytes))
        if nbytes >= 12:
            fake = bytes([wire.SYNC0, wire.SYNC1]) + self._rng.randbytes(6)
            at = nbytes // 3
            noise[at : at + len(fake)] = fake
        noise[-1] = wire.SYNC0
        return bytes(noise)


def main(link: str | None = None) -> int:
    """Run the serial device stub on a new pty until SIGINT or SIGTERM.

    Prints the slave path (and the link, if `link` is given, which then points to it), one per
    line, for `[device.options] port`. Returns the exit status.
    """
    return _serve_until_signal(SerialFirmware(), link)


def _serve_until_signal(firmware: SerialFirmware, link: str | None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with serve(firmware, link=link) as path:
            sys.stdout.write(f"{path}\n")
            if link:
                sys.stdout.write(f"{link} -> {path}\n")
            sys.stdout.write("serial device stub running; stop with Ctrl-C\n")
            sys.stdout.flush()
            while not stop.wait(0.5):
                pass
    except OSError as err:
        sys.stderr.write(f"simulate serial: {err}\n")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m firmware_stubs.serial_device",
        description="Serial X-ray device stub on a pseudo-terminal (drivers/PROTOCOL.md).")
    parser.add_argument("--link", help="symlink to keep pointing at the device's pty")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--columns", type=int, default=512)
    parser.add_argument("--bits", type=int, default=12)
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC",
                        help=f"e.g. bad_crc@3 (faults: {', '.join(FAULT_KINDS)})")
    args = parser.parse_args(argv)
    try:
        firmware = SerialFirmware(rows=args.rows, columns=args.columns,
                                  bits_stored=args.bits, faults=args.fault)
    except ValueError as err:
        parser.error(str(err))
    return _serve_until_signal(firmware, args.link)


if __name__ == "__main__":
    raise SystemExit(_cli())
