"""The `v4l2` driver: a video frame grabber (an ultrasound's or endoscope's video output)."""

from __future__ import annotations

import errno
import importlib
import importlib.util
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from drivers.base import Driver
from drivers.errors import (
    DeviceDisconnectedError,
    DriverConfigError,
    DriverError,
    DriverUnavailableError,
)
from drivers.frame import Frame
from drivers.v4l2.capture import BufferRing, CaptureDevice, NegotiatedFormat
from drivers.v4l2.pixels import FOURCC_BY_NAME, ShortBufferError, required_bytes, to_image

logger = logging.getLogger(__name__)

SDK_HINT = "install the optional extra: pip install 'modality-agent[v4l2]'"
#: errno values that mean the device has gone (USB grabber unplugged)
_GONE = {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO, errno.ESHUTDOWN}

CaptureDeviceFactory = Callable[[str], CaptureDevice]


def _linuxpy_factory() -> CaptureDeviceFactory:
    try:
        module = importlib.import_module("drivers.v4l2.linuxpy_device")
    except ImportError as err:
        raise DriverUnavailableError(f"v4l2: the V4L2 bindings cannot be loaded ({err}); "
                                     f"{SDK_HINT}") from err
    factory: CaptureDeviceFactory = module.LinuxpyCaptureDevice
    return factory


