"""The audit sending thread: takes spooled messages in order, writes them to the repository,
retries with a doubling backoff while it is down, and keeps what `status` shows.

Delivery is at least once: a message written just before the connection broke, or before the
agent was killed, is written again (byte-identical, same sequenceId) unless the connection was
seen healthy at least `confirm_s` after the write. Never at most once: nothing leaves the spool
before that.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.audit.spool import AuditSpool, AuditUnavailable
from agent.audit.transport import AuditTransportError, Connection

logger = logging.getLogger(__name__)

#: how long an idle sender waits before checking the connection and the spool again
IDLE_CHECK_S = 5.0


@dataclass(frozen=True)
class SenderSettings:
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    #: a written message counts as delivered once the connection was healthy this long after
    confirm_s: float = 0.5
    #: (UDP) a larger message is held in the spool instead of being cut (RFC 5426 3.2)
    max_datagram_bytes: int | None = None


@dataclass
class SenderState:
    """What `status` shows of the sender (no patient data: errors name the repository only)."""

    reachable: bool | None = None           # None until the first attempt
    last_error: str | None = None
    last_error_at: float | None = None
    certificate_error: bool = False
    last_delivered_at: float | None = None
    delivered: int = 0


class AuditSender:
    """Sends the spool's messages on its own thread; `wake()` after each new message."""

    def __init__(self, spool: AuditSpool, connect: Callable[[], Connection],
                 settings: SenderSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._spool = spool
        self._connect = connect
        self._settings = settings
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = SenderState()
        self._connection: Connection | None = None
        self._backoff_s = settings.retry_initial_s
        self._thread: threading.Thread | None = None

    # --- control ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-sender")
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Give the backlog up to `flush_timeout_s` to go out (Application Stop is usually the
        last message), then stop the thread; what is left stays in the spool for next time."""
        if self._thread is None:
            return
        deadline = time.monotonic() + flush_timeout_s
        while time.monotonic() < deadline and self._thread.is_alive():
            counts = self._spool.counts()
            if counts.waiting == 0 or self.state().reachable is False:
                break
            self._wake.set()
            self._stop.wait(0.05)   # a bounded drain at shutdown, polled, not a synchronisation
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._thread = None

    def state(self) -> SenderState:
        with self._lock:
            return SenderState(**vars(self._state))

    # --- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                wait_s = self._step()
                if wait_s > 0:
                    self._wake.wait(wait_s)
                    self._wake.clear()
        except AuditUnavailable as err:
            # the spool itself broke: nothing can be sent or pruned; the events side raises too
            self._failed(str(err))
            logger.error("audit sender stopped: %s", err)
        finally:
            self._disconnect()

    def _step(self) -> float:
        """One unit of work; returns how long to wait before the next (0 = go on at once)."""
        if self._connection is not None and not self._connection.healthy():
            self._lost("the repository closed the connection")
            return 0.0
        message = self._spool.next_pending()
        if message is None:
            return self._confirm_or_idle()
        limit = self._settings.max_datagram_bytes
        if limit is not None and len(message.data) > limit:
            self._spool.hold(message.seq)
            self._failed(f"audit message {message.seq} is {len(message.data)} bytes, more "
                         f"than udp_max_bytes = {limit}: held in the spool, not truncated "
                         "(use transport tls or tcp)", unreachable=False)
            logger.error("audit message %d held: %d bytes over UDP limit %d",
                         message.seq, len(message.data), limit)
            return 0.0
        if self._connection is None and not self._open():
            return self._backoff()
        assert self._connection is not None
        try:
            self._connection.send(message.data)
        except AuditTransportError as err:
            self._lost(str(err))
            return self._backoff()
        now = self._clock()
        if self._connection.stream:
            self._spool.mark_sent(message.seq, now=now)
        else:
            self._spool.delete(message.seq)
            self._delivered(1, now)
        return 0.0

    def _confirm_or_idle(self) -> float:
        if self._connection is None or not self._spool.has_unconfirmed():
            return IDLE_CHECK_S
        now = self._clock()
        confirmed = self._spool.confirm_sent(written_before=now - self._settings.confirm_s)
        if confirmed:
            self._delivered(confirmed, now)
            return 0.0
        return self._settings.confirm_s / 2

    def _open(self) -> bool:
        try:
            self._connection = self._connect()
        except AuditTransportError as err:
            self._failed(str(err), certificate=err.certificate)
            logger.warning("%s; retrying in %.1f s", err, self._backoff_s)
            return False
        with self._lock:
            if not self._state.reachable:
                logger.info("audit repository reachable")
            self._state.reachable = True
            self._state.certificate_error = False
        self._backoff_s = self._settings.retry_initial_s
        return True

    def _backoff(self) -> float:
        wait_s = self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._settings.retry_max_s)
        return wait_s

    def _lost(self, reason: str) -> None:
        self._disconnect()
        self._spool.unsend()
        self._failed(reason)

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _failed(self, reason: str, *, certificate: bool = False,
                unreachable: bool = True) -> None:
        with self._lock:
            if unreachable:
                self._state.reachable = False
            self._state.last_error = reason
            self._state.last_error_at = self._clock()
            self._state.certificate_error = certificate

    def _delivered(self, count: int, now: float) -> None:
        with self._lock:
            self._state.delivered += count
            self._state.last_delivered_at = now
            self._state.reachable = True


def iso(moment: float | None) -> str | None:
    """A wall-clock time for `status`, with its UTC offset."""
    if moment is None:
        return None
    return datetime.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")
