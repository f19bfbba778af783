"""Associations we open wait for work instead of polling (agent.net.quiet_reactor), against DCMTK
storescp: an idle association's DUL looks at its socket tens of times a second, not a thousand;
requests, releases and aborts still go through; the wake-up sockets are closed with the
association."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.presentation import build_context
from support.peers import LOCALHOST, free_port, start_storescp, stop_process, wait_until

import agent.net.ae as ae_module
from agent.net import quiet_reactor
from agent.net.ae import AgentAE, associate
from agent.net.quiet_reactor import IDLE_WAIT_S, Waker

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"


@pytest.fixture
def storescp_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = start_storescp(tmp_path / "received", port)
    yield port
    stop_process(process)


def open_association(port: int) -> Any:
    return associate(AgentAE("MODALITY1"), LOCALHOST, port, "STORESCP",
                     contexts=[build_context(VERIFICATION, [IMPLICIT])])


def test_an_idle_association_does_not_poll(storescp_port: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert quiet_reactor.applies(), "the pynetdicom in use is not the one this was checked on"
    checks = []
    real = quiet_reactor.wait_ready

    def counted(transport: Any, waker: Waker) -> bool:
        checks.append(time.monotonic())
        return real(transport, waker)

    monkeypatch.setattr(ae_module, "wait_ready", counted)
    assoc = open_association(storescp_port)
    try:
        start = time.monotonic()
        wait_until(lambda: time.monotonic() - start >= 1.0, 5, "clock")
        idle = [t for t in checks if t >= start + 0.1]
        # pynetdicom's loop checks ~1000 times a second (1 ms sleep); waiting, at most one
        # check per IDLE_WAIT_S plus slack for a loaded machine
        assert 0 < len(idle) < 3 / IDLE_WAIT_S
        # still answers: the C-ECHO goes out (the DUL woken by the queue) and comes back
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released


def test_release_and_abort_end_the_association_and_close_the_waker(storescp_port: int) -> None:
    released = open_association(storescp_port)
    waker = released.dul.socket.waker
    assert waker is not None and not waker.closed
    released.release()
    assert released.is_released
    wait_until(lambda: waker.closed, 5, "waker of a released association still open")

    aborted = open_association(storescp_port)
    waker = aborted.dul.socket.waker
    aborted.abort()
    assert aborted.is_aborted
    wait_until(lambda: waker.closed, 5, "waker of an aborted association still open")


def test_an_archive_that_goes_away_is_noticed(tmp_path: Path) -> None:
    port = free_port()
    process = start_storescp(tmp_path / "received", port)
    try:
        assoc = open_association(port)
    finally:
        stop_process(process)
    # the peer's end closed: the waiting DUL sees the socket readable (EOF) and ends it
    wait_until(lambda: not assoc.is_established, 5, "a closed connection was not noticed")
    wait_until(lambda: assoc.dul.socket.waker.closed, 5, "waker still open")


def test_a_waker_dropped_unclosed_closes_quietly() -> None:
    waker = Waker()
    waker.wake()
    del waker
    gc.collect()        # filterwarnings=error: a ResourceWarning here fails the test


def test_a_wake_after_close_is_a_no_op() -> None:
    waker = Waker()
    waker.close()
    waker.wake()
    waker.drain()
    assert waker.closed and waker.event.is_set()
