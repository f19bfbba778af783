"""The protocol between the daemon and a sending process (agent.net.store_process): one frozen
dataclass per message, one enum per outcome. Pickled over a socketpair whose both ends are ours.

    parent → child   Associate | Store | NAction | Release | ReportStatus | Exit
    child → parent   Ready | Associated | AssociationFailed | Outcome ... Stored
                     | NActionDone | Released | Report (answered by ReportStatus)

Exceptions are not pickled: an AssociationFailed names its kind, and the parent raises the
matching `agent.errors.AssociationError` subclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom import Dataset

from agent.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    PeerUnreachable,
    TlsHandshakeError,
)
from agent.net.commitment import CommitmentReport
from agent.net.tls import PeerTls

#: (SOP class UID, (transfer syntax UID, ...)) per presentation context, in order
ContextSpec = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class AssociationRequest:
    ae_title: str
    host: str
    port: int
    called_ae: str
    contexts: ContextSpec
    timeout_s: float
    #: TLS on this association (None: plaintext); the child builds its own SSL context
    tls: PeerTls | None = None


class SendError(StrEnum):
    """Why an object was not sent although the association was up."""

    NO_CONTEXT = "no-context"      # nothing accepted fits the object (or it cannot be decoded)
    UNREADABLE = "unreadable"      # the spool file cannot be read


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one object: a response status (None = no response, outcome unknown), or
    an error before anything was sent."""

    key: int
    status: int | None = None
    comment: str = ""
    error: SendError | None = None
    detail: str = ""
    #: the association was gone before this object was sent
    not_sent: bool = False
    #: the C-STORE's round trip in the sending process (first byte out → response in), 0.0
    #: if nothing was sent; the bench counts stalls and per-object latency from it
    seconds: float = 0.0

    def status_dataset(self) -> Dataset:
        """The status as pynetdicom would have returned it (empty: no response)."""
        ds = Dataset()
        if self.status is not None:
            ds.Status = self.status
            if self.comment:
                ds.ErrorComment = self.comment
        return ds


class FailureKind(StrEnum):
    """Which AssociationError a failed association request was."""

    UNREACHABLE = "unreachable"
    REJECTED = "rejected"
    ABORTED = "aborted"
    TLS = "tls"


_KIND_OF: tuple[tuple[type[AssociationError], FailureKind], ...] = (
    (TlsHandshakeError, FailureKind.TLS),
    (AssociationRejected, FailureKind.REJECTED),
    (AssociationAborted, FailureKind.ABORTED),
    (PeerUnreachable, FailureKind.UNREACHABLE),
)


# -- parent → child ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Associate:
    request: AssociationRequest


@dataclass(frozen=True)
class Store:
    #: (key, spool file path) in sending order
    items: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class NAction:
    """Storage Commitment request; then wait up to `wait_s` for a report on the association."""

    transaction_uid: str
    #: (SOP class UID, SOP instance UID)
    references: tuple[tuple[str, str], ...]
    wait_s: float


@dataclass(frozen=True)
class Release:
    pass


@dataclass(frozen=True)
class ReportStatus:
    """The status the child answers the archive's report with (recorded before answered)."""

    status: int


@dataclass(frozen=True)
class Exit:
    pass


# -- child → parent ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ready:
    pass


@dataclass(frozen=True)
class Associated:
    max_pdu: int | None


@dataclass(frozen=True)
class AssociationFailed:
    kind: FailureKind
    message: str
    #: TlsHandshakeError.reason, AssociationRejected.transient
    tls_reason: str = ""
    transient: bool = False

    @classmethod
    def from_error(cls, err: AssociationError) -> AssociationFailed:
        kind = next((k for klass, k in _KIND_OF if isinstance(err, klass)),
                    FailureKind.UNREACHABLE)
        return cls(kind, str(err),
                   tls_reason=err.reason if isinstance(err, TlsHandshakeError) else "",
                   transient=isinstance(err, AssociationRejected) and err.transient)

    def error(self) -> AssociationError:
        """The exception the factory raised in the child."""
        if self.kind is FailureKind.TLS:
            return TlsHandshakeError(self.message, reason=self.tls_reason)
        if self.kind is FailureKind.REJECTED:
            return AssociationRejected(self.message, transient=self.transient)
        if self.kind is FailureKind.ABORTED:
            return AssociationAborted(self.message)
        return PeerUnreachable(self.message)


@dataclass(frozen=True)
class Outcome:
    outcome: StoreOutcome


@dataclass(frozen=True)
class Stored:
    """End of a Store: every item has had its Outcome."""

    established: bool


@dataclass(frozen=True)
class NActionDone:
    status: int | None          # None: no answer
    established: bool


@dataclass(frozen=True)
class Released:
    pass


@dataclass(frozen=True)
class Report:
    report: CommitmentReport


ParentMessage = Associate | Store | NAction | Release | ReportStatus | Exit
ChildMessage = (Ready | Associated | AssociationFailed | Outcome | Stored | NActionDone
                | Released | Report)
