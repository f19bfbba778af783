"""The MPPS SCU (IHE RAD-6 / RAD-7): one MPPS per performed procedure step, journaled before
anything is sent and re-sent by a background thread until the RIS has acknowledged it.

The caller's calls (`begin`, `add_series`, `complete`, `discontinue`) never touch the network:
they change the step and write its journal durably, then wake the sender. The sender opens one
association per round for every MPPS that has something due, sends N-CREATE (IN PROGRESS) and,
once the step is final and its N-CREATE acknowledged, one N-SET with COMPLETED or DISCONTINUED,
the end time and every series and image. A step whose final N-SET is acknowledged leaves the
journal.

After a crash the same messages are sent again under the same UID. The journal records, before
each first send, that the message may have reached the RIS; a resend answered 0111H (N-CREATE:
duplicate instance) or 0110H with Error ID A710 (N-SET: may no longer be updated) then means
our earlier message did arrive, and counts as acknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association

from agent import crashpoints
from agent.config import MppsSection
from agent.errors import AssociationError, IODError
from agent.iod import modules
from agent.iod.uids import UIDSource, is_valid_uid
from agent.mpps.dataset import (
    dicom_date_time,
    final_n_set_dataset,
    n_create_dataset,
    performed_series_item,
)
from agent.mpps.errors import (
    MppsError,
    MppsStateError,
    MppsValueError,
    UnknownProcedureStep,
)
from agent.mpps.journal import Journal
from agent.mpps.model import (
    MPPS_SOP_CLASS_UID,
    MppsRecord,
    MppsStatus,
    Pending,
    PerformedSeries,
    PPSStatus,
    ProcedureStep,
)
from agent.mpps.outcome import MppsResult, Verdict, classify_mpps_status
from agent.net.ae import DIMSE_TIMEOUT_S, AgentAE, associate
from agent.net.tls import PeerTls
from agent.records import Code, Order, SOPReference

logger = logging.getLogger(__name__)

#: crash points (agent.crashpoints) for the fault tests: a response received, not yet recorded
CRASH_AFTER_CREATE_RESPONSE = "mpps_after_create_response"
CRASH_AFTER_FINAL_RESPONSE = "mpps_after_final_response"

ImageRef = SOPReference | tuple[str, str]


@dataclass
class _Delivery:
    """The sender's bookkeeping for one step; not journaled (a restart retries at once)."""

    attempts: int = 0
    last_error: str = ""
    next_attempt_mono: float = 0.0


