"""One worklist item (one Scheduled Procedure Step), its JSON form, and the Order it becomes.

`WorklistItem` holds decoded text only; `agent.worklist.parse` makes it from a C-FIND response.
`to_order()` is the mapping into images (RAD TF-2x Appendix A, PS3.17 Annex J), done once and
unit-tested with round trips; `as_json()` is the shape of ARCHITECTURE.md (`worklist --json`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from agent.records import Code, Order, OtherPatientID, SOPReference
from agent.worklist.errors import WorklistCacheError

#: SPS Status values (0040,0020) that mean the step has begun or ended elsewhere: acquiring it
#: again would duplicate the procedure (PS3.3 C.4.10; the duplicate guard of issue #4)
DUPLICATE_SPS_STATUSES = frozenset({"STARTED", "COMPLETED"})

#: what `as_json()["status"]` says for a procedure this agent already acquired
ACQUIRED_HERE = "ACQUIRED"

#: the keys of one item in `worklist --json`, in order (ARCHITECTURE.md)
JSON_KEYS = (
    "accession_number", "patient_name", "patient_id", "patient_birth_date", "patient_sex",
    "study_instance_uid", "requested_procedure_id", "requested_procedure_description",
    "sps_id", "sps_description", "sps_start", "modality", "station_ae_title", "status",
)


@dataclass(frozen=True)
class WorklistItem:
    """A Scheduled Procedure Step from the RIS, with what it tells about patient and request.

    Text is decoded (str); names are in DICOM PN form (``Family^Given``, and
    ``alphabetic=ideographic=phonetic`` groups for e.g. Japanese). Absent and empty return
    keys are both "" (Orthanc leaves out keys the file lacks; wlmscpfs returns them empty).
    Dates are DICOM DA (YYYYMMDD), times TM (HHMM[SS[.F]]).
    """

    # Patient
    patient_name: str
    patient_id: str
    study_instance_uid: str
    requested_procedure_id: str
    sps_id: str
    issuer_of_patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    other_patient_ids: tuple[OtherPatientID, ...] = ()
    admission_id: str = ""
    # Imaging Service Request / Requested Procedure
    accession_number: str = ""
    referring_physician_name: str = ""
    requested_procedure_description: str = ""
    requested_procedure_codes: tuple[Code, ...] = ()
    referenced_studies: tuple[SOPReference, ...] = ()
    # Scheduled Procedure Step
    modality: str = ""
    station_ae_title: str = ""
    sps_start_date: str = ""
    sps_start_time: str = ""
    sps_description: str = ""
    scheduled_protocol_codes: tuple[Code, ...] = ()
    performing_physician_name: str = ""
    sps_status: str = ""
    # how it was read, and what the agent knows about it
    character_set: str = ""                 # (0008,0005) of the response, "" when absent
    notes: tuple[str, ...] = ()             # e.g. "PatientName decoded with fallback ..."
    acquired_here: bool = False             # set by the service from its acquired-set

    @property
    def key(self) -> tuple[str, str]:
        """(Study Instance UID, SPS ID): what identifies a step across queries."""
        return (self.study_instance_uid, self.sps_id)

    @property
    def sps_start(self) -> str:
        """SPS start as ISO 8601 local time: ``2024-05-01T09:30[:00]``, ``2024-05-01`` with no
        time, "" with no date."""
        date = self.sps_start_date
        if len(date) != 8:
            return ""
        text = f"{date[:4]}-{date[4:6]}-{date[6:8]}"
        time = self.sps_start_time.split(".")[0]
        if len(time) >= 4:
            text += f"T{time[:2]}:{time[2:4]}" + (f":{time[4:6]}" if len(time) >= 6 else "")
        elif len(time) == 2:
            text += f"T{time}:00"
        return text

    @property
    def status(self) -> str:
        """The SPS Status from the RIS, or ACQUIRED when this agent already acquired it."""
        return ACQUIRED_HERE if self.acquired_here else self.sps_status

    @property
    def duplicate_reason(self) -> str:
        """Why acquiring this item again would duplicate a procedure; "" when it would not."""
        if self.acquired_here:
            return "already acquired on this device"
        if self.sps_status in DUPLICATE_SPS_STATUSES:
            return f"the RIS reports the step as {self.sps_status}"
        return ""

    @property
    def is_duplicate(self) -> bool:
        return bool(self.duplicate_reason)

    def describe(self) -> str:
        """How messages and logs name the item: IDs and UIDs, never patient data."""
        return (f"SPS {self.sps_id!r} of requested procedure {self.requested_procedure_id!r}, "
                f"study {self.study_instance_uid}")

    def as_json(self) -> dict[str, str]:
        """The item of ``worklist --json`` (ARCHITECTURE.md), exactly those keys."""
        return {
            "accession_number": self.accession_number,
            "patient_name": self.patient_name,
            "patient_id": self.patient_id,
            "patient_birth_date": self.patient_birth_date,
            "patient_sex": self.patient_sex,
            "study_instance_uid": self.study_instance_uid,
            "requested_procedure_id": self.requested_procedure_id,
            "requested_procedure_description": self.requested_procedure_description,
            "sps_id": self.sps_id,
            "sps_description": self.sps_description,
            "sps_start": self.sps_start,
            "modality": self.modality,
            "station_ae_title": self.station_ae_title,
            "status": self.status,
        }

    def to_order(self) -> Order:
        """The Order every image of this step carries (RAD TF-2x Appendix A; PS3.17 Annex J):
        patient from the item, the RIS's Study Instance UID (never a new one), accession
        number, referenced studies and referring physician copied, and the Request
        Attributes (requested procedure ID, SPS ID, description and protocol codes)."""
        return Order(
            patient_name=self.patient_name,
            patient_id=self.patient_id,
            patient_birth_date=self.patient_birth_date,
            patient_sex=self.patient_sex,
            issuer_of_patient_id=self.issuer_of_patient_id,
            study_instance_uid=self.study_instance_uid,
            accession_number=self.accession_number,
            requested_procedure_id=self.requested_procedure_id,
            requested_procedure_description=self.requested_procedure_description,
            referring_physician_name=self.referring_physician_name,
            sps_id=self.sps_id,
            sps_description=self.sps_description,
            scheduled=True,
            other_patient_ids=self.other_patient_ids,
            referenced_studies=self.referenced_studies,
            requested_procedure_codes=self.requested_procedure_codes,
            scheduled_protocol_codes=self.scheduled_protocol_codes,
            admission_id=self.admission_id,
        )

    # --- the offline cache's form -------------------------------------------------------

    def to_cache(self) -> dict[str, Any]:
        """Every field, JSON-safe; `from_cache` reads it back equal."""
        data = dataclasses.asdict(self)
        data.pop("acquired_here")        # the service's knowledge, not the RIS's
        return data

    @classmethod
    def from_cache(cls, data: object) -> WorklistItem:
        """Rebuild an item from `to_cache()` output.

        Raises
        ------
        WorklistCacheError
            If a field is missing or has the wrong type (a damaged cache file).
        """
        if not isinstance(data, dict):
            raise WorklistCacheError(f"cache item is a {type(data).__name__}, not an object")
        values: dict[str, Any] = {}
        for item_field in dataclasses.fields(cls):
            name = item_field.name
            if name == "acquired_here":
                continue
            if name not in data:
                if item_field.default is dataclasses.MISSING:
                    raise WorklistCacheError(f"cache item has no {name!r}")
                continue
            values[name] = _from_json(name, data[name])
        return cls(**values)


#: record types of the tuple fields, for `from_cache`
_RECORDS: dict[str, type] = {
    "other_patient_ids": OtherPatientID,
    "requested_procedure_codes": Code,
    "scheduled_protocol_codes": Code,
    "referenced_studies": SOPReference,
}


def _from_json(name: str, value: object) -> Any:
    if name == "notes":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise WorklistCacheError(f"cache item {name!r} is not a list of text")
        return tuple(value)
    record = _RECORDS.get(name)
    if record is None:
        if not isinstance(value, str):
            raise WorklistCacheError(f"cache item {name!r} is not text")
        return value
    if not isinstance(value, list):
        raise WorklistCacheError(f"cache item {name!r} is not a list")
    records = []
    for entry in value:
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise WorklistCacheError(f"cache item {name!r} holds a malformed entry")
        try:
            records.append(record(**entry))
        except TypeError as err:
            raise WorklistCacheError(f"cache item {name!r} holds a malformed entry") from err
    return tuple(records)


@dataclass(frozen=True)
class WorklistSnapshot:
    """What the worklist shows now.

    `source` is "ris" (the last query succeeded) or "cache" (the RIS is unreachable, or has not
    been asked yet, and the items come from the offline cache). `age_s` is how old the items
    are (None: there are none, ever). `truncated`: the RIS had more than `limit` matches, only
    the first `limit` are here ("more than N"). `error` says why the RIS was not used (None
    when it was); `problems` lists responses left out, each naming the response and the
    attribute.
    """

    source: str
    age_s: float | None
    items: tuple[WorklistItem, ...]
    truncated: bool = False
    limit: int = 0
    error: str | None = None
    problems: tuple[str, ...] = ()
    fetched_at: float | None = None           # wall-clock time of the query that got the items
    #: what the broad query asked, e.g. "station S and modality DX today (filters [worklist]
    #: filter_station_ae, filter_modality)"; said by `summary` when the RIS returned nothing
    asked: str = ""

    def as_json(self) -> dict[str, Any]:
        """``worklist --json``: ``{"source", "age_s", "items": [...]}`` (ARCHITECTURE.md),
        plus ``truncated``, ``limit``, ``error`` and ``problems``."""
        return {
            "source": self.source,
            "age_s": None if self.age_s is None else round(self.age_s, 1),
            "items": [item.as_json() for item in self.items],
            "truncated": self.truncated,
            "limit": self.limit,
            "error": self.error,
            "problems": list(self.problems),
        }

    @property
    def summary(self) -> str:
        """One line for the console or a log: counts, source and age, no patient data.

        An empty answer from the RIS names the filters applied: a RIS that schedules by
        modality only answers nothing to a station filter, and must not look like a quiet day.
        """
        if self.source == "ris" and not self.items and not self.truncated and self.asked:
            return f"no worklist items for {self.asked}"
        count = f"more than {self.limit}" if self.truncated else str(len(self.items))
        age = "" if self.age_s is None else f", {self.age_s:.0f} s old"
        text = f"{count} worklist item(s) from the {'RIS' if self.source == 'ris' else 'cache'}"
        text += age
        if self.error:
            text += f" ({self.error})"
        return text

