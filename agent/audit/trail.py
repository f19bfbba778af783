"""`AuditTrail`: the one object the daemon holds for auditing (issue 15).

One method per audited event. Each builds the PS3.15 A.5.3 message, wraps it in its syslog
message and commits it to the audit spool *before returning*; the sending thread delivers it
later, in order. An event that cannot be committed raises `AuditUnavailable`, and the caller
refuses the action it describes. Without `[audit]` in the config every method does nothing.
"""

from __future__ import annotations

import datetime
import getpass
import os
import socket
import time
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.audit import messages
from agent.audit.messages import AuditPeer, Node, Outcome
from agent.audit.sender import AuditSender, SenderSettings, iso
from agent.audit.spool import AuditSpool, AuditUnavailable
from agent.audit.syslog import SEVERITY_NOTICE, SEVERITY_WARNING, syslog_message
from agent.audit.transport import Connection, connect
from agent.config import AgentConfig, AuditSection
from agent.net.tls import PeerTls, client_context, tls_identity

if TYPE_CHECKING:
    from pydicom import Dataset

#: the audit spool's folder inside the agent's spool
AUDIT_FOLDER = "audit"


class AlertKind(Enum):
    """What a Security Alert (A.5.3.11) reports; `_ALERTS` gives its EventTypeCode (PS3.16
    CID 8) and the outcome it gets unless the caller says otherwise."""

    REFUSED_ASSOCIATION = "refused-association"
    TLS_FAILURE = "tls-failure"
    REFUSED_API_REQUEST = "refused-api-request"
    NETWORK_CONFIGURATION = "network-configuration"
    SECURITY_CONFIGURATION = "security-configuration"
    SOFTWARE_CONFIGURATION = "software-configuration"


# a refusal is a failure the agent mitigated (A.5.3.11: minor or serious = mitigation worked);
# a configuration change is informative (success)
_ALERTS: dict[AlertKind, tuple[messages.Code, Outcome]] = {
    AlertKind.REFUSED_ASSOCIATION: (messages.NODE_AUTHENTICATION, Outcome.MINOR_FAILURE),
    AlertKind.TLS_FAILURE: (messages.NODE_AUTHENTICATION, Outcome.MINOR_FAILURE),
    AlertKind.REFUSED_API_REQUEST: (messages.USE_OF_RESTRICTED_FUNCTION, Outcome.MINOR_FAILURE),
    AlertKind.NETWORK_CONFIGURATION: (messages.NETWORK_CONFIGURATION, Outcome.SUCCESS),
    AlertKind.SECURITY_CONFIGURATION: (messages.SECURITY_CONFIGURATION, Outcome.SUCCESS),
    AlertKind.SOFTWARE_CONFIGURATION: (messages.SOFTWARE_CONFIGURATION, Outcome.SUCCESS),
}


