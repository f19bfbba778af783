"""Procedures: what a technologist starts, acquires into and ends (IHE SWF).

A procedure fixes the study (the worklist's Study Instance UID, or one minted once for an
unscheduled patient) and, when `[mpps]` is configured, its Modality Performed Procedure Step:
N-CREATE IN PROGRESS when it starts, every series added as it is acquired, N-SET COMPLETED or
DISCONTINUED when it ends. Acquiring again after the end is the append case: a new procedure,
a new MPPS, the same study.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from agent.errors import AgentError
from agent.iod import UIDSource
from agent.iod.dose_sr import IrradiationEvent
from agent.mpps import MppsClient, MppsError, discontinuation_reason
from agent.queue.spool import write_durably
from agent.records import Code, MppsImageRefs, Order, OtherPatientID, SOPReference

logger = logging.getLogger(__name__)

EndStatus = Literal["completed", "discontinued"]

#: ended procedures kept for the console and `status`, as counts (`Procedure.image_counts`);
#: older ones are forgotten (their images and MPPS live on in the queue and the MPPS journal),
#: so a daemon that runs for months does not grow with every exam (bench soak)
KEEP_ENDED = 50
#: scheduled steps remembered as acquired on this station (the duplicate guard), newest kept
KEEP_ACQUIRED = 5000
STATE_VERSION = 1


#: told of each MPPS the agent creates ("create") or updates ("update": a series added, the step
#: completed or discontinued), once it is recorded; for the audit trail (issue 15)
MppsHook = Callable[[str, "Procedure"], None]


class EndingSeries(NamedTuple):
    """A series the procedure made at its end (the dose SR's), for the MPPS."""

    series_instance_uid: str
    references: tuple[SOPReference, ...]
    #: the objects' own Series Description: the MPPS series item carries the same value
    series_description: str = ""


#: called as a procedure ends, before its MPPS is final: queues what the end makes (the dose
#: SR) and returns its series for the MPPS; raises AgentError if it cannot (the end is refused)
EndingHook = Callable[["Procedure"], Sequence[EndingSeries]]
#: which of these SOP Instance UIDs are rejected (`QueueStore.rejected_uids`)
RejectedHook = Callable[[Sequence[str]], set[str]]


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
    #: the exposures of every series, in order: the procedure's dose SR lists them
    events: list[IrradiationEvent] = field(default_factory=list)
    #: (Series, SOP Instance UID) of the dose SR, fixed before it is first built so that an
    #: end retried after a failure queues the same report, never a second one
    dose_report_uids: tuple[str, str] | None = None
    #: None while the procedure keeps its images (`series`) and exposures (`events`): its
    #: MPPS and dose SR need them until its end. Once the end is handled (the MPPS final in
    #: its journal, the dose SR in the queue) they are dropped and only this is kept, Series
    #: Instance UID -> images, for the console (issue 18: 2 references per image, forever,
    #: were the daemon's heap growth). Rejecting an image later needs none of it: the queue
    #: knows every image.
    image_counts: dict[str, int] | None = None

    def matches(self, order: Order) -> bool:
        if self.order.scheduled or order.scheduled:
            return (self.order.scheduled and order.scheduled
                    and self.order.study_instance_uid == order.study_instance_uid
                    and self.order.sps_id == order.sps_id)
        return (self.order.patient_id, self.order.patient_name) == \
            (order.patient_id, order.patient_name)

    def counts(self) -> dict[str, int]:
        """Series Instance UID -> images, whether the references are still kept or not."""
        if self.image_counts is not None:
            return dict(self.image_counts)
        return {uid: len(images) for uid, images in self.series.items()}

    def drop_references(self) -> None:
        """Keep counts only (see `image_counts`); for an ended procedure whose end is
        handled."""
        if self.image_counts is None:
            self.image_counts = self.counts()
        self.series = {}
        self.events = []

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
            "series": [{"series_instance_uid": uid, "images": count}
                       for uid, count in self.counts().items()],
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


def order_to_json(order: Order) -> dict[str, Any]:
    return asdict(order)


def order_from_json(data: dict[str, Any]) -> Order:
    """The inverse of `order_to_json`.

    Raises
    ------
    KeyError, TypeError, ValueError
        For a record that is not one `order_to_json` wrote.
    """
    fields = dict(data)
    fields["other_patient_ids"] = tuple(OtherPatientID(**o) for o in fields["other_patient_ids"])
    fields["referenced_studies"] = tuple(SOPReference(**r) for r in fields["referenced_studies"])
    fields["requested_procedure_codes"] = tuple(
        Code(**c) for c in fields["requested_procedure_codes"])
    fields["scheduled_protocol_codes"] = tuple(
        Code(**c) for c in fields["scheduled_protocol_codes"])
    pps = fields["performed_procedure_step"]
    fields["performed_procedure_step"] = None if pps is None else MppsImageRefs(**pps)
    return Order(**fields)


def event_to_json(event: IrradiationEvent) -> dict[str, Any]:
    return {"uid": event.uid, "started_at": event.started_at.isoformat(), "kvp": event.kvp,
            "mas": event.mas, "exposure_ms": event.exposure_ms, "dap_dgycm2": event.dap_dgycm2}


def event_from_json(data: dict[str, Any]) -> IrradiationEvent:
    """The inverse of `event_to_json` (a naive time is refused: its zone would be a guess)."""
    started_at = datetime.fromisoformat(str(data["started_at"]))
    if started_at.tzinfo is None:
        raise ValueError(f"irradiation event {data['uid']}: started_at has no UTC offset")
    dap = data.get("dap_dgycm2")
    return IrradiationEvent(uid=str(data["uid"]), started_at=started_at,
                            kvp=float(data["kvp"]), mas=float(data["mas"]),
                            exposure_ms=float(data["exposure_ms"]),
                            dap_dgycm2=None if dap is None else float(dap))


def _procedure_to_json(procedure: Procedure) -> dict[str, Any]:
    return {"procedure_id": procedure.procedure_id, "order": order_to_json(procedure.order),
            "started_at": procedure.started_at, "state": procedure.state,
            "mpps_uid": procedure.mpps_uid, "ended_at": procedure.ended_at,
            "end_reason": procedure.end_reason,
            "series": {uid: [[r.sop_class_uid, r.sop_instance_uid] for r in refs]
                       for uid, refs in procedure.series.items()},
            "events": [event_to_json(e) for e in procedure.events],
            "dose_report_uids": (None if procedure.dose_report_uids is None
                                 else list(procedure.dose_report_uids)),
            "image_counts": procedure.image_counts}


def _procedure_from_json(data: dict[str, Any]) -> Procedure:
    # "events" and "dose_report_uids" came with the dose SR, "image_counts" with issue 18: a
    # file from before has none of them
    report_uids = data.get("dose_report_uids")
    counts = data.get("image_counts")
    procedure = Procedure(
        procedure_id=str(data["procedure_id"]), order=order_from_json(data["order"]),
        started_at=float(data["started_at"]), state=str(data["state"]),
        mpps_uid=data["mpps_uid"], ended_at=data["ended_at"],
        end_reason=str(data["end_reason"]),
        series={uid: [SOPReference(c, i) for c, i in refs]
                for uid, refs in data["series"].items()},
        events=[event_from_json(e) for e in data.get("events", [])],
        dose_report_uids=None if report_uids is None
        else (str(report_uids[0]), str(report_uids[1])),
        image_counts=None if counts is None else {str(u): int(n) for u, n in counts.items()})
    if procedure.state != "in_progress":
        # a file from before issue 18 kept every image of its ended procedures; nothing reads
        # them (an end is never resumed from here), so they go, and with the next save
        procedure.drop_references()
    return procedure


class Procedures:
    """The procedures of this station; thread-safe.

    With a `state_path` (the daemon's: `<spool>/procedures.json`, 0600, written durably at every
    change) an open procedure survives a restart: the technologist goes on acquiring into the
    same study and MPPS, or ends it; and the steps acquired here (the worklist's duplicate guard)
    are remembered too. Without one (unit tests) they live in memory only. `on_mpps` is told of
    each MPPS created or updated (`MppsHook`). `on_ending` queues what a procedure makes as it
    ends (the daemon's: `agent.dose_report`, the dose SR) before its MPPS is final, which then
    lists it (`EndingHook`); `is_rejected` tells which images are rejected, left out of the
    MPPS of a procedure that ends (`RejectedHook`).
    """

    def __init__(self, *, uids: UIDSource, mpps: MppsClient | None, modality: str,
                 protocol_name: str, state_path: Path | None = None,
                 on_mpps: MppsHook | None = None, on_ending: EndingHook | None = None,
                 is_rejected: RejectedHook | None = None) -> None:
        self._on_mpps = on_mpps
        self._on_ending = on_ending
        self._is_rejected = is_rejected
        self._uids = uids
        self._mpps = mpps
        self._modality = modality
        self._protocol_name = protocol_name
        self._lock = threading.RLock()
        self._procedures: dict[str, Procedure] = {}
        self._acquired: dict[tuple[str, str], float] = {}
        self._state_path = state_path
        if state_path is not None:
            self._load(state_path)

    # -- durable state ---------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        """Read the saved state.

        Raises
        ------
        ProcedureError
            For a file that cannot be read or is not ours: refused, never overwritten (it
            holds the studies and MPPS of open procedures).
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as err:
            raise ProcedureError(f"{path}: cannot read the saved procedures: {err}") from err
        try:
            data = json.loads(raw)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
            procedures = [_procedure_from_json(p) for p in data["procedures"]]
            acquired = {(str(s), str(p)): float(t) for s, p, t in data["acquired"]}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ProcedureError(
                f"{path}: not a procedures file this version can read ({err}); move it aside "
                f"to start without the open procedures it holds") from err
        self._procedures = {p.procedure_id: p for p in procedures}
        self._acquired = acquired
        open_count = sum(p.state == "in_progress" for p in procedures)
        if open_count:
            logger.info("%d procedure(s) in progress resumed from %s", open_count, path.name)

    def _save(self) -> None:
        """Write the state durably (caller holds the lock)."""
        if self._state_path is None:
            return
        payload = json.dumps({
            "version": STATE_VERSION,
            "procedures": [_procedure_to_json(p) for p in self._procedures.values()],
            "acquired": [[s, p, t] for (s, p), t in self._acquired.items()],
        }).encode()
        tmp = self._state_path.with_name(f".{self._state_path.name}.{uuid.uuid4().hex}.tmp")
        try:
            write_durably(tmp, self._state_path, payload)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise ProcedureError(f"cannot save the procedures: {err}") from err

    def mark_acquired(self, study_instance_uid: str, sps_id: str) -> None:
        """Remember that this scheduled step was acquired on this station."""
        with self._lock:
            self._acquired[(study_instance_uid, sps_id)] = time.time()
            if len(self._acquired) > KEEP_ACQUIRED:
                newest = sorted(self._acquired.items(), key=lambda kv: kv[1])[-KEEP_ACQUIRED:]
                self._acquired = dict(newest)
            self._save()

    def was_acquired(self, study_instance_uid: str, sps_id: str) -> bool:
        with self._lock:
            return (study_instance_uid, sps_id) in self._acquired

    def protocol_name(self, procedure: Procedure) -> str:
        """Protocol Name of the procedure's series: the scheduled step's description, else
        the configured `[modality] protocol_name`. One function for both the images' General
        Series (0018,1030) and the MPPS's Performed Series items, so they always agree."""
        return procedure.order.sps_description or self._protocol_name

    def start(self, order: Order, *,
              performed_protocol_codes: Sequence[Code] = ()) -> Procedure:
        """A new procedure (and MPPS IN PROGRESS) for `order`; `performed_protocol_codes`: the
        protocol the technologist confirmed performed (empty: nothing claimed).

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
                    performed_protocol_codes=performed_protocol_codes,
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
            self._save()
        logger.info("procedure %s started (study %s, MPPS %s)", procedure.procedure_id,
                    order.study_instance_uid, mpps_uid or "none")
        self._report_mpps("create", procedure)
        return procedure

    def _report_mpps(self, action: str, procedure: Procedure) -> None:
        """Tell `on_mpps`; the MPPS is recorded already, so a failure is logged, not raised
        (the station refuses new work while the audit trail cannot record)."""
        if self._on_mpps is None or procedure.mpps_uid is None:
            return
        try:
            self._on_mpps(action, procedure)
        except AgentError as err:
            logger.error("procedure %s: MPPS %s not audited: %s", procedure.procedure_id,
                         action, err)

    def open_for(self, order: Order, *,
                 performed_protocol_codes: Sequence[Code] = ()) -> Procedure:
        """The procedure in progress for this order, or a new one (`performed_protocol_codes`
        go into a new one's MPPS; an open one's were recorded when it started)."""
        with self._lock:
            for procedure in self._procedures.values():
                if procedure.state == "in_progress" and procedure.matches(order):
                    return procedure
        return self.start(order, performed_protocol_codes=performed_protocol_codes)

    def get(self, procedure_id: str) -> Procedure:
        with self._lock:
            procedure = self._procedures.get(procedure_id)
        if procedure is None:
            raise ProcedureError(f"no procedure {procedure_id!r}")
        return procedure

    def record_series(self, procedure: Procedure, series_instance_uid: str,
                      images: Sequence[SOPReference],
                      events: Sequence[IrradiationEvent] = ()) -> None:
        """Images now durably queued, for the MPPS's Performed Series Sequence, and the
        exposures that made them, for the procedure's dose SR."""
        if not images:
            return
        with self._lock:
            if procedure.image_counts is not None:
                self._count_late(procedure, procedure.image_counts, series_instance_uid,
                                 len(images))
                return
            procedure.series.setdefault(series_instance_uid, []).extend(images)
            known = {e.uid for e in procedure.events}
            procedure.events.extend(e for e in events if e.uid not in known)
            try:
                self._save()
            except ProcedureError as err:
                # the images are durably queued; only the MPPS bookkeeping could lag
                logger.error("procedure %s: %s", procedure.procedure_id, err)
        if self._mpps is not None and procedure.mpps_uid is not None:
            try:
                self._mpps.add_series(procedure.mpps_uid, series_instance_uid, images,
                                      protocol_name=self.protocol_name(procedure))
            except MppsError as err:
                # the images are safe in the queue; the MPPS is told when it can be
                logger.error("procedure %s: MPPS not updated: %s", procedure.procedure_id, err)
            else:
                self._report_mpps("update", procedure)

    def _count_late(self, procedure: Procedure, counts: dict[str, int],
                    series_instance_uid: str, images: int) -> None:
        """Images of an acquisition that ran while another request ended its procedure (caller
        holds the lock): queued, so they are sent; its MPPS is final, so they are only counted
        (as before issue 18, when the MPPS refused them)."""
        counts[series_instance_uid] = counts.get(series_instance_uid, 0) + images
        logger.warning("procedure %s: %d image(s) of series %s queued after its end: not in "
                       "its MPPS", procedure.procedure_id, images, series_instance_uid)
        try:
            self._save()
        except ProcedureError as err:
            logger.error("procedure %s: %s", procedure.procedure_id, err)

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
            rejected = self._rejected_images(procedure, status)
            ending = self._run_ending(procedure)
            procedure.state = status
            procedure.end_reason = reason_code
            try:
                self._save()
            except ProcedureError:
                procedure.state, procedure.ended_at, procedure.end_reason = "in_progress", None, ""
                raise
        if self._mpps is not None and procedure.mpps_uid is not None:
            try:
                self._finish_series(procedure, ending, rejected)
                if status == "completed":
                    self._mpps.complete(procedure.mpps_uid)
                else:
                    self._mpps.discontinue(procedure.mpps_uid, reason)
            except MppsError as err:
                with self._lock:
                    procedure.state = "in_progress"
                    procedure.ended_at = None
                    procedure.end_reason = ""
                    self._save()
                raise ProcedureError(f"procedure {procedure_id}: {err}") from err
            self._report_mpps("update", procedure)
        logger.info("procedure %s %s", procedure_id, status)
        self._forget_old(procedure)
        return procedure

    def _rejected_images(self, procedure: Procedure, status: EndStatus) -> set[str]:
        """The procedure's rejected images, which its MPPS must not list (caller holds the
        lock).

        Raises
        ------
        ProcedureError
            Completing a procedure whose every image is rejected (nothing was performed that
            stands: it is discontinued).
        """
        images = [r.sop_instance_uid for refs in procedure.series.values() for r in refs]
        if self._is_rejected is None or not images:
            return set()
        try:
            rejected = set(self._is_rejected(images))
        except AgentError as err:
            raise ProcedureError(f"procedure {procedure.procedure_id}: cannot tell which "
                                 f"images are rejected: {err}") from err
        if status == "completed" and rejected >= set(images):
            raise ProcedureError(f"procedure {procedure.procedure_id}: every image is rejected: "
                                 "discontinue it instead of completing it")
        return rejected

    def _run_ending(self, procedure: Procedure) -> Sequence[EndingSeries]:
        """Queue what the end makes (the dose SR), under UIDs saved first (caller holds the
        lock).

        Raises
        ------
        ProcedureError
            If it cannot be made or queued: the procedure stays in progress, nothing of it is
            lost, and ending it again retries.
        """
        if self._on_ending is None or not procedure.events:
            procedure.ended_at = time.time()
            return ()
        if procedure.dose_report_uids is None:
            procedure.dose_report_uids = (self._uids.new_uid(), self._uids.new_uid())
            self._save()
        procedure.ended_at = time.time()     # the report's time; kept if the end goes on
        try:
            return tuple(self._on_ending(procedure))
        except AgentError as err:
            procedure.ended_at = None
            raise ProcedureError(f"procedure {procedure.procedure_id}: the dose report cannot "
                                 f"be queued: {err}") from err

    def _finish_series(self, procedure: Procedure, ending: Sequence[EndingSeries],
                       rejected: set[str]) -> None:
        """The MPPS's last changes before it is final: the series made at the end added,
        rejected images left out. Raises MppsError."""
        if self._mpps is None or procedure.mpps_uid is None:
            return
        for series in ending:
            self._mpps.add_series(procedure.mpps_uid, series.series_instance_uid,
                                  series.references, protocol_name=self.protocol_name(procedure),
                                  series_description=series.series_description)
        if rejected:
            self._mpps.withdraw_images(procedure.mpps_uid, rejected)

    def _forget_old(self, just_ended: Procedure) -> None:
        """After an end is handled (its MPPS final in the MPPS journal, its dose SR in the
        queue, the audit told): the procedure keeps counts only, and the oldest ended ones
        beyond KEEP_ENDED are forgotten, in memory and in the state file."""
        with self._lock:
            just_ended.drop_references()
            ended = sorted((p for p in self._procedures.values() if p.state != "in_progress"),
                           key=lambda p: p.ended_at or 0.0)
            for procedure in ended[:-KEEP_ENDED]:
                del self._procedures[procedure.procedure_id]
            try:
                self._save()
            except ProcedureError as err:
                # the file keeps the references until the next save; nothing is lost
                logger.error("%s", err)

    def all(self) -> list[Procedure]:
        with self._lock:
            return list(self._procedures.values())
