"""Worklist test data: entries as .wl files (written with pydicom or made by DCMTK dump2dcm),
C-FIND responses as pynetdicom hands them over (raw elements), and DCMTK wlmscpfs as a peer.

DCMTK tools are called by full path: pynetdicom's console scripts shadow them in the venv.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.dsutils import decode

from support.peers import free_port, nodelay_env, process_listens_on, stop_process, wait_until

WLMSCPFS = Path("/usr/bin/wlmscpfs")
DUMP2DCM = Path("/usr/bin/dump2dcm")

STATION = "MODALITY1"
MODALITY = "OT"
#: DCMTK's private "worklist file" storage class, as its own sample .wl files carry
WORKLIST_FILE_SOP_CLASS = "1.2.276.0.7230010.3.1.0.1"
#: Study Root Query/Retrieve - FIND: a valid SOP class for Referenced Study Sequence tests
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.2"

#: the patient-data canary: must never reach a log record at INFO or above (STYLE.md)
PHI_NAME = "PHI^SENTINEL"
PHI_ID = "PHI-CANARY-7"

_uid_counter = itertools.count(1)


def new_uid() -> str:
    return f"1.2.826.0.1.3680043.10.1234.{next(_uid_counter)}"


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Entry:
    """One worklist entry (one Scheduled Procedure Step).

    `charset` is the (0008,0005) written (None: left out). Text is encoded by pydicom with
    that set (Latin-1 when None). `raw` replaces values by exact bytes (keyword, or
    ``SPS.keyword`` inside the step); `omit` leaves keywords out (``SPS.keyword`` likewise).
    """

    patient_name: str = "Doe^John"
    patient_id: str = "P-0001"
    issuer_of_patient_id: str = "HOSP"
    birth_date: str = "19700101"
    sex: str = "M"
    other_patient_ids: tuple[tuple[str, str], ...] = (("OLD-1", "OLDHOSP"),)
    admission_id: str = "ADM-1"
    accession_number: str = "ACC-0001"
    referring_physician: str = "House^Gregory"
    requested_procedure_id: str = "RP-0001"
    requested_procedure_description: str = "Chest PA"
    requested_procedure_code: Code | None = Code("RPID-17", "99LOCAL", "Chest radiograph")
    study_instance_uid: str = field(default_factory=new_uid)
    referenced_study_uid: str | None = None
    modality: str = MODALITY
    station_ae_title: str = STATION
    start_date: str = "20240501"
    start_time: str = "093000"
    sps_id: str = "SPS-0001"
    sps_description: str = "Chest PA standing"
    protocol_code: Code | None = Code("PROT-1", "99LOCAL", "Chest PA protocol")
    performing_physician: str = "Quinn^Michaela"
    sps_status: str = "SCHEDULED"
    charset: str | None = "ISO_IR 192"
    raw: Mapping[str, bytes] = field(default_factory=dict)
    omit: tuple[str, ...] = ()

    def replace(self, **changes: object) -> Entry:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def numbered(index: int, **changes: object) -> Entry:
    """Entry number `index` with distinct IDs."""
    base = Entry(patient_id=f"P-{index:04d}", accession_number=f"ACC-{index:04d}",
                 requested_procedure_id=f"RP-{index:04d}", sps_id=f"SPS-{index:04d}")
    return base.replace(**changes)


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def raw_element(keyword: str, value: bytes) -> RawDataElement:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    if len(value) % 2:
        value += b"\x00" if dictionary_VR(tag) == "UI" else b" "
    return RawDataElement(Tag(tag), dictionary_VR(tag), len(value), value, 0, False, True)


def entry_dataset(entry: Entry) -> Dataset:
    """The entry as a Dataset (no file meta)."""
    ds = Dataset()
    if entry.charset is not None:
        ds.SpecificCharacterSet = entry.charset
    ds.PatientName = entry.patient_name
    ds.PatientID = entry.patient_id
    ds.IssuerOfPatientID = entry.issuer_of_patient_id
    ds.PatientBirthDate = entry.birth_date
    ds.PatientSex = entry.sex
    others = []
    for other_id, issuer in entry.other_patient_ids:
        item = Dataset()
        item.PatientID = other_id
        item.IssuerOfPatientID = issuer
        item.TypeOfPatientID = "TEXT"
        others.append(item)
    if others:
        ds.OtherPatientIDsSequence = others
    ds.AdmissionID = entry.admission_id
    ds.AccessionNumber = entry.accession_number
    ds.ReferringPhysicianName = entry.referring_physician
    ds.RequestedProcedureID = entry.requested_procedure_id
    ds.RequestedProcedureDescription = entry.requested_procedure_description
    if entry.requested_procedure_code is not None:
        ds.RequestedProcedureCodeSequence = [_code_item(entry.requested_procedure_code)]
    ds.StudyInstanceUID = entry.study_instance_uid
    if entry.referenced_study_uid is not None:
        reference = Dataset()
        reference.ReferencedSOPClassUID = STUDY_COMPONENT_CLASS
        reference.ReferencedSOPInstanceUID = entry.referenced_study_uid
        ds.ReferencedStudySequence = [reference]
    sps = Dataset()
    sps.Modality = entry.modality
    sps.ScheduledStationAETitle = entry.station_ae_title
    sps.ScheduledProcedureStepStartDate = entry.start_date
    sps.ScheduledProcedureStepStartTime = entry.start_time
    sps.ScheduledProcedureStepID = entry.sps_id
    sps.ScheduledProcedureStepDescription = entry.sps_description
    if entry.protocol_code is not None:
        sps.ScheduledProtocolCodeSequence = [_code_item(entry.protocol_code)]
    sps.ScheduledPerformingPhysicianName = entry.performing_physician
    sps.ScheduledProcedureStepStatus = entry.sps_status
    for inner in (True, False):          # inside the step first, then the step itself
        for key, value in entry.raw.items():
            if key.startswith("SPS.") is inner:
                target, keyword = (sps, key[4:]) if inner else (ds, key)
                target[Tag(keyword)] = raw_element(keyword, value)
        for key in entry.omit:
            if key.startswith("SPS.") is inner:
                target, keyword = (sps, key[4:]) if inner else (ds, key)
                if keyword in target:
                    del target[keyword]
        if inner and "ScheduledProcedureStepSequence" not in entry.omit \
                and "ScheduledProcedureStepSequence" not in entry.raw:
            ds.ScheduledProcedureStepSequence = [sps]
    return ds


def encode_dataset(ds: Dataset, *, implicit: bool = False) -> bytes:
    """`ds` as little-endian bytes, raw elements written verbatim (pydicom's writer would
    re-encode them, and warn about exactly the bad values these tests need)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = True
    _write(fp, ds, "", implicit)
    return fp.getvalue()


