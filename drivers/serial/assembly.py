"""Rebuilds one frame from its chunks (drivers/PROTOCOL.md, "Frame transfer"). Pure: no I/O.

Tracks which chunks are still missing, ignores repeats, checks every chunk's length against the
header, and verifies the whole-frame CRC-32 before any pixel leaves: a frame with a missing or
corrupt chunk never becomes a Frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from drivers.errors import ProtocolError
from drivers.serial.codec import MAX_CHUNK_DATA, DataChunk, FrameHeader, crc32

#: larger frames are refused as a corrupt header rather than allocated (4096 x 4096 x 16 bit)
MAX_FRAME_BYTES = 4096 * 4096 * 2


def check_header(header: FrameHeader, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
    """Reject a frame header whose fields disagree.

    Raises
    ------
    ProtocolError
        Naming the field.
    """
    h = header
    problems = []
    if h.rows < 1 or h.columns < 1:
        problems.append(f"rows x columns must be at least 1 x 1, got {h.rows} x {h.columns}")
    if not 1 <= h.bits_stored <= 16:
        problems.append(f"bits_stored must be 1..16, got {h.bits_stored}")
    elif h.bytes_per_pixel != (1 if h.bits_stored <= 8 else 2):
        problems.append(f"bytes_per_pixel {h.bytes_per_pixel} does not suit "
                        f"bits_stored {h.bits_stored}")
    if h.total_bytes != h.rows * h.columns * h.bytes_per_pixel:
        problems.append(f"total_bytes {h.total_bytes} != rows x columns x bytes_per_pixel "
                        f"({h.rows * h.columns * h.bytes_per_pixel})")
    if h.total_bytes > max_frame_bytes:
        problems.append(f"total_bytes {h.total_bytes} exceeds the {max_frame_bytes} allowed")
    if not 1 <= h.chunk_size <= MAX_CHUNK_DATA:
        problems.append(f"chunk_size must be 1..{MAX_CHUNK_DATA}, got {h.chunk_size}")
    elif h.chunk_count != -(-h.total_bytes // h.chunk_size):
        problems.append(f"chunk_count {h.chunk_count} != ceil(total_bytes / chunk_size) "
                        f"({-(-h.total_bytes // h.chunk_size)})")
    if problems:
        raise ProtocolError(f"frame {h.frame_id} header: " + "; ".join(problems))


class FrameAssembly:
    """The chunks of one frame received so far."""

    def __init__(self, header: FrameHeader, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        """Raises `ProtocolError` if the header is inconsistent (see `check_header`)."""
        check_header(header, max_frame_bytes)
        self.header = header
        self._chunks: list[bytes | None] = [None] * header.chunk_count
        self._missing = set(range(header.chunk_count))
        self.repeated_chunks = 0

    def expected_length(self, index: int) -> int:
        h = self.header
        if index < h.chunk_count - 1:
            return h.chunk_size
        return h.total_bytes - h.chunk_size * (h.chunk_count - 1)

    def add(self, chunk: DataChunk) -> bool:
        """Store a chunk; True if it was new, False if it was a repeat (kept the first copy).

        Raises
        ------
        ProtocolError
            If it belongs to another frame, its index is out of range or its length is wrong.
        """
        h = self.header
        if chunk.frame_id != h.frame_id:
            raise ProtocolError(f"chunk of frame {chunk.frame_id} given to frame {h.frame_id}")
        if not 0 <= chunk.index < h.chunk_count:
            raise ProtocolError(f"frame {h.frame_id}: chunk index {chunk.index} outside "
                                f"0..{h.chunk_count - 1}")
        expected = self.expected_length(chunk.index)
        if len(chunk.data) != expected:
            raise ProtocolError(f"frame {h.frame_id}: chunk {chunk.index} holds "
                                f"{len(chunk.data)} bytes, expected {expected}")
        if self._chunks[chunk.index] is not None:
            self.repeated_chunks += 1
            return False
        self._chunks[chunk.index] = chunk.data
        self._missing.discard(chunk.index)
        return True

    def missing(self) -> list[int]:
        """Indices of the chunks not received yet, ascending."""
        return sorted(self._missing)

    @property
    def complete(self) -> bool:
        return not self._missing

    def data(self) -> bytes:
        """The pixel bytes in order. Raises `ProtocolError` while chunks are missing."""
        if self._missing:
            raise ProtocolError(f"frame {self.header.frame_id}: {len(self._missing)} chunk(s) "
                                "missing")
        return b"".join(c for c in self._chunks if c is not None)

    def crc_matches(self, crc: int) -> bool:
        """True if the whole frame's CRC-32 is `crc` (FRAME_END's). False while incomplete."""
        return self.complete and crc32(self.data()) == crc

    def pixels(self) -> npt.NDArray[Any]:
        """The frame as a (rows, columns) uint8 or uint16 array.

        Raises
        ------
        ProtocolError
            If chunks are missing or a value does not fit `bits_stored`.
        """
        h = self.header
        wire = np.dtype("u1") if h.bytes_per_pixel == 1 else np.dtype("<u2")
        pixels = np.frombuffer(self.data(), dtype=wire).reshape(h.rows, h.columns)
        pixels = pixels.astype(np.uint8 if h.bytes_per_pixel == 1 else np.uint16)
        top = int(pixels.max())
        if top >= 1 << h.bits_stored:
            raise ProtocolError(f"frame {h.frame_id}: pixel value {top} does not fit "
                                f"bits_stored {h.bits_stored}")
        return pixels
