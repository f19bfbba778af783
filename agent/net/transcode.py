"""A spooled object in a form an archive that refused its transfer syntax can take."""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset, dcmread


def uncompressed_copy(path: Path) -> Dataset:
    """The spooled object, decompressed if need be, under the SAME SOP Instance UID (pydicom's
    decompress() makes a new one by default: DICOM-NOTES.md §6). Lossless only, so the pixels
    the archive gets are the same."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    return ds