def _write(fp: DicomBytesIO, ds: Dataset, charset: str | list[str], implicit: bool) -> None:
    element = ds.get_item(0x00080005)
    if element is not None:
        value = element.value or b""
        charset = value.decode("ascii", "replace").strip().split("\\") \
            if isinstance(value, bytes) else value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # a deliberately unknown charset: encode ASCII
        encodings = convert_encodings(charset)
    for tag in sorted(ds.keys()):
        element = ds.get_item(tag)
        if element.is_raw or element.VR != "SQ":
            write_data_element(fp, element, encodings)
            continue
        items = b""
        for item in element.value:
            item_fp = DicomBytesIO()
            item_fp.is_implicit_VR = implicit
            item_fp.is_little_endian = True
            _write(item_fp, item, charset, implicit)
            body = item_fp.getvalue()
            items += struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
        undefined = element.is_undefined_length
        if undefined:
            items += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        fp.write_tag(tag)
        if not implicit:
            fp.write(b"SQ\x00\x00")
        fp.write_UL(0xFFFFFFFF if undefined else len(items))
        fp.write(items)


def as_received(ds: Dataset, *, implicit: bool = False) -> Dataset:
    """`ds` as a C-FIND SCU receives it: encoded, then decoded by pynetdicom (raw elements)."""
    return decode(BytesIO(encode_dataset(ds, implicit=implicit)), implicit, True)


