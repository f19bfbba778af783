"""A TCP proxy on loopback whose behaviour a test flips at any moment (RELIABILITY.md test 6).

Modes:
- "pass": forward both ways.
- "refuse": accept and reset new connections at once.
- "stall": stop forwarding in both directions, keep the sockets open (a black hole).
- "stall_after": once more than `after_up_bytes` went upstream on a connection, that connection
  becomes a black hole (mid-transfer); new connections pass again.
- "drop_response": forward requests; once more than `after_up_bytes` went upstream on a
  connection, reset both sides instead of forwarding the next bytes downstream. The archive has
  the request, the sender never sees the answer: an outcome-unknown store. Then back to "pass".
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field


def _reset(sock: socket.socket) -> None:
    # SO_LINGER(on, 0): close sends RST instead of FIN
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket
    up_bytes: int = 0
    stalled: bool = False
    closed: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.mode = "pass"
        self.after_up_bytes = 0
        self.faults = 0
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, 0))
        self._server.listen(16)
        self.port: int = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "refuse":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            self._start(self._pump, link, True)
            self._start(self._pump, link, False)

    def _pump(self, link: _Link, upward: bool) -> None:
        source, sink = (link.client, link.upstream) if upward else (link.upstream, link.client)
        source.settimeout(0.2)
        while not self._stop.is_set() and not link.closed.is_set():
            if self.mode == "stall":
                link.closed.wait(0.05)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if link.stalled:
                # data vanishes, but a side that closes still closes the other: the archive
                # then frees the association it holds (DCMTK storescp serves one at a time)
                continue
            if upward:
                link.up_bytes += len(data)
                if self.mode == "stall_after" and link.up_bytes > self.after_up_bytes:
                    self.faults += 1
                    self.mode = "pass"
                    link.stalled = True
                    continue
            elif self.mode == "drop_response" and link.up_bytes > self.after_up_bytes:
                self.faults += 1
                self.mode = "pass"
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        self._close(link)

    def _close(self, link: _Link) -> None:
        if not link.closed.is_set():
            link.closed.set()
            _reset(link.client)
            _reset(link.upstream)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        with self._lock:
            for link in self._links:
                self._close(link)
        for thread in self._threads:
            thread.join(timeout=5)
