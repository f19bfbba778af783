"""The daemon's garbage collector: what start-up built is frozen, so that a full collection
only walks what was made since, instead of holding the GIL for tens of milliseconds.

Why: the daemon's capture thread must read a frame every 33 ms at 30 frames/s, and the
simulated device, like a frame grabber, keeps at most one interval of lag. CPython's full
(generation 2) collection walks every container object alive, and after start-up those are
mostly modules, classes, functions and pydicom's data dictionary, none of which ever becomes
garbage. Measured in the daemon capturing at 30 frames/s of 1024² while forwarding (issue 18
target 6, a gc callback timing each collection): full collections of ~66,000 objects took 36 ms
on average over a 10-minute soak, up to 95-115 ms on a loaded machine, each one holding the
GIL while a frame was due; the full bench run had 4 of 1,800 frames read too late.

`gc.freeze()` moves every object alive to a permanent generation that collections skip. Freed
by reference counting they still are; only a reference cycle among them would never be
collected, and start-up objects live as long as the daemon does. The sending processes do the
same in their forking process (agent.net.zygote).
"""

from __future__ import annotations

import gc


def freeze_start_up_objects() -> int:
    """Collect what start-up left behind, then freeze every object still alive; returns how
    many are frozen (all of them, also any frozen before)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
