"""Fixes for defects of the pynetdicom versions the agent runs on, applied once when agent.net is
imported (so in the daemon and in every sending process, before any association exists).

One fix today, the lost DIMSE response (docs/pynetdicom-lost-response.md): an association's
reactor thread takes the next message off the DIMSE queue with a non-blocking
`DIMSEServiceProvider.get_msg()` to serve the peer's requests, while `send_c_store()` and the
other `send_*()` pause it with a checkpoint and then wait for their response with a blocking
`get_msg()`. The pause handshake only checks a flag that the reactor sets *before* it waits at the
checkpoint, so a reactor already past the checkpoint can still take the response that `send_*()`
is waiting for; it then drops it as an "unexpected" message and the send ends in the DIMSE
timeout. The fix makes the reactor's non-blocking take conditional on the checkpoint still being
open, atomically with the checkpoint's `clear()`: once a `send_*()` has paused the reactor, the
reactor takes nothing more, whatever its own flag says.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider

logger = logging.getLogger(__name__)

#: The releases whose reactor and send_*() share the DIMSE queue through the `_is_paused`
#: handshake (pynetdicom #440, 1.5.0) and have this race; checked up to 3.0.4 (the upstream
#: main branch of March 2026 is unchanged). A newer release is not patched until someone reads
#: its code: tests/integration/test_lost_response.py then fails and says so.
FIRST_AFFECTED = (1, 5, 0)
LAST_CHECKED = (3, 0, 4)

_QueueItem = tuple[Any, Any]
_GetMsg = Callable[[DIMSEServiceProvider, bool], _QueueItem]

_lock = threading.Lock()
_applied = False
_announced = False


def release_tuple(version: str) -> tuple[int, int, int] | None:
    """(major, minor, micro) of a version string such as "3.0.4" or "3.1.0.dev0"; None if it
    has no such prefix."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        return None
    major, minor, micro = (int(part) for part in match.groups())
    return major, minor, micro


def is_affected(version: str) -> bool:
    """Whether pynetdicom `version` is one this fix was checked against."""
    release = release_tuple(version)
    return release is not None and FIRST_AFFECTED <= release <= LAST_CHECKED


def _has_the_racy_shape() -> bool:
    """The names the fix relies on, looked up in the compiled code rather than trusted from the
    version number alone: the reactor polls `get_msg` behind `_reactor_checkpoint`, and
    `threading.Event` keeps its flag under the condition `_cond` (CPython since 2.x)."""
    reactor_names = Association._run_reactor.__code__.co_names
    return ("get_msg" in reactor_names and "_reactor_checkpoint" in reactor_names
            and "_is_paused" in reactor_names
            and isinstance(getattr(threading.Event(), "_cond", None), threading.Condition))


def applied() -> bool:
    """Whether the lost-response fix is in place in this process."""
    return _applied


def _announce() -> None:
    """Say once per process, at DEBUG, that the fix is active. At the first use rather than at
    import: the sending process sets up logging only after its imports."""
    global _announced
    if not _announced:
        _announced = True
        logger.debug("pynetdicom %s: the reactor's DIMSE take is guarded against the "
                     "lost-response race (docs/pynetdicom-lost-response.md)",
                     pynetdicom.__version__)


def _guarded(original: _GetMsg) -> _GetMsg:
    @functools.wraps(original)
    def get_msg(self: DIMSEServiceProvider, block: bool = False) -> _QueueItem:
        if block:
            return original(self, block)        # send_*() waiting for its response: as before
        _announce()
        # Only the reactor polls without blocking. Holding the checkpoint's own lock makes
        # "still open?" and "take" one step as seen by send_*()'s clear(): a take either
        # happens before the pause (so it cannot be that send's response) or not at all.
        checkpoint: threading.Event = self.assoc._reactor_checkpoint
        with checkpoint._cond:  # type: ignore[attr-defined]
            if not checkpoint.is_set():
                return None, None               # paused: the queue belongs to send_*()
            return original(self, block)
    return get_msg


def apply() -> bool:
    """Install the fix if this pynetdicom has the race; idempotent. Returns whether it is in
    place."""
    global _applied
    with _lock:
        if _applied:
            return True
        version = pynetdicom.__version__
        if not is_affected(version) or not _has_the_racy_shape():
            logger.debug("pynetdicom %s: lost-response fix not applied (checked for %s to %s)",
                         version, ".".join(map(str, FIRST_AFFECTED)),
                         ".".join(map(str, LAST_CHECKED)))
            return False
        current = DIMSEServiceProvider.get_msg
        if getattr(current, "_agent_lost_response_fix", False):
            _applied = True                     # e.g. this module imported twice under reload
            return True
        guarded = _guarded(current)
        guarded._agent_lost_response_fix = True  # type: ignore[attr-defined]
        DIMSEServiceProvider.get_msg = guarded  # type: ignore[method-assign,assignment]
        _applied = True
        return True
