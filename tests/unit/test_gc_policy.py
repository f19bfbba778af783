"""The daemon freezes what start-up built (agent.gc_policy): a full collection then walks only
what was made since. Run in a fresh interpreter: freezing pytest's own objects would keep them
from ever being collected."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import pytest

import agent.daemon as daemon_module
from agent.daemon import Daemon

PROBE = """
import gc, json
import agent.daemon, pydicom.datadict   # what the daemon imports at start-up
before = len(gc.get_objects(2)) + len(gc.get_objects(1)) + len(gc.get_objects(0))
from agent.gc_policy import freeze_start_up_objects
frozen = freeze_start_up_objects()
after = len(gc.get_objects(2)) + len(gc.get_objects(1)) + len(gc.get_objects(0))
print(json.dumps({"before": before, "frozen": frozen, "after": after}))
"""


def test_after_freezing_a_full_collection_walks_almost_nothing_of_start_up() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, check=True)
    counts = json.loads(done.stdout)
    assert counts["before"] > 20_000                # the imports alone: tens of thousands
    assert counts["frozen"] >= counts["before"] * 0.9
    assert counts["after"] < 1_000


def test_run_forever_freezes_once_started_and_before_it_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            calls.append("wait")                # as if a SIGTERM came at once
            return True

    daemon: Any = Daemon.__new__(Daemon)        # only what run_forever uses
    daemon._stop = Stop()
    monkeypatch.setattr(daemon_module.signal, "signal", lambda *_args: None)

    def start() -> None:
        calls.append("start")

    def freeze() -> int:
        calls.append("freeze")
        return 1

    monkeypatch.setattr(daemon, "start", start)
    monkeypatch.setattr(daemon, "stop", lambda: calls.append("stop"))
    monkeypatch.setattr(daemon_module, "freeze_start_up_objects", freeze)
    # not pytest's own malloc (agent.malloc_policy has its own test)
    monkeypatch.setattr(daemon_module, "fix_mmap_threshold", lambda: False)
    daemon.run_forever()
    assert calls == ["start", "freeze", "wait", "stop"]
