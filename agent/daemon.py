"""The daemon: one process owning the device, the queue, the forwarder, the listener and the
API. systemd runs `modality-agent run`, which is `Daemon(config).run_forever()`."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.acquisition import Acquisition, ImageSettings, device_info
from agent.api import ApiServer
from agent.config import AgentConfig
from agent.errors import AcquisitionError, AgentError
from agent.forwarder import DestinationHealth, DestinationWorker, Forwarder
from agent.importer import expand_paths, read_dicom_file
from agent.iod import UIDSource, encoder_status
from agent.listener import CommitmentReportHandler, Listener
from agent.mpps import MppsClient
from agent.procedures import EndStatus, ProcedureError, Procedures, check_end
from agent.queue import QueueStore
from agent.queue.store import read_counts
from agent.records import DELIVERED_STATES, DeliveryState, Order, SOPReference
from agent.watchfolder import WatchFolder
from agent.worklist import WorklistError, WorklistItem, WorklistService
from drivers.errors import DriverError
from drivers.registry import driver_class

logger = logging.getLogger(__name__)

#: how often committed objects past their retention time are removed
PURGE_INTERVAL_S = 60.0


def preflight(config: AgentConfig) -> list[str]:
    """Checks beyond the config file's own syntax: driver options, spool folder.

    Returns the problems, in the `file: [section] key: ...` form.
    """
    problems: list[str] = []
    name = config.path.name
    try:
        driver_class(config.device.driver).validate_options(dict(config.device.options))
    except DriverError as err:
        for part in str(err).split("; "):
            problems.append(f"{name}: [device.options] {part}")
    modality = config.modality
    encoder = encoder_status(modality.transfer_syntax)
    if not encoder.available:
        problems.append(f"{name}: [modality] transfer_syntax: expected an encoder installed "
                        f"here, got {modality.transfer_syntax!r} ({encoder.reason})")
    if modality.iod == "dx" and not modality.patient_orientation:
        problems.append(f"{name}: [modality] patient_orientation: expected two directions "
                        f"such as [\"L\", \"F\"] (Type 1 in DX images), got nothing")
    if modality.iod == "video-photographic" and not modality.anatomic_region:
        problems.append(f"{name}: [modality] anatomic_region: expected [code, scheme, "
                        f"meaning] (required for video-photographic images), got nothing")
    spool = config.agent.spool_dir
    existing = spool
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"{name}: [agent] spool_dir: expected a folder this user can write, "
                        f"got {str(spool)!r} ({existing} is not writable)")
    return problems


def final_state_by_destination(config: AgentConfig) -> dict[str, DeliveryState]:
    return {
        d.name: DeliveryState.COMMITTED if d.storage_commitment else DeliveryState.SENT
        for d in config.destinations
    }


def summarize_object(states: dict[str, DeliveryState],
                     final: dict[str, DeliveryState]) -> dict[str, Any]:
    """One object's view over its destinations: the least advanced state, and `done` when
    every destination holds it as finally as it can (committed, or stored without
    commitment)."""
    order = [DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.SENT,
             DeliveryState.COMMIT_REQUESTED, DeliveryState.COMMITTED]
    if any(s is DeliveryState.FAILED for s in states.values()):
        overall = DeliveryState.FAILED
    elif states:
        overall = min(states.values(), key=order.index)
    else:
        overall = DeliveryState.PENDING
    done = bool(states) and all(
        s is final.get(dest) or (s in DELIVERED_STATES and final.get(dest) is DeliveryState.SENT)
        for dest, s in states.items()
    )
    return {"state": overall.value, "done": done,
            "destinations": {dest: s.value for dest, s in states.items()}}


class Daemon:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self.uids = UIDSource(config.agent.uid_root)
        self.queue = QueueStore(config.agent.spool_dir, [d.name for d in config.destinations],
                                min_free_bytes=int(config.queue.min_free_mb * 2**20))
        self._final = final_state_by_destination(config)
        self.report_handler = CommitmentReportHandler(
            self.queue, config.destinations,
            retry_commit_s=config.queue.retry_initial_s, on_change=self._notify,
        )
        self.listener = Listener(
            ae_title=config.agent.ae_title, host=config.listener.host,
            port=config.listener.port, destinations=config.destinations,
            report_handler=self.report_handler,
        )
        workers = []
        for d in config.destinations:
            health = DestinationHealth(d.name)
            workers += [
                DestinationWorker(d, ae_title=config.agent.ae_title, queue=self.queue,
                                  queue_config=config.queue, uids=self.uids,
                                  report_handler=self.report_handler.handle_report,
                                  on_change=self._notify,
                                  index=i, health=health)
                # one association per worker: associations are not thread-safe
                for i in range(d.max_associations)
            ]
        self.forwarder = Forwarder(workers)
        self.acquisition = Acquisition(
            driver_name=config.device.driver, driver_options=dict(config.device.options),
            device=device_info(config.modality, f"modality-agent {__version__}"),
            queue=self.queue, uids=self.uids, on_queued=self.forwarder.wake,
            image=ImageSettings.from_config(config.modality),
        )
        self.worklist: WorklistService | None = None
        if config.worklist is not None:
            wl = config.worklist
            self.worklist = WorklistService(
                wl, ae_title=config.agent.ae_title, modality=config.modality.modality,
                cache_dir=config.agent.spool_dir / "worklist", max_results=wl.max_results,
                days_before=wl.days_before, days_after=wl.days_after,
                fallback_charsets=wl.fallback_charsets, timeout_s=wl.timeout_s,
            )
        self.mpps: MppsClient | None = None
        if config.mpps is not None:
            self.mpps = MppsClient(
                config.mpps, ae_title=config.agent.ae_title,
                journal_dir=config.agent.spool_dir / "mpps", uids=self.uids,
                station_name=config.modality.station_name,
                retry_initial_s=config.queue.retry_initial_s,
                retry_max_s=config.queue.retry_max_s,
            )
        self.procedures = Procedures(uids=self.uids, mpps=self.mpps,
                                     modality=config.modality.modality,
                                     protocol_name=f"{config.modality.model_name} default")
        self.watch_folder: WatchFolder | None = None
        if config.watch_folder is not None:
            wf = config.watch_folder
            self.watch_folder = WatchFolder(
                wf.path, queue=self.queue, image_order=self._image_order,
                device=device_info(config.modality, f"modality-agent {__version__}"),
                uids=self.uids, settle_s=wf.settle_s, after_import=wf.after_import,
                rescan_s=wf.rescan_s, use_close_events=wf.use_close_events,
                on_queued=lambda _queue_id: self.forwarder.wake(),
                on_image_queued=self._image_queued)
        self.api = ApiServer(config.api.host, config.api.port, self)
        self._purge_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Open the queue (recovering from a crash), then listener, forwarder, device, API.

        Raises
        ------
        AgentError
            If the spool is locked or unusable.
        OSError
            If the listener or API address cannot be bound.
        """
        self.queue.open()
        try:
            self.forwarder.launch()
            self.listener.start()
            self.acquisition.open()
            if self.worklist is not None:
                self.worklist.start()
            if self.mpps is not None:
                self.mpps.start()
            if self.watch_folder is not None:
                self.watch_folder.start()
            self.forwarder.start()
            self.api.start()
        except BaseException:
            self.stop()
            raise
        self._purge_thread = threading.Thread(target=self._purge_loop, name="purge",
                                              daemon=True)
        self._purge_thread.start()
        logger.info("modality-agent %s running: AE %s, listener %s:%d, API http://%s:%d/",
                    __version__, self.config.agent.ae_title, self.config.listener.host,
                    self.listener.port, self.config.api.host, self.api.port)

    def stop(self) -> None:
        self._stop.set()
        self.api.stop()
        if self.worklist is not None:
            self.worklist.stop()
        if self.mpps is not None:
            self.mpps.stop()
        if self.watch_folder is not None:
            self.watch_folder.stop()
        self.forwarder.stop()
        self.listener.stop()
        self.acquisition.close()
        if self._purge_thread is not None:
            self._purge_thread.join(timeout=5)
        self.queue.close()
        logger.info("modality-agent stopped")

    def run_forever(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.start()
        try:
            self._stop.wait()
        finally:
            self.stop()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _purge_loop(self) -> None:
        while not self._stop.wait(PURGE_INTERVAL_S):
            try:
                purged = self.queue.purge(retention_s=self.config.queue.retention_s,
                                          final_states=self._final)
                if purged:
                    logger.info("removed %d committed object(s) past retention", purged)
            except AgentError as err:
                logger.error("purge failed: %s", err)

    def _destination_status(self, health: dict[str, Any],
                            counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        name = health["name"]
        oldest = self.queue.oldest_pending_at(name)
        return {
            **health,
            "queue": counts.get(name, {}),
            "oldest_pending_at": oldest,
            "oldest_pending_age_s": None if oldest is None else round(time.time() - oldest, 1),
            "open_commitment_requests": self.queue.open_transactions(name),
        }

    def _spool_status(self) -> dict[str, Any]:
        free = self.queue.free_bytes()
        return {"path": str(self.config.agent.spool_dir), "free_mb": free // 2**20,
                "min_free_mb": self.config.queue.min_free_mb,
                "capture_blocked": free < self.queue.min_free_bytes}

    # -- what the API serves -----------------------------------------------------------------
    def worklist_item(self, *, accession: str | None = None,
                      sps_id: str | None = None) -> WorklistItem:
        """The worklist entry to acquire for.

        Raises
        ------
        AcquisitionError
            No worklist configured, or the entry is not found / ambiguous.
        """
        if self.worklist is None:
            raise AcquisitionError("no [worklist] configured: use an unscheduled acquisition")
        try:
            return self.worklist.find(accession=accession, sps_id=sps_id)
        except WorklistError as err:
            raise AcquisitionError(str(err)) from err

    def acquire(self, order: Order, frames: int, item: WorklistItem | None = None, *,
                procedure_id: str | None = None, end: EndStatus | None = None,
                end_reason: str = "") -> dict[str, Any]:
        """Acquire into the procedure in progress for this order (started if there is none),
        and end it afterwards if `end` is given.

        Raises
        ------
        AcquisitionError
            When nothing could be captured, or the procedure cannot be started.
        """
        warning = ""
        if item is not None and item.is_duplicate:
            # marked, not refused: a repeat exposure is sometimes what the doctor ordered
            warning = f"worklist entry {item.describe()}: {item.duplicate_reason}"
            logger.warning("acquiring again for %s", warning)
        try:
            if end is not None:
                check_end(end, end_reason)      # refused before a frame is taken
            procedure = (self.procedures.get(procedure_id) if procedure_id
                         else self.procedures.open_for(order))
        except ProcedureError as err:
            raise AcquisitionError(str(err)) from err
        if procedure.state != "in_progress":
            raise AcquisitionError(f"procedure {procedure.procedure_id} is {procedure.state}")
        result = self.acquisition.acquire(procedure.order, frames)
        self.procedures.record_series(procedure, result.series_instance_uid, [
            SOPReference(o.sop_class_uid, o.sop_instance_uid) for o in result.objects])
        if item is not None and self.worklist is not None:
            self.worklist.mark_acquired(*item.key)
        self.forwarder.wake()
        if end is not None:
            try:
                self.procedures.end(procedure.procedure_id, end, end_reason)
            except ProcedureError as err:
                warning = (warning + "; " if warning else "") + str(err)
        objects = self.objects([o.queue_id for o in result.objects])
        return {"warning": warning, "procedure": procedure.as_json(),
                "study_instance_uid": result.study_instance_uid,
                "series_instance_uid": result.series_instance_uid,
                "objects": objects, "error": result.error,
                "dropped_frames": result.dropped_frames}

    def _image_order(self) -> Order | None:
        """The patient for an image dropped into the watch folder: the procedure in progress
        if there is exactly one; otherwise none, and the image is refused (never guessed)."""
        in_progress = [p for p in self.procedures.all() if p.state == "in_progress"]
        return in_progress[0].order if len(in_progress) == 1 else None

    def _image_queued(self, order: Order, series_instance_uid: str,
                      image: SOPReference) -> None:
        for procedure in self.procedures.all():
            if procedure.state == "in_progress" and procedure.order == order:
                self.procedures.record_series(procedure, series_instance_uid, [image])

    def start_procedure(self, order: Order) -> dict[str, Any]:
        """The procedure in progress for this order, or a new one (MPPS IN PROGRESS)."""
        try:
            return self.procedures.open_for(order).as_json()
        except ProcedureError as err:
            raise AcquisitionError(str(err)) from err

    def retry(self, queue_ids: Sequence[int]) -> int:
        """Failed rows of these objects back to pending now (the console's retry button).

        Raises
        ------
        UnknownQueueItemError
            For an id the queue does not hold.
        """
        count = self.queue.retry(list(queue_ids))
        self.forwarder.wake()
        logger.info("retry requested for queue item(s) %s: %d row(s)", list(queue_ids), count)
        return count

    def recent_objects(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest objects with their state per destination, for the live queue view."""
        return self.objects(self.queue.recent_queue_ids(limit))

    def import_files(self, paths: Sequence[Path]) -> list[dict[str, Any]]:
        """Queue existing DICOM files; one result per file, refused ones with the reason."""
        results: list[dict[str, Any]] = []
        for path in expand_paths(list(paths)):
            try:
                item = read_dicom_file(path)
                queued = self.queue.enqueue(
                    item.payload, sop_instance_uid=item.sop_instance_uid,
                    sop_class_uid=item.sop_class_uid,
                    transfer_syntax_uid=item.transfer_syntax_uid)
            except AgentError as err:
                logger.warning("import refused: %s", err)
                results.append({"path": str(path), "error": str(err)})
                continue
            logger.info("queue item %d: imported %s as %s", queued.queue_id, path.name,
                        queued.sop_instance_uid)
            results.append({"path": str(path), "queue_id": queued.queue_id,
                            "sop_instance_uid": queued.sop_instance_uid})
        self.forwarder.wake()
        return results

    def objects(self, queue_ids: Sequence[int]) -> list[dict[str, Any]]:
        by_object: dict[int, dict[str, DeliveryState]] = {q: {} for q in queue_ids}
        uids: dict[int, str] = {}
        errors: dict[int, list[str]] = {}
        queued_at: dict[int, float] = {}
        last_change_at: dict[int, float] = {}
        for d in self.queue.deliveries(queue_ids=queue_ids, limit=100_000):
            by_object[d.queue_id][d.destination] = d.state
            uids[d.queue_id] = d.sop_instance_uid
            queued_at[d.queue_id] = d.created_at
            last_change_at[d.queue_id] = max(last_change_at.get(d.queue_id, 0.0), d.updated_at)
            if d.last_error:
                errors.setdefault(d.queue_id, []).append(f"{d.destination}: {d.last_error}")
        result = []
        for q in queue_ids:
            summary = summarize_object(by_object[q], self._final)
            result.append({
                "queue_id": q, "sop_instance_uid": uids.get(q, ""), **summary,
                "queued_at": queued_at.get(q),
                # when the last destination reached its final state
                "done_at": last_change_at.get(q) if summary["done"] else None,
                "errors": errors.get(q, []),
            })
        return result

    def status(self) -> dict[str, Any]:
        counts = self.queue.counts()
        device = self.acquisition.status()
        return {
            "agent": {"ae_title": self.config.agent.ae_title, "version": __version__,
                      "uptime_s": round(time.time() - self.started_at, 1), "running": True},
            "device": {"driver": device.name, "connected": device.is_open and device.online,
                       "detail": device.detail,
                       "frames_read": device.frames_read,
                       "frames_dropped": self.acquisition.dropped_total,
                       "last_frame_at": device.last_frame_t_wall,
                       "error": self.acquisition.last_error},
            "listener": {"host": self.config.listener.host, "port": self.listener.port},
            "spool": self._spool_status(),
            "destinations": [self._destination_status(health, counts)
                             for health in self.forwarder.health()],
            "queue": _total(counts),
            "worklist": self._worklist_status(),
            "procedures": [p.as_json() for p in self.procedures.all()
                           if p.state == "in_progress"],
            "mpps": None if self.mpps is None else [
                {"uid": s.sop_instance_uid, "pps_id": s.pps_id, "state": str(s.state),
                 "pending": str(s.pending), "images": s.images,
                 "attempts": s.attempts, "last_error": s.last_error, "failed": s.failed}
                for s in self.mpps.status()],
        }

    def _worklist_status(self) -> dict[str, Any] | None:
        if self.worklist is None:
            return None
        snapshot = self.worklist.snapshot()
        return {"source": snapshot.source, "age_s": snapshot.age_s,
                "items": len(snapshot.items), "truncated": snapshot.truncated,
                "error": snapshot.error, "summary": snapshot.summary}


def _total(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    total = {s.value: 0 for s in DeliveryState}
    for per_state in counts.values():
        for state, n in per_state.items():
            total[state] = total.get(state, 0) + n
    return total


def offline_status(config: AgentConfig) -> dict[str, Any]:
    """`status` when the daemon is down: read the spool directly, read-only."""
    db = Path(config.agent.spool_dir) / "queue.db"
    counts = read_counts(db) if db.exists() else {}
    return {
        "agent": {"ae_title": config.agent.ae_title, "version": __version__, "running": False},
        "destinations": [{"name": d.name, "queue": counts.get(d.name, {})}
                         for d in config.destinations],
        "queue": _total(counts),
    }


__all__ = ["AcquisitionError", "Daemon", "offline_status", "preflight"]
