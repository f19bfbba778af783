"""A Modality Worklist C-FIND response identifier to `WorklistItem`s, strictly.

The response is attacker-controlled input (RELIABILITY.md §2.2): wrong VRs, missing keys,
over-long values, undecodable bytes, huge or malformed sequences. pynetdicom hands us a
Dataset whose elements are still raw bytes (pydicom decodes lazily); this module reads those
bytes itself, decodes them with `agent.worklist.charset` and checks each value against its
VR, so that pydicom never decodes a value with replacement characters or warns with a
patient's name in the message.

Rules:

- An attribute that goes into the images (patient, study, request, SPS ID/description) and is
  invalid makes the whole response unusable: `WorklistItemError` names response and attribute.
  Required: Patient ID, Study Instance UID, Requested Procedure ID, a Scheduled Procedure Step
  with its SPS ID (Type 1 return keys, PS3.4 K.6.1.2.2, that the images need).
- An attribute that is only shown (SPS start, station, modality, status, performing physician)
  or an entry of a Type 3 sequence (other patient IDs, codes, referenced studies) that is
  invalid is left out, and the item gets a note saying so.
- Absent and empty are the same (Orthanc omits keys, wlmscpfs returns them empty).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from datetime import datetime
from io import BytesIO
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_sequence
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from agent.records import Code, OtherPatientID, SOPReference
from agent.worklist.charset import DEFAULT_FALLBACK, CharsetError, TextDecoder, parse_character_set
from agent.worklist.errors import WorklistItemError
from agent.worklist.model import WorklistItem

SPS = "ScheduledProcedureStepSequence"

#: at most this many items in any sequence of a response (a worklist response has one SPS
#: item; a few codes or references are normal); more is treated as malformed input
MAX_SEQUENCE_ITEMS = 64

#: maximum characters per value (PS3.5 Table 6.2-1); PN is per component group
_MAX_CHARS = {"SH": 16, "LO": 64, "CS": 16, "AE": 16, "UI": 64, "ST": 1024, "LT": 10240}

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
_CS = re.compile(r"[A-Z0-9 _]*")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_TYPES_OF_PATIENT_ID = ("TEXT", "RFID", "BARCODE")

#: what pydicom's sequence reader raises on truncated or malformed bytes
_PARSE_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, OverflowError,
                 NotImplementedError, RecursionError, struct.error)


#: CS, DA, TM, UI and AE use the default repertoire whatever (0008,0005) says (PS3.5 6.1.2.3)
_ASCII_ONLY = TextDecoder((), ())


def parse_response(identifier: Dataset, *, response: int,
                   fallback: Sequence[str] = DEFAULT_FALLBACK) -> list[WorklistItem]:
    """Items (one per Scheduled Procedure Step) from one pending C-FIND response.

    Parameters
    ----------
    identifier
        The response identifier as pynetdicom decoded it (elements still raw), or a Dataset
        built in memory (values already text).
    response
        Its 1-based number, for messages.
    fallback
        Character sets tried when the response has no (0008,0005) and bytes above 0x7F.

    Returns
    -------
    list of WorklistItem
        Usually one; notes on each say what was left out or decoded by fallback.

    Raises
    ------
    WorklistItemError
        If the response cannot be used; the message names response and attribute, never a
        value.
    """
    reader = _Reader(response, fallback)
    reader.start(identifier)
    return reader.items(identifier)


class _Reader:
    def __init__(self, response: int, fallback: Sequence[str]) -> None:
        self.response = response
        self.fallback = tuple(fallback)
        self.identity = ""
        self.notes: list[str] = []
        self.decoder = TextDecoder((), self.fallback)

    # --- errors and notes ------------------------------------------------------------------

    def error(self, attribute: str, reason: str) -> WorklistItemError:
        return WorklistItemError(self.response, attribute, reason, identity=self.identity)

    def note(self, attribute: str, reason: str) -> None:
        self.notes.append(f"{attribute}: {reason}")

    # --- the response ---------------------------------------------------------------------

    def start(self, ds: Dataset) -> None:
        self.decoder = self._decoder_for(ds, "SpecificCharacterSet", TextDecoder((), self.fallback))
        self.identity = self._identity(ds)
        self.notes = []     # reading the identity may have noted things read again later

    def _decoder_for(self, ds: Dataset, path: str, inherited: TextDecoder) -> TextDecoder:
        """The decoder for `ds`: its own (0008,0005) if it has one (a sequence item may),
        else `inherited`."""
        element = ds.get_item(0x00080005)
        if element is None:
            return inherited
        try:
            raw = _as_bytes(element.value)
            declared = parse_character_set(raw)
            return TextDecoder(declared, self.fallback)
        except CharsetError as err:
            raise self.error(path, str(err)) from err

    def _identity(self, ds: Dataset) -> str:
        """"SPS 'x', study 1.2.3" for messages, read loosely; never patient data."""
        parts = []
        try:
            sps_items = self.sequence(ds, SPS, SPS)
            sps_id = self.text(sps_items[0], "ScheduledProcedureStepID", "") if sps_items else ""
            if sps_id:
                parts.append(f"SPS {sps_id!r}")
        except WorklistItemError:
            pass   # reported properly when the attribute is read for real
        try:
            study_uid = self.uid(ds, "StudyInstanceUID", "StudyInstanceUID")
            if study_uid:
                parts.append(f"study {study_uid}")
        except WorklistItemError:
            pass
        return ", ".join(parts)

    def items(self, ds: Dataset) -> list[WorklistItem]:
        name = self.person_name(ds, "PatientName", "PatientName")
        if not name:
            self.note("PatientName", "empty")
        patient_id = self.text(ds, "PatientID", "PatientID", required=True)
        common: dict[str, Any] = {
            "patient_name": name,
            "patient_id": patient_id,
            "issuer_of_patient_id": self.text(ds, "IssuerOfPatientID", "IssuerOfPatientID"),
            "patient_birth_date": self.date(ds, "PatientBirthDate", "PatientBirthDate"),
            "patient_sex": self.sex(ds),
            "other_patient_ids": self.other_patient_ids(ds),
            "admission_id": self.text(ds, "AdmissionID", "AdmissionID"),
            "accession_number": self.text(ds, "AccessionNumber", "AccessionNumber"),
            "referring_physician_name": self.person_name(ds, "ReferringPhysicianName",
                                                         "ReferringPhysicianName"),
            "requested_procedure_id": self.text(ds, "RequestedProcedureID",
                                                "RequestedProcedureID", required=True),
            "requested_procedure_description": self.text(ds, "RequestedProcedureDescription",
                                                         "RequestedProcedureDescription"),
            "requested_procedure_codes": self.codes(ds, "RequestedProcedureCodeSequence",
                                                    "RequestedProcedureCodeSequence"),
            "study_instance_uid": self.uid(ds, "StudyInstanceUID", "StudyInstanceUID",
                                           required=True),
            "referenced_studies": self.references(ds, "ReferencedStudySequence"),
            "character_set": "\\".join(self.decoder.declared),
        }
        sps_items = self.sequence(ds, SPS, SPS)
        if not sps_items:
            raise self.error(SPS, "missing or empty; each worklist response needs one "
                                  "Scheduled Procedure Step")
        top_notes = list(self.notes)
        result = []
        for index, sps in enumerate(sps_items):
            self.notes = list(top_notes)
            result.append(self.step(sps, f"{SPS}[{index}]", common))
        return result

    def step(self, sps: Dataset, path: str, common: dict[str, Any]) -> WorklistItem:
        outer = self.decoder
        self.decoder = self._decoder_for(sps, f"{path}.SpecificCharacterSet", outer)
        try:
            sps_id = self.text(sps, "ScheduledProcedureStepID", f"{path}.ScheduledProcedureStepID",
                               required=True)
            item = WorklistItem(
                **common,
                sps_id=sps_id,
                modality=self.shown(self.cs, sps, "Modality", path),
                station_ae_title=self.shown(self.text, sps, "ScheduledStationAETitle", path),
                sps_start_date=self.shown(self.date, sps, "ScheduledProcedureStepStartDate", path),
                sps_start_time=self.shown(self.time, sps, "ScheduledProcedureStepStartTime", path),
                sps_description=self.text(sps, "ScheduledProcedureStepDescription",
                                          f"{path}.ScheduledProcedureStepDescription"),
                scheduled_protocol_codes=self.codes(sps, "ScheduledProtocolCodeSequence",
                                                    f"{path}.ScheduledProtocolCodeSequence"),
                performing_physician_name=self.shown(self.person_name, sps,
                                                     "ScheduledPerformingPhysicianName", path),
                sps_status=self.shown(self.cs, sps, "ScheduledProcedureStepStatus", path),
                notes=tuple(self.notes),
            )
        finally:
            self.decoder = outer
        return item

    def shown(self, read: Any, ds: Dataset, keyword: str, path: str) -> str:
        """A value only shown to the operator: if invalid, left empty with a note."""
        attribute = f"{path}.{keyword}"
        try:
            value: str = read(ds, keyword, attribute)
        except WorklistItemError as err:
            self.note(attribute, f"{err.reason}; left empty")
            return ""
        return value

    # --- Type 3 sequences: invalid entries are left out with a note ------------------------

    def other_patient_ids(self, ds: Dataset) -> tuple[OtherPatientID, ...]:
        result = []
        for index, item in enumerate(self.sequence(ds, "OtherPatientIDsSequence",
                                                   "OtherPatientIDsSequence")):
            path = f"OtherPatientIDsSequence[{index}]"
            try:
                other_id = self.text(item, "PatientID", f"{path}.PatientID", required=True)
                issuer = self.text(item, "IssuerOfPatientID", f"{path}.IssuerOfPatientID")
                kind = self.cs(item, "TypeOfPatientID", f"{path}.TypeOfPatientID") or "TEXT"
                if kind not in _TYPES_OF_PATIENT_ID:
                    raise self.error(f"{path}.TypeOfPatientID",
                                     f"{kind!r} is not one of {', '.join(_TYPES_OF_PATIENT_ID)}")
            except WorklistItemError as err:
                self.note(err.attribute, f"{err.reason}; this other patient ID is left out")
                continue
            result.append(OtherPatientID(other_id, issuer, kind))
        return tuple(result)

    def codes(self, ds: Dataset, keyword: str, path: str) -> tuple[Code, ...]:
        result = []
        for index, item in enumerate(self.sequence(ds, keyword, path)):
            where = f"{path}[{index}]"
            try:
                code = Code(
                    value=self.text(item, "CodeValue", f"{where}.CodeValue", required=True),
                    scheme=self.text(item, "CodingSchemeDesignator",
                                     f"{where}.CodingSchemeDesignator", required=True),
                    meaning=self.text(item, "CodeMeaning", f"{where}.CodeMeaning",
                                      required=True),
                    scheme_version=self.text(item, "CodingSchemeVersion",
                                             f"{where}.CodingSchemeVersion"),
                )
            except WorklistItemError as err:
                self.note(err.attribute, f"{err.reason}; this code is left out")
                continue
            result.append(code)
        return tuple(result)

    def references(self, ds: Dataset, keyword: str) -> tuple[SOPReference, ...]:
        result = []
        for index, item in enumerate(self.sequence(ds, keyword, keyword)):
            where = f"{keyword}[{index}]"
            try:
                reference = SOPReference(
                    self.uid(item, "ReferencedSOPClassUID", f"{where}.ReferencedSOPClassUID",
                             required=True),
                    self.uid(item, "ReferencedSOPInstanceUID",
                             f"{where}.ReferencedSOPInstanceUID", required=True),
                )
            except WorklistItemError as err:
                self.note(err.attribute, f"{err.reason}; this reference is left out")
                continue
            result.append(reference)
        return tuple(result)

    # --- one element ----------------------------------------------------------------------

    def raw(self, ds: Dataset, keyword: str, attribute: str) -> bytes | str | None:
        """The value as bytes (received) or str (built in memory); None when absent."""
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        element = ds.get_item(tag)
        if element is None:
            return None
        expected = dictionary_VR(tag)
        if element.VR not in (None, expected, "UN"):
            raise self.error(attribute, f"has VR {element.VR!s:.4}; {expected} expected")
        if isinstance(element, RawDataElement):
            return element.value or b""
        value = element.value
        if value is None or isinstance(value, bytes):
            return value or b""
        if isinstance(value, MultiValue | list | tuple):   # several values where one belongs
            return "\\".join(str(v) for v in value)
        return str(value)

    def decoded(self, ds: Dataset, keyword: str, attribute: str, *, person_name: bool = False,
                multiline: bool = False, charset: bool = True) -> str:
        value = self.raw(ds, keyword, attribute)
        if value is None:
            return ""
        try:
            if isinstance(value, str):
                # built in memory: already text, check it as if it had been decoded
                text = TextDecoder(("ISO_IR 192",)).decode(value.encode("utf-8", "surrogatepass"),
                                                           person_name=person_name,
                                                           multiline=multiline).text
            elif charset:
                decoded = self.decoder.decode(value, person_name=person_name, multiline=multiline)
                if decoded.fallback and not value.isascii():
                    self.note(attribute, f"decoded as {decoded.charset}: the response has no "
                                         "Specific Character Set (0008,0005)")
                text = decoded.text
            else:
                # CS, DA, TM, UI, AE: the default repertoire whatever (0008,0005) says
                text = _ASCII_ONLY.decode(value.rstrip(b"\x00")).text
        except (CharsetError, UnicodeError) as err:
            raise self.error(attribute, str(err) if isinstance(err, CharsetError) else
                             "not valid text") from err
        return text.strip(" ") if not multiline else text.rstrip(" ")

    def text(self, ds: Dataset, keyword: str, attribute: str, *, required: bool = False) -> str:
        """SH, LO, AE: one value, at most the VR's length."""
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        vr = dictionary_VR(tag)
        text = self.decoded(ds, keyword, attribute, charset=vr != "AE")
        self._check_single(text, attribute)
        limit = _MAX_CHARS[vr]
        if len(text) > limit:
            raise self.error(attribute, f"has {len(text)} characters; {vr} allows {limit}")
        if required and not text:
            raise self.error(attribute, "missing or empty (a required key)")
        return text

    def person_name(self, ds: Dataset, keyword: str, attribute: str) -> str:
        """PN: up to three component groups of up to five components and 64 characters each
        (PS3.5 6.2.1); trailing empty components and groups are dropped."""
        text = self.decoded(ds, keyword, attribute, person_name=True)
        self._check_single(text, attribute)
        groups = text.split("=")
        if len(groups) > 3:
            raise self.error(attribute, f"has {len(groups)} component groups; PN allows 3")
        for group in groups:
            if len(group) > 64:
                raise self.error(attribute, f"has a component group of {len(group)} "
                                            "characters; PN allows 64")
            if group.count("^") > 4:
                raise self.error(attribute, f"has {group.count('^') + 1} components; PN "
                                            "allows 5")
        groups = [group.rstrip("^") for group in groups]
        while groups and not groups[-1]:
            groups.pop()
        return "=".join(groups)

    def cs(self, ds: Dataset, keyword: str, attribute: str) -> str:
        text = self.decoded(ds, keyword, attribute, charset=False)
        self._check_single(text, attribute)
        if len(text) > 16 or not _CS.fullmatch(text):
            raise self.error(attribute, "is not a code string (at most 16 of A-Z, 0-9, space, "
                                        "underscore)")
        return text

    def sex(self, ds: Dataset) -> str:
        sex = self.cs(ds, "PatientSex", "PatientSex")
        if sex not in ("", "M", "F", "O"):
            raise self.error("PatientSex", f"{sex!r} is not M, F, O or empty (PS3.3 C.7.1.1)")
        return sex

    def uid(self, ds: Dataset, keyword: str, attribute: str, *, required: bool = False) -> str:
        text = self.decoded(ds, keyword, attribute, charset=False)
        if not text:
            if required:
                raise self.error(attribute, "missing or empty (a required key)")
            return ""
        if len(text) > 64 or not _UID.fullmatch(text):
            raise self.error(attribute, "is not a valid UID (digits and dots, no leading zeros "
                                        "in a component, at most 64 characters)")
        return text

    def date(self, ds: Dataset, keyword: str, attribute: str) -> str:
        text = self.decoded(ds, keyword, attribute, charset=False)
        if not text:
            return ""
        try:
            valid = len(text) == 8 and text.isdigit() and bool(datetime.strptime(text, "%Y%m%d"))
        except ValueError:
            valid = False
        if not valid:
            raise self.error(attribute, "is not a date YYYYMMDD")
        return text

    def time(self, ds: Dataset, keyword: str, attribute: str) -> str:
        text = self.decoded(ds, keyword, attribute, charset=False)
        if text and (not _TM.fullmatch(text) or int(text[:2]) > 23
                     or (len(text) >= 4 and int(text[2:4]) > 59)
                     or (len(text) >= 6 and int(text[4:6]) > 60)):
            raise self.error(attribute, "is not a time HH[MM[SS[.FFFFFF]]]")
        return text

    def sequence(self, ds: Dataset, keyword: str, attribute: str) -> list[Dataset]:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        element = ds.get_item(tag)
        if element is None:
            return []
        if isinstance(element, RawDataElement):
            if element.VR not in (None, "SQ", "UN"):
                raise self.error(attribute, f"has VR {element.VR}; SQ expected")
            data = element.value or b""
            if not data:
                return []
            # a sequence sent as UN is always Implicit VR Little Endian (PS3.5 6.2.2)
            implicit = element.is_implicit_VR or element.VR == "UN"
            little = element.is_little_endian or element.VR == "UN"
            try:
                items = list(read_sequence(BytesIO(data), implicit, little, len(data),
                                           encoding="iso8859"))
            except _PARSE_ERRORS as err:
                raise self.error(attribute, "its bytes are not a valid sequence") from err
        else:
            if not isinstance(element.value, DicomSequence | list):
                raise self.error(attribute, "is not a sequence")
            items = list(element.value)
        if len(items) > MAX_SEQUENCE_ITEMS:
            raise self.error(attribute, f"has {len(items)} items; at most "
                                        f"{MAX_SEQUENCE_ITEMS} are accepted")
        if not all(isinstance(item, Dataset) for item in items):
            raise self.error(attribute, "holds something that is not an item")
        return items

    def _check_single(self, text: str, attribute: str) -> None:
        if "\\" in text:
            raise self.error(attribute, f"holds {text.count(chr(92)) + 1} values; one expected")


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).encode("ascii", "replace")
    return str(value).encode("ascii", "replace")
