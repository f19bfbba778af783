"""pynetdicom's lost C-STORE response (docs/pynetdicom-lost-response.md), reproduced against DCMTK
storescp by holding the association's reactor thread in the window of the race, and the fix of
agent.net.pynetdicom_fixes that closes it.

The window: the reactor has announced it is paused (`_is_paused = True`) and passed the checkpoint
while it was still open, but has not yet polled the DIMSE queue. `send_c_store()` sees the flag,
sends, and the response arrives before the reactor's poll. `ReactorWindow` stages exactly that
with events instead of luck: it holds the reactor right after the checkpoint until the response is
queued, and holds `send_c_store()` after sending until the reactor has polled. Unfixed, the
reactor takes the response and drops it, and the send ends in the DIMSE timeout; fixed, the
reactor's poll takes nothing and every C-STORE gets its status at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from support.peers import LOCALHOST, free_port, start_storescp, stop_process, wait_until

from agent.net import pynetdicom_fixes
from agent.net.ae import AgentAE, associate

SC = "1.2.840.10008.5.1.4.1.1.7"
DIMSE_TIMEOUT_S = 2.0       # what an unfixed send waits for a response the reactor took
HOLD_LIMIT_S = 10.0         # a staging step that never comes is a broken test, not a hang
ROUNDS = 20


class ReactorWindow:
    """Stages the race on one established association for `rounds` C-STOREs, then lets the
    association run untouched (release and abort need the reactor)."""

    def __init__(self, assoc: Association, rounds: int) -> None:
        self._assoc = assoc
        self._rounds_left = rounds
        self._cond = threading.Condition()
        self._held = False              # reactor past the open checkpoint, not yet polled
        self._queued = 0                # DIMSE messages queued since the reactor was held
        self._may_poll = False          # reactor released by a queued message
        self._polled = False            # ... and has polled the queue since
        self.staged = 0                 # C-STOREs that went through the window
        self.reactor_took: list[str] = []   # what the reactor's polls took in the window
        dimse = assoc.dimse
        self._checkpoint_wait = assoc._reactor_checkpoint.wait
        self._put = dimse.msg_queue.put
        self._send_msg = dimse.send_msg
        assoc._reactor_checkpoint.wait = self._reactor_wait     # type: ignore[method-assign]
        dimse.msg_queue.put = self._queue_put                   # type: ignore[method-assign]
        dimse.send_msg = self._sender_send                      # type: ignore[method-assign]
        dimse.get_msg = self._reactor_get                       # type: ignore[method-assign]

    @property
    def _active(self) -> bool:
        return self._rounds_left > 0

    def wait_until_reactor_held(self) -> None:
        """Return once the reactor sits in the window (past the open checkpoint)."""
        wait_until(lambda: self._held, HOLD_LIMIT_S, "the reactor to pass its checkpoint")

    # -- reactor thread ---------------------------------------------------------------------
    def _reactor_wait(self, timeout: float | None = None) -> bool:
        opened = self._checkpoint_wait(timeout)     # _is_paused is True from here on
        with self._cond:
            if not self._active or self._assoc._sent_abort:    # abort() needs the reactor
                return opened
            self._held, self._queued = True, 0
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._queued > 0, HOLD_LIMIT_S)
            self._held, self._may_poll = False, self._queued > 0
        return opened                                # reactor: _is_paused = False; get_msg()

    def _reactor_get(self, block: bool = False) -> tuple[Any, Any]:
        dimse = self._assoc.dimse
        item = type(dimse).get_msg(dimse, block)     # the class's: fixed or not
        if not block:
            with self._cond:
                if self._may_poll:
                    self._may_poll, self._polled = False, True
                    if item[1] is not None:
                        kind = "response" if item[1].is_valid_response else "request"
                        self.reactor_took.append(f"{item[1].msg_type} {kind}")
                    self._cond.notify_all()
        return item

    # -- DUL thread -------------------------------------------------------------------------
    def _queue_put(self, item: Any, *args: Any, **kwargs: Any) -> None:
        self._put(item, *args, **kwargs)
        with self._cond:
            self._queued += 1
            self._cond.notify_all()

    # -- sending thread (send_c_store) ------------------------------------------------------
    def _sender_send(self, primitive: Any, context_id: int) -> None:
        with self._cond:
            staging = self._active and self._held
        self._send_msg(primitive, context_id)
        if not staging:
            return
        with self._cond:
            # let the response arrive and the reactor poll before send_c_store's own get_msg
            if not self._cond.wait_for(lambda: self._polled, HOLD_LIMIT_S):
                raise AssertionError("the reactor never polled after the response arrived")
            self._polled = False
            self.staged += 1
            self._rounds_left -= 1
            self._cond.notify_all()


def sc_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 16, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(256)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture
def storescp_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = start_storescp(tmp_path / "received", port)      # TCP_NODELAY=1 in its env
    try:
        yield port
    finally:
        stop_process(process)


@pytest.fixture
def open_association(storescp_port: int) -> Iterator[Callable[[], Association]]:
    opened: list[Association] = []

    def open_one() -> Association:
        ae = AgentAE("LOSTRSP")
        ae.dimse_timeout = DIMSE_TIMEOUT_S
        assoc = associate(ae, LOCALHOST, storescp_port, "STORESCP",
                          contexts=[build_context(SC, [ExplicitVRLittleEndian])])
        opened.append(assoc)
        return assoc

    yield open_one
    for assoc in opened:
        if assoc.is_established:
            assoc.release()
        wait_until(lambda a=assoc: not a.is_alive(), 10, "the association thread to end")


def unfixed_get_msg() -> Callable[..., Any]:
    get_msg = DIMSEServiceProvider.get_msg
    return getattr(get_msg, "__wrapped__", get_msg)


def test_the_window_loses_the_response_without_the_fix(
    monkeypatch: pytest.MonkeyPatch, open_association: Callable[[], Association],
) -> None:
    """The reproduction reproduces: if this fails, the installed pynetdicom no longer has the
    race and agent.net.pynetdicom_fixes should not be applied to it."""
    monkeypatch.setattr(DIMSEServiceProvider, "get_msg", unfixed_get_msg())
    assoc = open_association()
    window = ReactorWindow(assoc, rounds=1)
    window.wait_until_reactor_held()

    started = time.monotonic()
    status = assoc.send_c_store(sc_dataset())
    waited = time.monotonic() - started

    assert window.staged == 1
    assert window.reactor_took == ["C-STORE response"], "the reactor took the response"
    assert "Status" not in status, f"send_c_store got a status after all: {status}"
    assert waited >= DIMSE_TIMEOUT_S * 0.9, f"returned after {waited:.2f} s, not the timeout"
    assert assoc.is_aborted, "pynetdicom aborts after a DIMSE timeout"


def test_every_c_store_gets_its_status_with_the_fix(
    open_association: Callable[[], Association],
) -> None:
    assert pynetdicom_fixes.applied(), (
        f"the lost-response fix is not applied to pynetdicom {pynetdicom.__version__}: it was "
        f"checked up to {pynetdicom_fixes.LAST_CHECKED}; run "
        f"test_the_window_loses_the_response_without_the_fix, read the new release's reactor "
        f"and extend LAST_CHECKED (or drop the fix if upstream closed the race)")
    assoc = open_association()
    window = ReactorWindow(assoc, rounds=ROUNDS)
    slowest = 0.0
    for number in range(ROUNDS):
        window.wait_until_reactor_held()
        started = time.monotonic()
        status = assoc.send_c_store(sc_dataset())
        slowest = max(slowest, time.monotonic() - started)
        assert status.get("Status") == 0x0000, f"C-STORE {number + 1}: no success: {status}"
    assert window.staged == ROUNDS, "every C-STORE went through the window"
    assert window.reactor_took == [], "the paused reactor took nothing off the DIMSE queue"
    assert slowest < DIMSE_TIMEOUT_S / 2, f"slowest C-STORE {slowest:.2f} s"
    assert assoc.is_established
