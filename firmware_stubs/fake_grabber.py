"""A fake V4L2 capture device: the kernel's side of memory-mapped streaming, without a kernel.

It keeps the V4L2 rules a real driver enforces, so the v4l2 driver's buffer handling is tested
for real: only queued buffers are filled; a buffer is the application's from DQBUF until QBUF;
queueing it twice, or an unknown index, is EINVAL; STREAMOFF takes every buffer back; a frame
arriving while no buffer is queued is lost (and its sequence number skipped, as V4L2 does).
Images are colour bars plus a moving grey line, delivered as YUYV (BT.601 limited range), GREY
or RGB3, with optional padding at the end of each row (filled with 0xEE so it shows if not
stripped). Each `dequeue_buffer` call is one frame period. Faults: short buffer, error flag,
dropped frames, stall (the call blocks until its timeout, as select() would), disconnect
(ENODEV, and the device stays gone).

Nothing here comes from drivers/: it implements the same small interface by shape.
"""

from __future__ import annotations

import errno
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FOURCCS = ("YUYV", "GREY", "RGB3")
_BYTES_PER_PIXEL = {"YUYV": 2, "GREY": 1, "RGB3": 3}
PADDING_BYTE = 0xEE
FAULTS = ("short", "error", "drop", "stall", "disconnect")

_BARS = np.array([(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0),
                  (255, 0, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)], dtype=np.float64)


@dataclass(frozen=True)
class FakeFormat:
    width: int
    height: int
    fourcc: str
    bytes_per_line: int
    size_image: int


@dataclass(frozen=True)
class FakeFilled:
    index: int
    bytes_used: int
    sequence: int
    error: bool = False


