"""Deterministic crash points for the fault tests (RELIABILITY.md test 2).

With `AGENT_CRASHPOINT=<name>` in its environment the process ends itself with `os._exit(137)`
(as abruptly as kill -9: no cleanup, no flush) the first time it reaches that point. Without
the variable `reached()` costs one dict lookup.
"""

from __future__ import annotations

import os
import sys

POINTS = frozenset({
    "after_tmp_write",          # spool file written and fsynced, not yet renamed
    "after_rename",             # file in place, row not committed
    "after_enqueue",            # row committed, capture not yet acknowledged
    "after_store_response",     # C-STORE answered, not yet recorded
    "after_store_recorded",     # recorded as sent, commitment not yet asked
    "after_n_action",           # commitment asked, N-ACTION-RSP received
    "before_report_recorded",   # report received, not yet applied
    "after_report_recorded",    # report applied, 0x0000 not yet sent
    "mpps_after_create_response",   # N-CREATE answered, journal not yet updated
    "mpps_after_final_response",    # final N-SET answered, journal not yet updated
})

_armed = os.environ.get("AGENT_CRASHPOINT", "")
if _armed and _armed not in POINTS:
    sys.stderr.write(f"AGENT_CRASHPOINT={_armed!r} is not a crash point: {sorted(POINTS)}\n")


def reached(name: str) -> None:
    if name == _armed:
        sys.stderr.write(f"crash point {name} reached: exiting\n")
        sys.stderr.flush()
        os._exit(137)