class MppsClient:
    """Creates, journals and sends the Modality Performed Procedure Steps of this station.

    Parameters
    ----------
    config
        The `[mpps]` section: the RIS's host, port and AE title.
    ae_title
        Our AE title; also Performed Station AE Title (0040,0241).
    journal_dir
        Folder of the journal (created 0700 if missing); open MPPS found there are sent again.
    uids
        Where the MPPS SOP Instance UIDs and, unscheduled, Study Instance UIDs come from.
    station_name
        Performed Station Name (0040,0242), SH; "" if unknown.
    location
        Performed Location (0040,0243), SH; "" if unknown.
    retry_initial_s, retry_max_s
        Backoff after a failed attempt: doubles from the first to the second.
    dimse_timeout_s
        How long to wait for the association and each response before aborting.
    tls
        DICOM TLS to the RIS (`[mpps] tls`; None: plaintext). A failed handshake is retried
        with backoff like an unreachable RIS, its reason in `status`; never in plaintext.

    Raises
    ------
    MppsJournalError
        If the journal folder cannot be created or read.
    MppsValueError
        If `ae_title`, `station_name` or `location` cannot be sent.
    """

    def __init__(
        self,
        config: MppsSection,
        *,
        ae_title: str,
        journal_dir: Path,
        uids: UIDSource,
        station_name: str = "",
        location: str = "",
        retry_initial_s: float = 2.0,
        retry_max_s: float = 300.0,
        dimse_timeout_s: float = DIMSE_TIMEOUT_S,
        tls: PeerTls | None = None,
    ) -> None:
        self._config = config
        self._tls = tls
        self._ae_title = ae_title
        self._uids = uids
        self._station_name = station_name
        self._location = location
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = max(retry_max_s, retry_initial_s)
        self._dimse_timeout_s = dimse_timeout_s
        for keyword, value, limit in (("PerformedStationAETitle", ae_title, 16),
                                      ("PerformedStationName", station_name, 16),
                                      ("PerformedLocation", location, 16)):
            _check_text(keyword, value, limit, required=keyword == "PerformedStationAETitle")
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._journal = Journal(journal_dir)
        self._records: dict[str, MppsRecord] = {}
        self._deliveries: dict[str, _Delivery] = {}
        for record in self._journal.open():
            uid = record.step.sop_instance_uid
            self._records[uid] = record
            self._deliveries[uid] = _Delivery()
        if self._records:
            logger.info("MPPS journal: %d open procedure step(s) to resume",
                        len(self._records))

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sender thread (a daemon thread); a no-op if it runs."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="mpps-sender", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask the sender to stop and wait for it. A send in flight finishes first (at most
        about `dimse_timeout_s` per message); unsent work stays in the journal."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s if timeout_s is not None else 2 * self._dimse_timeout_s + 5)
            if thread.is_alive():
                logger.warning("MPPS sender still busy after stop; it is a daemon thread and "
                               "its work is journaled")

    # --- the caller's operations -----------------------------------------------------------

    def begin(
        self,
        order: Order,
        *,
        modality: str,
        started_at: datetime,
        protocol_name: str,
        description: str | None = None,
        study_id: str = "",
        performed_protocol_codes: Sequence[Code] | None = None,
    ) -> ProcedureStep:
        """Begin a performed procedure step: journal it, then N-CREATE IN PROGRESS (sent by the
        background sender). Call it at the first acquisition of the procedure.

        Parameters
        ----------
        order
            The worklist item or unscheduled order. Without a Study Instance UID (unscheduled)
            one is minted; the returned step's `order` carries it: build the images from it.
            Passing a step's `order` again begins the append case: a new MPPS in the same
            study.
        modality
            Modality (0008,0060), as in the images.
        started_at
            PPS Start Date/Time; naive = local wall-clock time.
        protocol_name
            Protocol Name (Type 1) of the series added without one.
        description
            PPS Description (0040,0254); default: the order's SPS Description, else its
            Requested Procedure Description.
        study_id
            Study ID (0020,0010), as in the images; "" if none.
        performed_protocol_codes
            Performed Protocol Code Sequence: the protocol actually performed, as confirmed by
            the technologist or reported by the driver. Default: empty (Type 2, zero length):
            the schedule says what was asked for, not what was done, and the scheduled codes
            are already sent in Scheduled Step Attributes Sequence.

        Returns
        -------
        ProcedureStep
            Durably journaled; `image_references()` gives what each image must carry.

        Raises
        ------
        MppsValueError
            If a value cannot be sent (nothing is journaled).
        MppsJournalError
            If the journal cannot be written (nothing is journaled).
        """
        if not isinstance(started_at, datetime):
            raise MppsValueError(f"MPPS: started_at must be a datetime, got "
                                 f"{type(started_at).__name__}")
        _check_order(order)
        _check_text("Modality", modality, 16, required=True)
        _check_text("ProtocolName", protocol_name, 64, required=True)
        if order.study_instance_uid:
            study_uid = order.study_instance_uid
        else:
            study_uid = self._uids.new_uid()
            order = replace(order, study_instance_uid=study_uid)
        uid = self._uids.new_uid()
        start_date, start_time = dicom_date_time(started_at)
        if description is None:
            description = order.sps_description or order.requested_procedure_description
        # never copied from the schedule: a repeated or changed view would be reported as
        # performed as scheduled (issue 16 item 3)
        codes = tuple(performed_protocol_codes or ())
        step = ProcedureStep(
            sop_instance_uid=uid,
            pps_id=_pps_id(uid, start_date, start_time),
            order=order,
            modality=modality,
            start_date=start_date,
            start_time=start_time,
            description=description,
            protocol_name=protocol_name,
        )
        record = MppsRecord(
            step=step,
            station_ae_title=self._ae_title,
            station_name=self._station_name,
            location=self._location,
            study_id=study_id,
            procedure_codes=order.requested_procedure_codes,
            performed_protocol_codes=codes,
        )
        n_create_dataset(record)         # every value checked before anything is recorded
        with self._wake:
            self._journal.write(record)
            self._records[uid] = record
            self._deliveries[uid] = _Delivery()
            self._wake.notify_all()
        logger.info("MPPS %s (PPS ID %s): begun in study %s, N-CREATE queued", uid,
                    step.pps_id, study_uid)
        return step

    def add_series(
        self,
        step: ProcedureStep | str,
        series_instance_uid: str,
        images: Iterable[ImageRef],
        *,
        protocol_name: str | None = None,
        series_description: str = "",
        performing_physician_name: str = "",
        operator_name: str = "",
        retrieve_ae_title: str = "",
    ) -> None:
        """Record a series (and its images) as performed in this step. Calling it again with
        the same series UID adds the new images to that series and updates its other values.
        Sent with the final N-SET.

        Parameters
        ----------
        step
            The step, or its SOP Instance UID.
        series_instance_uid
            A series belongs to one step only (IHE SWF: a series never spans steps).
        images
            (SOP Class UID, SOP Instance UID) of each image, or SOPReference.
        protocol_name
            Protocol Name (Type 1); default: the step's.
        series_description, performing_physician_name, operator_name, retrieve_ae_title
            Type 2 values of the Performed Series Sequence item; "" = unknown.

        Raises
        ------
        UnknownProcedureStep
            If no open step has that UID.
        MppsStateError
            If the step is already COMPLETED or DISCONTINUED.
        MppsValueError
            If a value cannot be sent, or the series belongs to another step.
        MppsJournalError
            If the journal cannot be written (nothing is changed).
        """
        uid = _uid_of(step)
        refs = tuple(_image_ref(image) for image in images)
        if not is_valid_uid(series_instance_uid):
            raise MppsValueError(f"MPPS {uid}: SeriesInstanceUID {series_instance_uid!r} is not "
                                 "a valid UID")
        with self._wake:
            record = self._open_record(uid)
            if record.final_status is not None:
                raise MppsStateError(
                    f"MPPS {uid} is {record.final_status.value}; a final step cannot take more "
                    "series (PS3.4 F.7.2.2.2): begin a new one with the same order")
            for other in self._records.values():
                if other is not record and any(s.series_instance_uid == series_instance_uid
                                               for s in other.series):
                    raise MppsValueError(
                        f"MPPS {uid}: series {series_instance_uid} already belongs to MPPS "
                        f"{other.step.sop_instance_uid}; a series never spans steps")
            series_list = list(record.series)
            index = next((i for i, s in enumerate(series_list)
                          if s.series_instance_uid == series_instance_uid), None)
            previous = series_list[index] if index is not None else None
            known = {r.sop_instance_uid for r in previous.images} if previous else set()
            merged = (previous.images if previous else ()) + tuple(
                r for r in dict.fromkeys(refs) if r.sop_instance_uid not in known)
            series = PerformedSeries(
                series_instance_uid=series_instance_uid,
                protocol_name=protocol_name if protocol_name is not None
                else record.step.protocol_name,
                series_description=series_description,
                performing_physician_name=performing_physician_name,
                operator_name=operator_name,
                retrieve_ae_title=retrieve_ae_title,
                images=merged,
            )
            performed_series_item(series, index if index is not None else len(series_list))
            if index is None:
                series_list.append(series)
            else:
                series_list[index] = series
            self._write(replace(record, series=series_list))
        logger.info("MPPS %s: series %s recorded with %d image(s)", uid, series_instance_uid,
                    len(merged))

    def withdraw_images(self, step: ProcedureStep | str, sop_instance_uids: Iterable[str]) -> int:
        """Leave these images out of the step's series (rejected ones: the MPPS of an open
        procedure must not list them, IHE IOCM). Each series item stays, maybe with no image.
        Returns how many references were removed.

        Raises
        ------
        UnknownProcedureStep
            If no open step has that UID.
        MppsStateError
            If the step is already final (its N-SET is on its way).
        MppsJournalError
            If the journal cannot be written (nothing is changed).
        """
        uid = _uid_of(step)
        withdrawn = set(sop_instance_uids)
        with self._wake:
            record = self._open_record(uid)
            self._check_in_progress(record)
            series = [replace(s, images=tuple(r for r in s.images
                                              if r.sop_instance_uid not in withdrawn))
                      for s in record.series]
            removed = record.image_count - sum(len(s.images) for s in series)
            if removed:
                self._write(replace(record, series=series))
        if removed:
            logger.info("MPPS %s: %d rejected image(s) left out", uid, removed)
        return removed

    def complete(self, step: ProcedureStep | str, *, ended_at: datetime | None = None) -> None:
        """End the step as COMPLETED: the final N-SET (sent in the background) lists every
        series and image added.

        Parameters
        ----------
        step
            The step, or its SOP Instance UID.
        ended_at
            PPS End Date/Time; default: now (local time).

        Raises
        ------
        UnknownProcedureStep
            If no open step has that UID.
        MppsStateError
            If the step is already final, or no image was added (a step that made no image
            is DISCONTINUED, PS3.4 F.7.2.2.2).
        MppsJournalError
            If the journal cannot be written (nothing is changed).
        """
        uid = _uid_of(step)
        with self._wake:
            record = self._open_record(uid)
            self._check_in_progress(record)
            if record.image_count == 0:
                raise MppsStateError(f"MPPS {uid}: no image recorded; COMPLETED needs the list "
                                     "of images made, a step without any is discontinued")
            end_date, end_time = dicom_date_time(ended_at or datetime.now())
            self._write(replace(record, final_status=PPSStatus.COMPLETED, end_date=end_date,
                                end_time=end_time))
            self._wake.notify_all()
        logger.info("MPPS %s: COMPLETED, N-SET queued", uid)

    def discontinue(self, step: ProcedureStep | str, reason: Code | None, *,
                    ended_at: datetime | None = None) -> None:
        """End the step as DISCONTINUED, with a reason (CID 9300/9301, see `agent.mpps.codes`)
        in PPS Discontinuation Reason Code Sequence. The final N-SET lists every series and
        image added; a step without any series gets one empty series (PS3.4 Table F.7.2-1
        note 2: a series must exist, it may hold no image).

        Parameters
        ----------
        step
            The step, or its SOP Instance UID.
        reason
            The reason code; None sends the sequence empty.
        ended_at
            PPS End Date/Time; default: now (local time).

        Raises
        ------
        UnknownProcedureStep
            If no open step has that UID.
        MppsStateError
            If the step is already final.
        MppsValueError
            If the reason code cannot be sent.
        MppsJournalError
            If the journal cannot be written (nothing is changed).
        """
        uid = _uid_of(step)
        with self._wake:
            record = self._open_record(uid)
            self._check_in_progress(record)
            series = list(record.series)
            if not series:
                series.append(PerformedSeries(self._uids.new_uid(), record.step.protocol_name))
            end_date, end_time = dicom_date_time(ended_at or datetime.now())
            final = replace(record, series=series, final_status=PPSStatus.DISCONTINUED,
                            end_date=end_date, end_time=end_time,
                            discontinuation_reason=reason)
            final_n_set_dataset(final)       # the reason code is checked here
            self._write(final)
            self._wake.notify_all()
        logger.info("MPPS %s: DISCONTINUED (%s), N-SET queued", uid,
                    reason.value if reason else "no reason given")

    def status(self) -> list[MppsStatus]:
        """Every open step: IN PROGRESS, final but not yet acknowledged, or refused for good."""
        now = time.monotonic()
        with self._lock:
            result = []
            for uid, record in self._records.items():
                delivery = self._deliveries[uid]
                pending = record.pending
                next_in: float | None = None
                if pending is not Pending.NOTHING and not record.failed:
                    next_in = max(0.0, delivery.next_attempt_mono - now)
                result.append(MppsStatus(
                    sop_instance_uid=uid,
                    pps_id=record.step.pps_id,
                    study_instance_uid=record.step.study_instance_uid,
                    state=record.state,
                    pending=pending,
                    series=len(record.series),
                    images=record.image_count,
                    attempts=delivery.attempts,
                    last_error=record.failed or delivery.last_error,
                    failed=bool(record.failed),
                    next_attempt_in_s=next_in,
                ))
            return result

    def open_steps(self) -> list[ProcedureStep]:
        """The steps still IN PROGRESS (e.g. found in the journal after a restart): the daemon
        completes or discontinues them."""
        with self._lock:
            return [r.step for r in self._records.values() if r.final_status is None]

    def retry(self, step: ProcedureStep | str) -> None:
        """Send a step refused for good (`failed` in `status`) again, now.

        Raises
        ------
        UnknownProcedureStep
            If no open step has that UID.
        MppsJournalError
            If the journal cannot be written.
        """
        uid = _uid_of(step)
        with self._wake:
            record = self._open_record(uid)
            if record.failed:
                self._write(replace(record, failed=""))
            self._deliveries[uid] = _Delivery()
            self._wake.notify_all()

    # --- internals: state ------------------------------------------------------------------

    def _open_record(self, uid: str) -> MppsRecord:
        record = self._records.get(uid)
        if record is None:
            raise UnknownProcedureStep(f"no open MPPS {uid}")
        return record

    @staticmethod
    def _check_in_progress(record: MppsRecord) -> None:
        if record.final_status is not None:
            raise MppsStateError(f"MPPS {record.step.sop_instance_uid} is already "
                                 f"{record.final_status.value}")

    def _write(self, record: MppsRecord) -> None:
        """Journal first, memory second (under the lock): a failed write changes nothing."""
        self._journal.write(record)
        self._records[record.step.sop_instance_uid] = record

    # --- internals: the sender -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                due, wait_s = self._due(time.monotonic())
                if not due:
                    self._wake.wait(wait_s)
                    continue
            try:
                self._send_round(due)
            except Exception as err:
                # a dead sender would leave every MPPS unsent with nothing shown: keep it
                # alive, back off, and say what broke (pynetdicom raises builtins)
                logger.exception("MPPS sender: unexpected %s", type(err).__name__)
                self._failed_attempt(due, f"internal error: {type(err).__name__}: {err}")

    def _due(self, now: float) -> tuple[list[str], float | None]:
        """UIDs with something due now, else how long until the next one (None: nothing)."""
        due: list[str] = []
        earliest: float | None = None
        for uid, record in self._records.items():
            if record.failed or record.pending is Pending.NOTHING:
                continue
            at = self._deliveries[uid].next_attempt_mono
            if at <= now:
                due.append(uid)
            elif earliest is None or at < earliest:
                earliest = at
        return due, (None if earliest is None else earliest - now)

    def _send_round(self, due: list[str]) -> None:
        config = self._config
        ae = AgentAE(self._ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._dimse_timeout_s
        contexts = [build_context(MPPS_SOP_CLASS_UID,
                                  [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
        try:
            assoc = associate(ae, config.host, config.port, config.called_ae,
                              contexts=contexts, tls=self._tls)
        except AssociationError as err:
            self._failed_attempt(due, f"{config.called_ae}@{config.host}:{config.port}: {err}")
            return
        try:
            if not any(cx.abstract_syntax == MPPS_SOP_CLASS_UID
                       for cx in assoc.accepted_contexts):
                self._failed_attempt(due, f"{config.called_ae} accepted the association but "
                                          "not the MPPS SOP Class (is MPPS enabled for our AE "
                                          "title at the RIS?)")
                return
            for index, uid in enumerate(due):
                if not assoc.is_established:
                    self._failed_attempt(due[index:],
                                         f"{config.called_ae} dropped the association")
                    break
                while self._send_next(assoc, uid) and assoc.is_established:
                    pass
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_next(self, assoc: Association, uid: str) -> bool:
        """Send what `uid` needs next; True if something was acknowledged and more may follow.
        """
        with self._lock:
            record = self._records.get(uid)
            if record is None or record.failed:
                return False
            pending = record.pending
            if pending is Pending.NOTHING:
                return False
            creating = pending is Pending.N_CREATE
            previously_sent = record.create_sent if creating else record.final_sent
            try:
                # checked at begin/complete; fails only for a journal edited by hand
                dataset = n_create_dataset(record) if creating else final_n_set_dataset(record)
            except MppsValueError as err:
                self._refused(uid, str(err))
                return False
            if not previously_sent:
                marked = (replace(record, create_sent=True) if creating
                          else replace(record, final_sent=True))
                if not self._mark_sent(marked):
                    return False
        if creating:
            status, _ = assoc.send_n_create(dataset, MPPS_SOP_CLASS_UID, uid)
            crashpoints.reached(CRASH_AFTER_CREATE_RESPONSE)
        else:
            status, _ = assoc.send_n_set(dataset, MPPS_SOP_CLASS_UID, uid)
            crashpoints.reached(CRASH_AFTER_FINAL_RESPONSE)
        result = classify_mpps_status(status, operation=pending.value)
        return self._record_result(uid, pending, result, previously_sent)

    def _mark_sent(self, record: MppsRecord) -> bool:
        """Journal "may have reached the RIS" before the first send (under the lock); without
        it a resend's 0111H/A710 could not be read, so no journal, no send."""
        try:
            self._write(record)
            return True
        except MppsError as err:
            logger.error("%s; not sent", err)
            self._schedule_retry(self._deliveries[record.step.sop_instance_uid], str(err))
            return False

    def _record_result(self, uid: str, pending: Pending, result: MppsResult,
                       previously_sent: bool) -> bool:
        message = pending.value
        verdict = result.verdict
        if verdict is Verdict.ALREADY:
            if previously_sent:
                # our earlier message reached the RIS; its answer was lost (PS3.4 F.7.2.2.3)
                logger.info("MPPS %s: %s answered %s; the journal says it was sent before: "
                            "counted as acknowledged", uid, message, result.text)
                verdict = Verdict.ACCEPTED
            else:
                reason = (f"{message} refused: {result.text}; "
                          + ("an MPPS with this UID already exists at the RIS"
                             if pending is Pending.N_CREATE else
                             "the RIS has closed this MPPS itself"))
                with self._lock:
                    self._refused(uid, reason)
                return False
        with self._lock:
            record = self._records.get(uid)
            if record is None:
                return False
            delivery = self._deliveries[uid]
            if verdict is Verdict.RETRY:
                self._schedule_retry(delivery, f"{message}: {result.text}")
                logger.warning("MPPS %s: %s not acknowledged (%s); retrying in %.1f s", uid,
                               message, result.text,
                               max(0.0, delivery.next_attempt_mono - time.monotonic()))
                return False
            if verdict is Verdict.REFUSED:
                self._refused(uid, f"{message} refused: {result.text}")
                return False
            delivery.attempts = 0
            delivery.last_error = ""
            delivery.next_attempt_mono = 0.0
            try:
                if pending is Pending.N_CREATE:
                    self._write(replace(record, create_acked=True))
                    logger.info("MPPS %s (PPS ID %s): IN PROGRESS acknowledged by %s (%s)", uid,
                                record.step.pps_id, self._config.called_ae, result.text)
                    return True
                self._journal.remove(uid)
            except MppsError as err:
                # the ack is lost to the journal: the message is sent again and its
                # 0111H/A710 answer, read with the `*_sent` flag, settles it
                self._schedule_retry(delivery, str(err))
                logger.error("%s", err)
                return False
            del self._records[uid]
            del self._deliveries[uid]
            logger.info("MPPS %s (PPS ID %s): %s acknowledged by %s (%s); done", uid,
                        record.step.pps_id, record.state.value, self._config.called_ae,
                        result.text)
            return False

    def _refused(self, uid: str, reason: str) -> None:
        """A refusal that resending cannot fix: kept in the journal and in `status` (under the
        lock) until `retry`."""
        record = self._records[uid]
        delivery = self._deliveries[uid]
        delivery.last_error = reason
        try:
            self._write(replace(record, failed=reason))
        except MppsError as err:
            logger.error("%s", err)
            record.failed = reason       # at least this run stops resending it
        logger.error("MPPS %s (PPS ID %s): %s; not sent again until retried", uid,
                     record.step.pps_id, reason)

    def _failed_attempt(self, uids: Iterable[str], error: str) -> None:
        with self._lock:
            delay = None
            for uid in uids:
                delivery = self._deliveries.get(uid)
                if delivery is not None:
                    delay = self._schedule_retry(delivery, error)
        if delay is not None:
            logger.warning("MPPS: %s; retrying in %.1f s", error, delay)

    def _schedule_retry(self, delivery: _Delivery, error: str) -> float:
        delivery.attempts += 1
        delivery.last_error = error
        delay = min(self._retry_max_s,
                    self._retry_initial_s * 2.0 ** min(delivery.attempts - 1, 30))
        delivery.next_attempt_mono = time.monotonic() + delay
        return delay


# --- checks and helpers ----------------------------------------------------------------------

def _uid_of(step: ProcedureStep | str) -> str:
    return step.sop_instance_uid if isinstance(step, ProcedureStep) else step


def _image_ref(image: ImageRef) -> SOPReference:
    reference = image if isinstance(image, SOPReference) else SOPReference(*image)
    for name, uid in (("SOP Class UID", reference.sop_class_uid),
                      ("SOP Instance UID", reference.sop_instance_uid)):
        if not is_valid_uid(uid):
            raise MppsValueError(f"MPPS: referenced image {name} {uid!r} is not a valid UID")
    return reference


def _check_text(keyword: str, value: object, max_chars: int, *, required: bool = False) -> None:
    try:
        modules.check_text("MPPS", keyword, value, max_chars, required=required)
    except IODError as err:
        raise MppsValueError(str(err)) from err


def _check_order(order: Order) -> None:
    """The order's values as the images would take them; no dummy values when unscheduled.
    Messages name attributes, never patient values (modules.check_patient ensures it)."""
    try:
        modules.check_patient(order)
        modules.check_patient_study(order)
        modules.check_references("MPPS", "ReferencedStudySequence", order.referenced_studies)
        modules.check_codes("MPPS", "RequestedProcedureCodeSequence",
                            order.requested_procedure_codes)
        modules.check_codes("MPPS", "ScheduledProtocolCodeSequence",
                            order.scheduled_protocol_codes)
        if order.study_instance_uid is not None:
            modules.check_uid("MPPS", "StudyInstanceUID", order.study_instance_uid)
    except IODError as err:
        raise MppsValueError(str(err)) from err
    if order.scheduled and not order.study_instance_uid:
        raise MppsValueError("MPPS: StudyInstanceUID missing from a scheduled order; the "
                             "worklist's UID must be used, never a new one")
    if not order.scheduled:
        # IHE SWF unscheduled case: these stay empty; a made-up value would mislead the RIS
        for keyword, value in (("AccessionNumber", order.accession_number),
                               ("RequestedProcedureID", order.requested_procedure_id),
                               ("ScheduledProcedureStepID", order.sps_id)):
            if value:
                raise MppsValueError(f"MPPS: {keyword} {value!r} given for an unscheduled "
                                     "order; an unscheduled step leaves it empty (IHE SWF)")


def _pps_id(uid: str, start_date: str, start_time: str) -> str:
    """Performed Procedure Step ID (SH, 16 characters): start time to the second, plus four
    hex digits of the MPPS UID's hash, so two steps begun in the same second differ."""
    return f"{start_date[2:]}{start_time[:6]}{hashlib.sha256(uid.encode()).hexdigest()[:4]}" \
        .upper()