class V4L2Driver(Driver):
    """Frames from a V4L2 capture device: options `device` (/dev/videoN), `width`, `height`,
    `pixel_format` (YUYV | GREY | RGB24), `color` (RGB frames; else monochrome from luma),
    `buffers` (streaming buffers, 2..32), `yuv_range` (limited | full, for YUYV).

    `capture_device_factory` (not an option: code only) replaces the linuxpy device, e.g. with
    firmware_stubs.fake_grabber.FakeGrabber in tests.
    """

    name = "v4l2"
    option_types: ClassVar[Mapping[str, tuple[type | tuple[type, ...], Any]]] = {
        "device": (str, "/dev/video0"),
        "width": (int, 640),
        "height": (int, 480),
        "pixel_format": (str, "YUYV"),
        "color": (bool, False),
        "buffers": (int, 4),
        "yuv_range": (str, "limited"),
    }

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("linuxpy") is None:
            return f"linuxpy is not installed; {SDK_HINT}"
        return None

    @classmethod
    def _check_option_values(cls, options: Mapping[str, Any]) -> list[str]:
        problems = []
        if not options["device"].strip():
            problems.append('device: expected a path such as "/dev/video0", got ""')
        for key in ("width", "height"):
            if not 1 <= options[key] <= 8192:
                problems.append(f"{key}: expected 1..8192, got {options[key]}")
        if options["pixel_format"] not in FOURCC_BY_NAME:
            problems.append(f"pixel_format: expected one of {', '.join(FOURCC_BY_NAME)}, "
                            f"got {options['pixel_format']!r}")
        elif options["pixel_format"] == "GREY" and options["color"]:
            problems.append("color: GREY frames are monochrome (set color = false)")
        if options["pixel_format"] == "YUYV" and options["width"] % 2:
            problems.append(f"width: YUYV needs an even width, got {options['width']}")
        if not 2 <= options["buffers"] <= 32:
            problems.append(f"buffers: expected 2..32, got {options['buffers']}")
        if options["yuv_range"] not in ("limited", "full"):
            problems.append(f"yuv_range: expected limited or full, got {options['yuv_range']!r}")
        return problems

    def __init__(self, capture_device_factory: CaptureDeviceFactory | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self._factory = capture_device_factory
        self._device: CaptureDevice | None = None
        self._ring: BufferRing | None = None
        self._format: NegotiatedFormat | None = None
        self._last_sequence: int | None = None
        self._counters = {"short_buffers": 0, "error_buffers": 0, "grabber_dropped": 0}

    @property
    def counters(self) -> dict[str, int]:
        """Buffers refused (short, error-flagged) and frames the grabber dropped."""
        return dict(self._counters)

    def _gone_or_failed(self, err: OSError, doing: str) -> DriverError:
        where = f"v4l2: {self.options['device']}: {doing}: {err}"
        if err.errno in _GONE:
            return DeviceDisconnectedError(where)
        if err.errno == errno.EBUSY:
            return DriverError(f"{where} (another program is using the device)")
        return DriverError(where)

    def _open(self) -> None:
        factory = self._factory or _linuxpy_factory()
        fourcc = FOURCC_BY_NAME[self.options["pixel_format"]]
        try:
            device = factory(self.options["device"])
        except OSError as err:
            raise self._gone_or_failed(err, "open") from err
        self._device = device
        try:
            fmt = device.set_format(self.options["width"], self.options["height"], fourcc)
            if fmt.fourcc != fourcc:
                raise DriverConfigError(
                    f"pixel_format: {self.options['device']} cannot deliver {fourcc} (it "
                    f"offers {fmt.fourcc})")
            required_bytes(fmt)
            ring = BufferRing(device, self.options["buffers"])
            ring.start()
        except BaseException as err:
            self._release_device()
            if isinstance(err, OSError):
                raise self._gone_or_failed(err, "start streaming") from err
            raise
        self._format, self._ring, self._last_sequence = fmt, ring, None
        if (fmt.width, fmt.height) != (self.options["width"], self.options["height"]):
            logger.info("v4l2: %s delivers %dx%d (asked %dx%d)", self.options["device"],
                        fmt.width, fmt.height, self.options["width"], self.options["height"])

    def _close(self) -> None:
        ring, self._ring = self._ring, None
        try:
            if ring is not None:
                ring.stop()
        except OSError as err:
            # a vanished device cannot stream off; its buffers go with it
            logger.debug("v4l2: stream off: %s", err)
        finally:
            self._release_device()

    def _release_device(self) -> None:
        device, self._device = self._device, None
        if device is None:
            return
        try:
            device.close()
        except OSError as err:
            logger.debug("v4l2: close: %s", err)

    def _read_frame(self, deadline: float) -> Frame | None:
        ring, fmt = self._ring, self._format
        if ring is None or fmt is None:
            raise DeviceDisconnectedError(f"v4l2: {self.options['device']} is not streaming")
        while True:
            try:
                capture = ring.next_capture(deadline)
            except OSError as err:
                raise self._gone_or_failed(err, "dequeue") from err
            if capture is None:
                if time.monotonic() >= deadline:
                    return None
                continue    # woken without a frame (EAGAIN): wait out the rest
            if self._last_sequence is not None and capture.sequence > self._last_sequence + 1:
                # V4L2 counts frames it had no free buffer for: the grabber dropped them
                self._counters["grabber_dropped"] += capture.sequence - self._last_sequence - 1
            self._last_sequence = capture.sequence
            if capture.error:
                self._counters["error_buffers"] += 1
                logger.warning("v4l2: frame %d flagged damaged by the device; dropped",
                               capture.sequence)
                continue
            try:
                image = to_image(capture.data, fmt, color=self.options["color"],
                                 yuv_range=self.options["yuv_range"])
            except ShortBufferError as err:
                self._counters["short_buffers"] += 1
                logger.warning("%s", err)
                continue
            return Frame(
                pixels=image,
                bits_stored=8,
                photometric_interpretation="RGB" if image.ndim == 3 else "MONOCHROME2",
                t_mono=capture.t_mono,
                t_wall=capture.t_wall,
                sequence_number=self.next_sequence_number,
                device_parameters=MappingProxyType({"v4l2_sequence": capture.sequence}),
            )

    def _status_detail(self) -> str:
        fmt = self._format
        text = str(self.options["device"])
        if fmt is not None:
            text += f" {fmt.width}x{fmt.height} {fmt.fourcc}"
        refused = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self._counters.items() if v)
        return text + (f"; {refused}" if refused else "")
