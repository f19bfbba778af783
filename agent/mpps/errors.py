"""What the MPPS client raises. Messages name the procedure step by its SOP Instance UID or
PPS ID and the DICOM attribute, never a patient's name, ID or birth date: they reach the
console and may reach a log."""

from __future__ import annotations

from agent.errors import AgentError


class MppsError(AgentError):
    """Root of the MPPS client's errors."""


class MppsValueError(MppsError, ValueError):
    """A value given for a procedure step cannot be sent (too long, invalid UID, a dummy
    value in the unscheduled case...). Nothing was recorded."""


class MppsStateError(MppsError, RuntimeError):
    """The operation is not allowed in the step's state, e.g. a series added after
    COMPLETED (PS3.4 F.7.2.2.2: a final MPPS is never modified; begin a new one)."""


class UnknownProcedureStep(MppsError, KeyError):
    """No open procedure step has that SOP Instance UID."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message
        return str(self.args[0]) if self.args else ""


class MppsJournalError(MppsError, OSError):
    """The MPPS journal folder cannot be created, read or written; nothing was recorded."""
