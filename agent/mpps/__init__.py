"""Modality Performed Procedure Step SCU (IHE SWF RAD-6/RAD-7): `MppsClient` journals each
MPPS and sends N-CREATE IN PROGRESS and the final N-SET (COMPLETED or DISCONTINUED) in the
background until the RIS acknowledges them. See docs/mpps.md."""

from agent.mpps.client import MppsClient
from agent.mpps.codes import DISCONTINUATION_REASONS, discontinuation_reason
from agent.mpps.dataset import series_values
from agent.mpps.errors import (
    MppsError,
    MppsJournalError,
    MppsStateError,
    MppsValueError,
    UnknownProcedureStep,
)
from agent.mpps.model import (
    MPPS_SOP_CLASS_UID,
    MppsImageRefs,
    MppsStatus,
    Pending,
    PerformedSeries,
    PPSStatus,
    ProcedureStep,
)

__all__ = [
    "DISCONTINUATION_REASONS",
    "MPPS_SOP_CLASS_UID",
    "MppsClient",
    "MppsError",
    "MppsImageRefs",
    "MppsJournalError",
    "MppsStateError",
    "MppsStatus",
    "MppsValueError",
    "PPSStatus",
    "Pending",
    "PerformedSeries",
    "ProcedureStep",
    "UnknownProcedureStep",
    "discontinuation_reason",
    "series_values",
]
