"""A captured V4L2 buffer -> an image: YUYV, GREY and RGB24 (V4L2 fourcc RGB3), with stride.

Each row of a buffer is `bytes_per_line` long, of which the first width x bytes-per-pixel are
image; the rest is padding the hardware needs for alignment. A buffer shorter than the last
image byte is refused (`ShortBufferError`): a short buffer is a torn frame, never an image.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from drivers.errors import DriverConfigError, FrameCorruptError
from drivers.v4l2.capture import NegotiatedFormat

#: our option value -> V4L2 fourcc
FOURCC_BY_NAME = {"YUYV": "YUYV", "GREY": "GREY", "RGB24": "RGB3"}
BYTES_PER_PIXEL = {"YUYV": 2, "GREY": 1, "RGB3": 3}

YuvRange = Literal["limited", "full"]


class ShortBufferError(FrameCorruptError):
    """The buffer ends before the frame does."""


def required_bytes(fmt: NegotiatedFormat) -> int:
    """Bytes a buffer needs: every row's stride but the last row's padding.

    Raises
    ------
    DriverConfigError
        If the format is unknown or its stride is shorter than a row.
    """
    if fmt.fourcc not in BYTES_PER_PIXEL:
        raise DriverConfigError(f"pixel_format: the device delivers {fmt.fourcc!r}; supported: "
                                f"{', '.join(BYTES_PER_PIXEL)}")
    row_bytes = fmt.width * BYTES_PER_PIXEL[fmt.fourcc]
    stride = fmt.bytes_per_line or row_bytes
    if stride < row_bytes:
        raise DriverConfigError(f"v4l2: bytes_per_line {stride} is shorter than a row of "
                                f"{fmt.width} {fmt.fourcc} pixels ({row_bytes} bytes)")
    if fmt.fourcc == "YUYV" and fmt.width % 2:
        raise DriverConfigError(f"v4l2: YUYV needs an even width, got {fmt.width}")
    return stride * (fmt.height - 1) + row_bytes


def image_rows(data: bytes, fmt: NegotiatedFormat) -> npt.NDArray[np.uint8]:
    """(height, width x bytes per pixel) uint8, padding removed.

    Raises
    ------
    ShortBufferError
        If `data` ends before the last image byte.
    """
    needed = required_bytes(fmt)
    if len(data) < needed:
        raise ShortBufferError(
            f"v4l2: buffer holds {len(data)} bytes, a {fmt.width}x{fmt.height} {fmt.fourcc} "
            f"frame needs {needed}: torn frame dropped")
    row_bytes = fmt.width * BYTES_PER_PIXEL[fmt.fourcc]
    stride = fmt.bytes_per_line or row_bytes
    flat = np.frombuffer(data, dtype=np.uint8, count=min(len(data), stride * fmt.height))
    if flat.size < stride * fmt.height:
        # the last row's padding may be missing: it is not image
        flat = np.concatenate([flat, np.zeros(stride * fmt.height - flat.size, np.uint8)])
    return flat.reshape(fmt.height, stride)[:, :row_bytes]


def luma(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """BT.601 luma of full-range RGB."""
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    result: npt.NDArray[np.uint8] = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return result


def yuyv_to_rgb(rows: npt.NDArray[np.uint8], yuv_range: YuvRange) -> npt.NDArray[np.uint8]:
    """YUYV 4:2:2 (Y0 U Y1 V per pixel pair) to RGB with BT.601 coefficients."""
    height, row_bytes = rows.shape
    quads = rows.reshape(height, row_bytes // 4, 4).astype(np.float64)
    y = quads[..., [0, 2]].reshape(height, -1)
    cb = np.repeat(quads[..., 1], 2, axis=1) - 128
    cr = np.repeat(quads[..., 3], 2, axis=1) - 128
    if yuv_range == "limited":    # V4L2's default for SDTV/HDTV YCbCr: Y 16..235, C 16..240
        y = (y - 16) * (255 / 219)
        cb = cb * (255 / 224)
        cr = cr * (255 / 224)
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def yuyv_to_mono(rows: npt.NDArray[np.uint8], yuv_range: YuvRange) -> npt.NDArray[np.uint8]:
    """The Y samples of YUYV, expanded to 0..255 if they are limited range."""
    height, row_bytes = rows.shape
    y = rows.reshape(height, row_bytes // 2, 2)[..., 0]
    if yuv_range == "full":
        return y.copy()
    return np.clip(np.rint((y.astype(np.float64) - 16) * (255 / 219)), 0, 255).astype(np.uint8)


def to_image(data: bytes, fmt: NegotiatedFormat, *, color: bool,
             yuv_range: YuvRange = "limited") -> npt.NDArray[Any]:
    """The image in `data`: uint8 (rows, columns, 3) RGB if `color`, else (rows, columns).

    Raises
    ------
    ShortBufferError
        If the buffer is short.
    DriverConfigError
        If the format cannot be converted.
    """
    rows = image_rows(data, fmt)
    if fmt.fourcc == "GREY":
        mono = rows.copy()
        return np.repeat(mono[..., None], 3, axis=2) if color else mono
    if fmt.fourcc == "RGB3":
        rgb = rows.reshape(fmt.height, fmt.width, 3).copy()
        return rgb if color else luma(rgb)
    return yuyv_to_rgb(rows, yuv_range) if color else yuyv_to_mono(rows, yuv_range)
