"""Transfer syntaxes the agent can write (`[modality] transfer_syntax`), lossless only, and
whether this machine has the encoder for each. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from agent.errors import IODError

#: config name -> Transfer Syntax UID. Lossless only: a lossy syntax would need Lossy Image
#: Compression "01" and ratio/method (PS3.3 C.7.6.1.1.5), and pydicom 3 cannot encode JPEG
#: baseline anyway (DICOM-NOTES §4)
KNOWN_TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit-little": str(ExplicitVRLittleEndian),
    "rle": str(RLELossless),
    "jpeg-ls-lossless": str(JPEGLSLossless),
    "jpeg2000-lossless": str(JPEG2000Lossless),
}

#: the plug-in each compressed syntax needs (the optional extra `[compression]`)
_PLUGINS = {
    "rle": "pydicom's own RLE encoder, or pylibjpeg-rle when installed (faster)",
    "jpeg-ls-lossless": "pyjpegls",
    "jpeg2000-lossless": "pylibjpeg + pylibjpeg-openjpeg",
}


@dataclass(frozen=True)
class EncoderStatus:
    """Whether `encode_part10` can write a transfer syntax here, and why not."""

    name: str
    uid: str
    available: bool
    reason: str


def transfer_syntax_uid(name: str) -> str:
    """The UID for a `[modality] transfer_syntax` name.

    Raises
    ------
    IODError
        If `name` is not one of KNOWN_TRANSFER_SYNTAXES.
    """
    try:
        return KNOWN_TRANSFER_SYNTAXES[name]
    except (KeyError, TypeError):
        raise IODError(
            f"Part 10: TransferSyntaxUID: {name!r} is not one of "
            f"{', '.join(KNOWN_TRANSFER_SYNTAXES)}"
        ) from None


def encoder_status(name: str) -> EncoderStatus:
    """Whether the encoder for transfer syntax `name` is installed, with the reason if not.

    Asks pydicom's encoder table (`pydicom.pixels.get_encoder(uid).is_available`), which
    imports the plug-ins lazily; a missing plug-in is a status, not a crash.

    Raises
    ------
    IODError
        If `name` is not one of KNOWN_TRANSFER_SYNTAXES.
    """
    uid = transfer_syntax_uid(name)
    if name == "explicit-little":
        return EncoderStatus(name, uid, True, "native pixel data, no encoder needed")
    encoder = get_encoder(uid)
    if encoder.is_available:
        return EncoderStatus(name, uid, True, f"encoder available ({_PLUGINS[name]})")
    missing = "; ".join(str(item) for item in encoder.missing_dependencies)
    return EncoderStatus(
        name, uid, False,
        f"no encoder installed: needs {_PLUGINS[name]}"
        + (f" (pydicom says {missing})" if missing else "")
        + "; install the extra modality-agent[compression]",
    )
