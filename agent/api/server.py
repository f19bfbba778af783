"""uvicorn on a daemon thread, with a bounded number of connections and bounded idle time.

Issue 13, finding 6: 1,100 idle connections that never sent a byte exhausted the daemon's file
descriptors, and the queue, the listener and the forwarder stopped with them. uvicorn arms its
keep-alive timer only after a response, so a connection that never sends a request (or sends its
headers a byte a second) was held forever, and asyncio accepted as many as the kernel queued.

Here our own accept loop takes one connection at a time and keeps at most `max_connections`
open. When full, the connection that has waited longest for a request (idle, or still sending
headers) makes room; when every connection is running a request, the newcomer is closed at once.
Each connection must deliver a complete request (headers and body) within `idle_timeout_s` of
its opening or of its previous response, or it is closed: this covers the silent connection, the
idle keep-alive connection and the slowloris client alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
import time
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.errors import ConfigError

logger = logging.getLogger(__name__)

#: how long `start()` waits for the server thread to accept connections
START_TIMEOUT_S = 10.0
#: after a failed accept() (e.g. EMFILE: the process is out of descriptors), wait this long
ACCEPT_RETRY_S = 1.0
#: at most one WARNING a minute about connections turned away
CAPACITY_LOG_INTERVAL_S = 60.0
LISTEN_BACKLOG = 128


class _Connections:
    """The open connections of one server and its limits; lives on the server's event loop."""

    def __init__(self, max_connections: int, idle_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.open_count = 0  # accepted sockets not yet closed (registered or not)
        # in the order their wait for a request began: the first one has waited longest
        self.waiting_since: dict[_BoundedH11Protocol, None] = {}
        self.slot_freed = asyncio.Event()
        self._turned_away = 0
        self._last_warning_t_mono = -math.inf

    def register(self, protocol: _BoundedH11Protocol) -> None:
        self.waiting_since[protocol] = None

    def waiting_again(self, protocol: _BoundedH11Protocol) -> None:
        self.waiting_since.pop(protocol, None)
        self.waiting_since[protocol] = None

    def release(self, protocol: _BoundedH11Protocol | None) -> None:
        if protocol is not None:
            self.waiting_since.pop(protocol, None)
        self.open_count -= 1
        self.slot_freed.set()

    def make_room(self) -> bool:
        """Close the connection that has waited longest for a request; False when every
        connection is running one."""
        for protocol in self.waiting_since:
            if protocol.waiting_for_request():
                protocol.close_now("closed for a newer connection (at max_connections)")
                return True
        return False

    def turned_away(self, address: Any) -> None:
        self._turned_away += 1
        now = time.monotonic()
        if now - self._last_warning_t_mono >= CAPACITY_LOG_INTERVAL_S:
            logger.warning("API: %d connection(s) closed at accept: all %d connections are "
                           "running requests (latest from %s)", self._turned_away,
                           self.max_connections, address)
            self._turned_away = 0
            self._last_warning_t_mono = now


class _BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline: a complete request within
    `idle_timeout_s` of the connection's opening or of the previous response."""

    def __init__(self, *args: Any, connections: _Connections, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections = connections
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._connections.register(self)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        try:
            super().connection_lost(exc)
        finally:
            self._connections.release(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._connections.waiting_again(self)
            self._follow_request()

    def waiting_for_request(self) -> bool:
        """No request of this connection is running in the app."""
        return self.cycle is None or self.cycle.response_complete

    def close_now(self, why: str) -> None:
        """Close without waiting for unsent output (the peer may not be reading)."""
        if not self.transport.is_closing():
            logger.debug("API: connection from %s %s", self.client, why)
        self.transport.abort()

    def _follow_request(self) -> None:
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._arm_deadline()  # waiting for (the rest of) a request: the clock runs
        else:
            self._cancel_deadline()  # request complete (or connection ending)

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self._connections.idle_timeout_s,
                                                  self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        self.close_now(f"sent no complete request within {self._connections.idle_timeout_s:g} s")


class _Acceptor:
    """The accept loop on the listening socket; shaped like the asyncio.Server uvicorn keeps in
    `servers` (close, wait_closed), so uvicorn's shutdown stops it first."""

    def __init__(self, sock: socket.socket, server: _Server) -> None:
        self._sock = sock
        self._server = server
        self._task = asyncio.get_running_loop().create_task(self._run(), name="api-accept")

    def close(self) -> None:
        self._task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        connections = self._server.connections
        while True:
            # connections closed to make room release their slot on a later loop turn
            while connections.open_count > connections.max_connections:
                connections.slot_freed.clear()
                await connections.slot_freed.wait()
            try:
                conn, address = await loop.sock_accept(self._sock)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as err:
                # EMFILE, ENFILE, ENOBUFS: the process or system is short of resources; the
                # pending connections wait in the kernel's queue
                logger.warning("API: accept failed (%s); retrying in %g s", err, ACCEPT_RETRY_S)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            connections.open_count += 1
            if connections.open_count > connections.max_connections \
                    and not connections.make_room():
                conn.close()
                connections.release(None)
                connections.turned_away(address)
                continue
            await self._serve(conn)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self._server.create_protocol, conn)
        except OSError as err:
            logger.debug("API: accepted connection lost before it was served: %s", err)
            conn.close()
            self._server.connections.release(None)


class _Server(uvicorn.Server):
    """uvicorn's server with our accept loop in place of asyncio's."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket,
                 connections: _Connections) -> None:
        super().__init__(config)
        self._sock = sock
        self.connections = connections
        self.ready = threading.Event()  # set when started or failed

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # no sockets for uvicorn: it would hand them to loop.create_server, which accepts
        # without bound
        await super().startup(sockets=[])
        self.servers = [_Acceptor(self._sock, self)]  # type: ignore[list-item]
        self.ready.set()

    def create_protocol(self) -> _BoundedH11Protocol:
        return _BoundedH11Protocol(config=self.config, server_state=self.server_state,
                                   app_state=self.lifespan.state, connections=self.connections)


class ApiServer:
    """uvicorn on a daemon thread: `start()` binds (port 0: the real port is in `.port`) and
    returns when the server accepts connections; `stop()` shuts it down.

    At most `max_connections` connections are open at once; each must deliver a complete
    request within `idle_timeout_s` of its opening or of its previous response.
    """

    def __init__(self, host: str, port: int, app: ASGIApp, *, max_connections: int = 32,
                 idle_timeout_s: float = 10.0) -> None:
        problems = []
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            problems.append(f"API server: max_connections: expected an integer >= 1, got "
                            f"{max_connections!r}")
        if not isinstance(idle_timeout_s, int | float) or not 0 < idle_timeout_s < math.inf:
            problems.append(f"API server: idle_timeout_s: expected a number > 0, got "
                            f"{idle_timeout_s!r}")
        if problems:
            raise ConfigError(problems)
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.idle_timeout_s = float(idle_timeout_s)
        self._app = app
        self._server: _Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve.

        Raises
        ------
        OSError
            The address cannot be bound, or the server did not start.
        """
        sock = self._bind()
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, lifespan="off", access_log=False, log_level="warning", log_config=None,
            timeout_graceful_shutdown=2, http="h11", ws="none", server_header=False,
            # ours closes first; uvicorn's (after a response) is only a backstop
            timeout_keep_alive=math.ceil(self.idle_timeout_s) + 1)
        connections = _Connections(self.max_connections, self.idle_timeout_s)
        self._server = server = _Server(config, sock, connections)
        self._thread = threading.Thread(target=self._serve, args=(server,), name="api",
                                        daemon=True)
        self._thread.start()
        server.ready.wait(START_TIMEOUT_S)
        if not server.started:
            self.stop()
            raise OSError(f"API server did not start on {self.host}:{self.port}")

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)  # the event loop's sock_accept needs it
        except OSError:
            sock.close()
            raise
        return sock

    @staticmethod
    def _serve(server: _Server) -> None:
        try:
            asyncio.run(server.serve())
        finally:
            server.ready.set()  # start() stops waiting also when the server failed

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
