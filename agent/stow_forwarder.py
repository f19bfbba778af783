"""The forwarder of a `kind = "stow-rs"` destination: the same queue, the same no-loss rules,
carried over DICOMweb (agent.net.stow) instead of DIMSE.

A StowWorker has DestinationWorker's public interface (launch/start/stop/wait_ready/wake/
stalled/run_once, `destination`, `health`, `heartbeat`, `audit`), so the Forwarder, status,
metrics and the watchdog treat both alike. It runs on a thread, not a sending process: httpx
spends its time in socket calls that release the GIL, and the body is streamed from the spool.

One round: claim due rows up to `max_request_mb`, send them as one STOW-RS request (a request
the archive refuses as a whole is split, one instance per request, to find the one it refuses),
record each instance's verdict exactly as a C-STORE status would be recorded, and with
`verify = true` confirm what was stored by QIDO-RS through the queue's commitment path
(begin_commitment, then apply_commitment_report with found / missing instances), so that
one state machine serves both kinds of archive.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence

from agent import crashpoints
from agent.audit import AuditUnavailable
from agent.config import DestinationSection, QueueSection
from agent.errors import AgentError, DicomWebCredentialsError, DicomWebError
from agent.forwarder import (
    IDLE_POLL_S,
    MAX_UNKNOWN_OUTCOMES,
    STALL_SLACK_S,
    DestinationHealth,
    TransferAudit,
    backoff_s,
)
from agent.heartbeat import Heartbeat, stall_point
from agent.iod.uids import UIDSource
from agent.net.status import StoreResult, StoreVerdict
from agent.net.stow import (
    DicomWebClient,
    RequestProblem,
    StowOutcome,
    StowPart,
    credential_hint,
)
from agent.queue import QueueStore
from agent.queue.store import FAILURE_NO_SUCH_OBJECT
from agent.records import CommitmentResult, Delivery

logger = logging.getLogger(__name__)

#: instances claimed (and so sent in one request) at most; the byte cap is max_request_mb
BATCH_SIZE = 64
#: Failure Reason for an instance the archive lists under another SOP class (PS3.4 J.3.3.1.2)
FAILURE_CLASS_INSTANCE_CONFLICT = 0x0119
#: request problems that mean "the archive does not take objects now": the destination
#: counts as unreachable (status, failover), the rows wait with backoff
_DOWN = frozenset({RequestProblem.UNREACHABLE, RequestProblem.UNKNOWN, RequestProblem.AUTH,
                   RequestProblem.CONFIG, RequestProblem.BUSY})

__all__ = ["BATCH_SIZE", "StowWorker"]


class StowWorker:
    """Sends to one STOW-RS destination; runs on its own thread.

    `tls`: the SSL context for an https url (agent.net.stow.ssl_context). `audit`: the
    transfers' audit events (None: not audited); a Begin Transferring that cannot be recorded
    stops the batch before anything is sent, as in DestinationWorker.
    """

    def __init__(
        self,
        destination: DestinationSection,
        *,
        queue: QueueStore,
        queue_config: QueueSection,
        uids: UIDSource,
        on_change: Callable[[], None] = lambda: None,
        index: int = 0,
        health: DestinationHealth | None = None,
        tls: ssl.SSLContext | None = None,
        audit: TransferAudit | None = None,
        client: DicomWebClient | None = None,
    ) -> None:
        self.destination = destination
        self.index = index
        self.audit = audit
        self.health = health if health is not None else DestinationHealth(destination.name)
        self._queue = queue
        self._queue_config = queue_config
        self._uids = uids
        self._on_change = on_change
        self._max_bytes = destination.max_request_mb * 2**20
        self._client = client if client is not None else DicomWebClient(destination, tls=tls)
        self._claimed: list[int] = []
        # delivery id -> times in a row it was answered "stored" but not found (verify)
        self._misses: dict[int, int] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # a request waits at most request_timeout_s per read or write, a verification as long
        # per instance looked up; beats come with every MiB streamed and every answer
        self.heartbeat = Heartbeat(f"forwarder {destination.name} #{index}",
                                   limit_s=STALL_SLACK_S + 3 * destination.request_timeout_s)

    # -- thread (DestinationWorker's interface) ----------------------------------------------
    def launch(self) -> None:
        """Nothing to start ahead: no sending process."""

    def wait_ready(self) -> None:
        """Ready at once (no sending process)."""

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"forwarder-{self.destination.name}-{self.index}",
            daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._client.close()

    def wake(self) -> None:
        self._wake.set()

    def stalled(self) -> str:
        """"" or why this worker counts as stalled (for the systemd watchdog)."""
        if self._thread is not None and not self._thread.is_alive():
            return f"forwarder {self.destination.name} #{self.index}: thread ended"
        return self.heartbeat.stalled()

    def _run(self) -> None:
        interrupted = False
        while not self._stop.is_set():
            self.heartbeat.beat()
            stall_point("forwarder")
            try:
                if interrupted and self._claimed:
                    # rows claimed in a round that failed part way go back to pending
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

    def _unreachable(self, reason: str) -> float:
        delay = self._next_backoff(reason)
        with self.health.lock:
            if self.health.reachable is not False:
                self.health.unreachable_since = time.time()
            self.health.reachable = False
        logger.warning("%s; retrying in %.1f s", reason, delay)
        return delay

    def _succeeded(self) -> None:
        with self.health.lock:
            self.health.reachable = True
            self.health.unreachable_since = None
            self.health.consecutive_failures = 0
            self.health.last_success_at = time.time()

    # -- one round ---------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Send what is due and verify what is stored (verify = true); True if it did work."""
        dest = self.destination
        now = time.time()
        awaiting: list[Delivery] = []
        if dest.verify and self.index == 0:
            # rows stored but not yet confirmed: after a crash, or a lookup that failed
            self._queue.expire_transactions(dest.name)
            awaiting = [d for d in self._queue.sent_awaiting_commitment(dest.name)
                        if d.next_attempt_at <= now]
        batch = self._queue.claim_batch(dest.name, limit=BATCH_SIZE, max_bytes=self._max_bytes)
        self._claimed = [d.delivery_id for d in batch]
        if not batch and not awaiting:
            return False
        stored: list[Delivery] = []
        if batch:
            if self.audit is not None:
                # recorded before the request: a transfer that cannot be audited does not
                # happen (AuditUnavailable ends the round, the rows go back to pending)
                self.audit.begin(dest, batch)
            stored, failed = self._send(batch)
            self._audit_transferred(stored, failed)
        self._claimed = []
        if dest.verify:
            self._verify(stored + awaiting)
        self._on_change()
        return True

    def _audit_transferred(self, stored: list[Delivery], failed: list[Delivery]) -> None:
        if self.audit is None or not (stored or failed):
            return
        try:
            self.audit.transferred(self.destination, stored, failed)
        except AuditUnavailable as err:
            logger.error("forwarder %s: transfer of queue item(s) %s not audited: %s",
                         self.destination.name, [d.queue_id for d in stored + failed], err)

    def _send(self, batch: list[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        """One STOW-RS request for the batch; a request the archive refuses as a whole is
        sent again one instance per request, in this round, to find the one it refuses.
        Returns what the archive stored and what failed for good."""
        dest = self.destination
        parts = [StowPart(d.sop_instance_uid, self._queue.object_path(d.queue_id))
                 for d in batch]
        by_uid = {d.sop_instance_uid: d for d in batch}
        try:
            outcome, unreadable = self._client.store(parts, on_progress=self.heartbeat.beat)
        except DicomWebCredentialsError as err:
            # nothing was sent: the rows wait for the file to be fixed, never fail
            delay = self._unreachable(f"{dest.name}: {err}")
            self._queue.mark_retry([d.delivery_id for d in batch], f"{dest.name}: {err}",
                                   time.time() + delay)
            return [], []
        self.heartbeat.beat()
        failed: list[Delivery] = []
        for item in unreadable:
            delivery = by_uid[item.sop_instance_uid]
            self.health.count(failed_total=1)
            self._queue.mark_failed(delivery.delivery_id, item.reason)
            logger.error("queue item %d: %s", delivery.queue_id, item.reason)
            failed.append(delivery)
        sent = [by_uid[uid] for uid in outcome.instances]
        if outcome.problem is RequestProblem.REFUSED and len(sent) > 1:
            alone = [d for d in sent if _refused_with_request(outcome.instances[
                d.sop_instance_uid])]
            answered = [d for d in sent if d not in alone]
            stored, more_failed = self._record(answered, outcome)
            failed += more_failed
            logger.warning("%s refused a request of %d instances (%s): sending %d of them "
                           "one by one", dest.name, len(sent), outcome.summary, len(alone))
            for delivery in alone:
                if self._stop.is_set():
                    self._queue.requeue([delivery.delivery_id])
                    continue
                one_stored, one_failed = self._send([delivery])
                stored += one_stored
                failed += one_failed
            return stored, failed
        stored, more_failed = self._record(sent, outcome)
        return stored, failed + more_failed

    def _record(self, deliveries: Sequence[Delivery], outcome: StowOutcome
                ) -> tuple[list[Delivery], list[Delivery]]:
        """Record each instance's verdict as DestinationWorker records a C-STORE status."""
        dest = self.destination
        if not deliveries:
            return [], []
        if outcome.tls_failure:
            self.health.count(tls_failures_total=1)
            if self.audit is not None:
                self.audit.tls_failure(dest, outcome.summary)
        if outcome.problem is RequestProblem.UNREACHABLE:
            self.health.count(association_failures_total=1)
        stored: list[Delivery] = []
        failed: list[Delivery] = []
        later: list[tuple[Delivery, StoreResult]] = []
        crashpoints.reached("after_store_response")
        for delivery in deliveries:
            result = outcome.instances[delivery.sop_instance_uid]
            if result.verdict is StoreVerdict.STORED:
                self._queue.mark_sent(delivery.delivery_id,
                                      "" if result.text == outcome.summary else result.text)
                self.health.count(stored_total=1)
                crashpoints.reached("after_store_recorded")
                logger.info("queue item %d: stored at %s (%s) as %s", delivery.queue_id,
                            dest.name, result.text, delivery.sop_instance_uid)
                stored.append(delivery)
            elif result.verdict is StoreVerdict.FAILED:
                self._queue.mark_failed(delivery.delivery_id,
                                        f"{dest.name} refused STOW-RS: {result.text}")
                self.health.count(failed_total=1)
                logger.error("queue item %d: %s refused STOW-RS (%s); kept, not retried",
                             delivery.queue_id, dest.name, result.text)
                failed.append(delivery)
            else:
                later.append((delivery, result))
        if stored:
            self._succeeded()
        if not later:
            return stored, failed
        # one backoff per request, not per instance: the archive answered once
        reason = f"{dest.name}: {outcome.summary}"
        if outcome.problem is RequestProblem.AUTH:
            reason += f": {credential_hint(dest)}; objects kept pending"
        elif outcome.problem is RequestProblem.CONFIG:
            reason += ": check url (the archive's DICOMweb root); objects kept pending"
        delay = (self._unreachable(reason) if outcome.problem in _DOWN and not stored
                 else self._next_backoff(reason))
        when = time.time() + delay
        for delivery, result in later:
            text = f"{dest.name}: {result.text}"
            if outcome.problem in (RequestProblem.AUTH, RequestProblem.CONFIG):
                text = reason
            if result.verdict is StoreVerdict.RETRY:
                self._queue.mark_retry([delivery.delivery_id], text, when,
                                       answered=outcome.http_status is not None)
                continue
            # outcome unknown: the same bytes go again later under the same UID
            if self._queue.mark_outcome_unknown(
                    delivery.delivery_id, text, when, max_unknown=MAX_UNKNOWN_OUTCOMES,
                    failed_reason=f"no answer from {dest.name} {MAX_UNKNOWN_OUTCOMES} times "
                                  "in a row while it received this object"):
                self.health.count(failed_total=1)
                logger.error("queue item %d: %s gave no answer %d times in a row for %s; "
                             "failed, kept for `queue retry`", delivery.queue_id, dest.name,
                             MAX_UNKNOWN_OUTCOMES, delivery.sop_instance_uid)
                failed.append(delivery)
        return stored, failed

    # -- verify = true: QIDO-RS through the commitment path ----------------------------------
    def _verify(self, deliveries: Sequence[Delivery]) -> None:
        """Look each stored instance up by QIDO-RS and apply the result as a commitment
        report: found → committed, missing → resent (Failure Reason 0x0112), listed under
        another SOP class → failed (0x0119). A lookup that fails leaves the rows stored, to
        be looked up again after a backoff under a new transaction."""
        if not deliveries:
            return
        dest = self.destination
        transaction_uid = self._uids.new_uid()
        self._queue.begin_commitment(dest.name, [d.delivery_id for d in deliveries],
                                     transaction_uid,
                                     deadline=time.time() + dest.commitment_timeout_s)
        try:
            committed: list[tuple[str, str]] = []
            missing: list[tuple[str, str, int]] = []
            listed = self._client.find_instances([d.sop_instance_uid for d in deliveries],
                                                 on_progress=self.heartbeat.beat)
            for delivery in deliveries:
                found = listed.get(delivery.sop_instance_uid)
                pair = (delivery.sop_class_uid, delivery.sop_instance_uid)
                if found is None:
                    missing.append((*pair, FAILURE_NO_SUCH_OBJECT))
                elif found and found != delivery.sop_class_uid:
                    missing.append((*pair, FAILURE_CLASS_INSTANCE_CONFLICT))
                else:
                    committed.append(pair)
            if self.audit is not None:
                # audited before it is applied, as the listener does with a report
                self.audit.committed(dest.name, committed, [(c, u) for c, u, _ in missing])
            crashpoints.reached("before_report_recorded")
            outcome = self._queue.apply_commitment_report(
                CommitmentResult(transaction_uid, tuple(committed), tuple(missing)),
                retry_commit_at=time.time() + self._queue_config.retry_initial_s)
            crashpoints.reached("after_report_recorded")
        except (DicomWebError, AuditUnavailable) as err:
            reason = f"{dest.name}: verification by QIDO-RS failed: {err}"
            delay = self._next_backoff(reason)
            self._queue.fail_transaction_request(transaction_uid, reason,
                                                 next_attempt_at=time.time() + delay)
            logger.error("%s; looking again in %.1f s", reason, delay)
            return
        except BaseException:
            # the transaction must not stay open until its deadline
            self._queue.fail_transaction_request(transaction_uid, "verification interrupted")
            raise
        logger.info("verified at %s by QIDO-RS: %d committed, %d to resend, %d failed "
                    "(transaction %s)", dest.name, outcome.committed, outcome.resend,
                    outcome.failed, transaction_uid)
        self._missed_again(deliveries, [
            d for d in deliveries
            if (d.sop_class_uid, d.sop_instance_uid, FAILURE_NO_SUCH_OBJECT) in missing])

    def _missed_again(self, verified: Sequence[Delivery], missed: Sequence[Delivery]) -> None:
        """Instances the archive said it stored but QIDO-RS does not find are resent, not at
        once (the report path makes them due now) but after a backoff, and failed after
        MAX_UNKNOWN_OUTCOMES misses in a row: an archive that answers "stored" and drops the
        object (Orthanc 1.10 with the DICOMweb plugin does so for an instance its Lua filter
        refuses) would otherwise get it again and again in a hot loop."""
        for delivery in verified:
            if delivery not in missed:
                self._misses.pop(delivery.delivery_id, None)      # found: the count ends
        if not missed:
            return
        dest = self.destination
        delay = self._next_backoff(f"{dest.name}: stored instance(s) not found by QIDO-RS; "
                                   "sending them again")
        for delivery in missed:
            count = self._misses.get(delivery.delivery_id, 0) + 1
            self._misses[delivery.delivery_id] = count
            if count < MAX_UNKNOWN_OUTCOMES:
                continue
            del self._misses[delivery.delivery_id]
            self.health.count(failed_total=1)
            self._queue.mark_failed(
                delivery.delivery_id,
                f"{dest.name} answered stored {count} times but QIDO-RS never found "
                "the instance: is the archive dropping it (a filter, a rule)? kept for "
                "`queue retry`")
            logger.error("queue item %d: %s said stored %d times, QIDO-RS never found %s; "
                         "failed", delivery.queue_id, dest.name, count,
                         delivery.sop_instance_uid)
        again = [d.delivery_id for d in missed if d.delivery_id in self._misses]
        self._queue.postpone(again, time.time() + delay)


def _refused_with_request(result: StoreResult) -> bool:
    """Failed without a Failure Reason of its own: refused with the whole request."""
    return result.verdict is StoreVerdict.FAILED and result.status is None
