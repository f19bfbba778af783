"""The daemon fixes glibc's mmap threshold (agent.malloc_policy, issue 18 item 4b): a large
transient buffer stays a mapping of its own, given back when freed, even after a larger block
was freed (glibc then raises its threshold and carves later large buffers out of the heap).
Each case runs in a fresh interpreter: the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
from typing import Any

import pytest

import agent.daemon as daemon_module
from agent.daemon import Daemon
from agent.malloc_policy import ENVIRONMENT_OVERRIDE

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

#: prints how many more mapped blocks malloc holds once a 256 KiB buffer is allocated after a
#: 1 MiB one was freed (mallinfo2's hblks): 1 if it was mapped, 0 if carved out of the heap
PROBE = """
import ctypes, sys
from agent.malloc_policy import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    print("took", fix_mmap_threshold())
big = bytearray(1 << 20)
del big
before = libc.mallinfo2().hblks
buffer = bytearray(256 * 1024)
print("mapped", libc.mallinfo2().hblks - before)
"""


def probe(mode: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != ENVIRONMENT_OVERRIDE}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@glibc_only
def test_glibc_alone_carves_a_large_buffer_out_of_the_heap_after_a_larger_one() -> None:
    # the behaviour the policy exists for
    assert probe("default") == "mapped 0\n"


@glibc_only
def test_the_fixed_threshold_keeps_large_buffers_mapped() -> None:
    assert probe("fixed") == "took True\nmapped 1\n"


@glibc_only
def test_an_operators_environment_setting_is_left_alone() -> None:
    # glibc reads the variable itself (here: 2 MiB, so the buffer comes from the heap)
    assert probe("fixed", **{ENVIRONMENT_OVERRIDE: str(2 << 20)}) == "took False\nmapped 0\n"


def test_run_forever_fixes_the_threshold_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            calls.append("wait")                # as if a SIGTERM came at once
            return True

    daemon: Any = Daemon.__new__(Daemon)        # only what run_forever uses
    daemon._stop = Stop()
    monkeypatch.setattr(daemon_module.signal, "signal", lambda *_args: None)
    monkeypatch.setattr(daemon, "start", lambda: calls.append("start"))
    monkeypatch.setattr(daemon, "stop", lambda: calls.append("stop"))
    monkeypatch.setattr(daemon_module, "freeze_start_up_objects", lambda: 1)

    def fix() -> bool:
        calls.append("fix")
        return True

    monkeypatch.setattr(daemon_module, "fix_mmap_threshold", fix)
    daemon.run_forever()
    assert calls == ["fix", "start", "wait", "stop"]
