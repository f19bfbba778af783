"""Existing DICOM files into the queue (`modality-agent import`, and the watch folder).

A file is queued byte for byte, so what the archive receives is exactly what was given; it is
checked first, so a broken file is refused with the reason instead of failing at the archive.
`import` reads only regular files inside the configured folders (issue 13, finding 5): it is
reachable through the API, and must not become a way to send any file on this computer to the
archive, nor to hang the API on a FIFO or walk the whole disk.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import struct
import unicodedata
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from agent.errors import AgentError, QueueError
from agent.iod import is_valid_uid
from agent.queue import QueueStore

logger = logging.getLogger(__name__)

#: larger files are refused rather than read into memory (a 300-frame 1024x1024 16-bit
#: object is 600 MB)
MAX_FILE_BYTES = 2 * 1024**3
IMPORT_DISABLED = "import is disabled: set [api] import_folders"
#: a folder walk visits at most this many entries per accepted file allowed (at least
#: MIN_WALK_ENTRIES): a folder of a million sub-folders is not walked to the end
WALK_ENTRIES_PER_FILE = 10
MIN_WALK_ENTRIES = 1000
#: sequences nested deeper than this are refused, not followed (a hostile file could nest
#: items until the stack runs out)
MAX_NESTING = 32


class ImportRefused(AgentError, ValueError):
    """A file that cannot be queued; the message names the file and the reason, `reason`
    holds the reason alone (no file name: fit for a log line)."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


class ImportIncomplete(ImportRefused):
    """The file ends before its last element does: cut short, or still being written."""


class ImportDisabled(AgentError, PermissionError):
    """`import` asked for while no import folder is configured."""


