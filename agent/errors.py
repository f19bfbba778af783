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


class PeerUnreachable(NetworkError, ConnectionError):
    """The peer did not accept a connection or an association."""


class AssociationRejected(NetworkError, ConnectionRefusedError):
    """The peer rejected the association (wrong AE title, no common context...)."""


class AcquisitionError(AgentError, RuntimeError):
    """The device could not deliver the frames asked for."""


class DaemonUnavailable(AgentError, ConnectionError):
    """The CLI could not reach the running daemon's API."""


class ApiTokenError(AgentError, PermissionError):
    """The API token file is missing, unreadable or unsafe (symlink, shared, garbled); the
    message names the file and what to do (issue 13)."""
