"""The last frame as a small PNG for the console: downscaled with numpy, windowed to the bits
stored, encoded with zlib only (no imaging library)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

#: the longest side of a thumbnail, in pixels
DEFAULT_MAX_SIDE = 256


def downscale(pixels: npt.NDArray[Any], max_side: int) -> npt.NDArray[Any]:
    """Nearest-neighbour resample so that the longest side is `max_side` (never upscaled):
    cheap, and a thumbnail only has to show that the right thing was captured."""
    rows, cols = pixels.shape[:2]
    longest = max(rows, cols)
    if longest <= max_side:
        return pixels
    new_rows = max(1, round(rows * max_side / longest))
    new_cols = max(1, round(cols * max_side / longest))
    row_index = np.arange(new_rows) * rows // new_rows
    col_index = np.arange(new_cols) * cols // new_cols
    resampled: npt.NDArray[Any] = pixels[row_index[:, None], col_index]
    return resampled


def to_8bit(pixels: npt.NDArray[Any], bits_stored: int) -> npt.NDArray[np.uint8]:
    """Map 0..2**bits_stored-1 onto 0..255 (values above are clipped)."""
    if pixels.dtype == np.uint8 and bits_stored >= 8:
        return pixels
    bits = max(1, min(int(bits_stored), 16))
    top = (1 << bits) - 1
    scaled = np.clip(pixels.astype(np.uint32), 0, top) * 255 // top
    return scaled.astype(np.uint8)


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """PNG bytes of an 8-bit grey (rows, cols) or RGB (rows, cols, 3) array."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) \
            or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected uint8 (rows, cols) or (rows, cols, 3), got "
                         f"{pixels.dtype} {pixels.shape}")
    rows, cols = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else 2
    raw = np.ascontiguousarray(pixels).reshape(rows, -1)
    # filter type 0 (None) in front of every scanline
    scanlines = np.hstack([np.zeros((rows, 1), dtype=np.uint8), raw]).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", cols, rows, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(scanlines, 6)) + chunk(b"IEND", b""))


def thumbnail_png(pixels: npt.NDArray[Any], bits_stored: int,
                  max_side: int = DEFAULT_MAX_SIDE) -> bytes:
    """The frame's thumbnail: downscaled, windowed to `bits_stored`, as PNG."""
    return encode_png(to_8bit(downscale(pixels, max_side), bits_stored))
