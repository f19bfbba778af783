"""Part 10 encoding: a Dataset to the bytes of a DICOM file (PS3.10 §7), Explicit VR Little
Endian, with our file meta. No I/O: the queue writes the bytes."""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterator

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless

from agent.errors import IODError

# re-exported: agent.iod and its callers have always taken them from here
from agent.implementation import IMPLEMENTATION_CLASS_UID as IMPLEMENTATION_CLASS_UID
from agent.implementation import IMPLEMENTATION_VERSION_NAME as IMPLEMENTATION_VERSION_NAME
from agent.iod.transfer_syntax import encoder_status, transfer_syntax_uid
from agent.iod.uids import is_valid_uid

#: smallest Rows/Columns OpenJPEG (pylibjpeg-openjpeg 2.x) can encode with its fixed 6 DWT
#: resolutions
J2K_MIN_SIDE = 32

#: text VRs whose bytes depend on Specific Character Set (PS3.5 §6.1.2.3)
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})

#: what pydicom raises when a value cannot be encoded (UnicodeError is a ValueError); its
#: tag_in_exception() re-raises a UnicodeEncodeError as TypeError (wrong constructor args)
_ENCODING_ERRORS = (ValueError, TypeError, OverflowError, struct.error)

PIXEL_DATA_TAG = 0x7FE00010


def enforce_strict_writing() -> None:
    """Make pydicom raise, not warn and write '?', on a value it cannot encode.

    pydicom has no per-call switch, so this sets its process-wide
    `config.settings.writing_validation_mode` to RAISE. It is what every writer in the agent
    wants: a name silently turned into '?' reaches the archive as a different patient.
    """
    config.settings.writing_validation_mode = config.RAISE


def _file_meta(ds: Dataset, transfer_syntax_uid: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        value = ds.get(keyword)
        if not is_valid_uid(value):
            raise IODError(f"SOP Common: {keyword} {value!r} is missing or not a valid UID")
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, DataElement]]:
    """Every element with its path, e.g. "RequestAttributesSequence[0].RequestedProcedureID"."""
    for elem in ds:
        name = f"{path}{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                yield from _walk(item, f"{name}[{index}].")
        else:
            yield name, elem


def _find_unencodable(ds: Dataset) -> IODError | None:
    """Write each element on its own to find the one that failed; only on the error path."""
    charset = ds.get("SpecificCharacterSet", "ISO_IR 6")
    encodings = convert_encodings(charset)
    for name, elem in _walk(ds):
        if elem.tag == 0x7FE00010:
            continue
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        try:
            write_data_element(fp, elem, encodings)
        except _ENCODING_ERRORS as err:
            # the value itself stays out of the message: it may be a patient's name
            what = f"in {charset}" if elem.VR in _CHARSET_VRS else f"as {elem.VR}"
            return IODError(
                f"Part 10: {name} cannot be encoded {what} ({type(err).__name__})"
            )
    return None


def compressed_copy(ds: Dataset, transfer_syntax: str) -> Dataset:
    """A copy of `ds` with its Pixel Data encoded in `transfer_syntax` (a KNOWN_TRANSFER_SYNTAXES
    name); `ds` is not changed. Same SOP Instance UID: pydicom 3's compress() makes a new one
    unless told not to (DICOM-NOTES §6), which would break resends and Storage Commitment.

    Raises
    ------
    IODError
        If the name is unknown, its encoder is not installed, or the encoder refuses the
        pixels (the message names the transfer syntax and Pixel Data).
    """
    uid = transfer_syntax_uid(transfer_syntax)
    out = Dataset()
    for elem in ds:
        # element copies: compress() assigns values (Pixel Data, Photometric Interpretation)
        # and must not reach the caller's dataset through shared elements
        out.add(copy.copy(elem))
    if uid == ExplicitVRLittleEndian:
        return out
    status = encoder_status(transfer_syntax)
    if not status.available:
        raise IODError(f"Part 10: TransferSyntaxUID {transfer_syntax}: {status.reason}")
    if uid == JPEG2000Lossless and min(ds.get("Rows", 0), ds.get("Columns", 0)) \
            < J2K_MIN_SIDE:
        # OpenJPEG encodes 6 DWT resolutions, which need 32 pixels a side (measured)
        raise IODError(
            f"Image Pixel: Rows/Columns {ds.get('Rows')}x{ds.get('Columns')}: "
            f"jpeg2000-lossless needs at least {J2K_MIN_SIDE} pixels a side here (OpenJPEG)"
        )
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian   # compress() reads the start
    if uid == JPEG2000Lossless and ds.get("SamplesPerPixel") == 3:
        # reversible J2K of RGB is YBR_RCT (A.8.5.4; dciodvfy insists): with that
        # Photometric Interpretation pydicom applies the reversible colour transform
        out.PhotometricInterpretation = "YBR_RCT"
    try:
        out.compress(uid, generate_instance_uid=False)
    except (ValueError, RuntimeError, TypeError, NotImplementedError, AttributeError) as err:
        raise IODError(
            f"Image Pixel: PixelData cannot be encoded as {transfer_syntax}: {err}"
        ) from err
    if out.SOPInstanceUID != ds.SOPInstanceUID:
        raise IODError("SOP Common: SOPInstanceUID changed while compressing (a bug)")
    if hasattr(out, "file_meta"):
        del out.file_meta
    return out


