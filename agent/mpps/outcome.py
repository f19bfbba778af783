"""N-CREATE / N-SET response status → what the MPPS sender does. The mapping itself lives with
every other status mapping in `agent.net.status`; these are the names the MPPS code uses."""

from __future__ import annotations

from agent.net.status import (
    DUPLICATE_SOP_INSTANCE,
    ERROR_ID_NO_LONGER_UPDATABLE,
    PROCESSING_FAILURE,
    MppsResult,
    classify_mpps_status,
)
from agent.net.status import MppsVerdict as Verdict

__all__ = ["DUPLICATE_SOP_INSTANCE", "ERROR_ID_NO_LONGER_UPDATABLE", "PROCESSING_FAILURE",
           "MppsResult", "Verdict", "classify_mpps_status"]
