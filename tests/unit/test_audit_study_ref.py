"""The audit trail's header read (issue 18 item 3): the patient and study of a spooled Part 10
file from a small reader of three elements, with pydicom's reader behind it for anything
unusual. The answer must be pydicom's for every file, including damaged ones."""

from __future__ import annotations

import functools
import random
import struct
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pydicom.filereader
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from agent.audit.study_ref import _LONG_VRS as LONG_VRS
from agent.audit.study_ref import _read_with_pydicom
from agent.forwarder import UNKNOWN, StudyRef, read_study_ref

SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def pydicom_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every file pydicom's reader parses (dcmread goes through read_partial)."""
    calls: list[str] = []
    real = pydicom.filereader.read_partial

    def counted(fileobj, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(getattr(fileobj, "name", "?"))
        return real(fileobj, *args, **kwargs)

    monkeypatch.setattr(pydicom.filereader, "read_partial", counted)
    yield calls


def plain_file(path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.AccessionNumber = "ACC-1"
    ds.PatientID = "PID-1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\0" * 8
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_plain_spooled_file_is_read_without_pydicom(tmp_path: Path, syntax: str,
                                                       pydicom_reads: list[str]) -> None:
    path = plain_file(tmp_path / "1.dcm", syntax)
    assert read_study_ref(path) == StudyRef("PID-1", "1.2.3.4", "ACC-1")
    assert pydicom_reads == []


# --- the same answer as pydicom's reader, for every file ------------------------------------


def reference(path: Path) -> StudyRef:
    """pydicom's answer, warnings off as in the daemon (the suite turns them into errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_with_pydicom(path)


def answer(path: Path) -> StudyRef:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_study_ref(path)


def element(tag: int, vr: str, value: bytes, *, explicit: bool, length: int | None = None) -> bytes:
    """One element as bytes, odd lengths and all (pydicom's writer pads them)."""
    length = len(value) if length is None else length
    tag_bytes = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return tag_bytes + struct.pack("<L", length) + value
    if vr.encode() in LONG_VRS:
        return tag_bytes + vr.encode() + b"\0\0" + struct.pack("<L", length) + value
    return tag_bytes + vr.encode() + struct.pack("<H", length) + value


def item(*elements: bytes, undefined: bool = True) -> bytes:
    body = b"".join(elements)
    if undefined:
        return b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\0\0\0\0"
    return b"\xfe\xff\x00\xe0" + struct.pack("<L", len(body)) + body


def sequence(tag: int, *items: bytes, explicit: bool, undefined: bool = True) -> bytes:
    body = b"".join(items)
    if undefined:
        return element(tag, "SQ", body + b"\xfe\xff\xdd\xe0\0\0\0\0", explicit=explicit,
                       length=0xFFFFFFFF)
    return element(tag, "SQ", body, explicit=explicit)


def part10_bytes(data_set: bytes, syntax: bytes, group_length: bytes | None = None) -> bytes:
    """Preamble, DICM, a file meta group (Explicit VR LE, with its group length unless given
    other bytes for it) and `data_set`."""
    meta = b"".join([
        element(0x00020001, "OB", b"\0\1", explicit=True),
        element(0x00020002, "UI", SC.encode() + b"\0", explicit=True),
        element(0x00020003, "UI", b"1.2.3.4.5\0", explicit=True),
        element(0x00020010, "UI", syntax, explicit=True),
    ])
    if group_length is None:
        group_length = element(0x00020000, "UL", struct.pack("<L", len(meta)), explicit=True)
    return b"\0" * 128 + b"DICM" + group_length + meta + data_set


CODE = (0x00080100, "SH"), (0x00080102, "SH"), (0x00080104, "LO")


def code_item(value: bytes, *, explicit: bool, undefined: bool = True) -> bytes:
    return item(*(element(tag, vr, value, explicit=explicit) for tag, vr in CODE),
                undefined=undefined)


def crafted(explicit: bool, *, charset: bytes | None = b"ISO_IR 192",
            patient_id: bytes | None = b"PID-7 ", study_uid: bytes | None = b"1.2.3.4\0",
            accession: bytes | None = b"ACC-7 ", sequences: bool = True,
            pixels: bool = True, extra: bytes = b"", early: bytes = b"",
            syntax: bytes | None = None) -> bytes:
    """A data set byte by byte: sequences of undefined (and defined) length before Patient ID,
    nested ones, an empty item, values as given (None: element absent); `early` goes before
    the wanted elements, `extra` after them."""
    e = explicit
    parts = []
    if charset is not None:
        parts.append(element(0x00080005, "CS", charset, explicit=e))
    parts.append(element(0x00080016, "UI", SC.encode() + b"\0", explicit=e))
    parts.append(early)
    if accession is not None:
        parts.append(element(0x00080050, "SH", accession, explicit=e))
    if sequences:
        nested = sequence(0x0040A043, code_item(b"N1", explicit=e), explicit=e)
        parts += [
            # Procedure Code Sequence: two items, the second with a nested sequence
            sequence(0x00081032, code_item(b"RPC-1", explicit=e),
                     item(element(0x00080100, "SH", b"RPC-2 ", explicit=e), nested,
                          explicit_item_tail(e)), explicit=e),
            # Referenced Study Sequence: defined-length item, and an empty item
            sequence(0x00081110,
                     item(element(0x00081150, "UI", b"1.2.840.10008.3.1.2.3.1\0", explicit=e),
                          element(0x00081155, "UI", b"1.2.3.9\0", explicit=e),
                          undefined=False),
                     item(), explicit=e),
            # Referenced PPS Sequence: empty, and a defined-length sequence after it
            sequence(0x00081111, explicit=e),
            sequence(0x00081120, code_item(b"X", explicit=e, undefined=False), explicit=e,
                     undefined=False),
        ]
    parts.append(element(0x00100010, "PN", "Müller^Jörg".encode(), explicit=e))
    if patient_id is not None:
        parts.append(element(0x00100020, "LO", patient_id, explicit=e))
    if sequences:
        parts.append(sequence(0x00101002, item(element(0x00100020, "LO", b"OTHER", explicit=e)),
                              explicit=e))
    if study_uid is not None:
        parts.append(element(0x0020000D, "UI", study_uid, explicit=e))
    parts.append(element(0x0020000E, "UI", b"1.2.3.4.1\0", explicit=e))
    parts.append(element(0x00280010, "US", b"\2\0", explicit=e))
    parts.append(extra)
    if pixels:
        parts.append(element(0x7FE00010, "OW", b"\0" * 16, explicit=e))
    if syntax is None:
        syntax = EXPLICIT if explicit else IMPLICIT
    return part10_bytes(b"".join(parts), syntax)


def ts_as(syntax: bytes, vr: str) -> bytes:
    """A crafted file whose Transfer Syntax UID element has the VR `vr`."""
    data = crafted(syntax == EXPLICIT)
    old = element(0x00020010, "UI", syntax, explicit=True)
    assert data.count(old) == 1
    return data.replace(old, element(0x00020010, vr, syntax, explicit=True))


def crafted_first(explicit: bool) -> bytes:
    """A data set whose first element's length (implicit VR) or VR (explicit) says the other
    encoding: pydicom switches."""
    first = element(0x00080001, "UN", b"\0" * 0x4141, explicit=False) if not explicit else \
        b"\x08\x00\x01\x00\x01\x02\x00\x00"
    rest = crafted(explicit)
    start = rest.index(b"\x08\x00\x05\x00")
    return part10_bytes(first + rest[start:], EXPLICIT if explicit else IMPLICIT)


def explicit_item_tail(explicit: bool) -> bytes:
    return element(0x00080104, "LO", b"Meaning", explicit=explicit)


EXPLICIT = ExplicitVRLittleEndian.encode() + b"\0"
IMPLICIT = ImplicitVRLittleEndian.encode()


def variants() -> Iterator[tuple[str, bytes]]:
    """Crafted files: every case the small reader answers, and many it leaves to pydicom."""
    for explicit in (True, False):
        vr = "explicit" if explicit else "implicit"

        def make(name: str, e: bool = explicit, vr: str = vr,
                 **kwargs: object) -> tuple[str, bytes]:
            return f"{vr} {name}", crafted(e, **kwargs)  # type: ignore[arg-type]

        yield make("with sequences")
        yield make("without sequences", sequences=False)
        yield make("without pixels", pixels=False)
        yield make("without pixels or sequences", pixels=False, sequences=False)
        for absent in ("patient_id", "study_uid", "accession"):
            yield make(f"no {absent}", **{absent: None})
            yield make(f"empty {absent}", **{absent: b""})
            yield make(f"blank {absent}", **{absent: b"    "})
        yield make("padded", patient_id=b"  PID 7  ", study_uid=b" 1.2.3 \0",
                   accession=b" ACC ")
        yield make("leading null", accession=b"\0ACC\0")
        yield make("odd lengths", patient_id=b"PID", study_uid=b"1.2.3", accession=b"A")
        yield make("trailing nulls", patient_id=b"PID\0\0", study_uid=b"1.2\0\0\0")
        yield make("long id", patient_id=b"P" * 70)
        yield make("multi-valued id", patient_id=b"PID-1\\PID-2")
        yield make("multi-valued uid", study_uid=b"1.2.3\\1.2.4")
        yield make("control character", patient_id=b"PID\t7")
        yield make("escape", patient_id=b"PID\x1b(B7")
        yield make("DEL", accession=b"A\x7f")
        yield make("UTF-8 id", patient_id="Jörg-1".encode())
        yield make("Latin-1 id", patient_id="Jörg-1".encode("latin-1"), charset=b"ISO_IR 100")
        yield make("Cyrillic id", patient_id="Ж-1".encode("iso8859-5"), charset=b"ISO_IR 144")
        for charset in (None, b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 144",
                        b"ISO 2022 IR 6", b"GB18030", b"ISO_IR 192\\ISO_IR 100", b"nonsense",
                        b"ISO_IR 6 "):
            yield make(f"charset {charset!r}", charset=charset)
        yield make("Patient ID twice", extra=element(0x00100020, "LO", b"LATER", explicit=explicit))
        yield make("Study UID twice", extra=element(0x0020000D, "UI", b"9.9\0", explicit=explicit))
        yield make("out of order", extra=element(0x00080050, "SH", b"LATE", explicit=explicit))
        yield make("undefined-length OB after the tags",
                   extra=element(0x00091010, "OB", b"\1\2\xfe\xff\xdd\xe0\0\0\0\0",
                                 explicit=explicit, length=0xFFFFFFFF))
        yield make("item delimiter at the top", extra=b"\xfe\xff\x0d\xe0\0\0\0\0")
        yield make("item delimiter before the tags", early=b"\xfe\xff\x0d\xe0\0\0\0\0")
        # pydicom reads an undefined-length OB to the first sequence delimiter, a sequence
        # to its own: a nested sequence inside tells them apart
        nested_items = item(sequence(0x0040A043, item(), explicit=explicit))
        yield make("undefined-length OB holding items", early=element(
            0x00420011, "OB", nested_items + b"\xfe\xff\xdd\xe0\0\0\0\0", explicit=explicit,
            length=0xFFFFFFFF))
        yield make("undefined-length private element holding items", early=element(
            0x00091010, "OB", nested_items + b"\xfe\xff\xdd\xe0\0\0\0\0", explicit=explicit,
            length=0xFFFFFFFF))
        yield make("Patient ID as a sequence", patient_id=None, early=sequence(
            0x00100020, item(element(0x00100020, "LO", b"INNER", explicit=explicit)),
            explicit=explicit))
        yield make("Accession Number as a defined-length sequence", accession=None,
                   early=sequence(0x00080050, item(), explicit=explicit, undefined=False))
        yield make("private sequence", extra=sequence(0x00091011, item(), explicit=explicit))
        yield make("1 byte left over", pixels=False, extra=b"\0")
        yield make("7 bytes left over", pixels=False, extra=b"\0" * 7)
        yield make("last element longer than the file", pixels=False,
                   extra=element(0x00280011, "US", b"\2\0", explicit=explicit, length=40))
        yield f"{vr} first element in the other encoding", crafted_first(explicit)
        for delimiter_length in (b"\1\0\0\0", b"OB\0\0", b"US\0\0"):
            yield make(f"item delimiter with length {delimiter_length!r}",
                       extra=element(0x00400275, "SQ", b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
                                     + element(0x00400009, "SH", b"SPS1", explicit=explicit)
                                     + b"\xfe\xff\x0d\xe0" + delimiter_length
                                     + b"\xfe\xff\xdd\xe0\0\0\0\0",
                                     explicit=explicit, length=0xFFFFFFFF))
        for charset in (b"ISO_IR 100", b"\xff\xfe", b"ISO 2022 IR 6\\ISO_IR 192", b""):
            yield make(f"nested charset {charset!r}", extra=sequence(
                0x00400275, item(element(0x00080005, "CS", charset, explicit=explicit),
                                 element(0x00400009, "SH", b"SPS1", explicit=explicit)),
                explicit=explicit))
    yield "explicit unknown VR", crafted(True, extra=b"\x09\x00\x12\x10ZZ\x02\x00ab")
    yield "explicit UN sequence", crafted(True, extra=sequence(0x00091012, item(), explicit=False)
                                          .replace(b"SQ", b"UN", 1))
    yield "explicit Patient ID as SH", crafted(True).replace(b"\x10\x00\x20\x00LO",
                                                             b"\x10\x00\x20\x00SH", 1)
    yield "implicit item in explicit file", crafted(True, extra=sequence(
        0x00400275, item(element(0x00400009, "SH", b"SPS-1", explicit=False)), explicit=True))
    data = crafted(True)
    yield "deflated syntax", crafted(True, syntax=b"1.2.840.10008.1.2.1.99")
    yield "JPEG 2000 syntax", crafted(True, syntax=JPEG2000Lossless.encode())
    yield "JPEG 2000 syntax with implicit data set", crafted(False,
                                                            syntax=JPEG2000Lossless.encode())
    yield "big endian syntax, little endian data", crafted(True, syntax=b"1.2.840.10008.1.2.2\0")
    yield "private syntax", crafted(True, syntax=b"1.2.3.4.5.6\0")
    for vr in ("LO", "OB", "UN", "SH", "CS"):
        for syntax in (EXPLICIT, IMPLICIT):
            yield f"syntax {syntax!r} as {vr}", ts_as(syntax, vr)
    yield "no syntax", data.replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x11\x00UI")
    yield "no DICM", data.replace(b"DICM", b"DICN")
    yield "empty", b""
    yield "not DICOM", b"not dicom"
    yield "preamble only", data[:132]
    yield "meta only", data[:data.index(b"\x08\x00\x05\x00")]
    for name, group_length in (("none", b""), ("2 bytes", b"\2\0"), ("8 bytes", b"\0" * 8),
                               ("as OB", b"")):
        head = element(0x00020000, "OB" if name == "as OB" else "UL", group_length,
                       explicit=True)
        yield f"meta group length {name}", part10_bytes(
            crafted(True)[crafted(True).index(b"\x08\x00\x05\x00"):], EXPLICIT,
            head if name != "none" else b"")
    for explicit in (True, False):
        body = crafted(explicit)
        body = body[body.index(b"\x08\x00\x05\x00"):]
        yield f"command set {explicit=}", part10_bytes(
            element(0x00000002, "UI", SC.encode() + b"\0", explicit=explicit) + body,
            EXPLICIT if explicit else IMPLICIT)


@functools.cache
def agent_objects() -> dict[str, bytes]:
    return dict(_agent_objects())


def _agent_objects() -> Iterator[tuple[str, bytes]]:
    """Spooled objects as the agent builds them (bench.common.make_objects' path), scheduled
    from a worklist (sequences before Patient ID), compressed, and re-encoded Implicit VR."""
    import time

    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    from agent.iod import UIDSource, build_image, encode_part10, new_series_context
    from agent.records import Code, DeviceInfo, MppsImageRefs, Order, OtherPatientID, SOPReference
    from drivers.frame import Frame
    from drivers.simulated import phantom

    uids = UIDSource()
    unscheduled = Order(patient_name="BENCH^Objects", patient_id="BENCH-0001")
    scheduled = Order(
        patient_name="Müller^Jörg", patient_id="PID-1", patient_birth_date="19700101",
        patient_sex="M", issuer_of_patient_id="HOSP", study_instance_uid="1.2.826.0.1.3680043.10.9",
        accession_number="ACC-1", requested_procedure_id="RP-1",
        requested_procedure_description="Chest X-ray", sps_id="SPS-1", sps_description="PA",
        scheduled=True, other_patient_ids=(OtherPatientID("OTHER-1", "CLINIC"),),
        referenced_studies=(SOPReference("1.2.840.10008.3.1.2.3.1", "1.2.3.4"),),
        requested_procedure_codes=(Code("RPC-1", "99LOCAL", "Chest X-ray"),),
        scheduled_protocol_codes=(Code("P-1", "99LOCAL", "Chest PA", "1.0"),),
        admission_id="ADM-1",
        performed_procedure_step=MppsImageRefs("1.2.840.10008.3.1.2.3.3", "1.2.3.5", "PPS-1",
                                               "20240101", "101010", "Chest"))
    device = DeviceInfo("DX", "Example Medical", "Bench", "0001", "BENCH", "", "bench")
    frame = Frame(pixels=phantom(64, 64, 12, 0), bits_stored=12,
                  photometric_interpretation="MONOCHROME2", t_mono=time.monotonic(),
                  t_wall=time.time(), sequence_number=0, pixel_spacing_mm=(0.1, 0.1))
    for label, order in (("unscheduled", unscheduled), ("scheduled", scheduled)):
        series = new_series_context(uids, order, started_at=datetime(2024, 5, 6, 7, 8, 9),
                                    series_number=1)
        for iod, extra in (("secondary-capture", {}),
                           ("dx", {"image_laterality": "L", "patient_orientation": ("A", "R")})):
            ds = build_image(iod, [frame], order=order, device=device, series=series,
                             instance_number=1, sop_instance_uid=uids.new_uid(), **extra)
            data = encode_part10(ds)
            yield f"{label} {iod}", data
            yield f"{label} {iod} rle", encode_part10(ds, "rle")
            implicit = dcmread(DicomBytesIO(data))
            implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            out = DicomBytesIO()
            implicit.save_as(out, enforce_file_format=True)
            yield f"{label} {iod} implicit", out.getvalue()


AGENT_OBJECTS = [f"{label} {iod}{encoding}" for label in ("unscheduled", "scheduled")
                 for iod in ("secondary-capture", "dx") for encoding in ("", " rle", " implicit")]
VARIANTS = dict(variants())


@pytest.mark.parametrize("name", AGENT_OBJECTS)
def test_the_agents_spooled_objects_are_read_without_pydicom(
        tmp_path: Path, name: str, pydicom_reads: list[str]) -> None:
    path = tmp_path / "1.dcm"
    path.write_bytes(agent_objects()[name])
    pydicom_reads.clear()   # building the implicit ones read with pydicom
    found = read_study_ref(path)   # warnings are errors here: the small reader makes none
    assert pydicom_reads == []
    assert found == reference(path)
    assert found.patient_id in ("PID-1", "BENCH-0001") and found.study_uid != UNKNOWN


#: crafted files the small reader answers itself
FAST = [f"{vr} {name}" for vr in ("explicit", "implicit")
        for name in ("with sequences", "without pixels", "padded", "odd lengths",
                     "trailing nulls", "long id", "no patient_id", "empty study_uid",
                     "blank accession", "charset b'ISO_IR 100'", "charset None",
                     "Patient ID twice", "last element longer than the file",
                     "7 bytes left over")] + ["JPEG 2000 syntax"]


@pytest.mark.parametrize("name", FAST)
def test_crafted_files_with_sequences_padding_and_gaps_are_read_without_pydicom(
        tmp_path: Path, name: str, pydicom_reads: list[str]) -> None:
    path = tmp_path / "1.dcm"
    path.write_bytes(VARIANTS[name])
    found = answer(path)
    assert pydicom_reads == []
    assert found == reference(path)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_crafted_file_gets_pydicoms_answer(tmp_path: Path, name: str) -> None:
    path = tmp_path / "1.dcm"
    path.write_bytes(VARIANTS[name])
    assert answer(path) == reference(path)


def test_unreadable_files_name_unknown(tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    (tmp_path / "empty.dcm").write_bytes(b"")
    for name in ("junk.dcm", "empty.dcm", "missing.dcm"):
        assert answer(tmp_path / name) == StudyRef(UNKNOWN, UNKNOWN)


def damaged_bases() -> dict[str, bytes]:
    return {"explicit crafted": crafted(True), "implicit crafted": crafted(False),
            "explicit crafted, no pixels": crafted(True, pixels=False),
            "scheduled dx": agent_objects()["scheduled dx"],
            "scheduled dx implicit": agent_objects()["scheduled dx implicit"]}


DAMAGED = ["explicit crafted", "implicit crafted", "explicit crafted, no pixels", "scheduled dx",
           "scheduled dx implicit"]


def header_length(data: bytes) -> int:
    """Up to and including Pixel Data's element header (or the whole file)."""
    at = data.rfind(b"\xe0\x7f\x10\x00")
    return len(data) if at < 0 else at + 12


@pytest.mark.parametrize("base", DAMAGED)
def test_a_file_cut_at_any_byte_of_its_header_gets_pydicoms_answer(tmp_path: Path,
                                                                   base: str) -> None:
    data = damaged_bases()[base]
    path = tmp_path / "1.dcm"
    for cut in range(header_length(data) + 1):
        path.write_bytes(data[:cut])
        assert answer(path) == reference(path), f"cut at {cut}"


@pytest.mark.parametrize("base", DAMAGED)
def test_a_byte_changed_anywhere_in_the_header_gets_pydicoms_answer(tmp_path: Path,
                                                                    base: str) -> None:
    data = damaged_bases()[base]
    path = tmp_path / "1.dcm"
    rng = random.Random(base)
    for at in range(128, header_length(data)):
        for value in (rng.randrange(256), data[at] ^ (1 << rng.randrange(8))):
            damaged = bytearray(data)
            damaged[at] = value
            path.write_bytes(damaged)
            assert answer(path) == reference(path), f"byte {at} = {value:#x}"


@pytest.mark.parametrize("explicit", [True, False])
def test_a_header_longer_than_the_first_read_is_read_again_whole(
        tmp_path: Path, explicit: bool, pydicom_reads: list[str]) -> None:
    path = tmp_path / "1.dcm"
    icon = element(0x00091010, "OB", b"\1" * 20_000, explicit=explicit)
    later = element(0x00091011, "OB", b"\0" * 50_000, explicit=explicit)
    path.write_bytes(crafted(explicit, early=icon, extra=later))
    assert answer(path) == StudyRef("PID-7", "1.2.3.4", "ACC-7")
    assert pydicom_reads == []
    assert answer(path) == reference(path)


def test_a_file_the_size_of_the_first_read_is_read_whole(tmp_path: Path,
                                                         pydicom_reads: list[str]) -> None:
    data = crafted(True, pixels=False)
    filler = 4096 - len(data) - 8
    path = tmp_path / "1.dcm"
    path.write_bytes(crafted(True, pixels=False,
                             extra=element(0x00091010, "SH", b"x" * filler, explicit=True)))
    assert path.stat().st_size == 4096
    assert answer(path) == StudyRef("PID-7", "1.2.3.4", "ACC-7")
    assert pydicom_reads == []


def test_a_header_past_the_largest_read_goes_to_pydicom(tmp_path: Path,
                                                        pydicom_reads: list[str]) -> None:
    path = tmp_path / "1.dcm"
    path.write_bytes(crafted(True, early=element(0x00091010, "OB", b"\1" * 300_000,
                                                 explicit=True)))
    assert answer(path) == StudyRef("PID-7", "1.2.3.4", "ACC-7") == reference(path)
    assert len(pydicom_reads) == 2   # the fallback, then the reference