def encode_part10(ds: Dataset, transfer_syntax: str = "explicit-little") -> bytes:
    """Encode `ds` as a DICOM Part 10 file in `transfer_syntax` (Explicit VR Little Endian by
    default; or "rle", "jpeg-ls-lossless", "jpeg2000-lossless", see KNOWN_TRANSFER_SYNTAXES).

    The file meta information is made here from the dataset's SOP Class and Instance UIDs; `ds`
    itself is not changed; compressing keeps the SOP Instance UID.

    Parameters
    ----------
    ds
        A complete dataset with native Pixel Data, e.g. from `build_image`.
    transfer_syntax
        The `[modality] transfer_syntax` name.

    Returns
    -------
    bytes
        Preamble, "DICM", file meta group (0002) and the dataset.

    Raises
    ------
    IODError
        If SOP Class/Instance UID is missing or invalid, a value cannot be encoded (a
        character outside the Specific Character Set, a number out of range), the transfer
        syntax is unknown or its encoder is not installed here; the message names the
        attribute.
    """
    enforce_strict_writing()
    uid = transfer_syntax_uid(transfer_syntax)
    if uid == ExplicitVRLittleEndian:
        out = Dataset(ds)   # a new top level sharing the elements: file_meta is ours alone
    else:
        out = compressed_copy(ds, transfer_syntax)
    meta = _file_meta(ds, uid)
    # native Pixel Data last: appended to pydicom's bytes rather than written through them,
    # so the pixels are copied once (into the result), not twice (pydicom's buffer, then its
    # getvalue()); the same bytes as dcmwrite (tests/unit/test_part10_copies.py)
    pixel_data = _trailing_native_pixel_data(out) if uid == ExplicitVRLittleEndian else None
    if pixel_data is not None:
        out = Dataset({tag: elem for tag, elem in out.items() if tag != PIXEL_DATA_TAG})
    out.file_meta = meta
    fp = DicomBytesIO()
    try:
        dcmwrite(fp, out, enforce_file_format=True)
    except _ENCODING_ERRORS as err:
        found = _find_unencodable(ds)
        if found is not None:
            raise found from err
        raise IODError(
            f"Part 10: the dataset cannot be encoded ({type(err).__name__})"
        ) from err
    if pixel_data is None:
        return fp.getvalue()
    vr, value = pixel_data
    # Explicit VR Little Endian, OB/OW: tag, VR, 2 reserved bytes, 4-byte length (PS3.5 7.1.2)
    header = struct.pack("<HH2sHI", PIXEL_DATA_TAG >> 16, PIXEL_DATA_TAG & 0xFFFF,
                         vr.encode("ascii"), 0, len(value))
    return b"".join((fp.getvalue(), header, value))


def _trailing_native_pixel_data(ds: Dataset) -> tuple[str, bytes] | None:
    """(VR, value) of `ds`'s Pixel Data when it can be appended by hand: the dataset's last
    element, OB or OW, a bytes value of even length (what build_image makes). None otherwise
    (anything after it, an encapsulated or odd value): pydicom writes those itself."""
    elem = ds.get_item(PIXEL_DATA_TAG)
    if not isinstance(elem, DataElement) or elem.VR not in ("OB", "OW"):
        return None
    value = elem.value
    if type(value) is not bytes or len(value) % 2 or len(value) >= 0xFFFFFFFF \
            or elem.is_undefined_length or max(ds.keys()) != PIXEL_DATA_TAG:
        return None
    return elem.VR, value
