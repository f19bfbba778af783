"""DIMSE status codes → what the agent does: the one place statuses are named and mapped.

Built on pynetdicom's tables (`pynetdicom.status`: one table per service class, and
`code_to_category` on top); here each service we use gets a verdict type and one function.
Told "PACS says 0xA700", look here.

- C-STORE (PS3.4 B.2.3): `classify_store_status` → StoreVerdict
- MPPS N-CREATE/N-SET (PS3.4 F.7.2): `classify_mpps_status` → MppsVerdict
- C-FIND (worklist, PS3.4 K.4.1.1.4) and any other: `category`
- what the listener answers (PS3.7 C.4): the constants below
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom import Dataset
from pynetdicom.status import (
    GENERAL_STATUS,
    MODALITY_WORKLIST_SERVICE_CLASS_STATUS,
    PROCEDURE_STEP_STATUS,
    STATUS_CANCEL,
    STATUS_FAILURE,
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_UNKNOWN,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    StatusDictType,
    code_to_category,
)

# -- codes we send or test for by name (PS3.7 Annex C) -------------------------------------------
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_SOP_CLASS = 0x0118
UNRECOGNISED_OPERATION = 0x0211
RESOURCE_LIMITATION = 0x0213
CANCEL = 0xFE00
#: Error ID (0000,0903) with 0110H at N-SET: "Performed Procedure Step Object may no longer be
#: updated" (PS3.4 Table F.7.2-2)
ERROR_ID_NO_LONGER_UPDATABLE = 0xA710


class Category(StrEnum):
    """PS3.7 C.1 status classes; the values are pynetdicom's strings."""

    SUCCESS = STATUS_SUCCESS
    WARNING = STATUS_WARNING
    FAILURE = STATUS_FAILURE
    CANCEL = STATUS_CANCEL
    PENDING = STATUS_PENDING
    UNKNOWN = STATUS_UNKNOWN


def category(code: int) -> Category:
    """The status class of `code` (pynetdicom's `code_to_category`)."""
    return Category(code_to_category(code))


def status_code(status: Dataset | None) -> int | None:
    """The Status of a response; None when there is none. pynetdicom returns an empty Dataset
    on timeout, abort or an invalid response: the outcome is unknown."""
    if status is None or "Status" not in status:
        return None
    return int(status.Status)


def meaning(code: int, table: StatusDictType = GENERAL_STATUS) -> str:
    """The standard's name for `code` in a service class's table, in lower case except for
    acronyms ("refused: SOP class not supported"); "" when the table has none."""
    _category, text = table.get(code, ("", ""))
    return " ".join(word if len(word) > 1 and word.isupper() else word.lower()
                    for word in text.split())


def _with_comment(text: str, status: Dataset) -> str:
    comment = str(status.get("ErrorComment", "") or "")
    if comment:
        # the peer's own words; they describe the failure, not the patient
        text += f" ({comment[:120]})"
    return text


# -- C-STORE ---------------------------------------------------------------------------------------

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


#: the Storage Service Class's own warnings (PS3.4 B.2.3): the archive holds the object. Other
#: warning codes are not defined for C-STORE and are treated as failures, as before
_STORE_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})


def classify_store_status(status: Dataset | None) -> StoreResult:
    """Map a C-STORE response status to a verdict.

    An empty Dataset is what pynetdicom returns on timeout, abort or an invalid response: the
    outcome is unknown, so the same bytes are sent again under the same UID.
    """
    code = status_code(status)
    if status is None or code is None:
        return StoreResult(StoreVerdict.UNKNOWN, None, "no response (outcome unknown)")
    if code == SUCCESS:
        return StoreResult(StoreVerdict.STORED, code, "0x0000")
    text = _with_comment(f"0x{code:04X}", status)
    name = meaning(code, STORAGE_SERVICE_CLASS_STATUS)
    if code in _STORE_WARNINGS:
        return StoreResult(StoreVerdict.STORED, code, f"{text} warning: {name}")
    if code & 0xFF00 == 0xA700 or code == RESOURCE_LIMITATION or code == CANCEL:
        # out of resources, or the archive cancelled: nothing wrong with the object
        return StoreResult(StoreVerdict.RETRY, code, f"{text} {name or 'cancelled'}")
    return StoreResult(StoreVerdict.FAILED, code, f"{text} {name or 'failure'}")


