"""The listener: accepts Storage Commitment reports (N-EVENT-REPORT) and C-ECHO, only from the
configured archives, and records each report durably before answering it.

Orthanc always sends the report on a new association to the AE/host/port it has registered for
us (shared/design/PEERS.md); the same handler also serves reports that arrive on the forwarder's
own association. With an SSL context the listener speaks only DICOM TLS (PS3.15 Annex B): a
peer whose certificate does not verify is refused before any DIMSE.
"""

from __future__ import annotations

import logging
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import (
    StorageCommitmentPushModel,
    Verification,
)

from agent import crashpoints
from agent.config import DestinationSection
from agent.errors import AgentError
from agent.net import status as dimse_status
from agent.net.ae import (
    MAX_ASSOCIATION_PDATA_BYTES,
    PDU_READ_TIMEOUT_S,
    TLS_HANDSHAKE_TIMEOUT_S,
    AgentAE,
    AllowListServer,
    make_server,
    resolve_hosts,
)
from agent.net.commitment import (
    CommitmentReport,
    CommitmentReportError,
    parse_commitment_report,
)
from agent.queue import QueueStore

logger = logging.getLogger(__name__)

#: PS3.7 C.4 statuses we answer with (defined in agent.net.status)
STATUS_SUCCESS = dimse_status.SUCCESS
STATUS_PROCESSING_FAILURE = dimse_status.PROCESSING_FAILURE
STATUS_NO_SUCH_SOP_CLASS = dimse_status.NO_SUCH_SOP_CLASS
STATUS_INVALID_ARGUMENT = dimse_status.INVALID_ARGUMENT_VALUE
STATUS_UNRECOGNISED_OPERATION = dimse_status.UNRECOGNISED_OPERATION
#: the maximum PDU we announce; a longer PDU is refused before its body is read
MAX_PDU_BYTES = 1 << 20
LISTENER_ACSE_TIMEOUT_S = 5.0
#: associations the listener serves at once
LISTENER_MAX_ASSOCIATIONS = 8
#: the presentation contexts the listener accepts, each with pynetdicom's default transfer
#: syntaxes and default roles (the conformance statement lists them from here)
ACCEPTED_SOP_CLASSES: tuple[str, ...] = (str(StorageCommitmentPushModel), str(Verification))


#: (destination, committed, not committed): (SOP Class UID, SOP Instance UID) pairs of a
#: Storage Commitment report, before it is applied; raising AgentError refuses the report
CommitmentHook = Callable[[str, list[tuple[str, str]], list[tuple[str, str]]], None]


@dataclass(frozen=True)
class Refusal:
    """A peer the listener turned away, for the audit trail (issue 15). `kind`: "address" (not
    an archive's address), "ae-title" (association rejected: calling or called AE title not
    accepted) or "tls" (handshake failed). No patient data: addresses, AE titles, reasons."""

    kind: str
    host: str
    port: int | None
    ae_title: str
    detail: str


