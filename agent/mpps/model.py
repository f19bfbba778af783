"""The MPPS client's records: what the caller gets back, and the journal's one record per
Modality Performed Procedure Step. No I/O, no pydicom."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from agent.records import (
    Code,
    MppsImageRefs,  # the images carry it; records is below iod and mpps
    Order,
    SOPReference,
)

#: Modality Performed Procedure Step SOP Class (PS3.4 F.7.3); also the Referenced SOP Class
#: UID of Referenced Performed Procedure Step Sequence (0008,1111) in the images
MPPS_SOP_CLASS_UID = "1.2.840.10008.3.1.2.3.3"


class PPSStatus(StrEnum):
    """Performed Procedure Step Status (0040,0252), PS3.4 Table F.1-3."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class Pending(StrEnum):
    """What the sender still has to get acknowledged for one step."""

    NOTHING = ""
    N_CREATE = "N-CREATE"
    N_SET = "N-SET"


@dataclass(frozen=True)
class ProcedureStep:
    """A handle on one MPPS, as `MppsClient.begin` made it. Frozen: the series and the final
    state live in the client, which is asked by `sop_instance_uid`.

    `order` is the order the step was begun for, with `study_instance_uid` filled in (the
    worklist's, or the one minted for an unscheduled order): build the step's images from
    it, and pass it to `begin` again for the append case (a new MPPS in the same study).
    """

    sop_instance_uid: str
    pps_id: str
    order: Order
    modality: str
    start_date: str                  # DA
    start_time: str                  # TM
    description: str
    protocol_name: str

    @property
    def study_instance_uid(self) -> str:
        return self.order.study_instance_uid or ""

    def image_references(self) -> MppsImageRefs:
        """The attributes each image of this step must carry to point back at it."""
        return MppsImageRefs(
            referenced_sop_class_uid=MPPS_SOP_CLASS_UID,
            referenced_sop_instance_uid=self.sop_instance_uid,
            pps_id=self.pps_id,
            pps_start_date=self.start_date,
            pps_start_time=self.start_time,
            pps_description=self.description,
        )


@dataclass(frozen=True)
class PerformedSeries:
    """One item of Performed Series Sequence (0040,0340), PS3.4 Table F.7.2-1."""

    series_instance_uid: str
    protocol_name: str               # (0018,1030), Type 1
    series_description: str = ""    # Type 2 from here on
    performing_physician_name: str = ""
    operator_name: str = ""
    retrieve_ae_title: str = ""
    images: tuple[SOPReference, ...] = ()


@dataclass
class MppsRecord:
    """Everything known about one MPPS: what the journal holds, and what the datasets are
    built from. Mutable; the client changes it under its lock and writes it durably.

    The `*_sent` flags are set durably *before* the message goes out: after a crash they tell
    an unanswered message that may have reached the RIS from one that never left, which is
    how 0x0111 (duplicate, at N-CREATE) and 0x0110/A710 (no longer updatable, at N-SET) are
    read on a resend.
    """

    step: ProcedureStep
    station_ae_title: str
    station_name: str
    location: str
    study_id: str
    procedure_codes: tuple[Code, ...]
    performed_protocol_codes: tuple[Code, ...]
    series: list[PerformedSeries] = field(default_factory=list)
    final_status: PPSStatus | None = None       # None while IN PROGRESS
    end_date: str = ""
    end_time: str = ""
    discontinuation_reason: Code | None = None
    create_sent: bool = False
    create_acked: bool = False
    final_sent: bool = False
    final_acked: bool = False
    failed: str = ""                              # permanent refusal; no automatic resend

    @property
    def state(self) -> PPSStatus:
        return self.final_status or PPSStatus.IN_PROGRESS

    @property
    def pending(self) -> Pending:
        if not self.create_acked:
            return Pending.N_CREATE
        if self.final_status is not None and not self.final_acked:
            return Pending.N_SET
        return Pending.NOTHING

    @property
    def image_count(self) -> int:
        return sum(len(series.images) for series in self.series)


@dataclass(frozen=True)
class MppsStatus:
    """One open MPPS for `status`: IN PROGRESS, or final with a message still unacknowledged,
    or refused for good (`failed`)."""

    sop_instance_uid: str
    pps_id: str
    study_instance_uid: str
    state: PPSStatus                 # our state (what the RIS will have once all is sent)
    pending: Pending                 # what is not yet acknowledged by the RIS
    series: int
    images: int
    attempts: int                    # failed attempts since the last success
    last_error: str                  # "" after a success
    failed: bool                     # True: refused for good; `MppsClient.retry` re-arms it
    next_attempt_in_s: float | None  # None: nothing scheduled
