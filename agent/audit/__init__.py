"""Audit trail (issue 15, IHE ATNA): DICOM audit messages (PS3.15 A.5) to the hospital's audit
record repository over syslog (RFC 5424 over TLS, TCP or UDP), spooled durably before each event
is reported done. The daemon holds one `AuditTrail`; docs/audit.md lists the messages.

Modules: `messages` (the XML, pure), `syslog` (RFC 5424 message and octet-counted framing,
pure), `spool` (the durable queue), `transport` (sockets), `sender` (the sending thread),
`trail` (the API), `study_ref` (the patient and study an audit message names, read from a
spooled file's header).
"""

from agent.audit.messages import AuditPeer, Outcome
from agent.audit.spool import AuditUnavailable
from agent.audit.trail import AlertKind, AuditTrail

__all__ = ["AlertKind", "AuditPeer", "AuditTrail", "AuditUnavailable", "Outcome"]