def card_image(width: int, height: int, sequence: int) -> npt.NDArray[np.uint8]:
    """The RGB image of frame `sequence`: colour bars, each pixel pair the same colour (so
    4:2:2 chroma loses nothing), and a grey line moving down one row per frame."""
    pair_column = (np.arange(width) // 2) * 2
    rgb = np.broadcast_to(_BARS[pair_column * 8 // max(width, 1)], (height, width, 3)).copy()
    rgb[sequence % height, :, :] = (sequence * 37) % 256
    return rgb.astype(np.uint8)


def luma_of(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """BT.601 luma, full range."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.clip(np.rint(0.299 * r + 0.587 * g + 0.114 * b), 0, 255).astype(np.uint8)


def encode(rgb: npt.NDArray[np.uint8], fourcc: str) -> npt.NDArray[np.uint8]:
    """(height, width x bytes per pixel) rows of the image in `fourcc`."""
    height, width, _ = rgb.shape
    if fourcc == "RGB3":
        return rgb.reshape(height, width * 3)
    if fourcc == "GREY":
        return luma_of(rgb)
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 219 / 255 * (0.299 * r + 0.587 * g + 0.114 * b)
    cb = 128 + 224 / 255 * (-0.168736 * r - 0.331264 * g + 0.5 * b)
    cr = 128 + 224 / 255 * (0.5 * r - 0.418688 * g - 0.081312 * b)
    out = np.empty((height, width // 2, 4), dtype=np.float64)
    out[..., 0] = y[:, 0::2]
    out[..., 1] = (cb[:, 0::2] + cb[:, 1::2]) / 2
    out[..., 2] = y[:, 1::2]
    out[..., 3] = (cr[:, 0::2] + cr[:, 1::2]) / 2
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(height, width * 2)


class FakeGrabber:
    """One fake /dev/videoN. Thread-safe; each `dequeue_buffer` call is one frame period.

    Parameters
    ----------
    path
        Only reported back.
    padding
        Extra bytes at the end of every row (bytes_per_line = row bytes + padding).
    max_buffers
        The most buffers it grants.
    fourccs
        The formats it can deliver; asked for another, it offers the first.
    """

    def __init__(self, path: str = "/dev/video-fake", *, padding: int = 0, max_buffers: int = 8,
                 fourccs: tuple[str, ...] = FOURCCS) -> None:
        self.path = path
        self.padding = padding
        self.max_buffers = max_buffers
        self.fourccs = fourccs
        self._lock = threading.Lock()
        self._format: FakeFormat | None = None
        self._buffers: list[bytearray] = []
        self._state: list[str] = []            # "user", "queued"
        self._queued: deque[int] = deque()     # queued, in the order they will be filled
        self._streaming = False
        self._closed = False
        self._sequence = 0
        self._faults: deque[str] = deque()
        self._woken = threading.Event()
        self.calls: list[str] = []

    # -- test hooks ----------------------------------------------------------------------------
    def inject(self, fault: str, count: int = 1) -> None:
        """Make the next `count` frames `fault` (short | error | drop | stall | disconnect)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
        with self._lock:
            self._faults.extend([fault] * count)

    @property
    def queued_count(self) -> int:
        with self._lock:
            return len(self._queued)

    @property
    def buffer_count(self) -> int:
        with self._lock:
            return len(self._buffers)

    @property
    def streaming(self) -> bool:
        return self._streaming

    @property
    def closed(self) -> bool:
        return self._closed

    def expected_rgb(self, sequence: int) -> npt.NDArray[np.uint8]:
        fmt = self._require_format()
        return card_image(fmt.width, fmt.height, sequence)

    # -- the device interface ------------------------------------------------------------------
    def set_format(self, width: int, height: int, fourcc: str) -> FakeFormat:
        with self._lock:
            self._check_open("S_FMT")
            if self._streaming or self._buffers:
                raise OSError(errno.EBUSY, "format locked while buffers are allocated")
            chosen = fourcc if fourcc in self.fourccs else self.fourccs[0]
            if chosen == "YUYV":
                width -= width % 2
            bytes_per_line = width * _BYTES_PER_PIXEL[chosen] + self.padding
            self._format = FakeFormat(width, height, chosen, bytes_per_line,
                                      bytes_per_line * height)
            self.calls.append(f"S_FMT {width}x{height} {chosen}")
            return self._format

    def request_buffers(self, count: int) -> list[memoryview]:
        with self._lock:
            self._check_open("REQBUFS")
            fmt = self._require_format()
            if self._streaming:
                raise OSError(errno.EBUSY, "REQBUFS while streaming")
            granted = min(count, self.max_buffers)
            self._buffers = [bytearray(fmt.size_image) for _ in range(granted)]
            self._state = ["user"] * granted
            self._queued.clear()
            self.calls.append(f"REQBUFS {count} -> {granted}")
            return [memoryview(b) for b in self._buffers]

    def queue_buffer(self, index: int) -> None:
        with self._lock:
            self._check_open("QBUF")
            if not 0 <= index < len(self._buffers):
                raise OSError(errno.EINVAL, f"QBUF: no buffer {index}")
            if self._state[index] != "user":
                raise OSError(errno.EINVAL, f"QBUF: buffer {index} is already queued")
            self._state[index] = "queued"
            self._queued.append(index)

    def stream_on(self) -> None:
        with self._lock:
            self._check_open("STREAMON")
            if not self._buffers:
                raise OSError(errno.EINVAL, "STREAMON without buffers")
            self._streaming = True
            self.calls.append("STREAMON")

    def stream_off(self) -> None:
        with self._lock:
            self._check_open("STREAMOFF")
            self._streaming = False
            self._state = ["user"] * len(self._buffers)
            self._queued.clear()
            self.calls.append("STREAMOFF")

    def dequeue_buffer(self, timeout_s: float) -> FakeFilled | None:
        with self._lock:
            self._check_open("DQBUF")
            if not self._streaming:
                raise OSError(errno.EINVAL, "DQBUF while not streaming")
            fault = self._faults.popleft() if self._faults else None
            if fault == "disconnect":
                self._closed = True
                raise OSError(errno.ENODEV, "No such device")
        if fault == "stall":
            # no frame comes: block as select() would, until the caller's timeout (or close)
            self._woken.wait(max(timeout_s, 0.0))
            return None
        with self._lock:
            self._check_open("DQBUF")
            if fault == "drop":
                self._sequence += 1               # a frame came and went unseen
                return None
            sequence = self._sequence
            self._sequence += 1
            if not self._queued:
                return None                       # no buffer to fill: this frame is lost
            index = self._queued.popleft()
            self._state[index] = "user"
            return self._fill(index, sequence, fault)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._streaming = False
            self.calls.append("close")
        self._woken.set()

    # -- internals -----------------------------------------------------------------------------
    def _check_open(self, call: str) -> None:
        if self._closed:
            raise OSError(errno.ENODEV, f"{call}: {self.path} is gone")

    def _require_format(self) -> FakeFormat:
        if self._format is None:
            raise OSError(errno.EINVAL, "no format set")
        return self._format

    def _fill(self, index: int, sequence: int, fault: str | None) -> FakeFilled:
        fmt = self._require_format()
        rows = encode(card_image(fmt.width, fmt.height, sequence), fmt.fourcc)
        image = np.full((fmt.height, fmt.bytes_per_line), PADDING_BYTE, dtype=np.uint8)
        image[:, : rows.shape[1]] = rows
        data = image.tobytes()
        used = len(data) // 2 if fault == "short" else len(data)
        buffer = self._buffers[index]
        buffer[:used] = data[:used]
        return FakeFilled(index, used, sequence, error=fault == "error")

