"""N-CREATE / N-SET response status → what the MPPS sender does. The one place MPPS statuses
are mapped (PS3.7 Annex C, PS3.4 F.7.2.1.3 and F.7.2.2.4)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom import Dataset
from pynetdicom.status import code_to_category

#: Error ID (0000,0903) with 0110H: "Performed Procedure Step Object may no longer be
#: updated" (PS3.4 Table F.7.2-2)
ERROR_ID_NO_LONGER_UPDATABLE = 0xA710
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111

#: failures that may clear by themselves: processing failure (without A710), duplicate
#: invocation, resource limitation
_TRANSIENT = frozenset({0x0110, 0x0210, 0x0213})

_MEANINGS = {
    0x0105: "no such attribute",
    0x0106: "invalid attribute value",
    0x0107: "attribute list error",
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0112: "no such SOP instance",
    0x0116: "attribute value out of range",
    0x0117: "invalid object instance",
    0x0118: "no such SOP class",
    0x0119: "class-instance conflict",
    0x0120: "missing attribute",
    0x0121: "missing attribute value",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0x0210: "duplicate invocation",
    0x0211: "unrecognised operation",
    0x0212: "mistyped argument",
    0x0213: "resource limitation",
}


class Verdict(StrEnum):
    ACCEPTED = "accepted"        # Success or Warning: the RIS holds the new state
    ALREADY = "already"          # 0111H at N-CREATE / 0110H+A710 at N-SET: see the journal
    RETRY = "retry"              # no answer, or a failure that may clear: send again later
    REFUSED = "refused"          # a failure that resending the same message cannot fix


@dataclass(frozen=True)
class MppsResult:
    verdict: Verdict
    status: int | None
    text: str


def classify_mpps_status(status: Dataset | None, *, operation: str) -> MppsResult:
    """Map an N-CREATE or N-SET response status (`operation` "N-CREATE" or "N-SET") to a
    verdict.

    An empty Dataset is what pynetdicom returns on timeout, abort or an invalid response: the
    outcome is unknown, and the same message is sent again under the same UID.

    `ALREADY` is only a hint: 0111H means the instance exists, 0110H with Error ID A710 that
    it is final. Whether that is *our* earlier message is for the journal to say.
    """
    if status is None or "Status" not in status:
        return MppsResult(Verdict.RETRY, None, "no response (outcome unknown)")
    code = int(status.Status)
    text = f"0x{code:04X}"
    meaning = _MEANINGS.get(code, "")
    if meaning:
        text += f" {meaning}"
    error_id = status.get("ErrorID")
    if error_id is not None:
        text += f", Error ID {int(error_id):04X}"
    comment = str(status.get("ErrorComment", "") or "")
    if comment:
        # the RIS's own words; they describe the failure, not the patient
        text += f" ({comment[:120]})"
    category = code_to_category(code)
    if category in ("Success", "Warning"):
        return MppsResult(Verdict.ACCEPTED, code, text)
    if operation == "N-CREATE" and code == DUPLICATE_SOP_INSTANCE:
        return MppsResult(Verdict.ALREADY, code, text)
    if (operation == "N-SET" and code == PROCESSING_FAILURE
            and error_id is not None and int(error_id) == ERROR_ID_NO_LONGER_UPDATABLE):
        return MppsResult(Verdict.ALREADY, code, text)
    if code in _TRANSIENT or code & 0xFF00 == 0xA700 or code & 0xFF00 == 0xFE00:
        return MppsResult(Verdict.RETRY, code, text)
    return MppsResult(Verdict.REFUSED, code, text)
