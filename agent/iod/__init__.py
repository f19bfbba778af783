"""DICOM objects from frames: UIDs, IOD modules, the SC family, DX and Video Photographic,
Part 10 bytes in Explicit VR Little Endian or a lossless compressed transfer syntax. Each IOD is
a module table (`agent.iod.iods.IODS`); builders add module by module and never delete.

No I/O here (no sockets, files or clock reads): UIDs and times are arguments, so the output
can be checked byte by byte. Never imports agent.net, agent.queue or pynetdicom.
"""

from agent.iod.images import KNOWN_IODS, MULTIFRAME_IODS, build_image
from agent.iod.iods import IODS, SC_IMAGE_STORAGE, IODSpec, ModuleUsage, Usage
from agent.iod.modules import ConversionType
from agent.iod.part10 import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    compressed_copy,
    encode_part10,
    enforce_strict_writing,
)
from agent.iod.secondary_capture import (
    build_secondary_capture,
    new_series_context,
    validate_image,
)
from agent.iod.transfer_syntax import (
    KNOWN_TRANSFER_SYNTAXES,
    EncoderStatus,
    encoder_status,
    transfer_syntax_uid,
)
from agent.iod.uids import UIDSource, is_valid_uid
from agent.iod.valuerep import SPECIFIC_CHARACTER_SET

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "IODS",
    "KNOWN_IODS",
    "KNOWN_TRANSFER_SYNTAXES",
    "MULTIFRAME_IODS",
    "SC_IMAGE_STORAGE",
    "SPECIFIC_CHARACTER_SET",
    "ConversionType",
    "EncoderStatus",
    "IODSpec",
    "ModuleUsage",
    "UIDSource",
    "Usage",
    "build_image",
    "build_secondary_capture",
    "compressed_copy",
    "encode_part10",
    "encoder_status",
    "enforce_strict_writing",
    "is_valid_uid",
    "new_series_context",
    "transfer_syntax_uid",
    "validate_image",
]
