"""Progress of the daemon's loops, for the systemd watchdog (issue 17): a stage that has not
come round within its limit is stalled, and the watchdog stops pinging so systemd restarts us.

A loop beats whenever it makes progress; before a wait it knows is legitimate (a backoff while
the archive is down, an idle poll) it says how long, so an archive that is merely down never
counts as a stall.

`AGENT_STALL_AFTER_S` (tests only, like `AGENT_CRASHPOINT`) shortens every limit, and
`AGENT_STALLPOINT=<stage>` makes that stage block for good, so a test can stall one on purpose.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

_STALL_AFTER_ENV = os.environ.get("AGENT_STALL_AFTER_S", "")
STALLPOINTS = frozenset({"forwarder", "acquisition"})
_stallpoint = os.environ.get("AGENT_STALLPOINT", "")
if _stallpoint and _stallpoint not in STALLPOINTS:
    sys.stderr.write(f"AGENT_STALLPOINT={_stallpoint!r} is not a stall point: "
                     f"{sorted(STALLPOINTS)}\n")


def stall_point(name: str) -> None:
    """Block this thread for good when `AGENT_STALLPOINT=<name>` (fault tests)."""
    if name == _stallpoint:
        sys.stderr.write(f"stall point {name} reached: this thread stops here\n")
        sys.stderr.flush()
        threading.Event().wait()


class Heartbeat:
    """One loop's progress. Thread-safe enough: single writer, and a float read is atomic."""

    def __init__(self, name: str, limit_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.limit_s = float(_STALL_AFTER_ENV) if _STALL_AFTER_ENV else limit_s
        self._clock = clock
        self._due = clock() + self.limit_s
        self._idle = False

    def beat(self) -> None:
        """Progress now; the next beat is due within the limit."""
        self._idle = False
        self._due = self._clock() + self.limit_s

    def waiting(self, seconds: float) -> None:
        """A legitimate wait of up to `seconds` starts: no beat is due before it ends."""
        self._idle = False
        self._due = self._clock() + seconds + self.limit_s

    def idle(self) -> None:
        """Nothing to do until asked (e.g. no acquisition running): never stalled."""
        self._idle = True

    def stalled(self) -> str:
        """"" or one line saying how long the stage has been stuck (no patient data)."""
        if self._idle:
            return ""
        late_s = self._clock() - self._due
        if late_s <= 0:
            return ""
        return f"{self.name}: no progress for {late_s + self.limit_s:.0f} s"
