"""Reads plain PNG images with zlib alone (PNG spec, ISO/IEC 15948): no new dependency.

Supported: greyscale 8 and 16 bit, RGB 8 bit, non-interlaced; every chunk CRC is checked, and
sBIT (significant bits) gives bits stored. Anything else (palette, alpha, Adam7 interlace,
1/2/4-bit grey, 16-bit RGB) is refused with the reason.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: refuse images larger than this many pixels rather than allocate them
MAX_PIXELS = 16384 * 16384

_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale + alpha", 6: "RGBA"}


class PngError(ValueError):
    """The bytes are not a PNG this reader supports; the message says why."""


@dataclass(frozen=True)
class PngImage:
    """Pixels as (rows, columns) uint8/uint16 or (rows, columns, 3) uint8, and bits stored."""

    pixels: npt.NDArray[Any]
    bits_stored: int


def read_png(data: bytes) -> PngImage:
    """Decode a PNG file's bytes.

    Raises
    ------
    PngError
        If it is not a PNG, is damaged (chunk CRC, truncated, bad filter) or uses a feature
        this reader does not support.
    """
    if not data.startswith(SIGNATURE):
        raise PngError("not a PNG file (signature missing)")
    header: tuple[int, int, int, int, int, int, int] | None = None
    significant: bytes | None = None
    idat = bytearray()
    offset = len(SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise PngError("truncated: no IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, offset)
        body_start = offset + 8
        body_end = body_start + length
        if body_end + 4 > len(data):
            raise PngError(f"truncated inside chunk {kind!r}")
        body = data[body_start:body_end]
        (crc,) = struct.unpack_from(">I", data, body_end)
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise PngError(f"chunk {kind.decode('latin-1')!r} at byte {offset}: CRC mismatch")
        offset = body_end + 4
        if header is None and kind != b"IHDR":
            raise PngError("the first chunk is not IHDR")
        if kind == b"IHDR":
            if length != 13:
                raise PngError(f"IHDR: expected 13 bytes, got {length}")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"sBIT":
            significant = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        elif kind[0:1].isupper() and kind != b"PLTE":
            # a critical chunk we do not know: the image cannot be read correctly without it
            raise PngError(f"unsupported critical chunk {kind.decode('latin-1')!r}")
    assert header is not None
    width, height, bit_depth, color_type, compression, filter_method, interlace = header
    _check_header(width, height, bit_depth, color_type, compression, filter_method, interlace)
    channels = 3 if color_type == 2 else 1
    bytes_per_pixel = channels * bit_depth // 8
    stride = width * bytes_per_pixel
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(bytes(idat), expected + 1)
    except zlib.error as err:
        raise PngError(f"image data does not inflate: {err}") from err
    if len(raw) != expected:
        raise PngError(f"image data holds {len(raw)} bytes, {width}x{height} needs {expected}")
    rows = _unfilter(raw, height, stride, bytes_per_pixel)
    pixels: npt.NDArray[Any]
    if bit_depth == 16:
        pixels = rows.view(">u2").reshape(height, width).astype(np.uint16)
    elif channels == 3:
        pixels = rows.reshape(height, width, 3)
    else:
        pixels = rows.reshape(height, width)
    bits_stored = bit_depth
    if significant is not None and color_type == 0 and len(significant) == 1 \
            and 1 <= significant[0] < bit_depth:
        bits_stored = significant[0]
        pixels = _unscale(pixels, bits_stored, bit_depth)
    return PngImage(np.ascontiguousarray(pixels), bits_stored)


def _replicate_bits(values: npt.NDArray[Any], bits: int, depth: int) -> npt.NDArray[Any]:
    """Left-bit replication of `bits`-bit values to `depth` bits (PNG spec 12.4)."""
    wide = values.astype(np.int64)
    out = np.zeros_like(wide)
    position = depth
    while position > 0:
        shift = position - bits
        out |= wide << shift if shift >= 0 else wide >> -shift
        position -= bits
    return out


def _unscale(pixels: npt.NDArray[Any], bits_stored: int, depth: int) -> npt.NDArray[Any]:
    """Values of `bits_stored` bits from samples an encoder scaled up to `depth` bits.

    The PNG spec (12.5) lets encoders scale by shifting left, by left-bit replication or
    linearly (v x (2^depth - 1) / (2^bits - 1), rounded: libpng's pnmtopng does this); some
    write the values unscaled. Each reading is accepted only if scaling it back up gives every
    sample exactly.

    Raises
    ------
    PngError
        If the samples fit none of these.
    """
    shift = depth - bits_stored
    shifted = pixels >> shift
    if np.array_equal(shifted << shift, pixels) or np.array_equal(
            _replicate_bits(shifted, bits_stored, depth), pixels):
        return shifted
    top_in, top_out = (1 << bits_stored) - 1, (1 << depth) - 1
    wide = pixels.astype(np.int64)
    linear = (wide * (2 * top_in) + top_out) // (2 * top_out)          # round half up
    if np.array_equal((linear * (2 * top_out) + top_in) // (2 * top_in), wide):
        return linear.astype(pixels.dtype)
    if int(pixels.max()) <= top_in:
        return pixels
    raise PngError(f"sBIT declares {bits_stored} significant bits, but the samples are neither "
                   f"scaled to {depth} bits nor below {top_in + 1}")


def _check_header(width: int, height: int, bit_depth: int, color_type: int, compression: int,
                  filter_method: int, interlace: int) -> None:
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise PngError(f"size {width}x{height} outside 1..{MAX_PIXELS} pixels")
    if compression != 0 or filter_method != 0:
        raise PngError(f"unknown compression {compression} or filter method {filter_method}")
    if interlace != 0:
        raise PngError("Adam7-interlaced PNG is not supported; save it without interlace")
    kind = _COLOR_TYPES.get(color_type, f"colour type {color_type}")
    if color_type == 0 and bit_depth in (8, 16):
        return
    if color_type == 2 and bit_depth == 8:
        return
    raise PngError(f"{bit_depth}-bit {kind} is not supported (8/16-bit greyscale or 8-bit RGB)")


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> npt.NDArray[np.uint8]:
    """Undo the per-row filters (PNG spec 9.2); returns (height, stride) uint8."""
    data = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind = int(data[y, 0])
        line = data[y, 1:]
        if kind == 0:        # None
            row = line.copy()
        elif kind == 1:      # Sub: running sum per byte position within a pixel, modulo 256
            padded = np.zeros(-(-stride // bpp) * bpp, dtype=np.uint8)
            padded[:stride] = line
            row = np.cumsum(padded.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)[:stride]
        elif kind == 2:      # Up
            row = line + previous
        elif kind in (3, 4):  # Average, Paeth: each byte needs the one decoded before it
            row = _unfilter_sequential(kind, line, previous, bpp)
        else:
            raise PngError(f"row {y}: unknown filter type {kind}")
        out[y] = row
        previous = out[y]
    return out


def _unfilter_sequential(kind: int, line: npt.NDArray[np.uint8],
                         previous: npt.NDArray[np.uint8], bpp: int) -> npt.NDArray[np.uint8]:
    current = bytearray(line.tobytes())
    above = previous.tobytes()
    for i in range(len(current)):
        left = current[i - bpp] if i >= bpp else 0
        up = above[i]
        if kind == 3:
            predictor = (left + up) >> 1
        else:
            upper_left = above[i - bpp] if i >= bpp else 0
            estimate = left + up - upper_left
            distance_left = abs(estimate - left)
            distance_up = abs(estimate - up)
            distance_upper_left = abs(estimate - upper_left)
            if distance_left <= distance_up and distance_left <= distance_upper_left:
                predictor = left
            elif distance_up <= distance_upper_left:
                predictor = up
            else:
                predictor = upper_left
        current[i] = (current[i] + predictor) & 0xFF
    return np.frombuffer(bytes(current), dtype=np.uint8)
