"""The `replay` driver: plays a folder of .npy arrays and PNG images as if a device sent them.

Files are played in name order at `frame_rate` (0 = as fast as asked), once or in a `loop`.
A .npy holds one frame: uint8/uint16 (rows, columns), or uint8 (rows, columns, 3) for RGB; it is
loaded with allow_pickle=False. PNG: 8/16-bit greyscale or 8-bit RGB (drivers/png.py). DICOM
files are not replayed: drivers/ must not import pydicom (import them with `modality-agent
import` instead).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from drivers.base import Driver
from drivers.errors import DriverConfigError, EndOfStreamError, FrameCorruptError
from drivers.frame import Frame, PhotometricInterpretation
from drivers.pacing import FramePacer
from drivers.png import read_png

logger = logging.getLogger(__name__)

SUFFIXES = (".npy", ".png")


def load_image(path: Path) -> tuple[npt.NDArray[Any], int]:
    """Pixels and their natural bits stored (8 or 16, or a PNG's sBIT) from one file.

    Raises
    ------
    ValueError
        If the file cannot be read or holds something that is not one frame.
    OSError
        If it cannot be opened.
    """
    if path.suffix.lower() == ".png":
        image = read_png(path.read_bytes())
        return image.pixels, image.bits_stored
    try:
        pixels = np.load(path, allow_pickle=False)
    except ValueError as err:   # object arrays need pickle: refused, never unpickled
        raise ValueError(f"not a plain numeric array ({err})") from err
    if not isinstance(pixels, np.ndarray):
        raise ValueError("holds several arrays (.npz?), expected one")
    if pixels.dtype.kind != "u" or pixels.dtype.itemsize not in (1, 2):
        raise ValueError(f"dtype {pixels.dtype}: expected uint8 or uint16")
    # a big-endian file (">u2") is fine: converted to this machine's order
    pixels = pixels.astype(np.uint8 if pixels.dtype.itemsize == 1 else np.uint16)
    if pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels), 8
    if pixels.ndim != 2:
        raise ValueError(f"shape {pixels.shape}: expected (rows, columns) or uint8 "
                         "(rows, columns, 3)")
    return np.ascontiguousarray(pixels), pixels.dtype.itemsize * 8


class ReplayDriver(Driver):
    """Frames from files: options `folder` (required), `frame_rate` (frames/s, 0 = as fast as
    asked), `loop` (start again after the last file), `bits_stored` (0 = from each file: 8, 16,
    or a PNG's sBIT), `pixel_spacing_mm` (0 = unknown)."""

    name = "replay"
    option_types: ClassVar[Mapping[str, tuple[type | tuple[type, ...], Any]]] = {
        "folder": (str, Driver.REQUIRED),
        "frame_rate": (float, 0.0),
        "loop": (bool, False),
        "bits_stored": (int, 0),
        "pixel_spacing_mm": (float, 0.0),
    }

    @classmethod
    def _check_option_values(cls, options: Mapping[str, Any]) -> list[str]:
        problems = []
        if not Path(options["folder"]).is_dir():
            problems.append(f"folder: expected an existing folder, got {options['folder']!r}")
        if not 0 <= options["frame_rate"] <= 1000:
            problems.append(f"frame_rate: expected 0..1000, got {options['frame_rate']}")
        if not 0 <= options["bits_stored"] <= 16:
            problems.append(f"bits_stored: expected 0 (from the file) or 1..16, "
                            f"got {options['bits_stored']}")
        if options["pixel_spacing_mm"] < 0:
            problems.append(f"pixel_spacing_mm: expected >= 0 (0 = unknown), "
                            f"got {options['pixel_spacing_mm']}")
        return problems

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._files: list[Path] = []
        self._position = 0
        self._pacer = FramePacer(self.options["frame_rate"])

    @property
    def files(self) -> list[Path]:
        """The files being played, in order (found at open)."""
        return list(self._files)

    def _open(self) -> None:
        folder = Path(self.options["folder"])
        try:
            files = sorted(p for p in folder.iterdir()
                           if p.suffix.lower() in SUFFIXES and p.is_file())
        except OSError as err:
            raise DriverConfigError(f"folder: cannot list {str(folder)!r}: {err}") from err
        if not files:
            raise DriverConfigError(f"folder: {str(folder)!r} holds no .npy or .png files")
        self._files = files
        self._position = 0
        self._pacer.restart()
        logger.info("replay: %d files", len(files))

    def _close(self) -> None:
        self._files = []

    def _read_frame(self, deadline: float) -> Frame | None:
        if self._position >= len(self._files):
            if not self.options["loop"]:
                raise EndOfStreamError(
                    f"replay: all {len(self._files)} files played; set loop = true to repeat")
            self._position = 0
        if not self._pacer.wait(deadline):
            return None
        index = self._position
        path = self._files[index]
        self._position += 1      # a bad file is reported once, then skipped
        try:
            pixels, natural_bits = load_image(path)
        except (ValueError, OSError) as err:
            raise FrameCorruptError(f"replay: file {index + 1} ({path.name}): {err}") from err
        color = pixels.ndim == 3
        bits = self.options["bits_stored"] or natural_bits
        problem = None
        if color and bits != 8:
            problem = f"RGB frames are 8-bit, bits_stored is {bits}"
        elif bits > pixels.dtype.itemsize * 8:
            problem = f"bits_stored {bits} exceeds its {pixels.dtype} samples"
        elif pixels.size and int(pixels.max()) >= 1 << bits:
            problem = f"pixel value {int(pixels.max())} does not fit bits_stored {bits}"
        if problem:
            raise FrameCorruptError(f"replay: file {index + 1} ({path.name}): {problem}")
        spacing = self.options["pixel_spacing_mm"]
        photometric: PhotometricInterpretation = "RGB" if color else "MONOCHROME2"
        try:
            return Frame(
                pixels=pixels,
                bits_stored=bits,
                photometric_interpretation=photometric,
                t_mono=time.monotonic(),
                t_wall=time.time(),
                sequence_number=self.next_sequence_number,
                pixel_spacing_mm=(spacing, spacing) if spacing else None,
                device_parameters=MappingProxyType({"replay_index": index}),
            )
        except ValueError as err:   # e.g. an empty or oversized array
            raise FrameCorruptError(f"replay: file {index + 1} ({path.name}): {err}") from err

    def _status_detail(self) -> str:
        if not self._files:
            return ""
        return f"file {min(self._position, len(self._files))} of {len(self._files)}"
