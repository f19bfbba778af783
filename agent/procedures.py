"""Procedures: what a technologist starts, acquires into and ends (IHE SWF).

A procedure fixes the study (the worklist's Study Instance UID, or one minted once for an
unscheduled patient) and, when `[mpps]` is configured, its Modality Performed Procedure Step:
N-CREATE IN PROGRESS when it starts, every series added as it is acquired, N-SET COMPLETED or
DISCONTINUED when it ends. Acquiring again after the end is the append case: a new procedure,
a new MPPS, the same study.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from agent.errors import AgentError
from agent.iod import UIDSource
from agent.mpps import MppsClient, MppsError, discontinuation_reason
from agent.records import Code, Order, SOPReference

logger = logging.getLogger(__name__)

EndStatus = Literal["completed", "discontinued"]

#: ended procedures kept for the console and `status`; older ones are forgotten (their images
#: and MPPS live on in the queue and the MPPS journal), so a daemon that runs for months does
#: not grow with every exam (bench soak)
KEEP_ENDED = 50


class ProcedureError(AgentError, ValueError):
    """A procedure cannot be started, found or ended as asked."""


@dataclass
class Procedure:
    procedure_id: str                 # ours, random: safe in URLs, no patient data
    order: Order                      # the study is fixed here
    started_at: float
    state: str = "in_progress"        # in_progress | completed | discontinued
    mpps_uid: str | None = None
    series: dict[str, list[SOPReference]] = field(default_factory=dict)
    ended_at: float | None = None
    end_reason: str = ""

    def matches(self, order: Order) -> bool:
        if self.order.scheduled or order.scheduled:
            return (self.order.scheduled and order.scheduled
                    and self.order.study_instance_uid == order.study_instance_uid
                    and self.order.sps_id == order.sps_id)
        return (self.order.patient_id, self.order.patient_name) == \
            (order.patient_id, order.patient_name)

    def as_json(self) -> dict[str, Any]:
        """For the API and the console: ids, states and counts (names go only to the screen
        that shows this patient, through the worklist, never into logs)."""
        return {
            "procedure_id": self.procedure_id,
            "state": self.state,
            "scheduled": self.order.scheduled,
            "accession_number": self.order.accession_number,
            "sps_id": self.order.sps_id,
            "patient_id": self.order.patient_id,
            "patient_name": self.order.patient_name,
            "study_instance_uid": self.order.study_instance_uid,
            "mpps_uid": self.mpps_uid,
            "series": [{"series_instance_uid": uid, "images": len(images)}
                       for uid, images in self.series.items()],
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
        }


def check_end(status: str, reason_code: str) -> Code | None:
    """Validate how a procedure is to end; returns the discontinuation reason code, if any.

    Raises
    ------
    ProcedureError
        Unknown status, or a reason that is not in DICOM CID 9300 (the message lists them).
    """
    if status not in ("completed", "discontinued"):
        raise ProcedureError(f"status: expected completed or discontinued, got {status!r}")
    if reason_code and status != "discontinued":
        raise ProcedureError("a reason goes with discontinued only")
    if not reason_code:
        return None
    try:
        return discontinuation_reason(reason_code)
    except MppsError as err:
        raise ProcedureError(str(err)) from err


class Procedures:
    """The procedures of this station; thread-safe. Kept in memory: after a restart an open
    procedure is ended by its MPPS journal's state, and new acquisitions start a new one."""

    def __init__(self, *, uids: UIDSource, mpps: MppsClient | None, modality: str,
                 protocol_name: str) -> None:
        self._uids = uids
        self._mpps = mpps
        self._modality = modality
        self._protocol_name = protocol_name
        self._lock = threading.Lock()
        self._procedures: dict[str, Procedure] = {}

    def start(self, order: Order) -> Procedure:
        """A new procedure (and MPPS IN PROGRESS) for `order`.

        Raises
        ------
        ProcedureError
            If the MPPS cannot be recorded.
        """
        now = time.time()
        mpps_uid = None
        if self._mpps is not None:
            try:
                step = self._mpps.begin(
                    order, modality=self._modality,
                    started_at=datetime.fromtimestamp(now).astimezone().replace(tzinfo=None),
                    protocol_name=order.sps_description or self._protocol_name,
                    study_id=order.requested_procedure_id[:16],
                )
            except MppsError as err:
                raise ProcedureError(f"cannot start the performed procedure step: {err}") \
                    from err
            order = replace(step.order, performed_procedure_step=step.image_references())
            mpps_uid = step.sop_instance_uid
        elif order.study_instance_uid is None:
            # unscheduled: one study for everything acquired in this procedure
            order = replace(order, study_instance_uid=self._uids.new_uid())
        procedure = Procedure(uuid.uuid4().hex[:12], order, now, mpps_uid=mpps_uid)
        with self._lock:
            self._procedures[procedure.procedure_id] = procedure
        logger.info("procedure %s started (study %s, MPPS %s)", procedure.procedure_id,
                    order.study_instance_uid, mpps_uid or "none")
        return procedure

    def open_for(self, order: Order) -> Procedure:
        """The procedure in progress for this order, or a new one."""
        with self._lock:
            for procedure in self._procedures.values():
                if procedure.state == "in_progress" and procedure.matches(order):
                    return procedure
        return self.start(order)

    def get(self, procedure_id: str) -> Procedure:
        with self._lock:
            procedure = self._procedures.get(procedure_id)
        if procedure is None:
            raise ProcedureError(f"no procedure {procedure_id!r}")
        return procedure

    def record_series(self, procedure: Procedure, series_instance_uid: str,
                      images: Sequence[SOPReference]) -> None:
        """Images now durably queued, for the MPPS's Performed Series Sequence."""
        if not images:
            return
        with self._lock:
            procedure.series.setdefault(series_instance_uid, []).extend(images)
        if self._mpps is not None and procedure.mpps_uid is not None:
            try:
                self._mpps.add_series(procedure.mpps_uid, series_instance_uid, images,
                                      protocol_name=procedure.order.sps_description
                                      or self._protocol_name)
            except MppsError as err:
                # the images are safe in the queue; the MPPS is told when it can be
                logger.error("procedure %s: MPPS not updated: %s", procedure.procedure_id, err)

    def end(self, procedure_id: str, status: EndStatus, reason_code: str = "") -> Procedure:
        """COMPLETED, or DISCONTINUED with a reason from DICOM CID 9300.

        Raises
        ------
        ProcedureError
            Unknown procedure, already ended, unknown reason, or COMPLETED without images.
        """
        reason = check_end(status, reason_code)
        procedure = self.get(procedure_id)
        with self._lock:
            if procedure.state != "in_progress":
                raise ProcedureError(f"procedure {procedure_id} is already {procedure.state}")
            if status == "completed" and not procedure.series:
                raise ProcedureError(f"procedure {procedure_id} has no images: discontinue it "
                                     f"instead of completing it")
            procedure.state = status
            procedure.ended_at = time.time()
            procedure.end_reason = reason_code
        if self._mpps is not None and procedure.mpps_uid is not None:
            try:
                if status == "completed":
                    self._mpps.complete(procedure.mpps_uid)
                else:
                    self._mpps.discontinue(procedure.mpps_uid, reason)
            except MppsError as err:
                with self._lock:
                    procedure.state = "in_progress"
                    procedure.ended_at = None
                raise ProcedureError(f"procedure {procedure_id}: {err}") from err
        logger.info("procedure %s %s", procedure_id, status)
        self._forget_old()
        return procedure

    def _forget_old(self) -> None:
        with self._lock:
            ended = sorted((p for p in self._procedures.values() if p.state != "in_progress"),
                           key=lambda p: p.ended_at or 0.0)
            for procedure in ended[:-KEEP_ENDED]:
                del self._procedures[procedure.procedure_id]

    def all(self) -> list[Procedure]:
        with self._lock:
            return list(self._procedures.values())