@dataclass(frozen=True)
class ImportableFile:
    payload: bytes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class RefusedPath:
    """A path given to `import` that is not read, and why (no patient data in `reason`)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ImportSelection:
    """What `collect_import_files` found.

    `files`: real paths (symlinks resolved) of regular files inside the import folders, in
    order, each once. `limit_reached`: "" or what stopped the walk early.
    """

    files: tuple[Path, ...]
    refused: tuple[RefusedPath, ...]
    limit_reached: str = ""


def printable_name(name: str) -> str:
    """A file name for a log line: quoted, with control, format (bidi), separator and
    undecodable characters escaped, so a name can neither forge a line nor reorder one."""
    out = []
    for char in name:
        if char in "\\'":
            out.append("\\" + char)
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(char)
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
                       or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
                           if code < 0x10000 else f"\\U{code:08x}"))
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


# -- choosing the files ---------------------------------------------------------------------
def collect_import_files(paths: Sequence[Path], *, allowed_folders: Sequence[Path],
                         max_files: int, max_entries: int | None = None) -> ImportSelection:
    """The regular files `import` may read among `paths` (files, or folders walked).

    A path counts where it leads: it is resolved (symlinks followed) and must then lie inside
    one of `allowed_folders`. Only regular files are taken (never a FIFO, device or socket);
    hidden files are skipped; symlinked sub-folders are not followed. A walk stops after
    `max_files` files or `max_entries` entries (default: WALK_ENTRIES_PER_FILE per file, at
    least MIN_WALK_ENTRIES) and says so in `limit_reached`. Does blocking file-system calls:
    call it from a worker thread.

    Raises
    ------
    ImportDisabled
        If `allowed_folders` is empty.
    """
    if not allowed_folders:
        raise ImportDisabled(IMPORT_DISABLED)
    walk = _Walk(roots=tuple(Path(os.path.realpath(f)) for f in allowed_folders),
                 max_files=max_files,
                 max_entries=max_entries if max_entries is not None
                 else max(MIN_WALK_ENTRIES, WALK_ENTRIES_PER_FILE * max_files))
    for path in paths:
        if walk.limit_reached:
            walk.refuse(path, f"not looked at: {walk.limit_reached}")
            continue
        walk.take_given(path)
    return ImportSelection(tuple(walk.files), tuple(walk.refused), walk.limit_reached)


class _Walk:
    def __init__(self, *, roots: tuple[Path, ...], max_files: int, max_entries: int) -> None:
        self.roots = roots
        self.max_files = max_files
        self.max_entries = max_entries
        self.files: list[Path] = []
        self.refused: list[RefusedPath] = []
        self.limit_reached = ""
        self._seen: set[Path] = set()
        self._entries = 0

    def refuse(self, path: Path, reason: str) -> None:
        self.refused.append(RefusedPath(path, reason))

    def _inside(self, real: Path) -> bool:
        return any(real == root or root in real.parents for root in self.roots)

    def _accept(self, real: Path) -> None:
        if real in self._seen:
            return
        if len(self.files) >= self.max_files:
            self.limit_reached = f"stopped after {self.max_files} files ([api] max_import_files)"
            return
        self._seen.add(real)
        self.files.append(real)

    def take_given(self, path: Path) -> None:
        if not path.is_absolute():
            self.refuse(path, "not an absolute path")
            return
        real = Path(os.path.realpath(path))
        if not self._inside(real):
            self.refuse(path, "outside the import folders ([api] import_folders)")
            return
        try:
            info = os.lstat(real)
        except OSError as err:
            self.refuse(path, f"cannot read ({err.strerror})")
            return
        if stat.S_ISDIR(info.st_mode):
            self._walk(real)
        elif stat.S_ISREG(info.st_mode):
            self._accept(real)
        else:
            self.refuse(path, "not a regular file")

    def _walk(self, top: Path) -> None:
        stack = [top]
        while stack and not self.limit_reached:
            folder = stack.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError as err:
                self.refuse(folder, f"cannot list ({err.strerror})")
                continue
            subfolders: list[Path] = []
            for entry in entries:
                self._entries += 1
                if self._entries > self.max_entries:
                    self.limit_reached = (f"stopped after looking at {self.max_entries} "
                                          "entries: name fewer or smaller folders")
                    return
                if entry.name.startswith("."):
                    continue
                self._take_entry(Path(entry.path), entry, subfolders)
                if self.limit_reached:
                    return
            stack.extend(reversed(subfolders))       # depth first, in name order

    def _take_entry(self, path: Path, entry: os.DirEntry[str], subfolders: list[Path]) -> None:
        try:
            if entry.is_symlink():
                real = Path(os.path.realpath(path))
                if not self._inside(real):
                    self.refuse(path, "symbolic link leading outside the import folders")
                elif real.is_dir():
                    self.refuse(path, "symbolic link to a folder: not followed")
                elif stat.S_ISREG(os.lstat(real).st_mode):
                    self._accept(real)
                else:
                    self.refuse(path, "not a regular file")
            elif entry.is_dir(follow_symlinks=False):
                subfolders.append(path)
            elif entry.is_file(follow_symlinks=False):
                self._accept(path)
            else:
                self.refuse(path, "not a regular file")
        except OSError as err:
            self.refuse(path, f"cannot read ({err.strerror})")


# -- reading one file -----------------------------------------------------------------------
def read_regular_file(path: Path, *, max_bytes: int = MAX_FILE_BYTES,
                      allowed_folders: Sequence[Path] = ()) -> bytes:
    """The bytes of a regular file, read without ever blocking or following a final symlink.

    Opened O_NOFOLLOW|O_NONBLOCK (a FIFO without a writer would block open() otherwise) and
    checked with fstat on the open file: only a regular file of at most `max_bytes` is read.
    With `allowed_folders`, the opened file must still lie inside one of them (a folder
    swapped for a symlink after `collect_import_files` looked).

    Raises
    ------
    ImportRefused
        Not a regular file, too large, outside the folders, or unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        reason = ("symbolic link: not followed" if err.errno == errno.ELOOP
                  else f"cannot read ({err.strerror})")
        raise ImportRefused(f"{path}: {reason}", reason=reason) from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImportRefused(f"{path}: not a regular file", reason="not a regular file")
        if info.st_size > max_bytes:
            reason = f"{info.st_size} bytes, more than {max_bytes} bytes"
            raise ImportRefused(f"{path}: {reason}", reason=reason)
        if allowed_folders:
            _check_opened_inside(fd, path, allowed_folders)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                reason = f"grew past {max_bytes} bytes while read"
                raise ImportRefused(f"{path}: {reason}", reason=reason)
    except OSError as err:
        reason = f"cannot read ({err.strerror})"
        raise ImportRefused(f"{path}: {reason}", reason=reason) from err
    finally:
        os.close(fd)
    return b"".join(chunks)


