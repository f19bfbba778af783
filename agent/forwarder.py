"""The forwarder: sends queued objects to each destination by C-STORE over an association kept
open while the queue has work, and asks for Storage Commitment on it after each batch.

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
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.sop_class import StorageCommitmentPushModel

from agent import crashpoints
from agent.config import DestinationSection, QueueSection
from agent.errors import AgentError, AssociationError, TlsHandshakeError
from agent.heartbeat import Heartbeat, stall_point
from agent.iod.uids import UIDSource
from agent.net import status as dimse_status
from agent.net.status import StoreVerdict, classify_store_status
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

__all__ = ["DestinationHealth", "DestinationWorker", "Forwarder", "backoff_s",
           "proposed_contexts", "uncompressed_copy"]


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


@dataclass
class DestinationHealth:
    """What `status` shows per destination (no patient data)."""

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


class DestinationWorker:
    """Sends to one destination over its own association; runs on its own thread.

    A destination gets `max_associations` workers sharing one DestinationHealth. Claiming rows
    is atomic in the queue, so they never send the same row; worker 0 alone re-requests
    commitment for rows left without a transaction, so no instance is asked for twice.
    `tls`: DICOM TLS to this destination (None: plaintext).
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
    ) -> None:
        self.destination = destination
        self.tls = tls
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
        if dest.storage_commitment and self.index == 0:
            self._queue.expire_transactions(dest.name)
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
        try:
            while True:
                stored = self._store_batch(batch)
                if dest.storage_commitment and self._sender.is_established:
                    self._request_commitment(stored + awaiting)
                stored_any = stored_any or bool(stored) or not batch
                awaiting = []
                if proposed is None:
                    break             # rows needing other contexts are waiting for a new one
                batch, fits_all = self._next_batch_on(proposed)
                if not fits_all:
                    proposed = None
                if not batch:
                    break
        finally:
            self._sender.release()
        if stored_any:
            with self.health.lock:
                self.health.reachable = True
                self.health.unreachable_since = None
                self.health.consecutive_failures = 0
                self.health.last_success_at = time.time()

    def _store_batch(self, batch: list[Delivery]) -> list[Delivery]:
        """Send the batch; each outcome is recorded as it arrives, while the sending process
        already sends the next object. Returns what the archive stored."""
        by_id = {d.delivery_id: d for d in batch}
        stored: list[Delivery] = []
        lost: list[int] = []
        items = [(d.delivery_id, self._queue.object_path(d.queue_id)) for d in batch]
        for outcome in self._sender.store(items):
            self.heartbeat.beat()            # each object's outcome is progress
            delivery = by_id[outcome.key]
            if outcome.not_sent:
                lost.append(delivery.delivery_id)
            elif self._record(delivery, outcome):
                stored.append(delivery)
        if lost:
            self._queue.mark_retry(lost, f"{self.destination.name} dropped the association",
                                   time.time() + self._next_backoff("association lost"))
        return stored

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

    def _record(self, delivery: Delivery, outcome: StoreOutcome) -> bool:
        """Record one object's outcome; True if the archive holds it."""
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
            return False
        if outcome.error is SendError.UNREADABLE:
            self.health.count(failed_total=1)
            self._queue.mark_failed(delivery.delivery_id,
                                    f"spool file unreadable: {outcome.detail}")
            logger.error("queue item %d: spool file unreadable: %s", delivery.queue_id,
                         outcome.detail)
            return False
        crashpoints.reached("after_store_response")
        result = classify_store_status(outcome.status_dataset())
        if result.verdict is StoreVerdict.STORED:
            self._queue.mark_sent(delivery.delivery_id,
                                  "" if result.status == 0 else result.text)
            self.health.count(stored_total=1)
            crashpoints.reached("after_store_recorded")
            logger.info("queue item %d: stored at %s (%s) as %s", delivery.queue_id,
                        dest.name, result.text, delivery.sop_instance_uid)
            return True
        if result.verdict is StoreVerdict.FAILED:
            self._queue.mark_failed(delivery.delivery_id,
                                    f"{dest.name} refused C-STORE: {result.text}")
            self.health.count(failed_total=1)
            logger.error("queue item %d: %s refused C-STORE (%s); kept, not retried",
                         delivery.queue_id, dest.name, result.text)
            return False
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
            return False
        logger.warning("queue item %d: %s answered %s; retrying in %.1f s",
                       delivery.queue_id, dest.name, result.text, delay)
        return False

    def _request_commitment(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        dest = self.destination
        transaction_uid = self._uids.new_uid()
        self._queue.begin_commitment(
            dest.name, [d.delivery_id for d in deliveries], transaction_uid,
            deadline=time.time() + dest.commitment_timeout_s,
        )
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


class Forwarder:
    """All destination workers."""

    def __init__(self, workers: Sequence[DestinationWorker]) -> None:
        self.workers = list(workers)

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

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake()

    def stalled(self) -> list[str]:
        """The workers that stopped making progress (systemd watchdog)."""
        return [reason for w in self.workers if (reason := w.stalled())]

    def health(self) -> list[dict[str, Any]]:
        """One entry per destination (its workers share one DestinationHealth)."""
        unique = {id(worker.health): worker.health for worker in self.workers}
        return [health.as_dict() for health in unique.values()]
