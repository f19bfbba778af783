"""DICOM objects from frames: UIDs, IOD modules, Secondary Capture, Part 10 bytes.

No I/O here (no sockets, files or clock reads): UIDs and times are arguments, so the output
can be checked byte by byte. Never imports agent.net, agent.queue or pynetdicom.
"""

from agent.iod.modules import SC_IMAGE_STORAGE, SPECIFIC_CHARACTER_SET, ConversionType
from agent.iod.part10 import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    encode_part10,
    enforce_strict_writing,
)
from agent.iod.secondary_capture import (
    build_secondary_capture,
    new_series_context,
    validate_image,
)
from agent.iod.uids import UIDSource, is_valid_uid

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "SC_IMAGE_STORAGE",
    "SPECIFIC_CHARACTER_SET",
    "ConversionType",
    "UIDSource",
    "build_secondary_capture",
    "encode_part10",
    "enforce_strict_writing",
    "is_valid_uid",
    "new_series_context",
    "validate_image",
]