def local_node(config: AgentConfig) -> Node:
    """This process as audit messages name it: AE title, host name, process id, OS user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""       # a uid without a passwd entry (a container): the launcher stays unnamed
    return Node(config.agent.ae_title, socket.getfqdn(), os.getpid(), os_user=user)


class AuditTrail:
    """Durable audit events for one agent process.

    Parameters
    ----------
    config
        The loaded config; its `[audit]` section says where messages go (None: disabled).
    spool_dir
        The agent's spool; messages wait in ``spool_dir/audit`` (default: ``[agent]
        spool_dir``).
    node, clock, confirm_s
        For tests: who we are, the wall clock (an aware datetime), and how long a connection
        must stay up after a write before the message counts as delivered.

    Raises
    ------
    AuditUnavailable
        If the audit spool cannot be opened.
    TlsConfigError
        If transport is "tls" and the `[tls]` identity cannot be loaded.
    """

    def __init__(self, config: AgentConfig, spool_dir: Path | None = None, *,
                 node: Node | None = None,
                 clock: Callable[[], datetime.datetime] | None = None,
                 confirm_s: float = 0.5) -> None:
        self._settings: AuditSection | None = config.audit
        self._node = node or local_node(config)
        self._clock = clock or (lambda: datetime.datetime.now().astimezone())
        self._spool: AuditSpool | None = None
        self._sender: AuditSender | None = None
        if self._settings is None:
            return
        folder = (spool_dir or config.agent.spool_dir) / AUDIT_FOLDER
        connector = _connector(config, self._settings)
        self._spool = AuditSpool(folder)
        udp_limit = self._settings.udp_max_bytes if self._settings.transport == "udp" else None
        self._sender = AuditSender(self._spool, connector, SenderSettings(
            retry_initial_s=self._settings.retry_initial_s,
            retry_max_s=self._settings.retry_max_s, confirm_s=confirm_s,
            max_datagram_bytes=udp_limit))

    @property
    def enabled(self) -> bool:
        return self._settings is not None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Requeue what a previous run wrote but could not confirm, and start sending."""
        if self._spool is None or self._sender is None or self._settings is None:
            return
        self._spool.recover(release_held=self._settings.transport != "udp")
        self._sender.start()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Send what can be sent within `flush_timeout_s`, then stop; the rest stays spooled."""
        if self._sender is not None:
            self._sender.stop(flush_timeout_s)
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def status(self) -> dict[str, Any]:
        """For `status` and the console.

        Keys: ``enabled``, ``transport``, ``repository`` ("host:port"), ``backlog`` (messages
        not yet delivered), ``held`` (UDP-oversize messages kept), ``oldest_age_s``,
        ``receiver_reachable`` (None before the first attempt), ``last_error``,
        ``last_error_at``, ``last_delivered_at``, ``delivered`` (this run), and ``alert``: a
        sentence when a person must act (backlog older than ``backlog_alert_s``, a held
        message, or a repository certificate we do not trust), else None.
        """
        if self._settings is None or self._sender is None or self._spool is None:
            return {"enabled": False, "alert": None}
        counts = self._spool.counts()
        state = self._sender.state()
        now = time.time()
        oldest_age_s = None if counts.oldest_created_at is None else max(
            0.0, now - counts.oldest_created_at)
        return {
            "enabled": True,
            "transport": self._settings.transport,
            "repository": f"{self._settings.host}:{self._settings.port}",
            "backlog": counts.waiting,
            "held": counts.held,
            "oldest_age_s": oldest_age_s,
            "receiver_reachable": state.reachable,
            "last_error": state.last_error,
            "last_error_at": iso(state.last_error_at),
            "last_delivered_at": iso(state.last_delivered_at),
            "delivered": state.delivered,
            "alert": self._alert(counts.waiting, counts.held, oldest_age_s,
                                 state.last_error, state.certificate_error),
        }

    def _alert(self, waiting: int, held: int, oldest_age_s: float | None,
               last_error: str | None, certificate_error: bool) -> str | None:
        assert self._settings is not None
        why = f" ({last_error})" if last_error else ""
        if certificate_error:
            return f"audit repository not trusted, nothing is sent{why}"
        if held:
            return (f"{held} audit message(s) larger than udp_max_bytes are held in the spool; "
                    "switch [audit] transport to tls or tcp to deliver them")
        if oldest_age_s is not None and oldest_age_s > self._settings.backlog_alert_s:
            return (f"audit backlog: {waiting} message(s) undelivered, the oldest for "
                    f"{oldest_age_s:.0f} s (limit {self._settings.backlog_alert_s:g} s){why}")
        return None

    # --- events (A.5.3) -----------------------------------------------------------------------

    def application_start(self, outcome: Outcome = Outcome.SUCCESS) -> None:
        """Application Activity / Application Start: when the daemon has started.

        Raises
        ------
        AuditUnavailable
            If the event could not be recorded (then the daemon should not run).
        """
        self._record(lambda n, t: messages.application_activity(n, t, start=True,
                                                                outcome=outcome), outcome)

    def application_stop(self, outcome: Outcome = Outcome.SUCCESS) -> None:
        """Application Activity / Application Stop: as the daemon stops (before `stop()`).

        Raises
        ------
        AuditUnavailable
            If the event could not be recorded.
        """
        self._record(lambda n, t: messages.application_activity(n, t, start=False,
                                                                outcome=outcome), outcome)

    def worklist_query(self, peer: AuditPeer, identifier: Dataset | bytes,
                       outcome: Outcome = Outcome.SUCCESS, *,
                       transfer_syntax_uid: str = messages.EXPLICIT_VR_LITTLE_ENDIAN,
                       outcome_description: str = "") -> None:
        """Query: one worklist C-FIND to `peer`; `identifier` is the query as sent (a Dataset is
        encoded Explicit VR Little Endian).

        Raises
        ------
        AuditUnavailable
            If the event could not be recorded.
        """
        if not self.enabled:
            return
        data = identifier if isinstance(identifier, bytes) else _encode(identifier)
        ts_uid = (transfer_syntax_uid if isinstance(identifier, bytes)
                  else messages.EXPLICIT_VR_LITTLE_ENDIAN)
        self._record(lambda n, t: messages.query(
            n, peer, t, data, transfer_syntax_uid=ts_uid, outcome=outcome,
            outcome_description=outcome_description), outcome)

    def begin_transferring(self, destination: AuditPeer, *, patient_id: str, study_uid: str,
                           sop_classes: Mapping[str, int], accession: str = "") -> None:
        """Begin Transferring DICOM Instances: the first association that sends objects of
        this study to `destination`.

        Raises
        ------
        AuditUnavailable
            If the event could not be recorded.
        """
        self._record(lambda n, t: messages.begin_transferring(
            n, destination, t, patient_id=patient_id, study_uid=study_uid,
            sop_classes=sop_classes, accession=accession), Outcome.SUCCESS)

    def instances_transferred(self, destination: AuditPeer, *, patient_id: str, study_uid: str,
                              sop_classes: Mapping[str, int], outcome: Outcome,
                              committed: bool = False, accession: str = "",
                              outcome_description: str = "") -> None:
        """DICOM Instances Transferred: a study's objects stored at `destination`
        (`committed=False`), and again when its commitment result arrives (`committed=True`,
        outcome MINOR_FAILURE if some were not committed). `sop_classes` maps SOP Class UID to
        the number of instances.

        Raises
        ------
        AuditUnavailable
            If the event could not be recorded.
        """
        self._record(lambda n, t: messages.instances_transferred(
            n, destination, t, patient_id=patient_id, study_uid=study_uid,
            sop_classes=sop_classes, outcome=outcome, committed=committed, accession=accession,
            outcome_description=outcome_description), outcome)

    def security_alert(self, kind: AlertKind, detail: str, peer: AuditPeer | None = None, *,
                       subject_uri: str = "", outcome: Outcome | None = None) -> None:
        """Security Alert: a refused association, API request or TLS handshake (`peer` = who),
        or a configuration change (`subject_uri` = ``file:///...`` of the config). `detail` is
        free text for the security officer (the Alert Description).

        Raises
        ------
        AuditUnavailable
            If the event could not be recorded.
        """
        type_code, default_outcome = _ALERTS[kind]
        result = default_outcome if outcome is None else outcome
        self._record(lambda n, t: messages.security_alert(
            n, t, type_code=type_code, detail=detail, peer=peer, subject_uri=subject_uri,
            outcome=result), result)

    def procedure_record(self, action: str, *, patient_id: str, study_uid: str, mpps_uid: str,
                         sop_classes: Mapping[str, int], accession: str = "",
                         outcome: Outcome = Outcome.SUCCESS) -> None:
        """Procedure Record: an MPPS N-CREATE (`action="create"`) or N-SET (`"update"`).

        Raises
        ------
        AuditUnavailable
            If the event could not be recorded.
        ValueError
            If `action` is neither "create" nor "update".
        """
        codes = {"create": "C", "update": "U"}
        if action not in codes:
            raise ValueError(f"procedure_record action: expected create or update, "
                             f"got {action!r}")
        self._record(lambda n, t: messages.procedure_record(
            n, t, action=codes[action], patient_id=patient_id, study_uid=study_uid,
            mpps_uid=mpps_uid, sop_classes=sop_classes, accession=accession,
            outcome=outcome), outcome)

    def _record(self, build: Callable[[Node, datetime.datetime], bytes],
                outcome: Outcome) -> None:
        if self._settings is None:
            return
        spool, sender = self._spool, self._sender
        if spool is None or sender is None:
            raise AuditUnavailable("audit trail stopped: the event cannot be recorded")
        when = self._clock()
        xml = build(self._node, when)
        severity = SEVERITY_NOTICE if outcome == Outcome.SUCCESS else SEVERITY_WARNING
        spool.append(lambda number: syslog_message(
            xml, number=number, when=when, hostname=self._node.host,
            process_id=self._node.process_id, severity=severity), now=when.timestamp())
        sender.wake()


def _connector(config: AgentConfig, settings: AuditSection) -> Callable[[], Connection]:
    tls: PeerTls | None = None
    context = None
    if settings.transport == "tls":
        identity = tls_identity(config)
        if identity is None:
            raise AuditUnavailable(f"{config.path.name}: [audit] transport = \"tls\" needs a "
                                   "[tls] section")
        tls = PeerTls(identity, settings.verify_hostname)
        context = client_context(tls)       # once: a bad identity fails the start, not later

    def open_connection() -> Connection:
        return connect(settings.host, settings.port, settings.transport, tls=tls,
                       context=context)

    return open_connection


def _encode(identifier: Dataset) -> bytes:
    # pydicom only here: the rest of the audit package deals in bytes
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, identifier)
    return buffer.getvalue()
