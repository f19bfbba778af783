"""Plain records passed between modules. Frozen dataclasses; no I/O, no pydicom."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Code:
    """One item of a Code Sequence (PS3.3 Table 8.8-1, Basic Code Sequence Macro)."""

    value: str                      # Code Value (0008,0100), SH
    scheme: str                     # Coding Scheme Designator (0008,0102), SH
    meaning: str                    # Code Meaning (0008,0104), LO
    scheme_version: str = ""        # Coding Scheme Version (0008,0103), SH; "" = none


@dataclass(frozen=True)
class OtherPatientID:
    """One item of Other Patient IDs Sequence (0010,1002), PS3.3 C.7.1.1."""

    patient_id: str                 # Patient ID (0010,0020), LO
    issuer_of_patient_id: str = ""  # Issuer of Patient ID (0010,0021), LO
    type_of_patient_id: str = "TEXT"  # Type of Patient ID (0010,0022): TEXT, RFID, BARCODE


@dataclass(frozen=True)
class SOPReference:
    """A referenced SOP instance, e.g. one item of Referenced Study Sequence (0008,1110)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class MppsImageRefs:
    """What every image of the step carries (RAD TF-2x Appendix A; PS3.3 C.7.3.1 General
    Series, C.4.13 Performed Procedure Step Summary). The IOD builder puts them in."""

    #: Referenced Performed Procedure Step Sequence (0008,1111) > Referenced SOP Class UID
    referenced_sop_class_uid: str
    #: ... > Referenced SOP Instance UID: the MPPS instance
    referenced_sop_instance_uid: str
    pps_id: str                      # Performed Procedure Step ID (0040,0253), SH
    pps_start_date: str              # (0040,0244) DA, YYYYMMDD
    pps_start_time: str              # (0040,0245) TM, HHMMSS.FFFFFF
    pps_description: str             # (0040,0254) LO, may be ""


@dataclass(frozen=True)
class Order:
    """Who and what the images are for: a worklist item, or the unscheduled case.

    Names are in DICOM PN form (`Family^Given`). In the unscheduled case
    `study_instance_uid` is None (the agent generates one) and accession number and
    requested procedure ID stay empty: no dummy values (IHE SWF).
    """

    patient_name: str
    patient_id: str
    patient_birth_date: str = ""          # YYYYMMDD or ""
    patient_sex: str = ""                  # "M", "F", "O" or ""
    issuer_of_patient_id: str = ""
    study_instance_uid: str | None = None
    accession_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    referring_physician_name: str = ""
    sps_id: str = ""
    sps_description: str = ""
    scheduled: bool = False
    # from the worklist item too (RAD TF-2x Appendix A; PS3.17 Annex J); empty when unscheduled
    other_patient_ids: tuple[OtherPatientID, ...] = ()
    referenced_studies: tuple[SOPReference, ...] = ()    # Referenced Study Sequence
    requested_procedure_codes: tuple[Code, ...] = ()     # -> Procedure Code Sequence too
    scheduled_protocol_codes: tuple[Code, ...] = ()
    admission_id: str = ""
    # the MPPS the images belong to (Referenced Performed Procedure Step Sequence, PPS ID...)
    performed_procedure_step: MppsImageRefs | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """The device's identity, from `[modality]` of the config."""

    modality: str
    manufacturer: str
    model_name: str
    device_serial_number: str
    station_name: str
    institution_name: str
    software_versions: str


@dataclass(frozen=True)
class SeriesContext:
    """Everything shared by the instances of one series. UIDs are fixed when this is made."""

    study_instance_uid: str
    series_instance_uid: str
    study_id: str
    series_number: int
    study_datetime: str      # DICOM DT without offset, YYYYMMDDHHMMSS[.FFFFFF], local time
    series_datetime: str


class DeliveryState(StrEnum):
    """States of one object x destination row (ARCHITECTURE.md, the queue)."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    COMMIT_REQUESTED = "commit_requested"
    COMMITTED = "committed"
    FAILED = "failed"


#: states after which the archive holds the object (for a destination without commitment,
#: `sent` is final)
DELIVERED_STATES = frozenset({DeliveryState.SENT, DeliveryState.COMMIT_REQUESTED,
                              DeliveryState.COMMITTED})


@dataclass(frozen=True)
class QueuedObject:
    """One spooled Part 10 object. `queue_id` names its file; the bytes are opaque here."""

    queue_id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    sha256: str
    created_at: float


@dataclass(frozen=True)
class Delivery:
    """One object x destination row."""

    delivery_id: int
    queue_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str
    transaction_uid: str | None
    updated_at: float
    sop_instance_uid: str
    sop_class_uid: str
    created_at: float = 0.0          # when the object was captured (queued)
    transfer_syntax_uid: str = "1.2.840.10008.1.2.1"   # of the spooled file


@dataclass(frozen=True)
class CommitmentResult:
    """A parsed Storage Commitment report (N-EVENT-REPORT), validated, not yet applied."""

    transaction_uid: str
    committed: tuple[tuple[str, str], ...]            # (sop_class_uid, sop_instance_uid)
    failed: tuple[tuple[str, str, int], ...]          # (class, instance, failure reason)
