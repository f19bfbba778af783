"""The agent's exception hierarchy. Leaves also inherit the builtin they resemble."""


class AgentError(Exception):
    """Root of everything the agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """The configuration is invalid. `problems` holds every problem, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class IODError(AgentError, ValueError):
    """A DICOM object cannot be built or is invalid; the message names module and attribute."""


class QueueError(AgentError):
    """The spool or its database is unusable."""


class SpoolLockedError(QueueError, BlockingIOError):
    """Another agent process holds the spool."""


class AlreadyQueuedError(QueueError, ValueError):
    """An object with this SOP Instance UID is already queued (resends use the queued copy)."""


class SpoolFullError(QueueError, OSError):
    """The spool's disk is at its configured limit: capture stops, nothing is deleted."""


class UnknownQueueItemError(QueueError, KeyError):
    """No queue item with that id."""


class NetworkError(AgentError):
    """A DICOM network operation failed."""


class AssociationError(NetworkError, ConnectionError):
    """No association could be made; the subclass says why, the message says it in words a
    service engineer can act on. Raised by `agent.net.ae.associate`, the only place that opens
    associations."""


class PeerUnreachable(AssociationError):
    """No TCP connection to the peer (refused, timed out, no route, unknown host)."""


class AssociationRejected(AssociationError, ConnectionRefusedError):
    """The peer answered A-ASSOCIATE-RJ (wrong AE title, too busy...). `transient` is True for
    a rejection the peer itself calls temporary (PS3.8 9.3.4, result 2)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class AssociationAborted(AssociationError, ConnectionAbortedError):
    """The connection opened but the association request ended without an answer: an A-ABORT,
    a closed connection, no acceptable presentation context, or no reply in time."""


class TlsHandshakeError(AssociationError):
    """The TLS handshake failed (PS3.15 Annex B): `reason` is short ("certificate has
    expired", "unknown CA", "host name mismatch", "handshake failure"). Never followed by a
    plaintext attempt."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class AcquisitionError(AgentError, RuntimeError):
    """The device could not deliver the frames asked for."""


class DaemonUnavailable(AgentError, ConnectionError):
    """The CLI could not reach the running daemon's API."""


class ApiTokenError(AgentError, PermissionError):
    """The API token file is missing, unreadable or unsafe (symlink, shared, garbled); the
    message names the file and what to do (issue 13)."""


class DicomWebError(NetworkError):
    """A DICOMweb (STOW-RS, QIDO-RS) request to a destination could not be made or was
    refused as a whole; the message names the destination and what to check."""


class DicomWebCredentialsError(DicomWebError, PermissionError):
    """A destination's token_file or credentials_file is missing, unreadable, not owner-only
    or garbled; the message names the file (never its content)."""
