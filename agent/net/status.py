"""DIMSE status → what the queue does with the object. The one place statuses are mapped."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom import Dataset


class StoreVerdict(StrEnum):
    STORED = "stored"            # Success or Warning: the archive holds it (PS3.4 B.2.3)
    RETRY = "retry"              # transient: out of resources; try later
    FAILED = "failed"            # permanent for this object: keep it, show the reason
    UNKNOWN = "unknown"          # no status (timeout, abort, lost response): resend same bytes


@dataclass(frozen=True)
class StoreResult:
    verdict: StoreVerdict
    status: int | None
    text: str


_WARNINGS = {
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}


def classify_store_status(status: Dataset | None) -> StoreResult:
    """Map a C-STORE response status to a verdict.

    An empty Dataset is what pynetdicom returns on timeout, abort or an invalid response: the
    outcome is unknown, so the same bytes are sent again under the same UID.
    """
    if status is None or "Status" not in status:
        return StoreResult(StoreVerdict.UNKNOWN, None, "no response (outcome unknown)")
    code = int(status.Status)
    text = f"0x{code:04X}"
    comment = str(status.get("ErrorComment", "") or "")
    if comment:
        # the archive's own words; they describe the failure, not the patient
        text += f" ({comment[:120]})"
    if code == 0x0000:
        return StoreResult(StoreVerdict.STORED, code, "0x0000")
    if code in _WARNINGS:
        return StoreResult(StoreVerdict.STORED, code, f"{text} warning: {_WARNINGS[code]}")
    if code & 0xFF00 == 0xA700 or code == 0x0213:
        return StoreResult(StoreVerdict.RETRY, code, f"{text} out of resources")
    if code & 0xFF00 == 0xA900:
        return StoreResult(StoreVerdict.FAILED, code, f"{text} data set does not match SOP class")
    if code & 0xF000 == 0xC000:
        return StoreResult(StoreVerdict.FAILED, code, f"{text} cannot understand")
    if code == 0x0122:
        return StoreResult(StoreVerdict.FAILED, code, f"{text} SOP class not supported")
    if code == 0x0124:
        return StoreResult(StoreVerdict.FAILED, code, f"{text} not authorised")
    if code == 0xFE00:
        return StoreResult(StoreVerdict.RETRY, code, f"{text} cancelled")
    return StoreResult(StoreVerdict.FAILED, code, f"{text} failure")
