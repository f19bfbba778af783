"""Part 10 encoding: a Dataset to the bytes of a DICOM file (PS3.10 §7), Explicit VR Little
Endian, with our file meta. No I/O: the queue writes the bytes."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element
from pydicom.uid import UID, ExplicitVRLittleEndian

from agent.errors import IODError
from agent.iod.uids import is_valid_uid

#: our Implementation Class UID (PS3.7 D.3.3.2), made once from a UUID under 2.25; never change
#: it for the same implementation version: peers may key work-arounds on it
IMPLEMENTATION_CLASS_UID = "2.25.280777476021075484815203542916037057289"

#: PS3.7 D.3.3.2: at most 16 characters; bump with every release that changes the encoding
IMPLEMENTATION_VERSION_NAME = "MODAGENT_010"

#: text VRs whose bytes depend on Specific Character Set (PS3.5 §6.1.2.3)
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})

#: what pydicom raises when a value cannot be encoded (UnicodeError is a ValueError); its
#: tag_in_exception() re-raises a UnicodeEncodeError as TypeError (wrong constructor args)
_ENCODING_ERRORS = (ValueError, TypeError, OverflowError, struct.error)


def enforce_strict_writing() -> None:
    """Make pydicom raise, not warn and write '?', on a value it cannot encode.

    pydicom has no per-call switch, so this sets its process-wide
    `config.settings.writing_validation_mode` to RAISE. It is what every writer in the agent
    wants: a name silently turned into '?' reaches the archive as a different patient.
    """
    config.settings.writing_validation_mode = config.RAISE


def _file_meta(ds: Dataset) -> FileMetaDataset:
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        value = ds.get(keyword)
        if not is_valid_uid(value):
            raise IODError(f"SOP Common: {keyword} {value!r} is missing or not a valid UID")
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
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


def encode_part10(ds: Dataset) -> bytes:
    """Encode `ds` as a DICOM Part 10 file in Explicit VR Little Endian.

    The file meta information is made here from the dataset's SOP Class and Instance UIDs; `ds`
    itself is not changed.

    Parameters
    ----------
    ds
        A complete dataset, e.g. from `build_secondary_capture`.

    Returns
    -------
    bytes
        Preamble, "DICM", file meta group (0002) and the dataset.

    Raises
    ------
    IODError
        If SOP Class/Instance UID is missing or invalid, or a value cannot be encoded (a
        character outside the Specific Character Set, a number out of range); the message
        names the attribute.
    """
    enforce_strict_writing()
    out = Dataset(ds)   # a new top level sharing the elements: file_meta is ours alone
    out.file_meta = _file_meta(ds)
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
    return fp.getvalue()
