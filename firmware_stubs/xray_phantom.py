"""The stub detector's image: a chest-like test object, exact per (rows, columns, bits, frame id).

Tests compute the same array to compare a received frame pixel for pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def xray_phantom(rows: int, columns: int, bits_stored: int, frame_id: int) -> npt.NDArray[Any]:
    """Body ellipse, two lungs, a spine, a step wedge, and the frame id as 16 bit-squares.

    Returns uint8 for bits_stored <= 8, else uint16, every value below 2**bits_stored.
    """
    top = (1 << bits_stored) - 1
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    v = (y + 0.5) / rows * 2 - 1          # -1 .. 1, top to bottom
    u = (x + 0.5) / columns * 2 - 1       # -1 .. 1, left to right
    signal = np.full((rows, columns), 0.95)                       # direct beam
    body = (u / 0.85) ** 2 + (v / 0.95) ** 2 <= 1
    signal[body] = 0.35
    for centre in (-0.4, 0.4):
        lung = ((u - centre) / 0.28) ** 2 + ((v + 0.05) / 0.6) ** 2 <= 1
        signal[lung] = 0.7
    signal[body & (np.abs(u) < 0.08)] = 0.15                        # spine
    wedge = (v < -0.8) & (np.abs(u) < 0.6)                         # step wedge, 6 steps
    steps = np.floor((u + 0.6) / 1.2 * 6).clip(0, 5)
    signal[wedge] = 0.1 + 0.15 * steps[wedge]
    # frame id in 16 squares along the bottom edge: bright = 1
    square = max(columns // 16, 1)
    band = slice(max(rows - square, 0), rows)
    for bit in range(16):
        start = bit * square
        if start >= columns:
            break
        signal[band, start : start + square] = 0.9 if frame_id >> bit & 1 else 0.05
    # quantum noise, fixed by the frame id
    rng = np.random.default_rng(frame_id)
    signal = signal + rng.normal(0.0, 0.01, size=signal.shape)
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    image: npt.NDArray[Any] = np.clip(np.rint(signal * top), 0, top).astype(dtype)
    return image
