"""`python -m bench soak --tracemalloc`: put on PYTHONPATH of the daemon (and so of the sending
processes it starts, which inherit the environment). Nothing happens unless
BENCH_TRACEMALLOC_DIR is set.

Each process polls that folder from a thread (not a signal: the daemon's main thread sits in
Event.wait, and a signal is handled only when it wakes). When the bench writes `start` there,
tracing begins (tracemalloc, 8 frames; not from start-up: tracing the imports would slow the
daemon's start past the bench's patience); when it writes `request-N`, the process dumps a
snapshot to `<pid>-N.snap`. The bench compares two snapshots to show where memory grew.

The sending processes are forked from one pre-imported process (agent.net.zygote), not started
as interpreters: this module does not run in them, and fork() keeps only the forking thread, so
the watcher is started again in every forked child (os.register_at_fork).
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from pathlib import Path

FRAMES = 8
POLL_S = 0.2


def _watch(folder: Path, done: set[str]) -> None:
    while True:
        time.sleep(POLL_S)
        if not tracemalloc.is_tracing():
            if (folder / "start").exists():
                tracemalloc.start(FRAMES)
            continue
        try:
            requests = {p.name for p in folder.glob("request-*")}
        except OSError:
            continue
        for name in sorted(requests - done):
            done.add(name)
            target = folder / f"{os.getpid()}-{name.split('-', 1)[1]}.snap"
            tracemalloc.take_snapshot().dump(f"{target}.tmp")
            os.replace(f"{target}.tmp", target)


def _start_watcher(path: Path) -> None:
    # requests already there were for the processes before this one
    before = {p.name for p in path.glob("request-*")}
    threading.Thread(target=_watch, args=(path, before), name="bench-tracemalloc",
                     daemon=True).start()


def _install() -> None:
    folder = os.environ.get("BENCH_TRACEMALLOC_DIR")
    if not folder:
        return
    path = Path(folder)
    _start_watcher(path)
    os.register_at_fork(after_in_child=lambda: _start_watcher(path))


_install()
