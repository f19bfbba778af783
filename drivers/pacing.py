"""A device's frame clock: deliver at most `rate` frames per second (0 = as fast as asked)."""

from __future__ import annotations

import time


class FramePacer:
    """Paces frames the way a device with a fixed frame rate delivers them.

    A late reader gets the next frame at once but does not build up a burst: at most one frame
    interval of lag is kept.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next_due = time.monotonic()

    def restart(self) -> None:
        """The first frame is due now (at open, after a reconnect)."""
        self._next_due = time.monotonic()

    def wait(self, deadline: float) -> bool:
        """Sleep until the next frame is due and claim it; False if it is due after `deadline`
        (then this returns at `deadline` without claiming it)."""
        if self.rate <= 0:
            return True
        if self._next_due > deadline:
            time.sleep(max(deadline - time.monotonic(), 0.0))
            return False
        time.sleep(max(self._next_due - time.monotonic(), 0.0))
        interval = 1.0 / self.rate
        self._next_due = max(self._next_due + interval, time.monotonic() - interval)
        return True
