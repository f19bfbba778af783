"""The `simulated` driver: deterministic test frames generated in process.

A real backend, not a mock: the demo and the tests run on it. It paces frames at `frame_rate`
like a device would, plays cine loops, and has a fault switch (`fail_after`, `inject_fault`)
that makes it fail the way hardware does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from drivers.base import Driver
from drivers.errors import DeviceDisconnectedError
from drivers.frame import Frame
from drivers.pacing import FramePacer

logger = logging.getLogger(__name__)

PATTERNS = ("phantom", "bars", "gradient", "noise")
FAILURES = ("disconnect", "timeout")

#: 100 % colour bars, left to right (SMPTE order, then black)
COLOR_BARS = np.array([(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0),
                       (255, 0, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)], dtype=np.uint8)


def phantom(rows: int, columns: int, bits_stored: int, index: int) -> npt.NDArray[Any]:
    """A disc on a ramp with a moving bar: distinct per index, exact per (size, bits, index)."""
    max_value = (1 << bits_stored) - 1
    y, x = np.mgrid[0:rows, 0:columns]
    ramp = (x + y) / max(rows + columns - 2, 1)
    cy, cx = rows / 2.0, columns / 2.0
    radius = min(rows, columns) * 0.35
    disc = ((y - cy) ** 2 + (x - cx) ** 2) <= radius**2
    image = 0.25 * ramp + 0.6 * disc
    bar = max(columns // 16, 1)
    start = (index * bar) % columns
    image[:, start : start + bar] = 1.0
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    result: npt.NDArray[Any] = np.clip(np.rint(image * max_value), 0, max_value).astype(dtype)
    return result


def bars(rows: int, columns: int, bits_stored: int, index: int,
         color: bool = False) -> npt.NDArray[Any]:
    """Eight vertical bars scrolling left by 1/64 of the width per index: colour bars
    (uint8 RGB) or grey steps from white to black."""
    step = max(columns // 64, 1)
    x = (np.arange(columns) + index * step) % columns
    bar_of_column = x * 8 // columns
    if color:
        return np.broadcast_to(COLOR_BARS[bar_of_column], (rows, columns, 3)).copy()
    top = (1 << bits_stored) - 1
    levels = np.rint((7 - np.arange(8)) / 7 * top)
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    # order="C": a frame laid out as a real device's buffer is (astype keeps a broadcast
    # view's layout, and every later copy of a 1024² frame then walked it column-wise)
    return np.broadcast_to(levels[bar_of_column], (rows, columns)).astype(dtype, order="C")


def gradient(rows: int, columns: int, bits_stored: int, index: int,
             color: bool = False) -> npt.NDArray[Any]:
    """A horizontal ramp over the full range, moving right by 1/64 of the width per index;
    in colour R follows x, G follows y and B the other diagonal."""
    step = max(columns // 64, 1)
    x = ((np.arange(columns) - index * step) % columns) / max(columns - 1, 1)
    if color:
        y = np.arange(rows) / max(rows - 1, 1)
        red = np.broadcast_to(x, (rows, columns))
        green = np.broadcast_to(y[:, None], (rows, columns))
        blue = 1 - (red + green) / 2
        return np.rint(np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)
    top = (1 << bits_stored) - 1
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    return np.broadcast_to(np.rint(x * top), (rows, columns)).astype(dtype, order="C")


def noise(rows: int, columns: int, bits_stored: int, index: int, color: bool = False,
          seed: int = 0) -> npt.NDArray[Any]:
    """Uniform noise over the full range, the same for the same (seed, index)."""
    rng = np.random.default_rng([seed, index])
    if color:
        return rng.integers(0, 256, size=(rows, columns, 3), dtype=np.uint8)
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    return rng.integers(0, 1 << bits_stored, size=(rows, columns), dtype=dtype)


def pattern_image(pattern: str, rows: int, columns: int, bits_stored: int, index: int,
                  color: bool = False, seed: int = 0) -> npt.NDArray[Any]:
    """The `pattern` frame for `index`; RGB uint8 (rows, columns, 3) when `color`."""
    if pattern == "phantom":
        pixels = phantom(rows, columns, bits_stored, index)
        if color:
            pixels = np.stack([pixels, pixels[::-1, :], pixels[:, ::-1]], axis=-1)
        return pixels
    if pattern == "bars":
        return bars(rows, columns, bits_stored, index, color)
    if pattern == "gradient":
        return gradient(rows, columns, bits_stored, index, color)
    if pattern == "noise":
        return noise(rows, columns, bits_stored, index, color, seed)
    raise ValueError(f"pattern: expected one of {', '.join(PATTERNS)}, got {pattern!r}")


class SimulatedDriver(Driver):
    """Test frames: options `width`, `height`, `bits_stored` (1-16), `frame_rate` (frames/s,
    0 = as fast as asked), `color` (RGB 8-bit), `kvp`, `mas`, `exposure_ms` (reported with each
    frame), `pattern` (phantom | bars | gradient | noise), `seed` (for noise), `cine_frames`
    (N > 0: the content repeats every N frames, a cine loop), `fail_after` (after this many
    frames the device fails once, then works for as many again; -1 = never) and `failure`
    (disconnect | timeout)."""

    name = "simulated"
    option_types: ClassVar[Mapping[str, tuple[type | tuple[type, ...], Any]]] = {
        "width": (int, 512),
        "height": (int, 512),
        "bits_stored": (int, 12),
        "frame_rate": (float, 0.0),
        "color": (bool, False),
        "kvp": (float, 70.0),
        "mas": (float, 10.0),
        "exposure_ms": (float, 20.0),
        "pattern": (str, "phantom"),
        "seed": (int, 0),
        "cine_frames": (int, 0),
        "fail_after": (int, -1),
        "failure": (str, "disconnect"),
    }

    @classmethod
    def _check_option_values(cls, options: Mapping[str, Any]) -> list[str]:
        problems = []
        for key in ("width", "height"):
            if not 1 <= options[key] <= 16384:
                problems.append(f"{key}: expected 1..16384, got {options[key]}")
        if not 1 <= options["bits_stored"] <= 16:
            problems.append(f"bits_stored: expected 1..16, got {options['bits_stored']}")
        if options["color"] and options["bits_stored"] != 8:
            problems.append(f"bits_stored: color frames are 8-bit, got {options['bits_stored']}")
        if not 0 <= options["frame_rate"] <= 1000:
            problems.append(f"frame_rate: expected 0..1000, got {options['frame_rate']}")
        if options["pattern"] not in PATTERNS:
            problems.append(f"pattern: expected one of {', '.join(PATTERNS)}, "
                            f"got {options['pattern']!r}")
        if options["seed"] < 0:
            problems.append(f"seed: expected >= 0, got {options['seed']}")
        if options["cine_frames"] < 0:
            problems.append(f"cine_frames: expected >= 0 (0 = no loop), "
                            f"got {options['cine_frames']}")
        if options["fail_after"] < -1:
            problems.append(f"fail_after: expected -1 (never) or a frame count >= 0, "
                            f"got {options['fail_after']}")
        if options["failure"] not in FAILURES:
            problems.append(f"failure: expected one of {', '.join(FAILURES)}, "
                            f"got {options['failure']!r}")
        return problems

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._sequence = 0
        self._pacer = FramePacer(self.options["frame_rate"])
        self._frames_since_failure = 0
        self._injected: str | None = None
        self._inject_lock = threading.Lock()

    def inject_fault(self, failure: str = "disconnect") -> None:
        """Make the next read fail with `failure` (disconnect | timeout); thread-safe.

        Raises
        ------
        ValueError
            For an unknown failure.
        """
        if failure not in FAILURES:
            raise ValueError(f"failure: expected one of {', '.join(FAILURES)}, got {failure!r}")
        with self._inject_lock:
            self._injected = failure

    def _open(self) -> None:
        self._sequence = 0
        self._frames_since_failure = 0
        self._pacer.restart()

    def _close(self) -> None:
        pass

    def _reconnect(self, deadline: float) -> None:
        # the simulated device is back as soon as it is asked for: keep the frame sequence
        self._pacer.restart()

    def _due_failure(self) -> str | None:
        with self._inject_lock:
            injected, self._injected = self._injected, None
        if injected is not None:
            return injected
        fail_after = self.options["fail_after"]
        if 0 <= fail_after <= self._frames_since_failure:
            self._frames_since_failure = 0
            return str(self.options["failure"])
        return None

    def _read_frame(self, deadline: float) -> Frame | None:
        failure = self._due_failure()
        if failure == "disconnect":
            raise DeviceDisconnectedError("simulated: device disconnected (fault switch)")
        if failure == "timeout":
            logger.info("simulated: not answering until the deadline (fault switch)")
            time.sleep(max(deadline - time.monotonic(), 0.0))
            return None
        if not self._pacer.wait(deadline):
            return None
        bits = self.options["bits_stored"]
        color = self.options["color"]
        cine = self.options["cine_frames"]
        index = self._sequence % cine if cine else self._sequence
        pixels = pattern_image(self.options["pattern"], self.options["height"],
                               self.options["width"], bits, index, color, self.options["seed"])
        frame = Frame(
            pixels=pixels,
            bits_stored=bits,
            photometric_interpretation="RGB" if color else "MONOCHROME2",
            t_mono=time.monotonic(),
            t_wall=time.time(),
            sequence_number=self._sequence,
            pixel_spacing_mm=(0.2, 0.2),
            device_parameters=MappingProxyType({
                "kvp": self.options["kvp"],
                "mas": self.options["mas"],
                "exposure_ms": self.options["exposure_ms"],
            }),
        )
        self._sequence += 1
        self._frames_since_failure += 1
        return frame
