"""The patient and study an audit message names (PS3.15 A.5: Patient ID, Study Instance UID,
Accession Number), read from a spooled Part 10 file's header.

The forwarder reads this for every object it sends when the audit trail is on, and pydicom's
reader cost ~0.3 ms of CPU per object, a third of the agent's whole cost per object (issue 18
item 3). So a small reader walks the header itself: preamble and "DICM", the group 0002 meta
(for the transfer syntax and where the data set starts), then the data set's top-level
elements up to Pixel Data, skipping sequences of undefined length item by item.

Its answer must be pydicom's for every file, so it answers only where it does exactly what
pydicom's reader (3.0, filereader.read_partial) does, and hands everything else to pydicom:
any syntax but Explicit/Implicit VR Little Endian (or a compressed one, whose header pydicom
also reads as Explicit VR Little Endian), an element pydicom would re-interpret (unknown VR,
implicit VR inside an explicit item, undefined length other than a sequence), a value that is
not plain printable ASCII or a character set other than ISO_IR 6/100/192 (they all decode such
bytes the same), a header cut short. It reads on to Pixel Data, not just past (0020,000D),
because pydicom does: a damaged element later in the header makes pydicom fail, and then the
answer is UNKNOWN, not what came before. The tests compare both on crafted and damaged files.

pydicom's path catches what pydicom raises on a damaged header (before, some of it escaped to
the forwarder): a file that cannot be read names UNKNOWN.

Nothing here logs: the values are patient data.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    PrivateTransferSyntaxes,
    RLELossless,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

__all__ = ["UNKNOWN", "StudyRef", "read_study_ref"]

#: named in an audit message for a file whose header cannot be read (the event still counts)
UNKNOWN = "(unreadable)"

#: the header elements an audit message names: Patient ID, Study Instance UID, Accession Number
_AUDIT_TAGS = [Tag(0x0010, 0x0020), Tag(0x0020, 0x000D), Tag(0x0008, 0x0050)]

#: what pydicom's reader raises on a damaged header, seen by cutting and flipping bytes of
#: real spooled files (tests/unit/test_audit_study_ref.py): struct.error for a 4-byte length
#: cut short, BytesLengthException for a number whose length is not a multiple of its size,
#: NotImplementedError for a value whose VR was damaged into an unknown one, zlib.error for
#: a deflated syntax whose data set is not deflated
_PYDICOM_ERRORS = (OSError, EOFError, ValueError, InvalidDicomError, struct.error,
                   BytesLengthException, NotImplementedError, zlib.error)


@dataclass(frozen=True)
class StudyRef:
    """What an audit message names of one object's study (patient data: never logged)."""

    patient_id: str
    study_uid: str
    accession: str = ""


def read_study_ref(path: Path) -> StudyRef:
    """The patient and study of a spooled Part 10 file, from its header only (no pixels).

    A file whose header cannot be read names UNKNOWN; never raises.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return _read_with_pydicom(path)
    try:
        found = _read_header(fd)
    finally:
        os.close(fd)
    return found if found is not None else _read_with_pydicom(path)


def _read_with_pydicom(path: Path) -> StudyRef:
    """pydicom's answer: what the agent gave before the small reader, and its fallback."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_AUDIT_TAGS)
        # values are decoded here, on first access: a damaged one raises here too
        patient_id = str(ds.get("PatientID", "") or "").strip()
        study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
        accession = str(ds.get("AccessionNumber", "") or "").strip()
    except _PYDICOM_ERRORS:
        return StudyRef(UNKNOWN, UNKNOWN)
    return StudyRef(patient_id or UNKNOWN, study_uid or UNKNOWN, accession)


# --- the small reader ---------------------------------------------------------------------

#: first read: our images' headers are 1-3 KB; a longer header (or a whole SR) is read again
#: in one larger piece, and one past _MAX_READ goes to pydicom
_FIRST_READ = 4096
_MAX_READ = 256 * 1024
#: nested sequences deeper than this go to pydicom (ours nest 2 deep)
_MAX_DEPTH = 16

_PATIENT_ID = 0x00100020
_STUDY_UID = 0x0020000D
_ACCESSION = 0x00080050
_CHARSET = 0x00080005
#: the elements read, with the VR pydicom decodes them as (explicit VR: must be the file's)
_WANTED = {_PATIENT_ID: b"LO", _STUDY_UID: b"UI", _ACCESSION: b"SH", _CHARSET: b"CS"}
#: pydicom's stop_before_pixels tags (filereader._at_pixel_data)
_PIXELS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF

