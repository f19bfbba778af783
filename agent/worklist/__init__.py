"""Modality Worklist (IHE RAD-5): C-FIND to the RIS, strict character-set decoding, an offline
cache, a refresh loop, and the mapping of a worklist item into the images' Order.

Modules: `query` (C-FIND SCU), `parse` (a response to items), `charset` (decoding by
(0008,0005)), `model` (WorklistItem, WorklistSnapshot), `cache` (the offline file), `service`
(WorklistService, what the daemon uses), `errors`.
"""

from agent.worklist.cache import CachedWorklist, WorklistCache
from agent.worklist.charset import DEFAULT_FALLBACK
from agent.worklist.errors import (
    InvalidWorklistQuery,
    RISUnreachable,
    WorklistCacheError,
    WorklistError,
    WorklistItemAmbiguous,
    WorklistItemError,
    WorklistItemNotFound,
    WorklistQueryError,
)
from agent.worklist.model import JSON_KEYS, WorklistItem, WorklistSnapshot
from agent.worklist.query import (
    DEFAULT_MAX_RESULTS,
    DEFAULT_TIMEOUT_S,
    BroadQuery,
    FindResult,
    PatientQuery,
    build_identifier,
    find_worklist,
)
from agent.worklist.service import WorklistService

__all__ = [
    "DEFAULT_FALLBACK",
    "DEFAULT_MAX_RESULTS",
    "DEFAULT_TIMEOUT_S",
    "JSON_KEYS",
    "BroadQuery",
    "CachedWorklist",
    "FindResult",
    "InvalidWorklistQuery",
    "PatientQuery",
    "RISUnreachable",
    "WorklistCache",
    "WorklistCacheError",
    "WorklistError",
    "WorklistItem",
    "WorklistItemAmbiguous",
    "WorklistItemError",
    "WorklistItemNotFound",
    "WorklistQueryError",
    "WorklistService",
    "WorklistSnapshot",
    "build_identifier",
    "find_worklist",
]
