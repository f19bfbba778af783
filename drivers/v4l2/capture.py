"""The V4L2 streaming buffer cycle, against a small device interface (`CaptureDevice`).

Memory-mapped streaming: the driver requests N buffers, queues them all, starts streaming; the
kernel fills a queued buffer and hands it back on dequeue; the driver copies the bytes out and
queues the buffer again at once, so the grabber never runs out of buffers (a buffer kept by
user space is one the kernel cannot fill, and frames are lost). `linuxpy_device` implements the
interface on a real device; tests use firmware_stubs.fake_grabber.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from drivers.errors import DriverError


class NegotiatedFormat(Protocol):
    """What the device agreed to deliver (VIDIOC_S_FMT's answer)."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def fourcc(self) -> str: ...
    @property
    def bytes_per_line(self) -> int: ...   # 0 = packed (width x bytes per pixel)
    @property
    def size_image(self) -> int: ...


class DequeuedBuffer(Protocol):
    """A filled buffer handed back by the device (VIDIOC_DQBUF's answer)."""

    @property
    def index(self) -> int: ...
    @property
    def bytes_used(self) -> int: ...
    @property
    def sequence(self) -> int: ...
    @property
    def error(self) -> bool: ...          # V4L2_BUF_FLAG_ERROR: the data may be damaged


class CaptureDevice(Protocol):
    """The V4L2 calls the driver needs. Errors are OSError, as the ioctls raise them."""

    def set_format(self, width: int, height: int, fourcc: str) -> NegotiatedFormat: ...
    def request_buffers(self, count: int) -> Sequence[memoryview]: ...
    def queue_buffer(self, index: int) -> None: ...
    def dequeue_buffer(self, timeout_s: float) -> DequeuedBuffer | None: ...
    def stream_on(self) -> None: ...
    def stream_off(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Format:
    """A `NegotiatedFormat` record, for device implementations."""

    width: int
    height: int
    fourcc: str
    bytes_per_line: int
    size_image: int


@dataclass(frozen=True)
class Filled:
    """A `DequeuedBuffer` record, for device implementations."""

    index: int
    bytes_used: int
    sequence: int
    error: bool = False


@dataclass(frozen=True)
class Capture:
    """One frame's bytes, copied out of the driver's buffer, with its V4L2 bookkeeping."""

    data: bytes
    sequence: int
    error: bool
    t_mono: float
    t_wall: float


class BufferRing:
    """Owns the device's buffers: queue all, stream; dequeue, copy, queue again."""

    def __init__(self, device: CaptureDevice, count: int) -> None:
        self._device = device
        self._count = count
        self._buffers: Sequence[memoryview] = ()
        self._streaming = False

    @property
    def buffer_count(self) -> int:
        return len(self._buffers)

    def start(self) -> None:
        """Request, queue every buffer, stream on.

        Raises
        ------
        OSError
            From the device.
        DriverError
            If the device grants no buffer.
        """
        buffers = self._device.request_buffers(self._count)
        if not buffers:
            raise DriverError("v4l2: the device granted no capture buffers")
        self._buffers = buffers
        for index in range(len(buffers)):
            self._device.queue_buffer(index)
        self._device.stream_on()
        self._streaming = True

    def stop(self) -> None:
        """Stream off (the device takes every buffer back). Raises OSError from the device."""
        if self._streaming:
            self._streaming = False
            self._device.stream_off()

    def next_capture(self, deadline: float) -> Capture | None:
        """The next filled buffer's bytes, or None if none came by `deadline`.

        The buffer is queued again before this returns, whatever happens to its contents.

        Raises
        ------
        OSError
            From the device.
        DriverError
            If the device hands back a buffer it was never given.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        filled = self._device.dequeue_buffer(remaining)
        if filled is None:
            return None
        if not 0 <= filled.index < len(self._buffers):
            raise DriverError(f"v4l2: the device returned buffer {filled.index}; only "
                              f"0..{len(self._buffers) - 1} exist")
        try:
            buffer = self._buffers[filled.index]
            used = min(max(filled.bytes_used, 0), len(buffer))
            data = bytes(buffer[:used])
            return Capture(data, filled.sequence, filled.error, time.monotonic(), time.time())
        finally:
            self._device.queue_buffer(filled.index)
