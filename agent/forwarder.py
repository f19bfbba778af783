"""The forwarder: sends queued objects to each destination by C-STORE over an association kept
open while the queue has work, and asks for Storage Commitment on it, one request per
destination per commitment window (COMMIT_WINDOW_S) for what all its associations stored.

`max_associations` worker threads per destination, each driving one association held by its
own sending process (agent.net.store_process): pynetdicom is CPU-bound and threads share one
GIL with the capture thread. The workers keep everything durable here — claims, outcomes,
transactions — and the process only talks DICOM. Spooled files are streamed as they are: same
bytes, same UID on every resend, and no decode on the hot path. With `tls`, every association
(C-STORE and the commitment request on it) is DICOM TLS; a failed handshake is retried with
backoff, its reason in `status`, and never replaced by plaintext.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.sop_class import StorageCommitmentPushModel

from agent import crashpoints
from agent.audit import AlertKind, AuditPeer, AuditTrail, AuditUnavailable, Outcome
from agent.audit.study_ref import UNKNOWN, StudyRef, read_study_ref  # noqa: F401
from agent.config import DestinationSection, QueueSection
from agent.errors import AgentError, AssociationError, TlsHandshakeError
from agent.heartbeat import Heartbeat, stall_point
from agent.iod.uids import UIDSource
from agent.net import status as dimse_status
from agent.net.status import StoreResult, StoreVerdict, classify_store_status
from agent.net.store_process import (
    AssociationRequest,
    ReportHandler,
    SendError,
    StoreOutcome,
    StoreProcess,
)
from agent.net.tls import PeerTls
from agent.net.transcode import uncompressed_copy
from agent.queue import QueueStore
from agent.records import Delivery
from agent.routing import GroupRouter, probe_address

logger = logging.getLogger(__name__)

#: rows claimed at a time: small enough that the workers of one destination share a backlog
#: (bench: with 64, a second association sat idle behind the first); an association stays open
#: across batches while the queue has work, so a batch costs one commitment request, not a
#: new association
BATCH_SIZE = 16
#: ...and at most this many bytes, so that large objects spread over the associations too (a
#: batch of 16 objects of 8 MB kept the second association idle)
BATCH_BYTES = 16 * 2**20
#: pynetdicom allows at most 128 presentation contexts per association (PS3.8 §9.3.2.2)
MAX_CONTEXTS = 126
#: how often an idle worker looks for due work and expired commitment transactions
IDLE_POLL_S = 1.0
#: added to 3 x dimse_timeout_s: how long a round may go without an outcome before the
#: systemd watchdog counts the worker as stalled (a 100 MB object at 1 MB/s fits)
STALL_SLACK_S = 120.0
#: sends of one object in a row that end with no answer (the archive aborts the association,
#: or it times out) before that object is failed (issue 13, finding 9c). An archive that
#: crashes or aborts on one malformed object would otherwise get it again forever, with
#: backoff, and everything queued behind it waits; 5 rides out a few network faults (each
#: attempt after a backoff) and a failed object keeps its bytes for `queue retry` by hand
MAX_UNKNOWN_OUTCOMES = 5
#: Storage Commitment requests are coalesced per destination: at most one N-ACTION per this
#: window, covering every stored-but-unrequested row of the destination whichever association
#: stored it (issue 18 item 5). Each request makes the archive open a new association to our
#: listener for its report; one per batch per association made the listener the daemon's
#: largest cost at 30 objects/s. The first row stored after a quiet window is asked for at
#: once (no delay at low rates); under load a row waits at most this long for its request.
#: Measured (300 frames of 1024² 16-bit at 30/s into Orthanc, loaded machine): requests per
#: object 0.98 -> 0.4, the daemon's CPU per object 31 -> 25.5 ms
COMMIT_WINDOW_S = 0.1
#: ...or as soon as this many instances wait for a request, so that one request (and report)
#: stays small when objects arrive faster than the window
COMMIT_WINDOW_MAX = 200
#: objects the archive stored that are recorded in one queue transaction (issue 18 item 3):
#: the commit was the largest part of the forwarder's CPU per object (0.094 ms one by one,
#: 0.03 four at a time). A stored outcome waits, unrecorded, for the next outcome of its batch
#: (at most this many, and never past the batch's end or an outcome of another kind, so the
#: order of records holds). Waiting is safe: a crash before the record resends the object
#: under the same UID, which the archive accepts (RELIABILITY.md); nothing is ever recorded as
#: stored before the archive said so. Measured (0.5 MB objects into storescp, 3 associations,
#: the forwarder process's CPU per object, medians of 5 interleaved runs): 0.37-0.41 ms one
#: transaction per object, 0.18-0.19 with this, 0.15 with 16; grouping only the outcomes
#: already readable when one arrives gave 0.30 (the next one is rarely there yet)
RECORD_GROUP_MAX = 8
#: ...but only while objects go fast: after a C-STORE whose round trip took longer than this,
#: what waits is recorded at once (a slow link or a large object is not held back for the
#: next one, and costs little per second to record anyway)
RECORD_GROUP_WITHIN_S = 0.05

__all__ = ["COMMIT_WINDOW_MAX", "COMMIT_WINDOW_S", "RECORD_GROUP_MAX", "RECORD_GROUP_WITHIN_S",
           "CommitmentWindow", "DestinationHealth", "DestinationWorker", "Forwarder", "StudyRef",
           "TransferAudit", "backoff_s", "proposed_contexts", "read_study_ref", "store_result",
           "uncompressed_copy"]

#: classify_store_status's verdict on a Success, computed once from it
_SUCCESS = classify_store_status(StoreOutcome(0, status=dimse_status.SUCCESS).status_dataset())


def store_result(outcome: StoreOutcome) -> StoreResult:
    """classify_store_status of an outcome's status. A Success (nearly every outcome) is
    answered without building the pydicom Dataset that function reads: ~17 us of the
    forwarder's CPU per object (issue 18 item 3)."""
    if outcome.status == dimse_status.SUCCESS:
        return _SUCCESS
    return classify_store_status(outcome.status_dataset())