# -- MPPS N-CREATE / N-SET -------------------------------------------------------------------------

#: failures that may clear by themselves: processing failure (without A710), duplicate
#: invocation, resource limitation
_MPPS_TRANSIENT = frozenset({PROCESSING_FAILURE, 0x0210, RESOURCE_LIMITATION})
#: pynetdicom's procedure step table includes the general statuses
_MPPS_TABLE: StatusDictType = PROCEDURE_STEP_STATUS


class MppsVerdict(StrEnum):
    ACCEPTED = "accepted"        # Success or Warning: the RIS holds the new state
    ALREADY = "already"          # 0111H at N-CREATE / 0110H+A710 at N-SET: see the journal
    RETRY = "retry"              # no answer, or a failure that may clear: send again later
    REFUSED = "refused"          # a failure that resending the same message cannot fix


@dataclass(frozen=True)
class MppsResult:
    verdict: MppsVerdict
    status: int | None
    text: str


def classify_mpps_status(status: Dataset | None, *, operation: str) -> MppsResult:
    """Map an N-CREATE or N-SET response status (`operation` "N-CREATE" or "N-SET") to a
    verdict (PS3.4 F.7.2.1.3, F.7.2.2.4).

    An empty Dataset is what pynetdicom returns on timeout, abort or an invalid response: the
    outcome is unknown, and the same message is sent again under the same UID.

    `ALREADY` is only a hint: 0111H means the instance exists, 0110H with Error ID A710 that
    it is final. Whether that is *our* earlier message is for the journal to say.
    """
    code = status_code(status)
    if status is None or code is None:
        return MppsResult(MppsVerdict.RETRY, None, "no response (outcome unknown)")
    text = f"0x{code:04X}"
    name = meaning(code, _MPPS_TABLE)
    if name:
        text += f" {name}"
    error_id = status.get("ErrorID")
    if error_id is not None:
        text += f", Error ID {int(error_id):04X}"
    text = _with_comment(text, status)
    if category(code) in (Category.SUCCESS, Category.WARNING):
        return MppsResult(MppsVerdict.ACCEPTED, code, text)
    if operation == "N-CREATE" and code == DUPLICATE_SOP_INSTANCE:
        return MppsResult(MppsVerdict.ALREADY, code, text)
    if (operation == "N-SET" and code == PROCESSING_FAILURE
            and error_id is not None and int(error_id) == ERROR_ID_NO_LONGER_UPDATABLE):
        return MppsResult(MppsVerdict.ALREADY, code, text)
    if code in _MPPS_TRANSIENT or code & 0xFF00 == 0xA700 or code & 0xFF00 == 0xFE00:
        return MppsResult(MppsVerdict.RETRY, code, text)
    return MppsResult(MppsVerdict.REFUSED, code, text)


# -- C-FIND (worklist) -----------------------------------------------------------------------------

def find_meaning(code: int) -> str:
    """The name of a Modality Worklist C-FIND status (PS3.4 K.4.1.1.4)."""
    return meaning(code, MODALITY_WORKLIST_SERVICE_CLASS_STATUS)


__all__ = [
    "CANCEL", "DUPLICATE_SOP_INSTANCE", "ERROR_ID_NO_LONGER_UPDATABLE", "INVALID_ARGUMENT_VALUE",
    "NO_SUCH_SOP_CLASS", "PROCESSING_FAILURE", "RESOURCE_LIMITATION", "SUCCESS",
    "UNRECOGNISED_OPERATION", "Category", "MppsResult", "MppsVerdict", "StoreResult",
    "StoreVerdict", "category", "classify_mpps_status", "classify_store_status",
    "find_meaning", "meaning", "status_code",
]
