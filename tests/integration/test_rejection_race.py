"""pynetdicom <= 3.0.4's requestor waits for the connection to open, then checks that it is
still open before it reads the answer: a peer that answers A-ASSOCIATE-RJ and closes at once
(storescp --refuse) can be past both by then, so pynetdicom aborts with the rejection unread in
its queue. Seen 1 in 2,477 tests in CI, 2 in 40 runs on a loaded machine. `associate` must still
say "rejected" (and why), never "aborted". Here the check is made late on purpose: the
requestor's wait for the open connection returns only once the peer's rejection has closed it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.sop_class import Verification
from support.peers import LOCALHOST, free_port, start_storescp, stop_process, wait_until

import agent.net.ae as ae_module
from agent.errors import AssociationRejected
from agent.net.ae import AgentAE, associate

AGENT = "AGENT"


class _LateReady(threading.Event):
    """The socket's "connection is up" event, seen by the requestor only once the connection
    is closed again (as a thread kept off the CPU would see it)."""

    sock: Any = None

    def wait(self, timeout: float | None = None) -> bool:
        up = super().wait(timeout)
        sock = self.sock
        wait_until(lambda: sock._is_connected is False, 10,
                   "the peer did not close the connection after its rejection")
        return up


def test_a_rejection_that_closed_the_connection_before_pynetdicom_looked_is_a_rejection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = ae_module.NoDelayAssociationSocket.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        late = _LateReady()
        late.sock = self
        if self._ready.is_set():
            late.set()
        self._ready = late

    monkeypatch.setattr(ae_module.NoDelayAssociationSocket, "__init__", init)
    port = free_port()
    storescp = start_storescp(tmp_path / "out", port, extra_args=["--refuse"])
    try:
        ae = AgentAE(AGENT)
        ae.add_requested_context(Verification)
        with pytest.raises(AssociationRejected, match=r"^association rejected \(check AE titles: "
                                                      rf"calling {AGENT}, called STORESCP\)"):
            associate(ae, LOCALHOST, port, "STORESCP")
    finally:
        stop_process(storescp)
