"""The Frame: what every driver hands to the agent. Plain data, no DICOM."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

PhotometricInterpretation = Literal["MONOCHROME2", "RGB"]


@dataclass(frozen=True)
class Frame:
    """One image from the device.

    Attributes
    ----------
    pixels
        (rows, columns) for MONOCHROME2 or (rows, columns, 3) for RGB; uint8 or uint16.
    bits_stored
        Significant bits per sample (<= the dtype's width).
    photometric_interpretation
        "MONOCHROME2" or "RGB".
    t_mono
        time.monotonic() when the frame was read out.
    t_wall
        time.time() (seconds since the epoch, UTC) for the same instant.
    sequence_number
        Per-driver counter, starting at 0 when the driver is opened.
    pixel_spacing_mm
        (row spacing, column spacing) in mm if the device knows it.
    device_parameters
        Acquisition parameters reported by the device, e.g. {"kvp": 70.0, "exposure_ms": 20}.
    """

    pixels: npt.NDArray[Any]
    bits_stored: int
    photometric_interpretation: PhotometricInterpretation
    t_mono: float
    t_wall: float
    sequence_number: int
    pixel_spacing_mm: tuple[float, float] | None = None
    device_parameters: MappingProxyType[str, Any] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def __post_init__(self) -> None:
        check_frame(self)

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def samples_per_pixel(self) -> int:
        return 3 if self.photometric_interpretation == "RGB" else 1

    @property
    def bits_allocated(self) -> int:
        return int(self.pixels.dtype.itemsize * 8)


def check_frame(frame: Frame) -> None:
    """Reject a frame whose pixels and description disagree.

    Raises
    ------
    ValueError
        Naming the field that is wrong and what was expected.
    """
    pixels = frame.pixels
    if not isinstance(pixels, np.ndarray):
        raise ValueError(f"Frame.pixels: expected a numpy array, got {type(pixels).__name__}")
    if pixels.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"Frame.pixels: expected dtype uint8 or uint16, got {pixels.dtype}")
    if frame.photometric_interpretation == "MONOCHROME2":
        if pixels.ndim != 2:
            raise ValueError(
                f"Frame.pixels: MONOCHROME2 needs shape (rows, columns), got {pixels.shape}"
            )
    elif frame.photometric_interpretation == "RGB":
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(
                f"Frame.pixels: RGB needs uint8 shape (rows, columns, 3), got "
                f"{pixels.dtype} {pixels.shape}"
            )
    else:
        raise ValueError(
            "Frame.photometric_interpretation: expected MONOCHROME2 or RGB, got "
            f"{frame.photometric_interpretation!r}"
        )
    if pixels.shape[0] < 1 or pixels.shape[1] < 1 or pixels.shape[0] > 65535 \
            or pixels.shape[1] > 65535:
        raise ValueError(f"Frame.pixels: rows and columns must be 1..65535, got {pixels.shape}")
    bits_allocated = pixels.dtype.itemsize * 8
    if not 1 <= frame.bits_stored <= bits_allocated:
        raise ValueError(
            f"Frame.bits_stored: expected 1..{bits_allocated} for {pixels.dtype}, "
            f"got {frame.bits_stored}"
        )
    if frame.sequence_number < 0:
        raise ValueError(f"Frame.sequence_number: expected >= 0, got {frame.sequence_number}")
    if frame.pixel_spacing_mm is not None:
        if len(frame.pixel_spacing_mm) != 2 or min(frame.pixel_spacing_mm) <= 0:
            raise ValueError(
                f"Frame.pixel_spacing_mm: expected two positive numbers, got "
                f"{frame.pixel_spacing_mm!r}"
            )