def _check_opened_inside(fd: int, path: Path, allowed_folders: Sequence[Path]) -> None:
    try:
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return                     # no /proc: collect_import_files' check stands alone
    roots = [Path(os.path.realpath(f)) for f in allowed_folders]
    if not any(opened == root or root in opened.parents for root in roots):
        reason = "outside the import folders ([api] import_folders)"
        raise ImportRefused(f"{path}: {reason}", reason=reason)


def read_dicom_file(path: Path, *, max_bytes: int = MAX_FILE_BYTES,
                    allowed_folders: Sequence[Path] = ()) -> ImportableFile:
    """Check a DICOM Part 10 file and return its bytes and the UIDs the queue needs.

    Read through `read_regular_file` (never blocks, at most `max_bytes`).

    Raises
    ------
    ImportRefused
        Not a regular file, too large, not a complete and readable Part 10 file, missing or
        inconsistent UIDs, unknown transfer syntax.
    """
    payload = read_regular_file(path, max_bytes=max_bytes, allowed_folders=allowed_folders)
    try:
        return parse_dicom_bytes(payload)
    except ImportRefused as err:
        raise type(err)(f"{path}: {err.reason}", reason=err.reason) from err


def parse_dicom_bytes(payload: bytes) -> ImportableFile:
    """Check Part 10 bytes (complete to the last element, readable, UIDs consistent).

    Raises
    ------
    ImportRefused
        As `read_dicom_file`; the message names no file.
    """
    check_part10_complete(payload)
    try:
        with warnings.catch_warnings():
            # pydicom warns and reads on where a file ends early: here that is an error
            warnings.simplefilter("error")
            ds = dcmread(io.BytesIO(payload))
            meta = ds.file_meta
            syntax = UID(str(meta.get("TransferSyntaxUID", "")))
            sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
            sop_instance = str(ds.get("SOPInstanceUID", "") or "")
            media_instance = str(meta.get("MediaStorageSOPInstanceUID", sop_instance))
            _check_pixel_data_present(ds, UID(sop_class))
            _check_pixel_data_complete(ds)
    except ImportRefused:
        raise                                  # ours, a ValueError too: keep its reason
    except InvalidDicomError as err:
        raise ImportRefused("not a DICOM Part 10 file (no 'DICM' preamble)") from err
    except (ValueError, EOFError, OSError, KeyError, TypeError, AttributeError, IndexError,
            NotImplementedError, OverflowError, struct.error, BytesLengthException,
            UserWarning) as err:
        # the type only: pydicom's messages may quote element values (patient data)
        raise ImportRefused(f"unreadable DICOM ({type(err).__name__})") from err
    if not syntax or not syntax.is_transfer_syntax:
        raise ImportRefused(f"(0002,0010) Transfer Syntax UID: expected a known transfer "
                            f"syntax, got {str(syntax)[:64]!r}")
    for keyword, value in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_instance)):
        if not is_valid_uid(value):
            raise ImportRefused(f"{keyword}: expected a valid UID, got {value[:64]!r}")
    if media_instance != sop_instance:
        raise ImportRefused("(0002,0003) Media Storage SOP Instance UID differs from "
                            "(0008,0018) SOP Instance UID")
    return ImportableFile(payload, sop_instance, sop_class, str(syntax))