#: VRs pydicom's explicit VR reader knows (filereader.ENCODED_VR), and those with a 4-byte length
_VRS = frozenset(vr.encode("ascii") for vr in VR)
_LONG_VRS = frozenset(vr.encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
#: (0008,0005) values under which printable ASCII decodes as itself; pydicom's default
#: (no or empty value) is ISO 8859-1
_ASCII_CHARSETS = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"})
#: syntaxes whose data set pydicom reads as Explicit VR Little Endian: the plain one and the
#: compressed ones the agent spools (read_partial's last branch); deflate and big endian not
_EXPLICIT_SYNTAXES = frozenset(uid.encode("ascii") for uid in
                               (ExplicitVRLittleEndian, RLELossless, JPEGLSLossless,
                                JPEG2000Lossless))
_IMPLICIT_SYNTAX = ImplicitVRLittleEndian.encode("ascii")

_EXPLICIT_HEAD = struct.Struct("<HH2sH")     # tag, VR, 2-byte length
_IMPLICIT_HEAD = struct.Struct("<HHL")       # tag, 4-byte length (also items and delimiters)
_LENGTH = struct.Struct("<L")


class _Fallback(Exception):
    """This file goes to pydicom's reader (never leaves this module)."""


class _NeedMore(Exception):
    """The header goes on past the bytes read so far."""


def _read_header(fd: int) -> StudyRef | None:
    """The small reader's answer, or None where pydicom must answer."""
    size = _FIRST_READ
    try:
        while True:
            buf = os.pread(fd, size, 0)
            try:
                return _Header(buf, complete=len(buf) < size).study_ref()
            except _NeedMore:
                if size >= _MAX_READ:
                    return None
                size = _MAX_READ
    except (_Fallback, OSError):
        return None


def _looks_explicit(buf: bytes, at: int) -> bool:
    """pydicom's test of an element's VR bytes (filereader._is_implicit_vr): two capitals."""
    return 0x40 < buf[at + 4] < 0x5B and 0x40 < buf[at + 5] < 0x5B


def _text(raw: bytes) -> str:
    """An LO/SH/UI value as pydicom decodes it and read_study_ref strips it; only for values
    that are one printable ASCII string, where every allowed character set agrees."""
    value = raw.rstrip(b"\0 ")
    if not value.isascii():
        raise _Fallback
    text = value.decode("ascii")
    if not text.isprintable() or "\\" in text:
        raise _Fallback
    return text.strip()


class _Header:
    """One walk over the first bytes of a file; raises _Fallback or _NeedMore."""

    def __init__(self, buf: bytes, *, complete: bool) -> None:
        self.buf = buf
        self.complete = complete  # the whole file is in buf

    def need(self, end: int) -> None:
        if end > len(self.buf):
            raise _Fallback if self.complete else _NeedMore

    def study_ref(self) -> StudyRef:
        buf = self.buf
        self.need(132)
        if buf[128:132] != b"DICM":
            raise _Fallback
        start, syntax = self.file_meta(132)
        if syntax == _IMPLICIT_SYNTAX:
            explicit = False
        elif syntax in _EXPLICIT_SYNTAXES and syntax.decode() not in PrivateTransferSyntaxes:
            explicit = True
        else:
            raise _Fallback
        values = self.data_set(start, explicit)
        charset = values.get(_CHARSET, b"")
        if charset not in _ASCII_CHARSETS:
            raise _Fallback
        patient_id = _text(values.get(_PATIENT_ID, b""))
        study_uid = _text(values.get(_STUDY_UID, b""))
        accession = _text(values.get(_ACCESSION, b""))
        return StudyRef(patient_id or UNKNOWN, study_uid or UNKNOWN, accession)

    def file_meta(self, at: int) -> tuple[int, bytes]:
        """Where the data set starts and the Transfer Syntax UID (stripped as pydicom does)."""
        buf, unpack = self.buf, _EXPLICIT_HEAD.unpack_from
        syntax: bytes | None = None
        first = True
        while True:
            # the data set's first element header must be there too: pydicom reads it to
            # find the end of the meta, and again for a command set and the VR check
            self.need(at + 12)
            group, element, vr, length = unpack(buf, at)
            if group != 0x0002:
                break
            if first and (element != 0 or vr != b"UL" or length != 4):
                # pydicom decodes the first meta element to choose explicit or implicit VR
                raise _Fallback
            first = False
            if vr not in _VRS:
                raise _Fallback
            head = 8
            if vr in _LONG_VRS:
                length = _LENGTH.unpack_from(buf, at + 8)[0]
                head = 12
                if length == _UNDEFINED:
                    raise _Fallback
            end = at + head + length
            self.need(end)
            if element == 0x0010:
                if vr != b"UI" or syntax is not None:
                    raise _Fallback
                syntax = buf[at + head:end].rstrip(b"\0 ")
            at = end
        if syntax is None:
            raise _Fallback  # pydicom guesses the syntax from the data set
        return at, syntax

    def element_header(self, at: int, explicit: bool) -> tuple[int, bytes, int, int]:
        """(tag, VR (b"" in implicit VR), value length, where the value starts) of the element
        at `at`, whose first 8 bytes are there."""
        buf = self.buf
        if not explicit:
            group, element, length = _IMPLICIT_HEAD.unpack_from(buf, at)
            return group << 16 | element, b"", length, at + 8
        group, element, vr, length = _EXPLICIT_HEAD.unpack_from(buf, at)
        if vr not in _VRS:
            raise _Fallback
        if vr in _LONG_VRS:
            self.need(at + 12)
            return group << 16 | element, vr, _LENGTH.unpack_from(buf, at + 8)[0], at + 12
        return group << 16 | element, vr, length, at + 8

    def data_set(self, at: int, explicit: bool) -> dict[int, bytes]:
        """The wanted top-level elements' raw values, walking to Pixel Data or the file's end."""
        buf = self.buf
        if _looks_explicit(buf, at) != explicit or buf[at:at + 2] == b"\0\0":
            # pydicom would switch VR encoding, or read a command set (group 0000)
            raise _Fallback
        values: dict[int, bytes] = {}
        size = len(buf)
        while True:
            if at + 8 > size:
                if self.complete:
                    # no Pixel Data: pydicom stops where fewer than 8 bytes are left (or
                    # past the end, after an element that claims more than there is)
                    return values
                raise _NeedMore
            tag, vr, length, at = self.element_header(at, explicit)
            if tag == _ITEM_END:
                raise _Fallback
            if tag in _PIXELS:
                return values
            if length == _UNDEFINED:
                if tag in _WANTED or not self.is_sequence(tag, vr, explicit):
                    raise _Fallback
                at = self.skip_sequence(at, explicit, 1)
                continue
            if tag in _WANTED:
                end = at + length
                self.need(end)
                if explicit and vr != _WANTED[tag]:
                    raise _Fallback
                values[tag] = buf[at:end]   # a repeated element: pydicom keeps the last
            at += length

    @staticmethod
    def is_sequence(tag: int, vr: bytes, explicit: bool) -> bool:
        """An undefined length pydicom reads as a sequence: SQ, or in implicit VR a tag the
        dictionary calls SQ (UN and private tags pydicom guesses at: not here)."""
        if explicit:
            return vr == b"SQ"
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:
            return False

    def skip_sequence(self, at: int, explicit: bool, depth: int) -> int:
        """Past a sequence of undefined length: items up to its delimiter."""
        if depth > _MAX_DEPTH:
            raise _Fallback
        buf, unpack = self.buf, _IMPLICIT_HEAD.unpack_from
        while True:
            self.need(at + 8)
            group, element, length = unpack(buf, at)
            tag = group << 16 | element
            at += 8
            if tag == _SEQUENCE_END:
                if length != 0:
                    raise _Fallback
                return at
            if tag != _ITEM:
                raise _Fallback
            if length == _UNDEFINED:
                at = self.skip_item(at, None, explicit, depth)
            else:
                self.need(at + length)
                at = self.skip_item(at, at + length, explicit, depth)

    def skip_item(self, at: int, end: int | None, explicit: bool, depth: int) -> int:
        """Past one item's elements: to `end`, or past its delimiter (undefined length)."""
        # pydicom reads an item of an explicit VR file as implicit VR if its first element's
        # VR is not two capitals (PS3.5 7.5 allows it): such an item falls back below, as
        # every VR is two capitals; an empty item reads the same either way
        buf = self.buf
        while True:
            if end is not None and at >= end:
                if at != end:
                    raise _Fallback
                return at
            self.need(at + 8)
            if buf[at:at + 4] == b"\xfe\xff\x0d\xe0":  # item delimiter
                if end is not None or buf[at + 4:at + 8] != b"\0\0\0\0":
                    raise _Fallback
                return at + 8
            tag, vr, length, at = self.element_header(at, explicit)
            if tag >> 16 == 0xFFFE:
                raise _Fallback   # an item or delimiter where an element belongs
            if length == _UNDEFINED:
                if not self.is_sequence(tag, vr, explicit):
                    raise _Fallback
                at = self.skip_sequence(at, explicit, depth + 1)
                continue
            self.need(at + length)
            at += length
