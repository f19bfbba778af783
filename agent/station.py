"""The station: the technologist's and the service engineer's use cases, in one place.

`Station` owns what a request may do: read the worklist, start, acquire into and end a procedure,
retry, import, report status. The HTTP API (`agent.api`) and, through it, the CLI and the console
depend only on the `StationService` protocol below, so the unit tests' fake implements that
protocol instead of copying an interface by hand. The daemon (`agent.daemon`) only builds the
parts, starts and stops them (huey's Consumer/Huey split: STYLE.md, "A composition root apart
from the application service").

Every request arrives as a typed, already-parsed dataclass; every rule about what may happen
lives here once: the duplicate guard for a scheduled step, the bound on frames per request,
the confirmation an X-ray exposure needs, the folders `import` may read.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent import __version__, rejection
from agent.acquisition import Acquisition, device_info
from agent.audit import AuditTrail, AuditUnavailable
from agent.config import AgentConfig
from agent.errors import AcquisitionError, AgentError, IODError
from agent.forwarder import Forwarder
from agent.importer import collect_import_files, read_dicom_file
from agent.iod import KNOWN_TRANSFER_SYNTAXES, UIDSource, encode_part10
from agent.iod.anatomy import Anatomy, AnatomyChoice
from agent.iod.test_object import build_test_object
from agent.listener import Listener
from agent.metrics import LatencyHistogram, render_metrics, snapshot_from_status
from agent.mpps import MppsClient
from agent.net.tls import EXPIRY_WARNING_DAYS, TlsConfigError, read_certificate
from agent.procedures import EndStatus, Procedure, ProcedureError, Procedures, check_end
from agent.queue import QueueStore
from agent.records import (
    DELIVERED_STATES,
    Code,
    DeliveryState,
    DeviceInfo,
    Order,
    SOPReference,
)
from agent.worklist import WorklistError, WorklistItem, WorklistService

logger = logging.getLogger(__name__)

#: characters refused in anything a person types that goes into a DICOM object: C0/C1 controls
#: (U+0085 is a line break to many readers), DEL, the bidirectional overrides and isolates that
#: make "Smith" display as another name (U+202A..U+202E, U+2066..U+2069, marks U+200E/F, U+061C),
#: line/paragraph separators, the byte-order mark, and "\\", DICOM's value separator
_FORBIDDEN_TEXT = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff\\\\]")
MAX_RECENT = 500
#: an audited action is refused when the audit spool's file system has less free space than
#: this (an audit message is a few kB; SQLite's WAL needs room to commit one)
AUDIT_MIN_FREE_BYTES = 1 * 2**20


class StationError(AgentError):
    """A request the station refuses; the API turns the subclass into an HTTP status."""


class RequestRefused(StationError, ValueError):
    """The request is invalid or not allowed as asked (HTTP 400)."""


class NotFound(StationError, LookupError):
    """It names a procedure or object this station does not hold (HTTP 404)."""


class ExposureNotConfirmed(StationError, PermissionError):
    """An acquisition on an X-ray device without the deliberate confirmation (HTTP 409)."""


def check_text(field_name: str, value: object, max_chars: int) -> str:
    """`value` stripped, if it is text a person may type into an object.

    Raises
    ------
    RequestRefused
        Not a string, empty, too long, or holding a control, bidi or separator character.
    """
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= max_chars:
        raise RequestRefused(f"{field_name}: expected 1..{max_chars} characters")
    bad = _FORBIDDEN_TEXT.search(value)
    if bad:
        raise RequestRefused(
            f"{field_name}: character U+{ord(bad.group()):04X} at position {bad.start() + 1} "
            f"is not allowed (control, bidirectional-override or separator characters would "
            f"reach the archive)")
    return value.strip()


# -- requests --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrderChoice:
    """Whom to acquire for: an unscheduled patient, a worklist entry (by accession or SPS id),
    or a procedure already in progress."""

    order: Order | None = None
    accession: str | None = None
    sps_id: str | None = None
    procedure_id: str | None = None


@dataclass(frozen=True)
class AcquireRequest:
    frames: int
    choice: OrderChoice
    end: EndStatus | None = None          # end the procedure afterwards
    reason: str = ""                      # discontinuation reason (DICOM CID 9300 code)
    #: the technologist's deliberate second action (console) or the CLI's own request; needed
    #: when the device makes X-rays
    exposure_confirmed: bool = False
    #: the body part and side, when the order does not name them (checked before the exposure)
    anatomy: AnatomyChoice = field(default_factory=AnatomyChoice)
    #: the technologist confirms the scheduled protocol was performed as scheduled (MPPS
    #: Performed Protocol Code Sequence); only when this acquisition starts the procedure
    performed_as_scheduled: bool = False


@dataclass(frozen=True)
class EndRequest:
    procedure_id: str
    end: EndStatus
    reason: str = ""


@dataclass(frozen=True)
class RejectRequest:
    """The technologist withdraws images (IHE IOCM): SOP Instance UIDs and why."""

    sop_instance_uids: tuple[str, ...]
    reason: str                     # quality | patient-safety | incorrect-modality-worklist


@dataclass(frozen=True)
class ImportRequest:
    paths: tuple[Path, ...]


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectView:
    """One object over its destinations, as the CLI's `--wait` and the console see it."""

    queue_id: int
    sop_instance_uid: str
    state: str
    done: bool
    destinations: dict[str, str]
    queued_at: float | None
    done_at: float | None
    errors: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"queue_id": self.queue_id, "sop_instance_uid": self.sop_instance_uid,
                "state": self.state, "done": self.done, "destinations": self.destinations,
                "queued_at": self.queued_at, "done_at": self.done_at,
                "errors": list(self.errors)}