def _check_pixel_data_present(ds: Any, sop_class: UID) -> None:
    """A file cut between two elements is well formed up to its end: an image object
    without its pixels is how such a cut shows (Pixel Data comes last in an image)."""
    pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if any(keyword in ds for keyword in pixel_keywords):
        return
    if sop_class.name.endswith("Image Storage") or "Rows" in ds:
        raise ImportIncomplete("an image object without Pixel Data (7FE0,0010): the file is "
                            "incomplete")


def _check_pixel_data_complete(ds: Any) -> None:
    """A file still being written (or cut short) must not be queued as if it were whole."""
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                    * int(ds.get("NumberOfFrames", 1) or 1) * ((int(ds.BitsAllocated) + 7) // 8))
    except (AttributeError, TypeError, ValueError) as err:
        raise ImportRefused(f"Image Pixel module incomplete ({type(err).__name__})") from err
    if int(ds.BitsAllocated) == 1:
        expected = (expected + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise ImportIncomplete(f"Pixel Data holds {actual} bytes, the image needs {expected}: "
                            "the file is incomplete")


# -- Part 10 structure: every element's length must fit (PS3.5 7.1, 7.5, A.4) ------------------
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95")
#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR",
                       b"UT", b"SV", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010


def check_part10_complete(payload: bytes, *, max_inflated_bytes: int = MAX_FILE_BYTES) -> None:
    """Walk a Part 10 file element by element to its last byte: every length must fit, every
    undefined-length sequence and item be closed. pydicom reads a file cut short without a
    word in places (a value shorter than its length), so a file still being written, or
    truncated, would be queued as if whole.

    Raises
    ------
    ImportRefused
        The reason names the element and the byte offset.
    """
    if len(payload) < 132 or payload[128:132] != b"DICM":
        raise ImportRefused("not a DICOM Part 10 file (no 'DICM' at byte 128)")
    meta = _Parser(payload, explicit=True, little=True)
    position, syntax = meta.file_meta(132)
    if syntax == IMPLICIT_VR_LE:
        body, explicit, little = payload, False, True
    elif syntax == EXPLICIT_VR_BE:
        body, explicit, little = payload, True, False
    elif syntax in DEFLATED:
        body, explicit, little = _inflate(payload[position:], max_inflated_bytes), True, True
        position = 0
    else:
        body, explicit, little = payload, True, True
    parser = _Parser(body, explicit=explicit, little=little)
    parser.elements(position, len(body), depth=0)


def _inflate(data: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)       # raw deflate (PS3.5 A.5)
    try:
        body = inflater.decompress(data, max_bytes + 1)
    except zlib.error as err:
        raise ImportRefused("deflated data set: not a valid deflate stream") from err
    if len(body) > max_bytes:
        raise ImportRefused(f"deflated data set inflates past {max_bytes} bytes")
    if not inflater.eof:
        raise ImportIncomplete("deflated data set cut short: the file is incomplete")
    return body


class _Parser:
    def __init__(self, data: bytes, *, explicit: bool, little: bool) -> None:
        self.data = data
        self.explicit = explicit
        self.order = "<" if little else ">"

    def _short(self, what: str, position: int) -> ImportIncomplete:
        return ImportIncomplete(f"{what} at byte {position} cut short: the file is incomplete")

    def _tag(self, position: int, end: int) -> int:
        if position + 8 > end:
            raise self._short("element header", position)
        group, element = struct.unpack_from(self.order + "HH", self.data, position)
        return int(group) << 16 | int(element)

    def header(self, position: int, end: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, header size) of the element at `position`."""
        tag = self._tag(position, end)
        if tag >> 16 == 0xFFFE or not self.explicit:
            # item and delimiter tags have no VR, in every transfer syntax (PS3.5 7.5)
            (length,) = struct.unpack_from(self.order + "I", self.data, position + 4)
            return tag, None, int(length), 8
        vr = self.data[position + 4:position + 6]
        if not (vr.isalpha() and vr.isupper()):
            raise ImportRefused(f"element {_name(tag)} at byte {position}: invalid VR "
                                f"{vr!r}")
        if vr in _LONG_VRS:
            if position + 12 > end:
                raise self._short("element header", position)
            (length,) = struct.unpack_from(self.order + "I", self.data, position + 8)
            return tag, vr, int(length), 12
        (length,) = struct.unpack_from(self.order + "H", self.data, position + 6)
        return tag, vr, int(length), 8

    def file_meta(self, position: int) -> tuple[int, str]:
        """Walk group 0002 (always explicit VR little endian); return where the data set
        starts and its transfer syntax."""
        syntax = ""
        end = len(self.data)
        while position < end:
            if position + 8 > end:
                raise self._short("file meta element", position)
            tag = self._tag(position, end)
            if tag >> 16 != 0x0002:
                break
            _, _, length, size = self.header(position, end)
            start = position + size
            position = self._fit(tag, start, length, end)
            if tag == 0x00020010:
                syntax = self.data[start:position].rstrip(b"\x00 ").decode("ascii", "replace")
        if not syntax:
            kind = ImportIncomplete if position >= end else ImportRefused
            raise kind("(0002,0010) Transfer Syntax UID missing from the file meta information")
        return position, syntax

    def _fit(self, tag: int, start: int, length: int, end: int) -> int:
        if start + length > end:
            raise ImportIncomplete(f"element {_name(tag)} at byte {start}: length {length} runs "
                                f"past the end of its container (byte {end}): the file is "
                                "incomplete")
        return start + length

    def elements(self, position: int, end: int, *, depth: int,
                 until_item_end: bool = False) -> int:
        """Walk data elements from `position`; with `until_item_end`, up to and including an
        item delimiter (which must come before `end`). Returns the position after them."""
        if depth > MAX_NESTING:
            raise ImportRefused(f"sequences nested deeper than {MAX_NESTING} at byte "
                                f"{position}")
        while position < end:
            tag, vr, length, size = self.header(position, end)
            start = position + size
            if tag == _ITEM_END and until_item_end:
                return start
            if tag >> 16 == 0xFFFE:
                raise ImportRefused(f"unexpected {_name(tag)} at byte {position}")
            if length != _UNDEFINED:
                position = self._fit(tag, start, length, end)
                if vr == b"SQ" or (vr is None and self._looks_like_items(start, length)):
                    self.items(start, position, depth=depth + 1, delimited=False,
                               explicit=self.explicit)
            elif tag == _PIXEL_DATA and vr != b"SQ":
                position = self.fragments(start, end)
            elif vr in (None, b"SQ", b"UN"):
                # UN of undefined length holds implicit VR little endian (PS3.5 6.2.2)
                position = self.items(start, end, depth=depth + 1, delimited=True,
                                      explicit=self.explicit and vr != b"UN")
            else:
                raise ImportRefused(f"element {_name(tag)} at byte {position}: undefined "
                                    f"length on VR {vr.decode('ascii', 'replace')}")
        if until_item_end:
            raise ImportIncomplete(f"item not closed by byte {end}: the file is incomplete")
        return position

    def _looks_like_items(self, start: int, length: int) -> bool:
        # implicit VR: a defined-length sequence is told only by its first item tag
        return length >= 8 and self._tag(start, start + length) == _ITEM

    def items(self, position: int, end: int, *, depth: int, delimited: bool,
              explicit: bool) -> int:
        """Walk the items of a sequence; a `delimited` one ends with its delimiter."""
        inner = self if explicit == self.explicit else _Parser(
            self.data, explicit=explicit, little=self.order == "<")
        while position < end:
            tag, _, length, size = self.header(position, end)
            start = position + size
            if tag == _SEQ_END and delimited:
                return start
            if tag != _ITEM:
                raise ImportRefused(f"byte {position}: an item expected in the sequence, got "
                                    f"{_name(tag)}")
            if length == _UNDEFINED:
                position = inner.elements(start, end, depth=depth, until_item_end=True)
            else:
                position = self._fit(tag, start, length, end)
                inner.elements(start, position, depth=depth)
        if delimited:
            raise ImportIncomplete(f"sequence not closed by byte {end}: the file is incomplete")
        return position

    def fragments(self, position: int, end: int) -> int:
        """Encapsulated Pixel Data: items of defined length up to the delimiter (A.4)."""
        while position < end:
            tag, _, length, size = self.header(position, end)
            start = position + size
            if tag == _SEQ_END:
                return start
            if tag != _ITEM or length == _UNDEFINED:
                raise ImportRefused(f"byte {position}: a pixel data fragment expected, got "
                                    f"{_name(tag)}")
            position = self._fit(tag, start, length, end)
        raise ImportIncomplete("encapsulated Pixel Data not closed: the file is incomplete")


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# -- queueing (the daemon's `import`) ---------------------------------------------------------
def queue_import_files(paths: Sequence[Path], *, queue: QueueStore,
                       allowed_folders: Sequence[Path], max_files: int,
                       max_file_bytes: int = MAX_FILE_BYTES) -> list[dict[str, Any]]:
    """`import`: queue the DICOM files among `paths`; one result per file or refused path:
    {"path", "queue_id", "sop_instance_uid"} or {"path", "error"}. Blocking: call it from a
    worker thread. File names are logged at DEBUG only, escaped.

    Raises
    ------
    ImportDisabled
        If no import folder is configured.
    """
    selection = collect_import_files(paths, allowed_folders=allowed_folders,
                                     max_files=max_files)
    results: list[dict[str, Any]] = []
    for refused in selection.refused:
        logger.debug("import: %s refused: %s", printable_name(str(refused.path)),
                     refused.reason)
        results.append({"path": str(refused.path), "error": refused.reason})
    if selection.refused:
        logger.warning("import: %d path(s) refused", len(selection.refused))
    if selection.limit_reached:
        logger.warning("import: %s", selection.limit_reached)
        results.append({"path": "", "error": selection.limit_reached})
    for path in selection.files:
        try:
            item = read_dicom_file(path, max_bytes=max_file_bytes,
                                   allowed_folders=allowed_folders)
            queued = queue.enqueue(item.payload, sop_instance_uid=item.sop_instance_uid,
                                   sop_class_uid=item.sop_class_uid,
                                   transfer_syntax_uid=item.transfer_syntax_uid)
        except (ImportRefused, QueueError) as err:
            reason = err.reason if isinstance(err, ImportRefused) else str(err)
            logger.debug("import: %s refused: %s", printable_name(str(path)), reason)
            logger.warning("import: a file was refused: %s", reason)
            results.append({"path": str(path), "error": str(err)})
            continue
        logger.debug("import: %s queued as queue item %d", printable_name(str(path)),
                     queued.queue_id)
        logger.info("queue item %d: imported as %s", queued.queue_id, queued.sop_instance_uid)
        results.append({"path": str(path), "queue_id": queued.queue_id,
                        "sop_instance_uid": queued.sop_instance_uid})
    return results


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, folders by their files (recursively, sorted); hidden files skipped.

    Unbounded and unchecked: kept only for callers that have not moved to
    `collect_import_files` (issue 13); do not use it for paths from the API.
    """
    result: list[Path] = []
    for path in paths:
        if path.is_dir():
            result.extend(p for p in sorted(path.rglob("*"))
                          if p.is_file() and not p.name.startswith("."))
        else:
            result.append(path)
    return result
