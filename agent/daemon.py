"""The daemon: the composition root. It builds the device, the queue, the forwarder (and its
sending processes), the listener, the station (agent.station: the use cases) and the API, starts
and stops them. systemd runs `modality-agent run`, which is `Daemon(config).run_forever()`."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.acquisition import Acquisition, ImageSettings, device_info
from agent.api import ApiServer, create_app
from agent.api.security import SecurityPolicy, load_or_create_token
from agent.audit import AlertKind, AuditPeer, AuditTrail, AuditUnavailable, Outcome
from agent.audit.trail import AUDIT_FOLDER
from agent.config import AgentConfig
from agent.dose_report import queue_dose_report
from agent.forwarder import DestinationHealth, DestinationWorker, Forwarder, TransferAudit
from agent.gc_policy import freeze_start_up_objects
from agent.iod import UIDSource, encoder_status
from agent.listener import CommitmentReportHandler, Listener, Refusal
from agent.malloc_policy import fix_mmap_threshold
from agent.metrics import LatencyHistogram
from agent.mpps import MppsClient
from agent.net.stow import check_secret_files
from agent.net.stow import ssl_context as stow_ssl_context
from agent.net.tls import check_tls, peer_tls, server_context, tls_identity
from agent.procedures import Procedure, Procedures
from agent.queue import QueueStore
from agent.queue.spool import observe_fsync, write_durably
from agent.queue.store import read_counts
from agent.routing import archive_groups
from agent.sdnotify import NotifyError, notify, watchdog_interval_s
from agent.service_watchdog import ServiceWatchdog
from agent.spool_location import check_spool_location
from agent.station import (
    Parts,
    Station,
    StationLimits,
    final_state_by_destination,
    total_counts,
)
from agent.stow_forwarder import StowWorker
from agent.watchfolder import WatchFolder
from agent.worklist import WorklistService
from drivers.errors import DriverError
from drivers.registry import driver_class

if TYPE_CHECKING:
    from pydicom import Dataset

logger = logging.getLogger(__name__)

#: how often committed objects past their retention time are removed
PURGE_INTERVAL_S = 60.0
#: a refusal like one recorded less than this long ago is counted, not recorded again
ALERT_REPEAT_S = 60.0
#: refusal kinds x peers remembered for that (the oldest forgotten first)
ALERT_KEYS = 10_000
#: in the audit spool: the SHA-256 of the config file at the last start (issue 15)
CONFIG_DIGEST_FILE = "config.sha256"


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
    problems.extend(check_spool_location(config))
    problems.extend(check_tls(config))
    problems.extend(check_secret_files(config))
    return problems


class AlertGate:
    """Security Alerts for refusals, with repeats held back: the first refusal of a kind from
    a peer is recorded at once; more like it within `repeat_s` are counted and named in the
    next one recorded after the window, or at `flush()`. A flood of refused connections or
    requests so costs one durable write per peer and minute, not one each.

    Raises AuditUnavailable from `alert` and `flush` when the trail cannot record.
    """

    def __init__(self, trail: AuditTrail, *, repeat_s: float = ALERT_REPEAT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._trail = trail
        self._repeat_s = repeat_s
        self._clock = clock
        self._lock = threading.Lock()
        # (kind, peer host, detail) -> (when last recorded, repeats held back since)
        self._seen: OrderedDict[tuple[AlertKind, str, str], tuple[float, int]] = OrderedDict()
        self._peers: dict[tuple[AlertKind, str, str], AuditPeer | None] = {}

    def alert(self, kind: AlertKind, detail: str, peer: AuditPeer | None) -> None:
        key = (kind, peer.host if peer is not None else "", detail)
        now = self._clock()
        with self._lock:
            last, held = self._seen.get(key, (None, 0))
            if last is not None and now - last < self._repeat_s:
                self._seen[key] = (last, held + 1)
                self._peers[key] = peer
                return
            self._seen[key] = (now, 0)
            self._seen.move_to_end(key)
            self._peers.pop(key, None)
            while len(self._seen) > ALERT_KEYS:
                old, _ = self._seen.popitem(last=False)
                self._peers.pop(old, None)
        if held:
            detail += f" (and {held} more like it held back before this one)"
        self._trail.security_alert(kind, detail, peer)

    def flush(self) -> None:
        """Record the repeats still held back (at stop)."""
        with self._lock:
            pending = [(key, held) for key, (_, held) in self._seen.items() if held]
            for key, _ in pending:
                self._seen[key] = (self._seen[key][0], 0)
        for (kind, _host, detail), held in pending:
            self._trail.security_alert(kind, f"{detail} ({held} more time(s) in the last "
                                             f"{self._repeat_s:g} s)", self._peers.get(
                                                 (kind, _host, detail)))


class AuditHooks:
    """The daemon's parts report events through these callbacks; each becomes an audit event
    (issue 15, docs/audit.md). Refusals are reported after the fact, so a refusal that cannot
    be recorded is logged (no patient data), never turned into an acceptance."""

    def __init__(self, trail: AuditTrail, config: AgentConfig) -> None:
        self.trail = trail
        self.gate = AlertGate(trail)
        self._config = config

    def alert(self, kind: AlertKind, detail: str, peer: AuditPeer | None) -> None:
        self.gate.alert(kind, detail, peer)

    def listener_refused(self, refusal: Refusal) -> None:
        kind = AlertKind.TLS_FAILURE if refusal.kind == "tls" else AlertKind.REFUSED_ASSOCIATION
        peer = AuditPeer(refusal.host or "unknown", refusal.ae_title, refusal.port)
        try:
            self.gate.alert(kind, f"listener {self._config.agent.ae_title}: {refusal.detail}",
                            peer)
        except AuditUnavailable as err:
            logger.error("listener: refusal of %s not audited: %s", refusal.host, err)

    def api_refused(self, reason: str, address: str) -> None:
        host = address.rsplit(":", 1)[0] if ":" in address else address
        try:
            self.gate.alert(AlertKind.REFUSED_API_REQUEST, f"API request refused: {reason}",
                            AuditPeer(host or "unknown"))
        except AuditUnavailable as err:
            logger.error("API: refusal not audited: %s", err)

    def worklist_query(self, identifier: Dataset, error: str | None) -> None:
        wl = self._config.worklist
        assert wl is not None
        self.trail.worklist_query(
            AuditPeer(wl.host, wl.called_ae, wl.port), identifier,
            Outcome.SUCCESS if error is None else Outcome.SERIOUS_FAILURE,
            outcome_description=error or "")

    def mpps(self, action: str, procedure: Procedure) -> None:
        order = procedure.order
        counts: dict[str, int] = {}
        for images in procedure.series.values():
            for image in images:
                counts[image.sop_class_uid] = counts.get(image.sop_class_uid, 0) + 1
        self.trail.procedure_record(
            action, patient_id=order.patient_id, study_uid=order.study_instance_uid or "",
            mpps_uid=procedure.mpps_uid or "", sop_classes=counts,
            accession=order.accession_number or "")


def audit_config_change(trail: AuditTrail, config_path: Path, audit_dir: Path) -> bool:
    """Compare the config file's SHA-256 with the one recorded at the last start; when it
    changed, a Security Alert (Software Configuration, the file as subject); then record the
    new one. The first start records it without an alert. Returns whether it changed.

    Raises
    ------
    AuditUnavailable
        If the alert cannot be recorded (then the new digest is not recorded either).
    """
    digest = hashlib.sha256(config_path.read_bytes()).hexdigest()
    record = audit_dir / CONFIG_DIGEST_FILE
    try:
        previous: str | None = record.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        previous = None
    except (OSError, UnicodeDecodeError) as err:
        logger.warning("%s unreadable (%s): taken as changed", record, err)
        previous = ""
    if previous == digest:
        return False
    changed = previous is not None
    if changed:
        trail.security_alert(
            AlertKind.SOFTWARE_CONFIGURATION,
            f"configuration file changed since the last start (SHA-256 "
            f"{previous or 'unknown'} -> {digest})",
            subject_uri=config_path.resolve().as_uri())
    try:
        write_durably(audit_dir / f".{CONFIG_DIGEST_FILE}.tmp", record,
                      (digest + "\n").encode("ascii"))
    except OSError as err:
        raise AuditUnavailable(f"{record}: cannot record the config digest ({err})") from err
    return changed


class Daemon:
    """The composition root: builds the parts from the config, hands them to the `Station`
    (the use cases) and the API, starts and stops them. It serves nothing itself."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread_errors: dict[str, str] = {}
        self.uids = UIDSource(config.agent.uid_root)
        # every spool fsync timed, for /api/metrics (the queue knows no metrics: it gets a timer)
        self.fsync_histogram = LatencyHistogram()
        observe_fsync(self.fsync_histogram)
        self.queue = QueueStore(config.agent.spool_dir, [d.name for d in config.destinations],
                                groups=archive_groups(config.destinations),
                                min_free_bytes=int(config.queue.min_free_mb * 2**20))
        # the audit trail opens its spool once the spool is locked (_build_after_lock); the
        # parts built before report to it through these methods
        self.audit: AuditTrail | None = None
        self.audit_hooks: AuditHooks | None = None
        self.transfer_audit: TransferAudit | None = None
        self._application_started = False
        self.report_handler = CommitmentReportHandler(
            self.queue, config.destinations,
            retry_commit_s=config.queue.retry_initial_s, on_change=self._notify,
            on_report=self._audit_commitment,
        )
        identity = tls_identity(config)
        self.listener = Listener(
            ae_title=config.agent.ae_title, host=config.listener.host,
            port=config.listener.port, destinations=config.destinations,
            report_handler=self.report_handler,
            # a TLS listener accepts only TLS, from certificates our CAs signed (issue 14)
            ssl_context=(server_context(identity)
                         if config.listener.tls and identity is not None else None),
            verify_peer_address=config.listener.verify_hostname,
            on_refused=self._audit_refusal,
        )
        workers: list[DestinationWorker | StowWorker] = []
        for d in config.destinations:
            health = DestinationHealth(d.name)
            if d.kind == "stow-rs":
                # one thread per DICOMweb destination: requests of up to max_request_mb are
                # streamed from the spool, the thread waits on sockets (GIL released)
                workers.append(StowWorker(
                    d, queue=self.queue, queue_config=config.queue, uids=self.uids,
                    on_change=self._notify, health=health,
                    tls=stow_ssl_context(config) if d.url.startswith("https:") else None))
                continue
            workers += [
                DestinationWorker(d, ae_title=config.agent.ae_title, queue=self.queue,
                                  queue_config=config.queue, uids=self.uids,
                                  report_handler=self.report_handler.handle_report,
                                  on_change=self._notify,
                                  index=i, health=health, tls=peer_tls(config, d))
                # one association per worker: associations are not thread-safe
                for i in range(d.max_associations)
            ]
        self.forwarder = Forwarder(workers, queue=self.queue)
        self.acquisition = Acquisition(
            driver_name=config.device.driver, driver_options=dict(config.device.options),
            device=device_info(config.modality, f"modality-agent {__version__}"),
            queue=self.queue, uids=self.uids, on_queued=self.forwarder.wake,
            image=ImageSettings.from_config(config.modality),
        )
        self.mpps: MppsClient | None = None
        if config.mpps is not None:
            self.mpps = MppsClient(
                config.mpps, ae_title=config.agent.ae_title,
                journal_dir=config.agent.spool_dir / "mpps", uids=self.uids,
                station_name=config.modality.station_name,
                retry_initial_s=config.queue.retry_initial_s,
                retry_max_s=config.queue.retry_max_s,
                tls=peer_tls(config, config.mpps),
            )
        # the procedures file is read when the spool is open and locked (start())
        self.procedures: Procedures | None = None
        self.worklist: WorklistService | None = None
        self.watch_folder: WatchFolder | None = None
        self.station: Station | None = None
        self.api: ApiServer | None = None
        self._purge_thread: threading.Thread | None = None
        self._service_watchdog: ServiceWatchdog | None = None

    def _build_after_lock(self) -> Station:
        """The parts that read spool files: built once the spool is locked by this process,
        so two daemons on one spool can never both read and write them."""
        config = self.config
        hooks = self._build_audit()
        procedures = self.procedures = Procedures(
            uids=self.uids, mpps=self.mpps, modality=config.modality.modality,
            protocol_name=config.modality.protocol_name or config.modality.model_name,
            state_path=config.agent.spool_dir / "procedures.json",
            on_mpps=None if hooks is None else hooks.mpps,
            # an X-ray procedure's dose report (IHE REM) is queued as it ends, before the MPPS
            on_ending=partial(queue_dose_report, self.queue, self.uids,
                              device_info(config.modality, f"modality-agent {__version__}")),
            # a rejected image is no longer listed in the MPPS of an open procedure (IOCM)
            is_rejected=self.queue.rejected_uids)
        if config.worklist is not None:
            wl = config.worklist
            self.worklist = WorklistService(
                wl, ae_title=config.agent.ae_title, modality=config.modality.modality,
                cache_dir=config.agent.spool_dir / "worklist", max_results=wl.max_results,
                days_before=wl.days_before, days_after=wl.days_after,
                fallback_charsets=wl.fallback_charsets, timeout_s=wl.timeout_s,
                acquired=procedures.was_acquired, tls=peer_tls(config, wl),
                on_query=None if hooks is None else hooks.worklist_query,
            )
        api = config.api
        station = Station(
            Parts(config=config, queue=self.queue, acquisition=self.acquisition,
                  forwarder=self.forwarder, listener=self.listener, procedures=procedures,
                  worklist=self.worklist, mpps=self.mpps, thread_health=self.thread_health,
                  fsync_histogram=self.fsync_histogram, audit=self.audit,
                  audit_dir=config.agent.spool_dir / AUDIT_FOLDER),
            StationLimits(max_frames=api.max_frames, import_folders=api.import_folders,
                          max_import_files=api.max_import_files),
            device=device_info(config.modality, f"modality-agent {__version__}"),
            uids=self.uids)
        if config.watch_folder is not None:
            wf = config.watch_folder
            self.watch_folder = WatchFolder(
                wf.path, queue=self.queue, image_order=station.image_order,
                device=device_info(config.modality, f"modality-agent {__version__}"),
                uids=self.uids, settle_s=wf.settle_s, after_import=wf.after_import,
                rescan_s=wf.rescan_s, use_close_events=wf.use_close_events,
                on_queued=lambda _queue_id: self.forwarder.wake(),
                on_image_queued=station.image_queued,
                max_file_bytes=int(wf.max_file_mb * 2**20), retention_s=wf.retention_s)
        token = load_or_create_token(api.token_file)
        policy = SecurityPolicy(token=token, api_host=api.host, api_port=api.port,
                                allowed_hosts=frozenset(api.allowed_hosts))
        self.api = ApiServer(api.host, api.port, create_app(
            station, policy, on_refused=None if hooks is None else hooks.api_refused),
                             max_connections=api.max_connections,
                             idle_timeout_s=api.idle_timeout_s)
        return station

    def _build_audit(self) -> AuditHooks | None:
        """The audit trail (issue 15), its spool in ``<spool>/audit``; None without `[audit]`.

        Raises
        ------
        AuditUnavailable
            If its spool cannot be opened (the daemon does not run unaudited).
        TlsConfigError
            If transport is tls and the `[tls]` identity cannot be loaded.
        """
        config = self.config
        trail = self.audit = AuditTrail(config, config.agent.spool_dir)
        if not trail.enabled:
            return None
        hooks = self.audit_hooks = AuditHooks(trail, config)
        self.transfer_audit = TransferAudit(trail, self.queue, config.destinations,
                                            alert=hooks.alert)
        self.forwarder.set_audit(self.transfer_audit)
        return hooks

    def _audit_commitment(self, destination: str, committed: list[tuple[str, str]],
                          failed: list[tuple[str, str]]) -> None:
        if self.transfer_audit is not None:
            self.transfer_audit.committed(destination, committed, failed)

    def _audit_refusal(self, refusal: Refusal) -> None:
        if self.audit_hooks is not None:
            self.audit_hooks.listener_refused(refusal)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Open the queue (recovering from a crash), then listener, forwarder, device, API.

        Raises
        ------
        AgentError
            If the spool is locked or unusable, or a spool file cannot be read.
        OSError
            If the listener or API address cannot be bound.
        """
        self.queue.open()
        try:
            self.station = self._build_after_lock()
            if self.audit is not None and self.audit.enabled:
                self.audit.start()
                audit_config_change(self.audit, self.config.path,
                                    self.config.agent.spool_dir / AUDIT_FOLDER)
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
            assert self.api is not None
            self.api.start()
            if self.audit is not None:
                # recorded once everything runs: a daemon that cannot audit does not run
                self.audit.application_start()
                self._application_started = True
        except BaseException:
            self.stop()
            raise
        self._purge_thread = threading.Thread(target=self._purge_loop, name="purge",
                                              daemon=True)
        self._purge_thread.start()
        logger.info("modality-agent %s running: AE %s, listener %s:%d, API http://%s:%d/",
                    __version__, self.config.agent.ae_title, self.config.listener.host,
                    self.listener.port, self.config.api.host, self.api.port)
        # systemd (Type=notify): ready only now that every stage runs and the API answers;
        # the watchdog pings only while no stage is stalled (not merely while we live)
        interval_s = watchdog_interval_s()
        if interval_s is not None:
            self._service_watchdog = ServiceWatchdog(self.stalled_stages, interval_s)
            self._service_watchdog.start()
        try:
            notify("READY=1", "STATUS=running")
        except NotifyError as err:
            logger.error("%s", err)

    def stop(self) -> None:
        try:
            notify("STOPPING=1")
        except NotifyError as err:
            logger.error("%s", err)            # stop() must still stop everything
        self._audit_stopping()
        if self._service_watchdog is not None:
            self._service_watchdog.stop()
        self._stop.set()
        if self.api is not None:
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
        if self.audit is not None:
            # last: the stop message and what the parts reported while stopping go out now
            # (within the flush time), or at the next start
            self.audit.stop()
            self.audit = None
        logger.info("modality-agent stopped")

    def _audit_stopping(self) -> None:
        """Repeats of refusals still held back, then Application Stop (if Start was
        recorded); stopping goes on if they cannot be recorded."""
        hooks = self.audit_hooks
        try:
            if hooks is not None:
                hooks.gate.flush()
            if self.audit is not None and self._application_started:
                self._application_started = False
                self.audit.application_stop()
        except AuditUnavailable as err:
            logger.error("audit: the stop could not be recorded: %s", err)

    def run_forever(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        # before the threads start: large transient buffers stay out of glibc's heap
        # (agent.malloc_policy, issue 18 item 4b); here and not in start(), which tests also
        # call inside their own process
        if fix_mmap_threshold():
            logger.debug("malloc: mmap threshold fixed")
        self.start()
        # once: what start-up built lives as long as the daemon (agent.gc_policy); here and
        # not in start(), which tests also call inside their own process
        frozen = freeze_start_up_objects()
        logger.debug("garbage collector: %d start-up objects frozen", frozen)
        try:
            self._stop.wait()
        finally:
            self.stop()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _purge_loop(self) -> None:
        final = final_state_by_destination(self.config)
        while not self._stop.wait(PURGE_INTERVAL_S):
            try:
                purged = self.queue.purge(retention_s=self.config.queue.retention_s,
                                          final_states=final)
                if purged:
                    logger.info("removed %d committed object(s) past retention", purged)
                self._thread_errors.pop("purge", None)
            except Exception as err:  # noqa: BLE001 - the loop must outlive any one pass
                # reported in status; the next pass tries again
                self._thread_errors["purge"] = f"{type(err).__name__}: {err}"
                logger.error("purge failed: %s", self._thread_errors["purge"])

    def stalled_stages(self) -> list[str]:
        """The stages that stopped making progress: a forwarder round without an outcome for
        far longer than its timeouts allow, a listener whose thread ended, an acquisition
        whose device read hangs, a background thread that died. An archive that is merely
        down is not a stall (its backoff is a declared wait). No patient data."""
        problems = [*self.forwarder.stalled(), self.listener.stalled(),
                    self.acquisition.heartbeat.stalled()]
        problems += [f"{name}: thread ended" for name, h in self.thread_health().items()
                     if not h.get("alive", True)]
        return [p for p in problems if p]

    def thread_health(self) -> dict[str, dict[str, Any]]:
        """The background threads, for `status`: each alive, and its last error if any."""
        health: dict[str, dict[str, Any]] = {}
        if self._purge_thread is not None:
            health["purge"] = {"alive": self._purge_thread.is_alive(),
                               "error": self._thread_errors.get("purge", "")}
        if self.watch_folder is not None:
            health["watch_folder"] = {"alive": self.watch_folder.running,
                                      "error": self.watch_folder.last_error}
        if self.worklist is not None:
            health["worklist"] = self.worklist.thread_health()
        return health


def offline_status(config: AgentConfig) -> dict[str, Any]:
    """`status` when the daemon is down: read the spool directly, read-only."""
    db = Path(config.agent.spool_dir) / "queue.db"
    counts = read_counts(db) if db.exists() else {}
    return {
        "agent": {"ae_title": config.agent.ae_title, "version": __version__, "running": False},
        "destinations": [{"name": d.name, "queue": counts.get(d.name, {})}
                         for d in config.destinations],
        "queue": total_counts(counts),
    }


__all__ = ["Daemon", "offline_status", "preflight"]