@dataclass(frozen=True)
class AcquireResult:
    warning: str
    procedure: dict[str, Any]
    study_instance_uid: str
    series_instance_uid: str
    objects: tuple[ObjectView, ...]
    error: str | None
    dropped_frames: int

    def as_json(self) -> dict[str, Any]:
        return {"warning": self.warning, "procedure": self.procedure,
                "study_instance_uid": self.study_instance_uid,
                "series_instance_uid": self.series_instance_uid,
                "objects": [o.as_json() for o in self.objects], "error": self.error,
                "dropped_frames": self.dropped_frames}


@dataclass(frozen=True)
class StartResult:
    procedure: dict[str, Any]
    warning: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"procedure": self.procedure, "warning": self.warning}


@dataclass(frozen=True)
class ImportedFile:
    path: str
    queue_id: int | None = None
    sop_instance_uid: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "queue_id": self.queue_id,
                "sop_instance_uid": self.sop_instance_uid}


@dataclass(frozen=True)
class LastFrame:
    pixels: np.ndarray
    bits_stored: int


@dataclass(frozen=True)
class StationLimits:
    """What one request may ask for (`[api]` keys)."""

    max_frames: int = 100
    import_folders: tuple[Path, ...] = ()
    max_import_files: int = 1000


class StationService(Protocol):
    """What the API (and so the CLI and the console) may ask of the station."""

    @property
    def limits(self) -> StationLimits: ...

    @property
    def emits_radiation(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def worklist(self, *, refresh: bool, for_console: bool = False) -> dict[str, Any] | None: ...

    def procedures(self) -> list[dict[str, Any]]: ...

    def procedure(self, procedure_id: str) -> dict[str, Any]: ...

    def start_procedure(self, choice: OrderChoice,
                        performed_as_scheduled: bool = False) -> StartResult: ...

    def acquire(self, request: AcquireRequest) -> AcquireResult: ...

    def end_procedure(self, request: EndRequest) -> dict[str, Any]: ...

    def objects(self, queue_ids: Sequence[int]) -> list[ObjectView]: ...

    def recent_objects(self, limit: int) -> list[ObjectView]: ...

    def retry(self, queue_ids: Sequence[int]) -> int: ...

    def import_files(self, request: ImportRequest) -> list[ImportedFile]: ...

    def store_test_object(self) -> ObjectView: ...

    def metrics(self) -> bytes: ...

    def reject(self, request: RejectRequest) -> dict[str, Any]: ...

    def last_frame(self) -> LastFrame | None: ...


def final_state_by_destination(config: AgentConfig) -> dict[str, DeliveryState]:
    return {
        # a stow-rs destination with verify = true commits by QIDO-RS (agent.stow_forwarder)
        d.name: DeliveryState.COMMITTED if d.storage_commitment or d.verify
        else DeliveryState.SENT
        for d in config.destinations
    }


_STATE_ORDER = [DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.SENT,
                DeliveryState.COMMIT_REQUESTED, DeliveryState.COMMITTED]


def summarize_object(states: dict[str, DeliveryState],
                     final: dict[str, DeliveryState]) -> dict[str, Any]:
    """One object's view over its destinations: the least advanced state, and `done` when
    every destination holds it as finally as it can (committed, or stored without
    commitment)."""
    if any(s is DeliveryState.FAILED for s in states.values()):
        overall = DeliveryState.FAILED
    elif states:
        overall = min(states.values(), key=_STATE_ORDER.index)
    else:
        overall = DeliveryState.PENDING
    done = bool(states) and all(
        s is final.get(dest) or (s in DELIVERED_STATES and final.get(dest) is DeliveryState.SENT)
        for dest, s in states.items()
    )
    return {"state": overall.value, "done": done,
            "destinations": {dest: s.value for dest, s in states.items()}}


def total_counts(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    total = {s.value: 0 for s in DeliveryState}
    for per_state in counts.values():
        for state, n in per_state.items():
            total[state] = total.get(state, 0) + n
    return total


@dataclass
class Parts:
    """What the daemon built and hands to the station."""

    config: AgentConfig
    queue: QueueStore
    acquisition: Acquisition
    forwarder: Forwarder
    listener: Listener
    procedures: Procedures
    worklist: WorklistService | None = None
    mpps: MppsClient | None = None
    #: background threads' health for `status`: name -> {"alive": bool, "error": str}
    thread_health: Callable[[], dict[str, dict[str, Any]]] = field(
        default=lambda: {})
    #: every spool fsync's latency, for /api/metrics
    fsync_histogram: LatencyHistogram | None = None
    #: the audit trail (issue 15); None or disabled: nothing is audited
    audit: AuditTrail | None = None
    #: where the audit spool lives (its free space is checked before an audited action)
    audit_dir: Path | None = None


class Station:
    """The use cases of this station over the parts the daemon built. Thread-safe as its parts
    are; the API calls it from worker threads, never from the event loop."""

    def __init__(self, parts: Parts, limits: StationLimits, *,
                 device: DeviceInfo | None = None, uids: UIDSource | None = None) -> None:
        self._parts = parts
        self._config = parts.config
        self._queue = parts.queue
        self._acquisition = parts.acquisition
        self._forwarder = parts.forwarder
        self._procedures = parts.procedures
        self._worklist = parts.worklist
        self._limits = limits
        self._final = final_state_by_destination(parts.config)
        self._device = device or device_info(parts.config.modality, f"modality-agent {__version__}")
        self._uids = uids or UIDSource(parts.config.agent.uid_root)
        self.started_at = time.time()

    @property
    def limits(self) -> StationLimits:
        return self._limits

    @property
    def emits_radiation(self) -> bool:
        return self._acquisition.emits_radiation

    # -- worklist and procedures -------------------------------------------------------------
    def worklist(self, *, refresh: bool, for_console: bool = False) -> dict[str, Any] | None:
        """The worklist (`worklist --json`'s shape), or None without `[worklist]`; for the
        console each item also has its `duplicate_reason` and the view a `summary`."""
        if self._worklist is None:
            return None
        snapshot = self._worklist.refresh_now() if refresh else self._worklist.snapshot()
        view: dict[str, Any] = snapshot.as_json()
        if for_console:
            for item, shown in zip(snapshot.items, view["items"], strict=True):
                shown["duplicate_reason"] = item.duplicate_reason
            view["summary"] = snapshot.summary
        return view

    def _worklist_item(self, *, accession: str | None = None,
                       sps_id: str | None = None) -> WorklistItem:
        if self._worklist is None:
            raise AcquisitionError("no [worklist] configured: use an unscheduled acquisition")
        try:
            return self._worklist.find(accession=accession, sps_id=sps_id)
        except WorklistError as err:
            raise AcquisitionError(str(err)) from err

    def procedures(self) -> list[dict[str, Any]]:
        return [self._procedure_view(p) for p in self._procedures.all()]

    def procedure(self, procedure_id: str) -> dict[str, Any]:
        try:
            return self._procedure_view(self._procedures.get(procedure_id))
        except ProcedureError as err:
            raise NotFound(str(err)) from err

    def _procedure_view(self, procedure: Procedure) -> dict[str, Any]:
        """A procedure as the API shows it; one in progress also says what the console must
        still ask before an exposure (`anatomy`)."""
        view = procedure.as_json()
        if procedure.state == "in_progress":
            view["anatomy"] = self._anatomy_hint(procedure.order)
        return view

    def _resolve(self, choice: OrderChoice) -> tuple[Order, WorklistItem | None, str]:
        """The order a choice stands for, its worklist item if any, and a duplicate warning."""
        if choice.order is not None:
            order = choice.order
            check_text("patient_id", order.patient_id, 64)
            check_text("patient_name", order.patient_name, 320)
            return order, None, ""
        item = self._worklist_item(accession=choice.accession, sps_id=choice.sps_id)
        warning = (f"worklist entry {item.describe()}: {item.duplicate_reason}"
                   if item.is_duplicate else "")
        return item.to_order(), item, warning

    def start_procedure(self, choice: OrderChoice,
                        performed_as_scheduled: bool = False) -> StartResult:
        """The procedure in progress for this order, or a new one (MPPS IN PROGRESS).

        `performed_as_scheduled`: the technologist confirms the order's scheduled protocol is
        what will be performed; the MPPS's Performed Protocol Code Sequence then lists it
        (empty otherwise: nothing is claimed that nobody confirmed).
        """
        if choice.procedure_id is not None:
            if performed_as_scheduled:
                raise RequestRefused("performed_as_scheduled: the performed protocol is "
                                     "recorded when the procedure starts")
            return StartResult(self.procedure(choice.procedure_id))
        self._check_audit()
        order, _item, warning = self._resolve(choice)
        try:
            procedure = self._procedures.open_for(
                order, performed_protocol_codes=self._performed_codes(
                    order, performed_as_scheduled))
        except ProcedureError as err:
            raise AcquisitionError(str(err)) from err
        return StartResult(self._procedure_view(procedure), warning)

    @staticmethod
    def _performed_codes(order: Order, performed_as_scheduled: bool) -> tuple[Code, ...]:
        if not performed_as_scheduled:
            return ()
        if not order.scheduled_protocol_codes:
            raise RequestRefused("performed_as_scheduled: the order has no scheduled protocol "
                                 "code to confirm")
        return tuple(order.scheduled_protocol_codes)

    def _anatomy_hint(self, order: Order) -> dict[str, Any]:
        """What the console must still ask: the region and side the order (or config) gives,
        and whether the objects need a side (DX)."""
        try:
            decided = self._acquisition.anatomy_for(order)
            region, side, missing = decided.region, decided.laterality, False
        except IODError:
            region, side, missing = None, None, True
        return {"needs_side": self._acquisition.writes_laterality, "missing": missing,
                "body_part": None if region is None else region.meaning,
                "laterality": side}

    def end_procedure(self, request: EndRequest) -> dict[str, Any]:
        """COMPLETED, or DISCONTINUED with a CID 9300 reason.

        Raises
        ------
        NotFound
            No such procedure.
        ProcedureError
            Already ended, unknown reason, COMPLETED without images, MPPS not recorded.
        """
        self.procedure(request.procedure_id)
        return self._procedures.end(request.procedure_id, request.end, request.reason).as_json()

    # -- acquisition ---------------------------------------------------------------------------
    def acquire(self, request: AcquireRequest) -> AcquireResult:
        """Acquire into the procedure in progress for this order (started if there is none),
        and end it afterwards if asked.

        Raises
        ------
        RequestRefused
            More frames than `[api] max_frames`, or text that may not reach an object.
        ExposureNotConfirmed
            The device makes X-rays and the request was not confirmed.
        AcquisitionError
            When nothing could be captured, or the procedure cannot be started.
        """
        if not 1 <= request.frames <= self._limits.max_frames:
            raise RequestRefused(f"frames: expected 1..{self._limits.max_frames} "
                                 f"([api] max_frames), got {request.frames}")
        if self.emits_radiation and not request.exposure_confirmed:
            raise ExposureNotConfirmed(
                "this device makes X-ray exposures: the acquisition must be confirmed "
                "(the console's Expose button, or the CLI)")
        try:
            if request.end is not None:
                check_end(request.end, request.reason)  # refused before a frame is taken
        except ProcedureError as err:
            raise AcquisitionError(str(err)) from err
        self._check_audit()
        choice = request.choice
        if choice.procedure_id is not None:
            if request.performed_as_scheduled:
                raise RequestRefused("performed_as_scheduled: the performed protocol is "
                                     "recorded when the procedure starts")
            try:
                procedure = self._procedures.get(choice.procedure_id)
            except ProcedureError as err:
                raise AcquisitionError(str(err)) from err
            self._decide_anatomy(procedure.order, request)     # before anything is exposed
            warning = ""
        else:
            order, _item, warning = self._resolve(choice)
            self._decide_anatomy(order, request)    # before a procedure or an exposure starts
            codes = self._performed_codes(order, request.performed_as_scheduled)
            if warning:
                # marked, not refused: a repeat exposure is sometimes what the doctor ordered
                logger.warning("acquiring again for %s", warning)
            try:
                procedure = self._procedures.open_for(order, performed_protocol_codes=codes)
            except ProcedureError as err:
                raise AcquisitionError(str(err)) from err
        return self._acquire_into(procedure, request, warning)

    def _decide_anatomy(self, order: Order, request: AcquireRequest) -> Anatomy:
        """The region and side the objects will carry, or a refusal before any exposure: a DX
        of a paired region needs its side (a wrong or missing side cannot be fixed after the
        patient was irradiated).

        Raises
        ------
        RequestRefused
            Naming what to give (HTTP 400; the CLI prints it and exits non-zero).
        """
        try:
            return self._acquisition.anatomy_for(order, request.anatomy)
        except IODError as err:
            raise RequestRefused(str(err)) from err

    def _check_audit(self) -> None:
        """Refuse an audited action before it starts when its events could not be recorded
        (issue 15: an event that cannot be audited does not happen): the audit spool cannot be
        read, or its disk is (nearly) full.

        Raises
        ------
        AcquisitionError
            With the reason (HTTP 503).
        """
        audit = self._parts.audit
        if audit is None or not audit.enabled:
            return
        try:
            audit.status()              # reads the audit spool: raises when it is unusable
            folder = self._parts.audit_dir or self._config.agent.spool_dir
            free = shutil.disk_usage(folder).free
        except (AuditUnavailable, OSError) as err:
            raise AcquisitionError(f"refused: the audit trail cannot record it ({err})") from err
        if free < AUDIT_MIN_FREE_BYTES:
            raise AcquisitionError(
                f"refused: the audit trail cannot record it ({folder}: {free // 1024} kB free, "
                f"{AUDIT_MIN_FREE_BYTES // 1024} kB needed); free space on the spool's disk")

    def _acquire_into(self, procedure: Procedure, request: AcquireRequest,
                      warning: str) -> AcquireResult:
        if procedure.state != "in_progress":
            raise AcquisitionError(f"procedure {procedure.procedure_id} is {procedure.state}")
        decided = self._decide_anatomy(procedure.order, request)
        result = self._acquisition.acquire(
            procedure.order, request.frames, anatomy=decided,
            protocol_name=self._procedures.protocol_name(procedure))
        self._procedures.record_series(procedure, result.series_instance_uid, [
            SOPReference(o.sop_class_uid, o.sop_instance_uid) for o in result.objects],
            events=result.events)
        if result.objects:
            self._mark_acquired(procedure.order)
        self._forwarder.wake()
        if request.end is not None:
            try:
                self._procedures.end(procedure.procedure_id, request.end, request.reason)
            except ProcedureError as err:
                warning = (warning + "; " if warning else "") + str(err)
        return AcquireResult(
            warning=warning, procedure=self._procedure_view(procedure),
            study_instance_uid=result.study_instance_uid,
            series_instance_uid=result.series_instance_uid,
            objects=tuple(self.objects([o.queue_id for o in result.objects])),
            error=result.error, dropped_frames=result.dropped_frames)

    def _mark_acquired(self, order: Order) -> None:
        """The duplicate guard, in one place: this scheduled step has now been acquired on
        this station (kept across restarts by `Procedures`)."""
        if not (order.scheduled and order.study_instance_uid):
            return
        try:
            self._procedures.mark_acquired(order.study_instance_uid, order.sps_id)
        except ProcedureError as err:
            logger.error("duplicate guard not saved: %s", err)
        if self._worklist is not None:
            self._worklist.mark_acquired(order.study_instance_uid, order.sps_id)

    def last_frame(self) -> LastFrame | None:
        frame = self._acquisition.last_frame
        return None if frame is None else LastFrame(frame.pixels, frame.bits_stored)

    # -- the watch folder's patient ----------------------------------------------------------
    def image_order(self) -> Order | None:
        """The patient for an image dropped into the watch folder: the procedure in progress
        if there is exactly one; otherwise none, and the image is refused (never guessed)."""
        in_progress = [p for p in self._procedures.all() if p.state == "in_progress"]
        return in_progress[0].order if len(in_progress) == 1 else None

    def image_queued(self, order: Order, series_instance_uid: str,
                     image: SOPReference) -> None:
        for procedure in self._procedures.all():
            if procedure.state == "in_progress" and procedure.order == order:
                self._procedures.record_series(procedure, series_instance_uid, [image])

    # -- queue -----------------------------------------------------------------------------
    def retry(self, queue_ids: Sequence[int]) -> int:
        """Failed rows of these objects back to pending now (the console's retry button).

        Raises
        ------
        UnknownQueueItemError
            For an id the queue does not hold.
        """
        count = self._queue.retry(list(queue_ids))
        self._forwarder.wake()
        logger.info("retry requested for queue item(s) %s: %d row(s)", list(queue_ids), count)
        return count

    def recent_objects(self, limit: int = 50) -> list[ObjectView]:
        """The newest objects with their state per destination, for the live queue view."""
        return self.objects(self._queue.recent_queue_ids(min(limit, MAX_RECENT)))

    def import_files(self, request: ImportRequest) -> list[ImportedFile]:
        """Queue existing DICOM files from the configured import folders; one result per file,
        refused ones with the reason.

        Raises
        ------
        RequestRefused
            Import is not configured (`[api] import_folders` empty).
        """
        if not self._limits.import_folders:
            raise RequestRefused("import is disabled: list the folders it may read in "
                                 "[api] import_folders")
        self._check_audit()
        selection = collect_import_files(
            list(request.paths), allowed_folders=self._limits.import_folders,
            max_files=self._limits.max_import_files)
        results = [ImportedFile(str(r.path), error=r.reason) for r in selection.refused]
        if selection.limit_reached:
            # a folder bigger than one request may take: what was found is queued, the rest
            # waits for another request (the CLI reports this line as refused)
            results.append(ImportedFile("", error=selection.limit_reached))
        for path in selection.files:
            try:
                # opened again through the folder check: the file may have been swapped
                item = read_dicom_file(path, allowed_folders=self._limits.import_folders)
                queued = self._queue.enqueue(
                    item.payload, sop_instance_uid=item.sop_instance_uid,
                    sop_class_uid=item.sop_class_uid,
                    transfer_syntax_uid=item.transfer_syntax_uid)
            except AgentError as err:
                logger.warning("import refused: %s", err)
                results.append(ImportedFile(str(path), error=str(err)))
                continue
            logger.info("queue item %d: imported %s", queued.queue_id, queued.sop_instance_uid)
            results.append(ImportedFile(str(path), queued.queue_id, queued.sop_instance_uid))
        self._forwarder.wake()
        return results

    def store_test_object(self) -> ObjectView:
        """Queue the site acceptance test's object (`selftest --store-test-object`): built, not
        acquired (a selftest never fires the device), marked as a test in patient, study, series
        and comments; it goes to every destination and is committed like any image.

        Raises
        ------
        AgentError
            If it cannot be built or queued (spool full, ...).
        """
        self._check_audit()
        ds = build_test_object(device=self._device, uids=self._uids,
                               now=datetime.now().astimezone())
        payload = encode_part10(ds, "explicit-little")
        queued = self._queue.enqueue(payload, sop_instance_uid=str(ds.SOPInstanceUID),
                                     sop_class_uid=str(ds.SOPClassUID),
                                     transfer_syntax_uid=KNOWN_TRANSFER_SYNTAXES[
                                         "explicit-little"])
        self._forwarder.wake()
        logger.info("queue item %d: selftest object %s", queued.queue_id,
                    queued.sop_instance_uid)
        return self.objects([queued.queue_id])[0]

    def objects(self, queue_ids: Sequence[int]) -> list[ObjectView]:
        by_object: dict[int, dict[str, DeliveryState]] = {q: {} for q in queue_ids}
        uids: dict[int, str] = {}
        errors: dict[int, list[str]] = {}
        queued_at: dict[int, float] = {}
        last_change_at: dict[int, float] = {}
        for d in self._queue.deliveries(queue_ids=queue_ids, limit=100_000):
            by_object[d.queue_id][d.destination] = d.state
            uids[d.queue_id] = d.sop_instance_uid
            queued_at[d.queue_id] = d.created_at
            last_change_at[d.queue_id] = max(last_change_at.get(d.queue_id, 0.0), d.updated_at)
            if d.last_error:
                errors.setdefault(d.queue_id, []).append(f"{d.destination}: {d.last_error}")
        result = []
        for q in queue_ids:
            summary = summarize_object(by_object[q], self._final)
            result.append(ObjectView(
                queue_id=q, sop_instance_uid=uids.get(q, ""), state=summary["state"],
                done=summary["done"], destinations=summary["destinations"],
                queued_at=queued_at.get(q),
                # when the last destination reached its final state
                done_at=last_change_at.get(q) if summary["done"] else None,
                errors=tuple(errors.get(q, []))))
        return result

    # -- status ----------------------------------------------------------------------------
    def reject(self, request: RejectRequest) -> dict[str, Any]:
        """Withdraw images (`reject`, the console's Reject): one not yet sent is never sent;
        one already sent gets a Key Object Selection rejection note to every destination that
        has it, sent once they have committed it.

        Raises
        ------
        RequestRefused
            Unknown UID, a note, images of several patients/studies, rejected twice, ...:
            nothing changes.
        """
        try:
            result = rejection.reject(self._queue, request.sop_instance_uids, request.reason,
                                      device=self._device, uids=self._uids,
                                      final_states=self._final,
                                      now=datetime.now().astimezone())
        except rejection.RejectionError as err:
            raise RequestRefused(str(err)) from err
        self._forwarder.wake()
        logger.info("rejected %d object(s) (%s): %d row(s) cancelled, %d note(s) queued",
                    len(result.as_dict()["rejected"]), request.reason,
                    len(result.as_dict()["cancelled"]), len(result.as_dict()["notes"]))
        return result.as_dict()

    def metrics(self) -> bytes:
        """The Prometheus exposition of `status()` (so both always agree) and the fsync
        latency histogram; no patient data in any label."""
        histogram = self._parts.fsync_histogram
        return render_metrics(snapshot_from_status(
            self.status(), fsync=None if histogram is None else histogram.snapshot()))

    def status(self) -> dict[str, Any]:
        config = self._config
        counts = self._queue.counts()
        device = self._acquisition.status()
        threads = self._parts.thread_health()
        errors = [f"{name}: {h['error']}" for name, h in threads.items()
                  if h.get("error") or not h.get("alive", True)]
        audit = self._audit_status()
        if audit is not None and audit.get("alert"):
            errors.append(f"audit: {audit['alert']}")     # the console shows agent errors
        return {
            "agent": {"ae_title": config.agent.ae_title, "version": __version__,
                      "uptime_s": round(time.time() - self.started_at, 1), "running": True,
                      "threads": threads, "errors": errors},
            "device": {"driver": device.name, "connected": device.is_open and device.online,
                       "detail": device.detail,
                       "emits_radiation": self.emits_radiation,
                       "frames_read": device.frames_read,
                       "frames_dropped": self._acquisition.dropped_total,
                       "last_frame_at": device.last_frame_t_wall,
                       "error": self._acquisition.last_error},
            "listener": {"host": config.listener.host, "port": self._parts.listener.port},
            "spool": self._spool_status(),
            "destinations": [self._destination_status(health, counts)
                             for health in self._forwarder.health()],
            "queue": total_counts(counts),
            "worklist": self._worklist_status(),
            "procedures": [self._procedure_view(p) for p in self._procedures.all()
                           if p.state == "in_progress"],
            "tls": self._tls_status(),
            "limits": {"max_frames": self._limits.max_frames,
                       "import_enabled": bool(self._limits.import_folders)},
            "mpps": None if self._parts.mpps is None else [
                {"uid": s.sop_instance_uid, "pps_id": s.pps_id, "state": str(s.state),
                 "pending": str(s.pending), "images": s.images,
                 "attempts": s.attempts, "last_error": s.last_error, "failed": s.failed}
                for s in self._parts.mpps.status()],
            "audit": audit,
        }

    def _audit_status(self) -> dict[str, Any] | None:
        """The audit trail's backlog, reachability and alert; None without `[audit]`."""
        audit = self._parts.audit
        if audit is None or not audit.enabled:
            return None
        try:
            return audit.status()
        except AuditUnavailable as err:
            return {"enabled": True, "backlog": None, "alert": f"audit spool unusable: {err}"}

    def _tls_status(self) -> dict[str, Any] | None:
        """Our certificate: whose, until when, and a warning 30 days ahead (a certificate
        placed on disk is read again here; the agent picks it up at its next restart)."""
        tls = self._config.tls
        if tls is None:
            return None
        try:
            info = read_certificate(tls.certificate)
        except TlsConfigError as err:
            return {"certificate": str(tls.certificate), "error": str(err)}
        days_left = info.days_left()
        warning = ""
        if days_left < 0:
            warning = f"our certificate expired {-days_left:.0f} day(s) ago"
        elif days_left < EXPIRY_WARNING_DAYS:
            warning = f"our certificate expires in {days_left:.0f} day(s): renew it"
        return {"certificate": str(tls.certificate), "subject": info.subject,
                "not_after": info.not_after.isoformat(), "days_left": round(days_left, 1),
                "profile": tls.profile, "warning": warning}

    def _destination_status(self, health: dict[str, Any],
                            counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        name = health["name"]
        oldest = self._queue.oldest_pending_at(name)
        return {
            **health,
            "queue": counts.get(name, {}),
            "oldest_pending_at": oldest,
            "oldest_pending_age_s": None if oldest is None else round(time.time() - oldest, 1),
            "open_commitment_requests": self._queue.open_transactions(name),
        }

    def _spool_status(self) -> dict[str, Any]:
        free = self._queue.free_bytes()
        return {"path": str(self._config.agent.spool_dir), "free_mb": free // 2**20,
                "free_bytes": free, "min_free_bytes": self._queue.min_free_bytes,
                "min_free_mb": self._config.queue.min_free_mb,
                "capture_blocked": free < self._queue.min_free_bytes}

    def _worklist_status(self) -> dict[str, Any] | None:
        if self._worklist is None:
            return None
        snapshot = self._worklist.snapshot()
        return {"source": snapshot.source, "age_s": snapshot.age_s,
                "items": len(snapshot.items), "truncated": snapshot.truncated,
                "error": snapshot.error, "summary": snapshot.summary}
