"""What the worklist raises. Messages name the worklist item and the DICOM attribute, never a
patient's name, ID or birth date: they reach the console and may reach a log."""

from __future__ import annotations

from agent.errors import AgentError, NetworkError


class WorklistError(AgentError):
    """Root of the worklist's errors."""


class WorklistQueryError(WorklistError, NetworkError):
    """A C-FIND to the RIS did not complete: failure status, abort, timeout."""


class RISUnreachable(WorklistQueryError, ConnectionError):
    """No association with the RIS: nothing listens, the network is down, or it refused us."""


class WorklistItemError(WorklistError, ValueError):
    """One C-FIND response cannot be used: an attribute is missing, too long, or its bytes
    cannot be decoded. The item is left out of the worklist; the others are kept.

    `response` is the 1-based number of the pending response, `attribute` the DICOM keyword
    (with its sequence path, e.g. ``ScheduledProcedureStepSequence[0].Modality``).
    """

    def __init__(self, response: int, attribute: str, reason: str, *,
                 identity: str = "") -> None:
        self.response = response
        self.attribute = attribute
        self.reason = reason
        where = f"worklist response {response}" + (f" ({identity})" if identity else "")
        super().__init__(f"{where}: {attribute}: {reason}")


class InvalidWorklistQuery(WorklistError, ValueError):
    """A query value the C-FIND identifier cannot carry (too long, a backslash...)."""


class WorklistCacheError(WorklistError, OSError):
    """The offline cache cannot be read or written."""


class WorklistItemNotFound(WorklistError, LookupError):
    """No worklist item has the accession number / SPS ID asked for."""


class WorklistItemAmbiguous(WorklistError, LookupError):
    """Several worklist items match; the message lists how to pick one."""
