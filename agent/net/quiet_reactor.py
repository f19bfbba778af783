"""Associations whose two pynetdicom threads wait for work instead of polling every millisecond.

Why: each association pynetdicom opens runs two loops, the DUL reactor (`time.sleep(0.001)`,
then a zero-timeout `select` on the socket) and the association reactor (`time.sleep(0.001)`,
then a look at the DIMSE queue). Measured on the 2-core machine: ~40 ms of CPU per second per
open association doing nothing, and two thirds of a sending process's CPU while it sends
0.5 MB objects (the loops' own bytecode, sampled by py-spy; issue 18). Here:

- the DUL reactor's readiness check (`ready`) blocks in `select` on the socket and on a wake-up
  socket, for at most IDLE_WAIT_S, whenever the DUL has nothing queued; whatever is put in its
  queues (a PDU to send, a state-machine event) wakes it at once;
- the association reactor waits on an Event that every message put in the DIMSE queue or the
  DUL's indication queue sets, for at most IDLE_WAIT_S, instead of sleeping 1 ms. Its loop is
  pynetdicom 3.0's otherwise line for line, so the lost-response fix (agent.net
  .pynetdicom_fixes) holds unchanged. While it waits it counts as paused (it touches nothing),
  so a send_*() no longer spins until its next turn.

What still runs every IDLE_WAIT_S (200 ms) instead of every 1 ms: the ARTIM, idle-timer and
kill checks, so a timeout or a peer-less shutdown is seen at most 200 ms later than before
(a stop or kill wakes the loops at once; the ARTIM and network timeouts are tens of seconds).
An idle association cost ~25 ms of CPU per second at 20 ms, ~10-14 at 50 ms, ~3 at 200 ms;
it matters while an association waits on a slow archive (an fsync per object), where three of
them spent ~0.15 ms of CPU per 0.5 MB object on timer checks at 50 ms (issue 18). Applied to
the associations we open (agent.net.ae.AgentAE), only on the pynetdicom releases the fix module
was checked against; another release keeps pynetdicom's loops.
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import threading
from types import MethodType
from typing import Any

import pynetdicom

from agent.net.pynetdicom_fixes import is_affected

#: the longest either loop waits without work before it looks at its timers again
IDLE_WAIT_S = 0.2


class Waker:
    """What wakes an association's two loops: an Event for the association reactor and a
    socket pair the DUL reactor selects on. Closed with the connection (after close a wake is
    a no-op: socket objects never write to a reused descriptor)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self._closed = False

    #: the DUL is (about to be) in select: only then is a wake-up written (a syscall per PDU
    #: queued while the DUL is busy anyway would cost more than it saves)
    dul_waiting = False

    def wake(self) -> None:
        self.event.set()
        if not self.dul_waiting:
            return
        self._wake_dul()

    def wake_dul(self) -> None:
        """Wake the DUL reactor if it waits in select (not the association reactor)."""
        if self.dul_waiting:
            self._wake_dul()

    def _wake_dul(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._writer.send(b"\0")
            except OSError:
                pass                    # full: a wake-up is pending already

    def drain(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                while self.reader.recv(4096):
                    pass
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.reader.close()
            self._writer.close()

    def __del__(self) -> None:
        # an association dropped without its socket's close(): no ResourceWarning, no fd kept
        self.close()


class WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that wakes the association's loops when something is put in it."""

    def __init__(self, waker: Waker) -> None:
        super().__init__()
        self._waker = waker

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._waker.wake()


def applies() -> bool:
    """Whether this pynetdicom's loops are the ones this module replaces."""
    return is_affected(pynetdicom.__version__)


def install(assoc: Any) -> Waker:
    """Give a not yet started association waking queues and the waiting reactor; its socket
    (agent.net.ae.NoDelayAssociationSocket) then waits in `ready` with the returned Waker."""
    waker = Waker()
    dul = assoc.dul
    dul.to_provider_queue = WakingQueue(waker)
    dul.event_queue = WakingQueue(waker)
    dul.to_user_queue = WakingQueue(waker)
    assoc.dimse.msg_queue = WakingQueue(waker)
    assoc._run_reactor = MethodType(_waiting_run_reactor, assoc)
    # dul._run_loop_delay stays 1 ms: the loop sleeps that long after a pass with nothing to
    # do, so that a data set sent through the queue (the TLS path) is written in bursts; with
    # 0 the DUL and the sending thread hand the GIL to each other for every PDU (measured:
    # +60 % CPU per object)
    original_stop, original_kill = dul.stop_dul, dul.kill_dul

    def stop_dul() -> bool:
        if dul.state_machine.current_state == "Sta1":
            dul._kill_thread = True
            waker.wake()            # stop_dul waits for the thread: let it see the flag now
        return bool(original_stop())

    def kill_dul() -> None:
        original_kill()
        waker.wake()

    dul.stop_dul, dul.kill_dul = stop_dul, kill_dul
    return waker


def wait_ready(transport: Any, waker: Waker) -> bool:
    """`AssociationSocket.ready` that waits: True if the socket has data to read. Returns at
    once when the DUL has queued work; otherwise after data, a wake-up or IDLE_WAIT_S."""
    sock = transport.socket
    if sock is None or transport._is_connected is False:
        return False
    dul = transport.assoc.dul
    # flag first, then look at the queues and who reads the socket: a put or a socket given
    # back after the look sees the flag and wakes us
    waker.dul_waiting = True
    try:
        reader_elsewhere = transport.direct_reader
        if transport.has_unread() and not reader_elsewhere:
            return True                 # bytes the sending thread read and gave back
        if isinstance(sock, ssl.SSLSocket) and not reader_elsewhere:
            with transport.ssl_lock:    # the SSL object is never used by two threads at once
                pending = sock.pending()
            if pending:
                return True             # decrypted bytes select() cannot see (pynetdicom #528)
        busy = (not dul.event_queue.empty() or not dul.to_provider_queue.empty()
                or dul._kill_thread or waker.closed)
        # the waker is closed only by this thread (the DUL's, in close()) or once it ended;
        # the socket is left out while the sending thread reads it (agent.net.direct_response
        # .take_reading), which wakes us when it gives the socket back
        watched = [] if reader_elsewhere else [sock]
        if not waker.closed:
            watched.append(waker.reader)
        if not watched:
            return False
        readable, _, _ = select.select(watched, [], [], 0 if busy else IDLE_WAIT_S)
    except (OSError, TimeoutError, ValueError):
        # Evt17: transport connection closed (as pynetdicom's ready)
        transport.event_queue.put("Evt17")
        return False
    finally:
        waker.dul_waiting = False
    if waker.reader in readable:
        waker.drain()
    return sock in readable


def _waiting_run_reactor(self: Any) -> None:
    """pynetdicom 3.0's Association._run_reactor with its `time.sleep(0.001)` replaced by a
    wait for work (see the module's docstring). Every other line is pynetdicom's."""
    waker: Waker = self.dul.socket.waker
    try:
        _waiting_loop(self, waker)
    finally:
        if not self.dul.is_alive():
            waker.close()


def _waiting_loop(self: Any, waker: Waker) -> None:
    from pynetdicom import evt
    from pynetdicom.association import LOGGER

    self._is_paused = False
    while not self._kill:
        # waiting, it touches nothing: paused, so a send_*() need not wait for its turn
        self._is_paused = True
        waker.event.wait(IDLE_WAIT_S)
        waker.event.clear()             # before looking: a put from now on wakes the next wait

        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()

            self.kill()
            return
