"""Connections to the audit record repository: syslog over TLS (RFC 5425), over TCP with octet
counting (RFC 6587 section 3.4.1) and over UDP (RFC 5426, one message per datagram).

Syslog has no acknowledgement. Over TLS and TCP a message counts as delivered when it was
written and the connection was still healthy a moment later (`healthy()`: the receiver never
writes to us, so a readable socket means it closed or reset the connection). Over UDP a message
counts as delivered once the datagram left: UDP can promise no more (docs/audit.md).
"""

from __future__ import annotations

import select
import socket
import ssl
from typing import Protocol

from agent.audit.syslog import octet_counted
from agent.errors import AgentError
from agent.net.tls import PeerTls, client_context, describe_tls_failure


class AuditTransportError(AgentError, ConnectionError):
    """The repository could not be reached or the connection broke; `reason` is short and names
    no patient. `certificate` is True for a TLS verification failure, which needs a person."""

    def __init__(self, message: str, *, certificate: bool = False) -> None:
        super().__init__(message)
        self.certificate = certificate


class Connection(Protocol):
    #: whether a write can be confirmed by the connection staying up (TCP, TLS), or not (UDP)
    stream: bool

    def send(self, message: bytes) -> None: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class StreamConnection:
    """TCP or TLS: each message octet-counted (RFC 5425 4.3 = RFC 6587 3.4.1)."""

    stream = True

    def __init__(self, sock: socket.socket, where: str) -> None:
        self._sock = sock
        self._where = where

    def send(self, message: bytes) -> None:
        try:
            self._sock.sendall(octet_counted(message))
        except (OSError, ssl.SSLError) as err:
            raise AuditTransportError(f"audit repository {self._where}: write failed "
                                      f"({err.strerror or err})") from err

    def healthy(self) -> bool:
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        return self._still_open()

    def _still_open(self) -> bool:
        timeout = self._sock.gettimeout()
        self._sock.settimeout(0.0)
        try:
            if isinstance(self._sock, ssl.SSLSocket):
                # a TLS 1.3 NewSessionTicket also makes the socket readable: reading processes
                # it and finds no application data (SSLWantReadError)
                return self._sock.recv(1) != b""
            return self._sock.recv(1, socket.MSG_PEEK) != b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False
        finally:
            self._sock.settimeout(timeout)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass  # closing a broken connection: nothing left to save


class DatagramConnection:
    """UDP: one syslog message per datagram, no framing (RFC 5426 3.1)."""

    stream = False

    def __init__(self, sock: socket.socket, where: str) -> None:
        self._sock = sock
        self._where = where

    def send(self, message: bytes) -> None:
        try:
            self._sock.send(message)
        except OSError as err:
            # ECONNREFUSED here reports an ICMP error for an earlier datagram: the receiver is
            # down; this one was not sent and stays in the spool
            raise AuditTransportError(f"audit repository {self._where}: datagram not sent "
                                      f"({err.strerror or err})") from err

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        self._sock.close()


def connect(host: str, port: int, transport: str, *, tls: PeerTls | None,
            timeout_s: float = 10.0,
            context: ssl.SSLContext | None = None) -> Connection:
    """A connection to the repository; for "tls", the handshake is done (our certificate
    presented, the repository's verified) before this returns.

    Raises
    ------
    AuditTransportError
        If the repository cannot be reached or the TLS handshake fails (never a plaintext
        fallback).
    TlsConfigError
        If `transport` is "tls" and our own identity cannot be loaded.
    """
    where = f"{host}:{port}"
    if transport == "udp":
        return _udp(host, port, where)
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as err:
        raise AuditTransportError(f"audit repository {where}: cannot connect "
                                  f"({err.strerror or err})") from err
    if transport == "tcp":
        return StreamConnection(sock, where)
    if tls is None and context is None:
        sock.close()
        raise AuditTransportError(f"audit repository {where}: transport tls without a [tls] "
                                  "identity")
    ctx = context if context is not None else client_context(tls)  # type: ignore[arg-type]
    try:
        wrapped = ctx.wrap_socket(sock, server_hostname=host)
    except (ssl.SSLError, OSError) as err:
        sock.close()
        reason = describe_tls_failure(err)
        raise AuditTransportError(f"audit repository {where}: TLS handshake failed ({reason})",
                                  certificate=isinstance(err, ssl.SSLCertVerificationError)
                                  ) from err
    return StreamConnection(wrapped, where)


def _udp(host: str, port: int, where: str) -> DatagramConnection:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.connect(address)
    except OSError as err:
        raise AuditTransportError(f"audit repository {where}: cannot reach it over UDP "
                                  f"({err.strerror or err})") from err
    return DatagramConnection(sock, where)