def backoff_s(failures: int, *, initial_s: float, max_s: float,
              rng: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with jitter: initial·2^(n-1), capped, then 50-100 % of it,
    so that many agents do not hammer an archive that comes back in lockstep."""
    if failures <= 0:
        return 0.0
    delay = min(max_s, initial_s * (2 ** min(failures - 1, 30)))
    return delay * (0.5 + 0.5 * rng())


def proposed_contexts(
    pairs: Iterable[tuple[str, str]], *, storage_commitment: bool,
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The presentation contexts an association for objects of these (SOP Class UID, Transfer
    Syntax UID) pairs proposes: (abstract syntax, (transfer syntax,)) each. Pure; the
    conformance statement (agent.conformance) lists what this returns."""
    contexts: list[tuple[str, tuple[str, ...]]] = []
    unique = sorted(set(pairs))
    classes = sorted({sop_class for sop_class, _ in unique})
    for sop_class, syntax in unique[: MAX_CONTEXTS - len(classes) - 1]:
        # the spooled syntax alone, so the file can be streamed unchanged...
        contexts.append((sop_class, (syntax,)))
    for sop_class in classes[: MAX_CONTEXTS - len(contexts) - 1]:
        # ...and Implicit VR LE, which every SCP must accept (PS3.5 §10.1): pynetdicom
        # converts an uncompressed file to it when the archive refuses the spooled one
        if (sop_class, ImplicitVRLittleEndian) not in unique:
            contexts.append((sop_class, (ImplicitVRLittleEndian,)))
    if storage_commitment:
        contexts.append((StorageCommitmentPushModel, (ImplicitVRLittleEndian,)))
    return tuple(contexts)


class CommitmentWindow:
    """When a destination's stored-but-unrequested rows are asked for commitment: one N-ACTION
    per window for all of them, whichever of the destination's associations stored them.

    Rows that wait are due `window_s` after the last request (so at once after a quiet
    window), or at once when `max_instances` of them wait. `take` selects the rows and
    records their transaction under one lock, so two workers never put one row in two
    requests; the queue's rows are the truth (a crash loses only this bookkeeping, and worker
    0 asks for `sent` rows found after a restart). Thread-safe: shared by the workers of one
    destination through their DestinationHealth.
    """

    def __init__(self, window_s: float = COMMIT_WINDOW_S,
                 max_instances: int = COMMIT_WINDOW_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.max_instances = max_instances
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting = 0
        self._last_request_at = -float("inf")

    def stored(self, count: int = 1) -> None:
        """`count` rows were recorded as stored and wait for a request."""
        if count <= 0:
            return
        with self._lock:
            self._waiting += count

    def pending(self) -> bool:
        """Whether rows stored in this run wait for a request."""
        with self._lock:
            return self._waiting > 0

    def remaining_s(self) -> float:
        """How long until the window is due (0 when it is, or when nothing waits)."""
        with self._lock:
            if self._waiting == 0 or self._waiting >= self.max_instances:
                return 0.0
            return max(0.0, self._last_request_at + self.window_s - self._clock())

    def due(self) -> bool:
        """Whether rows wait and their window has passed (or enough of them wait)."""
        return self.pending() and self.remaining_s() == 0.0

    def take(self, select: Callable[[], list[Delivery]],
             begin: Callable[[list[Delivery]], None]) -> list[Delivery]:
        """Select the rows to request and `begin` their transaction (durably, before the
        N-ACTION goes out), atomically with respect to the other workers; the window closes.
        Returns what was taken (maybe nothing: another worker was first)."""
        with self._lock:
            rows = select()
            if rows:
                begin(rows)
                self._last_request_at = self._clock()
            self._waiting = 0
            return rows


@dataclass
class DestinationHealth:
    """What `status` shows per destination (no patient data), and the commitment window its
    workers share (not shown)."""

    name: str
    reachable: bool | None = None
    unreachable_since: float | None = None
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_at: float | None = None
    negotiated_max_pdu: int | None = None
    # totals since start, for /api/metrics (Prometheus counters)
    association_failures_total: int = 0
    tls_failures_total: int = 0
    stored_total: int = 0
    failed_total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    commitments: CommitmentWindow = field(default_factory=CommitmentWindow, repr=False,
                                          compare=False)

    def count(self, **increments: int) -> None:
        with self.lock:
            for name, n in increments.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reachable": self.reachable,
            "unreachable_since": self.unreachable_since,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_success_at": self.last_success_at,
            "association_failures_total": self.association_failures_total,
            "tls_failures_total": self.tls_failures_total,
            "stored_total": self.stored_total,
            "failed_total": self.failed_total,
        }


#: objects whose study is remembered between "stored" and the commitment report, and
#: (destination, study) pairs whose Begin Transferring was sent in this run: bounded, so a
#: daemon that runs for months does not grow with every study
AUDIT_CACHE_SIZE = 50_000


def _sop_counts(sop_classes: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sop_class in sop_classes:
        counts[sop_class] = counts.get(sop_class, 0) + 1
    return counts


class TransferAudit:
    """The forwarder's and the commitment listener's audit events (issue 15): Begin Transferring
    DICOM Instances the first time a study goes to a destination in this run, and DICOM
    Instances Transferred per study and destination when a batch was stored and again when its
    commitment result arrives. The patient and study come from each spooled file's header: one
    read per object, in the worker thread (never in the sending process), remembered until the
    commitment report so that it is not read twice, and forgotten then (or at once when no
    report will come: refused objects, destinations without storage commitment).

    Thread-safe: every worker thread and the listener's threads call it. `alert` records a
    Security Alert (the daemon's, which holds back repeats of one peer's failures).
    """

    def __init__(self, trail: AuditTrail, queue: QueueStore,
                 destinations: Sequence[DestinationSection], *,
                 alert: Callable[[AlertKind, str, AuditPeer | None], None] | None = None,
                 cache_size: int = AUDIT_CACHE_SIZE) -> None:
        self._trail = trail
        self._alert = alert
        self._queue = queue
        self._peers = {d.name: _peer(d) for d in destinations}
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._studies: OrderedDict[str, StudyRef] = OrderedDict()   # SOP Instance UID -> study
        self._begun: OrderedDict[tuple[str, str], None] = OrderedDict()

    # -- the forwarder's side ----------------------------------------------------------------
    def begin(self, destination: DestinationSection, batch: Sequence[Delivery]) -> None:
        """Before a batch is sent: Begin Transferring for each study not yet begun there.

        Raises
        ------
        AuditUnavailable
            If the event cannot be recorded: the batch must not be sent.
        """
        groups = self._group([(d.sop_instance_uid, d.sop_class_uid, d.queue_id) for d in batch])
        for study, sop_classes in groups.items():
            key = (destination.name, study.study_uid)
            with self._lock:
                if key in self._begun:
                    continue
            self._trail.begin_transferring(
                self._peers.get(destination.name, _peer(destination)),
                patient_id=study.patient_id, study_uid=study.study_uid,
                sop_classes=sop_classes, accession=study.accession)
            with self._lock:
                self._begun[key] = None
                _trim(self._begun, self._cache_size)

    def transferred(self, destination: DestinationSection, stored: Sequence[Delivery],
                    failed: Sequence[Delivery]) -> None:
        """After a batch: DICOM Instances Transferred (stored) per study, with outcome 0 when
        all its objects were stored, 4 when some were refused, 8 when none was stored.

        Raises
        ------
        AuditUnavailable
            If the event cannot be recorded (the objects are stored already).
        """
        peer = self._peers.get(destination.name, _peer(destination))
        ok = self._group([(d.sop_instance_uid, d.sop_class_uid, d.queue_id) for d in stored])
        bad = self._group([(d.sop_instance_uid, d.sop_class_uid, d.queue_id) for d in failed])
        self._report(peer, ok, bad, committed=False, what="refused by the archive")
        # what no commitment report will name again is not remembered: refused objects, and
        # every object of a destination without storage commitment
        self._forget([d.sop_instance_uid for d in failed])
        if not destination.storage_commitment:
            self._forget([d.sop_instance_uid for d in stored])

    def tls_failure(self, destination: DestinationSection, reason: str) -> None:
        """A failed TLS handshake with an archive: a Security Alert (Node Authentication).
        Never raises: the association was refused already; a gap is logged."""
        if self._alert is None:
            return
        try:
            self._alert(AlertKind.TLS_FAILURE,
                        f"TLS handshake with destination {destination.name} failed: {reason}",
                        self._peers.get(destination.name, _peer(destination)))
        except AuditUnavailable as err:
            logger.error("forwarder %s: TLS failure not audited: %s", destination.name, err)

    # -- the listener's side -----------------------------------------------------------------
    def committed(self, destination: str, committed: Sequence[tuple[str, str]],
                  failed: Sequence[tuple[str, str]]) -> None:
        """A commitment report: DICOM Instances Transferred (committed) per study. `committed`
        and `failed` are (SOP Class UID, SOP Instance UID) pairs; instances not ours are left
        out (the queue ignores them too).

        Raises
        ------
        AuditUnavailable
            If the event cannot be recorded: the report must not be accepted.
        """
        peer = self._peers.get(destination, AuditPeer(destination))
        ok = self._group([(uid, sop_class, None) for sop_class, uid in committed])
        bad = self._group([(uid, sop_class, None) for sop_class, uid in failed])
        self._report(peer, ok, bad, committed=True, what="not committed")
        # reported: a repeated report (or another destination's) reads the header again
        self._forget([uid for _sop_class, uid in [*committed, *failed]])

    @property
    def remembered(self) -> int:
        """How many objects' studies are held for a report still to come."""
        with self._lock:
            return len(self._studies)

    # -- helpers -----------------------------------------------------------------------------
    def _report(self, peer: AuditPeer, ok: dict[StudyRef, dict[str, int]],
                bad: dict[StudyRef, dict[str, int]], *, committed: bool, what: str) -> None:
        for study in [*ok, *(s for s in bad if s not in ok)]:
            done, missed = ok.get(study, {}), bad.get(study, {})
            if not missed:
                outcome, description = Outcome.SUCCESS, ""
            else:
                outcome = Outcome.MINOR_FAILURE if done else Outcome.SERIOUS_FAILURE
                description = f"{sum(missed.values())} instance(s) {what}"
            self._trail.instances_transferred(
                peer, patient_id=study.patient_id, study_uid=study.study_uid,
                sop_classes=done or missed, outcome=outcome, committed=committed,
                accession=study.accession, outcome_description=description)

    def _group(self, objects: Sequence[tuple[str, str, int | None]]
               ) -> dict[StudyRef, dict[str, int]]:
        """(SOP Instance UID, SOP Class UID, queue id or None) grouped by study; an instance
        whose study is unknown and cannot be found in the spool is left out."""
        classes: dict[StudyRef, list[str]] = {}
        for uid, sop_class, queue_id in objects:
            study = self._study(uid, queue_id)
            if study is not None:
                classes.setdefault(study, []).append(sop_class)
        return {study: _sop_counts(found) for study, found in classes.items()}

    def _forget(self, sop_instance_uids: Sequence[str]) -> None:
        # the cache held every object until it was full (AUDIT_CACHE_SIZE, ~26 MB), since
        # entries were only ever added: ~0.5 MB of the daemon's memory per 1,000 objects
        with self._lock:
            for uid in sop_instance_uids:
                self._studies.pop(uid, None)

    def _study(self, sop_instance_uid: str, queue_id: int | None) -> StudyRef | None:
        with self._lock:
            known = self._studies.get(sop_instance_uid)
        if known is not None:
            return known
        if queue_id is None:
            queue_id = self._queue_id(sop_instance_uid)
            if queue_id is None:
                return None
        study = read_study_ref(self._queue.object_path(queue_id))
        with self._lock:
            self._studies[sop_instance_uid] = study
            _trim(self._studies, self._cache_size)
        return study

    def _queue_id(self, sop_instance_uid: str) -> int | None:
        """The newest spooled object with this UID (a report after a restart finds nothing in
        memory), read on a read-only connection of its own: the queue's is busy elsewhere."""
        try:
            conn = sqlite3.connect(f"file:{self._queue.spool.db_path}?mode=ro", uri=True,
                                   timeout=10)
            try:
                row = conn.execute("SELECT MAX(queue_id) FROM objects WHERE sop_instance_uid=?",
                                   (sop_instance_uid,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as err:
            logger.warning("audit: cannot look an instance up in the queue: %s", err)
            return None
        return None if row is None or row[0] is None else int(row[0])


def _peer(destination: DestinationSection) -> AuditPeer:
    if destination.kind == "stow-rs":
        # a DICOMweb archive: the URL's host and port, no AE title
        url = urlsplit(destination.url)
        return AuditPeer(url.hostname or destination.url, "",
                         url.port or (443 if url.scheme == "https" else 80))
    return AuditPeer(destination.host, destination.called_ae, destination.port)


def _trim(cache: OrderedDict[Any, Any], size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)


class DestinationWorker:
    """Sends to one destination over its own association; runs on its own thread.

    A destination gets `max_associations` workers sharing one DestinationHealth. Claiming rows
    is atomic in the queue, so they never send the same row. Their Storage Commitment requests
    are coalesced through the DestinationHealth's CommitmentWindow: after a batch, a worker
    asks for every stored-but-unrequested row of the destination if the window is due, and
    keeps its association open (taking new work meanwhile) until it is, so that rows stored
    last are asked for without waiting for an idle poll. Worker 0 alone asks for `sent` rows
    nobody is about to ask for (left by a crash, a failed request or an expired transaction).
    `tls`: DICOM TLS to this destination (None: plaintext). `audit`: the transfers' audit
    events (None: not audited); a Begin Transferring that cannot be recorded stops the batch
    before anything is sent.
    """

    def __init__(
        self,
        destination: DestinationSection,
        *,
        ae_title: str,
        queue: QueueStore,
        queue_config: QueueSection,
        uids: UIDSource,
        report_handler: ReportHandler,
        on_change: Callable[[], None] = lambda: None,
        index: int = 0,
        health: DestinationHealth | None = None,
        tls: PeerTls | None = None,
        audit: TransferAudit | None = None,
    ) -> None:
        self.destination = destination
        self.tls = tls
        self.audit = audit
        self.index = index
        self.health = health if health is not None else DestinationHealth(destination.name)
        self._claimed: list[int] = []
        self._ae_title = ae_title
        self._queue = queue
        self._queue_config = queue_config
        self._uids = uids
        self._on_change = on_change
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sender = StoreProcess(f"forwarder {destination.name} #{index}",
                                    report_handler=report_handler)
        # the longest a healthy round goes without an outcome: associating (ACSE) and one
        # object's C-STORE or the N-ACTION each wait at most dimse_timeout_s, plus slack for a
        # large object on a slow link
        self.heartbeat = Heartbeat(f"forwarder {destination.name} #{index}",
                                   limit_s=STALL_SLACK_S + 3 * destination.dimse_timeout_s)

    # -- thread ------------------------------------------------------------------------------
    def launch(self) -> None:
        """Start the sending process without waiting: it imports pynetdicom while the rest of
        the daemon starts."""
        self._sender.launch()

    def start(self) -> None:
        self._sender.launch()
        self._thread = threading.Thread(
            target=self._run, name=f"forwarder-{self.destination.name}-{self.index}",
            daemon=True
        )
        self._thread.start()

    def stalled(self) -> str:
        """"" or why this worker counts as stalled (for the systemd watchdog)."""
        if self._thread is not None and not self._thread.is_alive():
            return f"forwarder {self.destination.name} #{self.index}: thread ended"
        return self.heartbeat.stalled()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._sender.close()

    def wait_ready(self) -> None:
        """Block until the sending process is up. Call before start(): the handle is the
        worker thread's once it runs.

        Raises
        ------
        StoreProcessError
            If the process did not start (the worker starts another when it has work).
        """
        self._sender.wait_ready()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        interrupted = False
        while not self._stop.is_set():
            self.heartbeat.beat()
            stall_point("forwarder")
            try:
                if interrupted and self._claimed:
                    # rows this worker claimed in the round that failed (e.g. the disk was
                    # full when their outcome was to be recorded) go back to pending
                    self._queue.requeue(self._claimed)
                    self._claimed = []
                interrupted = False
                worked = self.run_once()
            except AgentError as err:
                logger.error("forwarder %s: %s; retrying", self.destination.name, err)
                interrupted, worked = True, False
                self._wait_backoff(self._next_backoff(str(err)))
            except Exception:
                # the worker must outlive any one bad batch; the rows stay in the queue
                logger.exception("forwarder %s: unexpected error; retrying",
                                 self.destination.name)
                interrupted, worked = True, False
                self._wait_backoff(self._next_backoff("internal error"))
            if not worked:
                self.heartbeat.waiting(IDLE_POLL_S)
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()

    def _wait_backoff(self, delay_s: float) -> None:
        self.heartbeat.waiting(delay_s)
        self._stop.wait(delay_s)

    def _next_backoff(self, reason: str) -> float:
        with self.health.lock:
            self.health.consecutive_failures += 1
            self.health.last_error = reason
            failures = self.health.consecutive_failures
        return backoff_s(failures, initial_s=self._queue_config.retry_initial_s,
                         max_s=self._queue_config.retry_max_s)

    # -- one round ---------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Send what is due and request commitment for what is stored; True if it did work."""
        dest = self.destination
        now = time.time()
        awaiting: list[Delivery] = []
        window = self.health.commitments
        if dest.storage_commitment and self.index == 0:
            self._queue.expire_transactions(dest.name)
            # rows of an open window are another worker's to ask for, on its association,
            # when the window is due; once it is overdue (that association was lost), or when
            # nothing in this run stored them, they are this worker's
            if not window.pending() or window.due():
                awaiting = [d for d in self._queue.sent_awaiting_commitment(dest.name)
                            if d.next_attempt_at <= now]
        batch = self._queue.claim_batch(dest.name, limit=BATCH_SIZE, max_bytes=BATCH_BYTES)
        self._claimed = [d.delivery_id for d in batch]
        if not batch and not awaiting:
            return False
        self._send(batch, awaiting)
        self._claimed = []
        self._on_change()
        return True

    def _contexts(self, batch: Sequence[Delivery]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return proposed_contexts(((d.sop_class_uid, d.transfer_syntax_uid) for d in batch),
                                 storage_commitment=self.destination.storage_commitment)

    def _associate(self, batch: Sequence[Delivery]) -> float | None:
        """None when the association is up, else the delay before the next attempt."""
        dest = self.destination
        try:
            self._sender.associate(AssociationRequest(
                ae_title=self._ae_title, host=dest.host, port=dest.port,
                called_ae=dest.called_ae, contexts=self._contexts(batch),
                timeout_s=dest.dimse_timeout_s, tls=self.tls,
            ))
        except AssociationError as err:
            # unreachable, TLS handshake failed, rejected or aborted: all wait and retry
            self.health.count(association_failures_total=1,
                              tls_failures_total=int(isinstance(err, TlsHandshakeError)))
            if isinstance(err, TlsHandshakeError) and self.audit is not None:
                self.audit.tls_failure(dest, err.reason)
            return self._unreachable(f"{dest.name}: {err}")
        with self.health.lock:
            self.health.negotiated_max_pdu = self._sender.max_pdu
        return None

    def _unreachable(self, reason: str) -> float:
        delay = self._next_backoff(reason)
        with self.health.lock:
            if self.health.reachable is not False:
                self.health.unreachable_since = time.time()
            self.health.reachable = False
        logger.warning("%s; retrying in %.1f s", reason, delay)
        return delay

    def _send(self, batch: list[Delivery], awaiting: list[Delivery]) -> None:
        dest = self.destination
        delay = self._associate(batch + awaiting)
        if delay is not None:
            self._queue.mark_retry([d.delivery_id for d in batch], self.health.last_error,
                                   time.time() + delay)
            self._queue.postpone([d.delivery_id for d in awaiting], time.time() + delay)
            return
        proposed: set[tuple[str, str]] | None = {
            (d.sop_class_uid, d.transfer_syntax_uid) for d in batch}
        stored_any = False
        # rows left without a request (crash, failed request, expired transaction): at once
        ask_now = bool(awaiting)
        try:
            while True:
                if self.audit is not None and batch:
                    # recorded before the first C-STORE: a transfer that cannot be audited
                    # does not happen (AuditUnavailable ends the round, the rows wait)
                    self.audit.begin(dest, batch)
                stored, failed = self._store_batch(batch) if batch else ([], [])
                self._audit_transferred(stored, failed)
                if dest.storage_commitment and self._sender.is_established:
                    self._request_commitment(now=ask_now)
                    ask_now = False
                stored_any = stored_any or bool(stored) or not batch
                if proposed is None:
                    break             # rows needing other contexts are waiting for a new one
                batch, fits_all = self._next_batch_on(proposed)
                if not fits_all:
                    proposed = None
                if not batch and not self._linger():
                    break
        finally:
            self._sender.release()
        if stored_any:
            with self.health.lock:
                self.health.reachable = True
                self.health.unreachable_since = None
                self.health.consecutive_failures = 0
                self.health.last_success_at = time.time()

    def _linger(self) -> bool:
        """With stored rows waiting for their commitment window, keep the association open
        until the window is due (or new work arrives: `wake`); True to go round again (ask if
        due, take new work). False when there is nothing to wait for: another worker asked
        already, the association is gone, or the worker stops."""
        window = self.health.commitments
        if (not self.destination.storage_commitment or self._stop.is_set()
                or not self._sender.is_established or not window.pending()):
            return False
        wait_s = window.remaining_s()
        if wait_s > 0:
            self.heartbeat.beat()
            self._wake.wait(wait_s)
            self._wake.clear()
        return True

    def _audit_transferred(self, stored: list[Delivery], failed: list[Delivery]) -> None:
        if self.audit is None or not (stored or failed):
            return
        try:
            self.audit.transferred(self.destination, stored, failed)
        except AuditUnavailable as err:
            # the archive holds the objects already: nothing to refuse any more, but a person
            # must know the trail has a gap (no patient data here: queue numbers only)
            logger.error("forwarder %s: transfer of queue item(s) %s not audited: %s",
                         self.destination.name, [d.queue_id for d in stored + failed], err)

    def _store_batch(self, batch: list[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        """Send the batch; outcomes are recorded as they arrive (while the sending process
        already sends the next object), stored ones a few at a time (RECORD_GROUP_MAX), all
        in the order they came. Returns what the archive stored and what failed for good (not
        what waits for a retry)."""
        by_id = {d.delivery_id: d for d in batch}
        stored: list[Delivery] = []
        failed: list[Delivery] = []
        lost: list[int] = []
        # stored at the archive, not yet recorded
        answered: list[tuple[Delivery, StoreResult]] = []
        items = [(d.delivery_id, self._queue.object_path(d.queue_id)) for d in batch]
        try:
            for outcome in self._sender.store(items):
                self.heartbeat.beat()            # each object's outcome is progress
                delivery = by_id[outcome.key]
                if outcome.not_sent:
                    lost.append(delivery.delivery_id)
                    continue
                result = store_result(outcome) if outcome.error is None else None
                if result is not None and result.verdict is StoreVerdict.STORED:
                    crashpoints.reached("after_store_response")
                    answered.append((delivery, result))
                    if (len(answered) >= RECORD_GROUP_MAX
                            or outcome.seconds > RECORD_GROUP_WITHIN_S):
                        group, answered = answered, []
                        stored.extend(self._record_stored(group))
                    continue
                if answered:
                    group, answered = answered, []
                    stored.extend(self._record_stored(group))
                verdict = self._record(delivery, outcome, result)
                if verdict is None:
                    failed.append(delivery)
        finally:
            # also when the round ends here (the sending process failed): the archive holds
            # these, and recording them spares a resend
            group, answered = answered, []
            if group:
                stored.extend(self._record_stored(group))
        if lost:
            self._queue.mark_retry(lost, f"{self.destination.name} dropped the association",
                                   time.time() + self._next_backoff("association lost"))
        return stored, failed

    def _next_batch_on(self, proposed: set[tuple[str, str]]) -> tuple[list[Delivery], bool]:
        """More due rows to send on this open association (keeping it open while the queue has
        work saves a connection, negotiation and release per batch). Rows whose SOP class or
        transfer syntax was not proposed here go back to pending for a fresh association."""
        if self._stop.is_set() or not self._sender.is_established:
            return [], True
        batch = self._queue.claim_batch(self.destination.name, limit=BATCH_SIZE,
                                        max_bytes=BATCH_BYTES)
        self._claimed = [d.delivery_id for d in batch]
        misfits = [d.delivery_id for d in batch
                   if (d.sop_class_uid, d.transfer_syntax_uid) not in proposed]
        if misfits:
            self._queue.requeue(misfits)
            # what remains fits; the misfits start the next round on a new association
            batch = [d for d in batch if d.delivery_id not in set(misfits)]
        return batch, not misfits

    def _record_stored(self, group: list[tuple[Delivery, StoreResult]]) -> list[Delivery]:
        """Record objects the archive answered Success or Warning for, in one transaction;
        returns them."""
        dest = self.destination
        self._queue.mark_sent_many([(d.delivery_id, "" if r.status == 0 else r.text)
                                    for d, r in group])
        self.health.count(stored_total=len(group))
        if dest.storage_commitment:
            self.health.commitments.stored(len(group))
        crashpoints.reached("after_store_recorded")
        # one log record per group, every object named in it: a record per object cost the
        # forwarder ~1/4 of its CPU per 0.5 MB object (py-spy, issue 18), most of it the
        # handler's lock and write handing the GIL around between the workers
        logger.info("stored at %s: %s", dest.name, "; ".join(
            f"queue item {d.queue_id} ({r.text}) as {d.sop_instance_uid}" for d, r in group))
        return [d for d, _ in group]

    def _record(self, delivery: Delivery, outcome: StoreOutcome,
                result: StoreResult | None) -> bool | None:
        """Record one object's outcome other than stored (`_record_stored`): None if it failed
        for good, False if it is sent again later. `result`: its status's verdict (None when
        nothing was sent: `outcome.error`)."""
        dest = self.destination
        if outcome.error is SendError.NO_CONTEXT:
            # nothing the archive accepted fits this object (e.g. a compressed syntax it
            # refused): not a network fault, so no hot retry
            self.health.count(failed_total=1)
            self._queue.mark_failed(delivery.delivery_id,
                                    f"{dest.name} accepted no presentation context "
                                    f"for {delivery.sop_class_uid} in "
                                    f"{delivery.transfer_syntax_uid}: {outcome.detail}")
            logger.error("queue item %d: no accepted presentation context at %s",
                         delivery.queue_id, dest.name)
            return None
        if outcome.error is SendError.UNREADABLE:
            self.health.count(failed_total=1)
            self._queue.mark_failed(delivery.delivery_id,
                                    f"spool file unreadable: {outcome.detail}")
            logger.error("queue item %d: spool file unreadable: %s", delivery.queue_id,
                         outcome.detail)
            return None
        crashpoints.reached("after_store_response")
        if result is None:
            result = store_result(outcome)
        if result.verdict is StoreVerdict.FAILED:
            self._queue.mark_failed(delivery.delivery_id,
                                    f"{dest.name} refused C-STORE: {result.text}")
            self.health.count(failed_total=1)
            logger.error("queue item %d: %s refused C-STORE (%s); kept, not retried",
                         delivery.queue_id, dest.name, result.text)
            return None
        # RETRY or UNKNOWN: the same bytes go again later under the same UID
        delay = self._next_backoff(f"C-STORE {result.text}")
        if result.verdict is StoreVerdict.RETRY:
            self._queue.mark_retry([delivery.delivery_id], f"{dest.name}: {result.text}",
                                   time.time() + delay, answered=True)
        elif self._queue.mark_outcome_unknown(
                delivery.delivery_id, f"{dest.name}: {result.text}", time.time() + delay,
                max_unknown=MAX_UNKNOWN_OUTCOMES,
                failed_reason=f"archive aborted the association {MAX_UNKNOWN_OUTCOMES} times "
                              "while receiving this object"):
            self.health.count(failed_total=1)
            logger.error("queue item %d: %s gave no answer %d times in a row for %s; "
                         "failed, kept for `queue retry`", delivery.queue_id, dest.name,
                         MAX_UNKNOWN_OUTCOMES, delivery.sop_instance_uid)
            return None
        logger.warning("queue item %d: %s answered %s; retrying in %.1f s",
                       delivery.queue_id, dest.name, result.text, delay)
        return False

    def _request_commitment(self, *, now: bool = False) -> None:
        """One N-ACTION on this association for every due `sent` row of the destination, if
        the commitment window is due (or `now`); nothing if another worker took them."""
        dest = self.destination
        window = self.health.commitments
        if not (now or window.due()):
            return
        transaction_uid = self._uids.new_uid()
        asked_at = time.time()

        def select() -> list[Delivery]:
            return [d for d in self._queue.sent_awaiting_commitment(dest.name)
                    if d.next_attempt_at <= asked_at]

        def begin(rows: list[Delivery]) -> None:
            self._queue.begin_commitment(dest.name, [d.delivery_id for d in rows],
                                         transaction_uid,
                                         deadline=asked_at + dest.commitment_timeout_s)

        deliveries = window.take(select, begin)
        if not deliveries:
            return
        code = self._sender.n_action(
            transaction_uid, [(d.sop_class_uid, d.sop_instance_uid) for d in deliveries],
            wait_s=dest.commitment_report_wait_s,
        )
        crashpoints.reached("after_n_action")
        if code == dimse_status.SUCCESS:
            logger.info("commitment requested from %s: transaction %s, %d instances",
                        dest.name, transaction_uid, len(deliveries))
            return
        if code is None:
            # Orthanc answers an N-ACTION from an AE it does not know with an A-ABORT
            reason = (f"{dest.name} gave no answer to the Storage Commitment request: is AE "
                      f"title {self._ae_title} registered at the archive with storage "
                      f"commitment allowed?")
        else:
            reason = f"{dest.name} refused the Storage Commitment request (0x{code:04X})"
        delay = self._next_backoff(reason)
        self._queue.fail_transaction_request(transaction_uid, reason,
                                             next_attempt_at=time.time() + delay)
        logger.error("%s; asking again in %.1f s", reason, delay)


class ForwardingWorker(Protocol):
    """What the Forwarder needs of a worker: DestinationWorker (DIMSE) and
    agent.stow_forwarder.StowWorker (STOW-RS) both have it."""

    destination: DestinationSection
    health: DestinationHealth
    audit: TransferAudit | None

    def launch(self) -> None: ...
    def wait_ready(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wake(self) -> None: ...
    def stalled(self) -> str: ...


class Forwarder:
    """All destination workers, and the router of archive groups (agent.routing) when `queue`
    has groups: it reads the workers' shared DestinationHealth per destination, so it serves
    workers of any kind with `destination`, `health` and `wake()`. `router_options` go to
    GroupRouter (tests shorten its intervals)."""

    def __init__(self, workers: Sequence[ForwardingWorker], *,
                 queue: QueueStore | None = None, **router_options: Any) -> None:
        self.workers = list(workers)
        self.router: GroupRouter | None = None
        if queue is not None and queue.groups:
            by_name = {w.destination.name: w for w in self.workers}
            self.router = GroupRouter(
                queue, queue.groups, {name: w.health for name, w in by_name.items()},
                addresses={name: probe_address(w.destination) for name, w in by_name.items()},
                wake=self.wake_destination, **router_options)

    def launch(self) -> None:
        """Start every sending process; they get ready while the daemon does other things."""
        for worker in self.workers:
            worker.launch()

    def start(self) -> None:
        """Wait for the sending processes (so that the first image after start-up does not
        wait for one), then start the workers. A process that fails to start is logged; its
        worker tries again when it has work, with backoff."""
        for worker in self.workers:
            try:
                worker.wait_ready()
            except AgentError as err:
                logger.error("%s", err)
        for worker in self.workers:
            worker.start()
        if self.router is not None:
            self.router.start()

    def set_audit(self, audit: TransferAudit | None) -> None:
        """Audit every worker's transfers (the daemon opens the trail after the spool lock,
        once the workers exist; before `start`)."""
        for worker in self.workers:
            worker.audit = audit

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for worker in self.workers:
            worker.stop()

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake()

    def wake_destination(self, name: str) -> None:
        for worker in self.workers:
            if worker.destination.name == name:
                worker.wake()

    def stalled(self) -> list[str]:
        """The workers that stopped making progress (systemd watchdog)."""
        stalled = [reason for w in self.workers if (reason := w.stalled())]
        if self.router is not None and not self.router.alive():
            stalled.append("archive group router: thread ended")
        return stalled

    def health(self) -> list[dict[str, Any]]:
        """One entry per destination (its workers share one DestinationHealth); a member of
        an archive group also shows its `group`, whether it is the `current` member (where
        new objects go) and whether the router counts it `down`."""
        unique = {id(worker.health): worker.health for worker in self.workers}
        entries = [health.as_dict() for health in unique.values()]
        if self.router is not None:
            for entry in entries:
                entry.update(self.router.member_status(entry["name"]) or {})
        return entries
