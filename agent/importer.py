"""Existing DICOM files into the queue (`modality-agent import`, and later the watch folder).

A file is queued byte for byte, so what the archive receives is exactly what was given; it is
checked first, so a broken file is refused with the reason instead of failing at the archive.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from agent.errors import AgentError
from agent.iod import is_valid_uid

logger = logging.getLogger(__name__)

#: larger files are refused rather than read into memory (a 300-frame 1024x1024 16-bit
#: object is 600 MB)
MAX_FILE_BYTES = 2 * 1024**3


class ImportRefused(AgentError, ValueError):
    """A file that cannot be queued; the message names the file and the reason."""


@dataclass(frozen=True)
class ImportableFile:
    payload: bytes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


def read_dicom_file(path: Path) -> ImportableFile:
    """Check a DICOM Part 10 file and return its bytes and the UIDs the queue needs.

    Raises
    ------
    ImportRefused
        Not a readable Part 10 file, missing or inconsistent UIDs, unknown transfer syntax.
    """
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImportRefused(f"{path}: {size} bytes, more than {MAX_FILE_BYTES}")
        payload = path.read_bytes()
    except OSError as err:
        raise ImportRefused(f"{path}: cannot read ({err.strerror})") from err
    try:
        with warnings.catch_warnings():
            # pydicom warns and reads on where a file ends early: here that is an error
            warnings.simplefilter("error")
            ds = dcmread(io.BytesIO(payload))
    except InvalidDicomError as err:
        raise ImportRefused(f"{path}: not a DICOM Part 10 file (no 'DICM' preamble)") from err
    except (ValueError, EOFError, OSError, KeyError, TypeError, UserWarning) as err:
        raise ImportRefused(f"{path}: unreadable DICOM ({type(err).__name__}: {err})") from err
    _check_pixel_data_complete(path, ds)
    meta = ds.file_meta
    syntax = UID(str(meta.get("TransferSyntaxUID", "")))
    sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
    sop_instance = str(ds.get("SOPInstanceUID", "") or "")
    if not syntax or not syntax.is_transfer_syntax:
        raise ImportRefused(f"{path}: (0002,0010) Transfer Syntax UID: expected a known "
                            f"transfer syntax, got {str(syntax)!r}")
    for keyword, value in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_instance)):
        if not is_valid_uid(value):
            raise ImportRefused(f"{path}: {keyword}: expected a valid UID, got {value!r}")
    if str(meta.get("MediaStorageSOPInstanceUID", sop_instance)) != sop_instance:
        raise ImportRefused(f"{path}: (0002,0003) Media Storage SOP Instance UID differs "
                            f"from (0008,0018) SOP Instance UID")
    return ImportableFile(payload, sop_instance, sop_class, str(syntax))


def _check_pixel_data_complete(path: Path, ds: Any) -> None:
    """A file still being written (or cut short) must not be queued as if it were whole."""
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                    * int(ds.get("NumberOfFrames", 1) or 1) * ((int(ds.BitsAllocated) + 7) // 8))
    except (AttributeError, TypeError, ValueError) as err:
        raise ImportRefused(f"{path}: Image Pixel module incomplete ({err})") from err
    if int(ds.BitsAllocated) == 1:
        expected = (expected + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise ImportRefused(f"{path}: Pixel Data holds {actual} bytes, the image needs "
                            f"{expected}: the file is incomplete")


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, folders by their files (recursively, sorted); hidden files skipped."""
    result: list[Path] = []
    for path in paths:
        if path.is_dir():
            result.extend(p for p in sorted(path.rglob("*"))
                          if p.is_file() and not p.name.startswith("."))
        else:
            result.append(path)
    return result