def write_wl(folder: Path, entry: Entry | Dataset, name: str) -> Path:
    """Write `entry` as a Part 10 worklist file ``name.wl`` (pydicom encodes the values)."""
    ds = entry if isinstance(entry, Dataset) else entry_dataset(entry)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(WORKLIST_FILE_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(new_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_file_meta_info(fp, meta)
    path = folder / f"{name}.wl"
    path.write_bytes(b"\x00" * 128 + b"DICM" + fp.getvalue() + encode_dataset(ds))
    return path


def dump_text(entry: Entry) -> bytes:
    """`entry` as a DCMTK dump (the input of dump2dcm). Values are written as their bytes in
    the entry's character set (only for sets whose bytes cannot contain ``]``)."""
    codec = {"ISO_IR 192": "utf-8", "ISO_IR 100": "latin-1", None: "ascii",
             "ISO_IR 126": "iso8859_7"}[entry.charset]

    def line(tag: str, vr: str, value: str) -> bytes:
        return f"({tag}) {vr} [".encode() + value.encode(codec) + b"]\n"

    def sequence_start(tag: str) -> bytes:
        return f"({tag}) SQ (Sequence with undefined length #=1)\n" \
               "(fffe,e000) na (Item with undefined length #=1)\n".encode()

    end = b"(fffe,e00d) na (ItemDelimitationItem)\n(fffe,e0dd) na (SequenceDelimitationItem)\n"
    out = b""
    if entry.charset:
        out += line("0008,0005", "CS", entry.charset)
    out += line("0008,0050", "SH", entry.accession_number)
    out += line("0008,0090", "PN", entry.referring_physician)
    out += line("0010,0010", "PN", entry.patient_name)
    out += line("0010,0020", "LO", entry.patient_id)
    out += line("0010,0021", "LO", entry.issuer_of_patient_id)
    out += line("0010,0030", "DA", entry.birth_date)
    out += line("0010,0040", "CS", entry.sex)
    out += line("0020,000d", "UI", entry.study_instance_uid)
    out += line("0032,1060", "LO", entry.requested_procedure_description)
    out += line("0038,0010", "LO", entry.admission_id)
    out += sequence_start("0040,0100")
    out += line("0008,0060", "CS", entry.modality)
    out += line("0040,0001", "AE", entry.station_ae_title)
    out += line("0040,0002", "DA", entry.start_date)
    out += line("0040,0003", "TM", entry.start_time)
    out += line("0040,0006", "PN", entry.performing_physician)
    out += line("0040,0007", "LO", entry.sps_description)
    out += line("0040,0009", "SH", entry.sps_id)
    out += line("0040,0020", "CS", entry.sps_status)
    out += end
    out += line("0040,1001", "SH", entry.requested_procedure_id)
    return out


def write_wl_with_dump2dcm(folder: Path, entry: Entry, name: str) -> Path:
    """Make ``name.wl`` from a text dump with DCMTK's dump2dcm (the usual way sites do)."""
    dump = folder / f"{name}.dump"
    dump.write_bytes(dump_text(entry))
    path = folder / f"{name}.wl"
    subprocess.run([str(DUMP2DCM), "--quiet", str(dump), str(path)], check=True, timeout=30,
                   capture_output=True)
    dump.unlink()
    return path


# --- DCMTK wlmscpfs ---------------------------------------------------------------------------

@dataclass
class Wlmscpfs:
    """A running wlmscpfs. Its data folder holds one subfolder per called AE title."""

    root: Path
    port: int
    pid: int
    process: subprocess.Popen[bytes] = field(repr=False)
    _stations: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def new_called_ae(self, prefix: str = "RIS") -> tuple[str, Path]:
        """A fresh called AE title and its (empty) worklist folder: one per test."""
        ae_title = f"{prefix}{next(self._stations)}"
        folder = self.root / ae_title
        folder.mkdir()
        (folder / "lockfile").touch()     # wlmscpfs refuses a folder without it
        return ae_title, folder


@contextmanager
def running_wlmscpfs(root: Path, *options: str, port: int | None = None,
                     timeout_s: float = 10) -> Iterator[Wlmscpfs]:
    """Start ``/usr/bin/wlmscpfs [options] -dfp root port``; stop it (by PID) afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = root.parent / f"wlmscpfs-{port}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [str(WLMSCPFS), *options, "-dfp", str(root), str(port)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=nodelay_env(),
        )
    try:
        wait_until(lambda: process.poll() is not None or process_listens_on(process.pid, port),
                   timeout_s, f"wlmscpfs pid {process.pid} to listen on port {port}")
        if process.poll() is not None:
            raise AssertionError(f"wlmscpfs exited with {process.returncode}: "
                                 f"{log_path.read_text(errors='replace')[-2000:]}")
        yield Wlmscpfs(root, port, process.pid, process)
    finally:
        stop_process(process)

