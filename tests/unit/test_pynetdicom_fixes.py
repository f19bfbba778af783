"""agent.net.pynetdicom_fixes: the lost-response guard on DIMSEServiceProvider.get_msg, without a
peer (the race itself against storescp: tests/integration/test_lost_response.py)."""

from __future__ import annotations

import logging
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pynetdicom.dimse import DIMSEServiceProvider

from agent.net import pynetdicom_fixes

ITEM = (1, "a message")


class StubAssociation:
    """What DIMSEServiceProvider.get_msg and the guard read of an association."""

    def __init__(self) -> None:
        self._reactor_checkpoint = threading.Event()
        self._reactor_checkpoint.set()
        self.dimse_timeout = 1.0


def provider() -> DIMSEServiceProvider:
    return DIMSEServiceProvider(StubAssociation())      # type: ignore[arg-type]


def checkpoint(dimse: DIMSEServiceProvider) -> threading.Event:
    return dimse.assoc._reactor_checkpoint


@pytest.mark.parametrize(("version", "affected"), [
    ("1.5.0", True), ("2.0.2", True), ("3.0.4", True),
    ("1.4.1", False), ("3.0.5", False), ("3.1.0.dev0", False), ("4.0.0", False), ("main", False),
])
def test_only_the_checked_releases_are_affected(version: str, affected: bool) -> None:
    assert pynetdicom_fixes.is_affected(version) is affected


def test_the_installed_pynetdicom_is_patched_once() -> None:
    assert pynetdicom.__version__ == "3.0.4", "a new pynetdicom: read its reactor, see the docs"
    assert pynetdicom_fixes.applied()
    guarded = DIMSEServiceProvider.get_msg
    assert pynetdicom_fixes.apply()                     # again: nothing changes
    assert DIMSEServiceProvider.get_msg is guarded
    original = guarded.__wrapped__                      # type: ignore[attr-defined]
    assert not hasattr(original, "__wrapped__"), "wrapped twice"


def test_an_unchecked_release_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    original = DIMSEServiceProvider.get_msg.__wrapped__     # type: ignore[attr-defined]
    monkeypatch.setattr(DIMSEServiceProvider, "get_msg", original)
    monkeypatch.setattr(pynetdicom_fixes, "_applied", False)
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    assert not pynetdicom_fixes.apply()
    assert DIMSEServiceProvider.get_msg is original
    assert not pynetdicom_fixes.applied()


def test_a_paused_reactor_takes_nothing_and_the_sender_gets_it() -> None:
    dimse = provider()
    dimse.msg_queue.put(ITEM)
    checkpoint(dimse).clear()                           # what send_c_store() does first
    assert dimse.get_msg(block=False) == (None, None)
    assert dimse.msg_queue.qsize() == 1, "the response stays queued"
    assert dimse.get_msg(block=True) == ITEM            # send_c_store()'s own wait


def test_a_running_reactor_takes_as_before() -> None:
    dimse = provider()
    assert dimse.get_msg(block=False) == (None, None)   # empty
    dimse.msg_queue.put(ITEM)
    assert dimse.get_msg(block=False) == ITEM           # a request to serve, or a stray reply
    assert dimse.msg_queue.empty()


def test_the_take_and_the_pause_cannot_interleave() -> None:
    """The reactor takes under the checkpoint's lock, so send_*()'s clear() comes wholly before
    the take (which then takes nothing) or wholly after it (when the send has not started)."""
    dimse = provider()
    lock_free_during_take: list[bool] = []

    class ProbingQueue(queue.Queue[Any]):
        def get(self, *args: Any, **kwargs: Any) -> Any:
            lock = checkpoint(dimse)._cond                  # type: ignore[attr-defined]
            free = lock.acquire(blocking=False)
            if free:
                lock.release()
            lock_free_during_take.append(free)
            return super().get(*args, **kwargs)

    dimse.msg_queue = ProbingQueue()
    dimse.msg_queue.put(ITEM)
    assert dimse.get_msg(block=False) == ITEM
    assert lock_free_during_take == [False], "clear() could have slipped into the take"
    dimse.msg_queue.put(ITEM)
    assert dimse.get_msg(block=True) == ITEM
    assert lock_free_during_take == [False, True], "a blocking get must not hold the lock"


def test_it_says_so_once_at_debug(monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pynetdicom_fixes, "_announced", False)
    caplog.set_level(logging.DEBUG, logger=pynetdicom_fixes.__name__)
    dimse = provider()
    dimse.get_msg(block=False)
    dimse.get_msg(block=False)
    records = [r for r in caplog.records if r.name == pynetdicom_fixes.__name__]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert pynetdicom.__version__ in records[0].getMessage()


def test_a_sending_process_is_patched() -> None:
    """The sending process imports only agent.net.store_process; agent.net's __init__ runs."""
    code = ("import agent.net.store_process\n"
            "from pynetdicom.dimse import DIMSEServiceProvider\n"
            "print(getattr(DIMSEServiceProvider.get_msg, '_agent_lost_response_fix', False))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True, cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "True", result.stderr
