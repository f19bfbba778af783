"""The `simulated` driver: deterministic phantom frames generated in process.

A real backend, not a mock: the demo and the tests run on it, and it paces frames at
`frame_rate` like a device would.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from drivers.base import Driver
from drivers.frame import Frame


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
    return np.clip(np.rint(image * max_value), 0, max_value).astype(dtype)


class SimulatedDriver(Driver):
    """Phantom frames: options `width`, `height`, `bits_stored` (1-16), `frame_rate` (frames/s,
    0 = as fast as asked), `color` (RGB 8-bit), `kvp`, `exposure_ms`."""

    name = "simulated"
    option_types: ClassVar[Mapping[str, tuple[type | tuple[type, ...], Any]]] = {
        "width": (int, 512),
        "height": (int, 512),
        "bits_stored": (int, 12),
        "frame_rate": (float, 0.0),
        "color": (bool, False),
        "kvp": (float, 70.0),
        "exposure_ms": (float, 20.0),
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
        return problems

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._sequence = 0
        self._next_due = 0.0

    def _open(self) -> None:
        self._sequence = 0
        self._next_due = time.monotonic()

    def _close(self) -> None:
        pass

    def _read_frame(self, deadline: float) -> Frame | None:
        rate = self.options["frame_rate"]
        if rate > 0:
            if self._next_due > deadline:
                time.sleep(max(deadline - time.monotonic(), 0.0))
                return None
            time.sleep(max(self._next_due - time.monotonic(), 0.0))
            self._next_due = max(self._next_due + 1.0 / rate, time.monotonic() - 1.0 / rate)
        bits = self.options["bits_stored"]
        pixels = phantom(self.options["height"], self.options["width"], bits, self._sequence)
        if self.options["color"]:
            pixels = np.stack([pixels, pixels[::-1, :], pixels[:, ::-1]], axis=-1)
        frame = Frame(
            pixels=pixels,
            bits_stored=bits,
            photometric_interpretation="RGB" if self.options["color"] else "MONOCHROME2",
            t_mono=time.monotonic(),
            t_wall=time.time(),
            sequence_number=self._sequence,
            pixel_spacing_mm=(0.2, 0.2),
            device_parameters=MappingProxyType(
                {"kvp": self.options["kvp"], "exposure_ms": self.options["exposure_ms"]}
            ),
        )
        self._sequence += 1
        return frame
