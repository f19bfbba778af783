"""Storage Commitment Push Model messages (PS3.4 Annex J): the N-ACTION request we send and the
N-EVENT-REPORT we receive. Pure functions; the report is attacker-controlled input."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from agent.errors import NetworkError

if TYPE_CHECKING:
    # imported where a report is parsed, in the daemon: a sending process only passes reports
    # on (agent.records is 0.2 MB per process)
    from agent.records import CommitmentResult

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Event Type ID 1: all instances committed; 2: some failed (PS3.4 J.3.3)
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2
#: a report larger than this is refused rather than walked
MAX_REFERENCES = 10_000


class CommitmentReportError(NetworkError, ValueError):
    """An N-EVENT-REPORT that is not a valid Storage Commitment result."""


@dataclass(frozen=True)
class CommitmentReport:
    """An N-EVENT-REPORT as received, before validation: on the listener, or on one of our
    own associations (then passed from the sending process to the daemon)."""

    peer_ae: str
    sop_class_uid: str
    event_type_id: int | None
    event_information: Dataset | None

    @classmethod
    def from_event(cls, event: Any) -> CommitmentReport:
        """From pynetdicom's evt.Event; on our own association the archive is the acceptor,
        on the listener the requestor."""
        assoc = event.assoc
        peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
        request = event.request
        event_type = request.EventTypeID
        return cls(peer_ae=str(peer.ae_title),
                   sop_class_uid=str(request.AffectedSOPClassUID),
                   event_type_id=None if event_type is None else int(event_type),
                   event_information=event.event_information)


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def build_commitment_request(
    transaction_uid: str, references: Sequence[tuple[str, str]]
) -> Dataset:
    """The N-ACTION Action Information: Transaction UID and (class, instance) references."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class_uid, sop_instance_uid in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return ds


def _references(ds: Dataset, keyword: str, with_reason: bool) -> list[tuple[str, ...]]:
    seq = ds.get(keyword)
    if seq is None:
        return []
    if len(seq) > MAX_REFERENCES:
        raise CommitmentReportError(f"{keyword}: {len(seq)} items, more than {MAX_REFERENCES}")
    result: list[tuple[str, ...]] = []
    for index, item in enumerate(seq):
        sop_class = item.get("ReferencedSOPClassUID")
        sop_instance = item.get("ReferencedSOPInstanceUID")
        if not is_valid_uid(str(sop_class or "")) or not is_valid_uid(str(sop_instance or "")):
            raise CommitmentReportError(
                f"{keyword} item {index}: Referenced SOP Class/Instance UID missing or invalid"
            )
        if with_reason:
            reason = item.get("FailureReason")
            if reason is None:
                raise CommitmentReportError(f"{keyword} item {index}: no Failure Reason")
            result.append((str(sop_class), str(sop_instance), int(reason)))
        else:
            result.append((str(sop_class), str(sop_instance)))
    return result


def parse_commitment_report(event_type_id: int | None, ds: Dataset | None) -> CommitmentResult:
    """Validate an N-EVENT-REPORT's Event Information.

    Raises
    ------
    CommitmentReportError
        Unknown event type, missing or invalid Transaction UID, invalid references.
    """
    from agent.records import CommitmentResult

    if event_type_id not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
        raise CommitmentReportError(f"Event Type ID {event_type_id!r}: expected 1 or 2")
    if ds is None:
        raise CommitmentReportError("no Event Information")
    try:
        transaction_uid = str(ds.get("TransactionUID") or "")
        if not is_valid_uid(transaction_uid):
            raise CommitmentReportError("Transaction UID missing or invalid")
        committed = _references(ds, "ReferencedSOPSequence", with_reason=False)
        failed = _references(ds, "FailedSOPSequence", with_reason=True)
    except CommitmentReportError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as err:
        # pydicom decodes lazily: a malformed element raises on first access
        raise CommitmentReportError(f"malformed Event Information: {type(err).__name__}") \
            from err
    if event_type_id == EVENT_ALL_COMMITTED and failed:
        raise CommitmentReportError("Event Type ID 1 but Failed SOP Sequence present")
    return CommitmentResult(
        transaction_uid=transaction_uid,
        committed=tuple((c, i) for c, i in committed),   # type: ignore[misc]
        failed=tuple((c, i, r) for c, i, r in failed),   # type: ignore[misc]
    )