def accepted_contexts() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(abstract syntax, transfer syntaxes) of each context the listener accepts. Pure."""
    return tuple((sop_class, tuple(DEFAULT_TRANSFER_SYNTAXES))
                 for sop_class in ACCEPTED_SOP_CLASSES)


class CommitmentReportHandler:
    """Validates a report against the transactions we sent and applies it to the queue.

    Thread-safe: pynetdicom runs it on its own threads, possibly while our own N-ACTION call
    is still in progress.
    """

    def __init__(
        self,
        queue: QueueStore,
        destinations: Sequence[DestinationSection],
        *,
        retry_commit_s: float,
        on_change: Callable[[], None] = lambda: None,
        on_report: CommitmentHook | None = None,
    ) -> None:
        self._queue = queue
        self._on_report = on_report
        self._ae_by_destination = {d.name: d.called_ae for d in destinations}
        self._retry_commit_s = retry_commit_s
        self._on_change = on_change

    def __call__(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """pynetdicom's EVT_N_EVENT_REPORT handler (the listener)."""
        try:
            report = CommitmentReport.from_event(event)
        except (AttributeError, TypeError, ValueError) as err:
            logger.warning("unreadable N-EVENT-REPORT: %s", err)
            return STATUS_INVALID_ARGUMENT, None
        return self.handle_report(report), None

    def handle_report(self, report: CommitmentReport) -> int:
        """Validate and record a report; the status to answer with (0x0000 only once the
        report is durable)."""
        peer_ae = report.peer_ae
        if report.sop_class_uid != StorageCommitmentPushModel:
            logger.warning("N-EVENT-REPORT for SOP class %s from %s ignored",
                           report.sop_class_uid, peer_ae)
            return STATUS_NO_SUCH_SOP_CLASS
        try:
            result = parse_commitment_report(report.event_type_id, report.event_information)
        except CommitmentReportError as err:
            logger.warning("invalid Storage Commitment report from %s: %s", peer_ae, err)
            return STATUS_INVALID_ARGUMENT
        destination = self._queue.transaction_destination(result.transaction_uid)
        if destination is None:
            logger.warning("Storage Commitment report from %s for unknown transaction %s "
                           "ignored", peer_ae, result.transaction_uid)
            return STATUS_UNRECOGNISED_OPERATION
        expected_ae = self._ae_by_destination.get(destination)
        if expected_ae is not None and expected_ae != peer_ae:
            logger.warning("Storage Commitment report for transaction %s came from AE %s, "
                           "but the transaction was sent to %s (%s): ignored",
                           result.transaction_uid, peer_ae, destination, expected_ae)
            return STATUS_PROCESSING_FAILURE
        if self._on_report is not None:
            try:
                # audited before it is applied: a crash in between audits it again when the
                # archive is asked again, never leaves a commitment unaudited
                self._on_report(destination, list(result.committed),
                                [(sop_class, uid) for sop_class, uid, _ in result.failed])
            except AgentError as err:
                logger.error("Storage Commitment report %s from %s refused: %s",
                             result.transaction_uid, destination, err)
                return STATUS_PROCESSING_FAILURE
        crashpoints.reached("before_report_recorded")
        outcome = self._queue.apply_commitment_report(
            result, retry_commit_at=time.time() + self._retry_commit_s
        )
        crashpoints.reached("after_report_recorded")
        # durable from here on: only now may the archive be told 0x0000
        logger.info(
            "commitment report %s from %s: %d committed, %d to resend, %d to ask again, "
            "%d failed, %d ignored", result.transaction_uid, destination, outcome.committed,
            outcome.resend, outcome.retry_commit, outcome.failed, len(outcome.ignored))
        for uid in outcome.ignored:
            logger.warning("commitment report %s names instance %s that the transaction did "
                           "not reference: ignored", result.transaction_uid, uid)
        self._on_change()
        return STATUS_SUCCESS


class Listener:
    """The inbound DICOM server of the agent.

    `ssl_context` (agent.net.tls.server_context): None serves plaintext; with one, only TLS,
    each handshake on its connection's thread within `tls_handshake_timeout_s`. `on_refused`
    hears of every peer turned away (address, AE title, TLS), on the thread that refused it.
    """

    def __init__(
        self,
        *,
        ae_title: str,
        host: str,
        port: int,
        destinations: Sequence[DestinationSection],
        report_handler: CommitmentReportHandler,
        pdu_read_timeout_s: float = PDU_READ_TIMEOUT_S,
        max_association_pdata_bytes: int = MAX_ASSOCIATION_PDATA_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
        on_refused: Callable[[Refusal], None] | None = None,
        verify_peer_address: bool = False,
    ) -> None:
        self.ae_title = ae_title
        self._on_refused = on_refused
        self.ssl_context = ssl_context
        self.tls_handshake_timeout_s = tls_handshake_timeout_s
        #: with TLS: the peer's certificate must name the address it connects from
        self.verify_peer_address = verify_peer_address
        self.pdu_read_timeout_s = pdu_read_timeout_s
        self.max_association_pdata_bytes = max_association_pdata_bytes
        self.host = host
        self.port = port
        # DICOMweb destinations send no DIMSE reports: their (empty) AE titles and hosts do
        # not widen the allow-lists
        self._destinations = [d for d in destinations if d.kind == "dimse"]
        self._handler = report_handler
        self._server: AllowListServer | None = None
        self._thread: threading.Thread | None = None

    def stalled(self) -> str:
        """"" or why the listener no longer accepts (for the systemd watchdog)."""
        if self._thread is not None and not self._thread.is_alive():
            return "listener: its thread ended; commitment reports cannot arrive"
        return ""

    def start(self) -> None:
        """Bind and serve in a background thread.

        Raises
        ------
        OSError
            If the address cannot be bound (port in use, address not local).
        """
        ae = AgentAE(self.ae_title)
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.maximum_associations = LISTENER_MAX_ASSOCIATIONS
        # an archive sends its A-ASSOCIATE-RQ at once; a connection that says nothing for this
        # long is dropped, so idle connections cannot keep a real report out for long
        ae.acse_timeout = LISTENER_ACSE_TIMEOUT_S
        ae.require_called_aet = True
        ae.require_calling_aet = sorted({d.called_ae for d in self._destinations})
        # default roles: Orthanc proposes SCP-only for the report association, and
        # scu_role=True/scp_role=False would reject that context (DICOM-NOTES.md §4)
        for sop_class, syntaxes in accepted_contexts():
            ae.add_supported_context(sop_class, list(syntaxes))
        handlers: list[Any] = [
            (evt.EVT_N_EVENT_REPORT, self._handler),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_REJECTED, self._rejected),
        ]
        server = make_server(
            ae, (self.host, self.port), evt_handlers=handlers,
            # AE titles are self-asserted: the source address must be an archive's too
            allowed_addresses=resolve_hosts(d.host for d in self._destinations),
            ssl_context=self.ssl_context,
            # a peer that stalls mid-PDU or streams fragments is cut off (issue 13, finding 7)
            pdu_read_timeout_s=self.pdu_read_timeout_s, max_pdu_bytes=MAX_PDU_BYTES,
            max_association_pdata_bytes=self.max_association_pdata_bytes,
            tls_handshake_timeout_s=self.tls_handshake_timeout_s,
            verify_peer_address=self.verify_peer_address and self.ssl_context is not None,
            on_refused=self._refused_connection,
        )
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name="listener", daemon=True
        )
        self._thread.start()
        logger.info("listener %s on %s:%d%s (Storage Commitment reports, C-ECHO)",
                    self.ae_title, self.host, self.port,
                    " with DICOM TLS only" if self.ssl_context is not None else "")

    def _refused_connection(self, kind: str, host: str, port: int, detail: str) -> None:
        self._report(Refusal("address" if kind == "address" else "tls", host, port, "", detail))

    def _rejected(self, event: evt.Event) -> None:
        """EVT_REJECTED: pynetdicom refused the association (an AE title not accepted, too
        many associations)."""
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title or "").strip()
        primitive = event.assoc.acceptor.primitive
        diagnostic = getattr(primitive, "diagnostic", None)
        source = getattr(primitive, "result_source", None)
        reasons: dict[tuple[Any, Any], str] = {
            (1, 3): f"calling AE title {calling} not accepted",
            (1, 7): "called AE title not ours"}
        why = reasons.get((source, diagnostic),
                          f"association rejected (source {source}, reason {diagnostic})")
        self._report(Refusal("ae-title", str(requestor.address or ""), requestor.port, calling,
                             why))

    def _report(self, refusal: Refusal) -> None:
        if self._on_refused is None:
            return
        try:
            self._on_refused(refusal)
        except Exception:  # a refusal stays a refusal whatever the hook does
            logger.exception("listener: the refusal of %s could not be reported", refusal.host)

    def stop(self) -> None:
        if self._server is not None:
            # AssociationServer.shutdown() also removes itself from ae._servers, where
            # make_server() (unlike start_server()) never put it
            socketserver.BaseServer.shutdown(self._server)
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

