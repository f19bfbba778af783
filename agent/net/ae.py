"""pynetdicom AEs whose sockets have TCP_NODELAY set.

pynetdicom never sets TCP_NODELAY; with Nagle on, the last write of each DIMSE message waits for
the peer's delayed ACK, ~40 ms per exchange (shared/design/PEERS.md). pynetdicom creates the
requestor socket in AssociationSocket._create_socket and accepts in AssociationServer.get_request;
both are overridden here, nothing is patched globally.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import (
    AddressInformation,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

logger = logging.getLogger(__name__)

#: ARTIM/ACSE, DIMSE and idle timeouts (seconds) for every association we make or accept;
#: pynetdicom's connection_timeout default is None (unbounded TCP connect)
CONNECTION_TIMEOUT_S = 10.0
ACSE_TIMEOUT_S = 15.0
DIMSE_TIMEOUT_S = 60.0
NETWORK_TIMEOUT_S = 60.0


def set_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: the largest PDU we read from any peer. pynetdicom reads whatever length a PDU header claims
#: (dul._read_pdu_data), so a 4 GB header would hold a worker and memory (RELIABILITY.md 1.4 b)
MAX_PDU_READ_BYTES = 4 * 1024 * 1024


class NoDelayAssociationSocket(AssociationSocket):
    """No-delay, and refuses to read a PDU longer than MAX_PDU_READ_BYTES."""

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock = super()._create_socket(address)
        set_nodelay(sock)
        return sock

    def _shutdown_socket(self) -> None:
        sock = self.socket
        super()._shutdown_socket()
        if sock is not None:
            # pynetdicom closes only after a successful shutdown(), which fails on a socket
            # that never connected: the fd was left to the garbage collector
            sock.close()

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_PDU_READ_BYTES:
            # the DUL treats this as a closed connection (Evt17) and aborts the association
            logger.warning("peer announced a %d-byte PDU (limit %d): connection closed",
                           nr_bytes, MAX_PDU_READ_BYTES)
            raise OSError(f"PDU of {nr_bytes} bytes exceeds the limit")
        data: bytearray = super().recv(nr_bytes)
        return data


#: PS3.8 9.3.1: the PDU types there are; any other type is aborted by the DUL without a body read
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
P_DATA_TF = 0x04
#: A-ABORT PDU, source 2 (service provider), reason 0 (not specified): PS3.8 9.3.8
A_ABORT_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0])
#: accepted connections: a PDU must arrive whole within this many seconds of its first byte
PDU_READ_TIMEOUT_S = 5.0
#: accepted associations: P-DATA bytes one association may send us before it is aborted
MAX_ASSOCIATION_PDATA_BYTES = 4 * 1024 * 1024


class PeerLimitExceeded(OSError):
    """A peer broke one of the listener's limits. An OSError because pynetdicom's DUL turns
    exactly that into "transport connection closed" (Evt17) and ends the association."""


class AcceptorAssociationSocket(NoDelayAssociationSocket):
    """The socket of an association a peer opened to us, which is untrusted input.

    pynetdicom's DUL reads a PDU as recv(6) for the header, then recv(length) for the body, with
    only the socket's per-call timeout (network_timeout, 60 s) in between. That lets a peer hold
    a worker and an association slot by sending part of a PDU and then nothing, or a drop every
    59 s, and lets it make us buffer P-DATA fragments without end (RELIABILITY.md 1.4 b, c).
    Here each PDU must arrive whole within `pdu_read_timeout_s` of its first byte, may not be
    longer than the maximum PDU we announced, and an association's P-DATA is capped in total.
    The limits are set by `BoundedRequestHandler` from the server.
    """

    pdu_read_timeout_s: float = PDU_READ_TIMEOUT_S
    max_pdu_bytes: int = MAX_PDU_READ_BYTES
    max_association_pdata_bytes: int = MAX_ASSOCIATION_PDATA_BYTES
    #: (body length, deadline) between a header read and its body read
    _pending_body: tuple[int, float] | None = None
    _pdata_bytes: int = 0

    def recv(self, nr_bytes: int) -> bytearray:
        pending, self._pending_body = self._pending_body, None
        if pending is not None and pending[0] == nr_bytes:
            return self._recv_by(nr_bytes, pending[1])
        # the DUL reads a header only once the socket is readable: the clock starts now
        deadline = time.monotonic() + self.pdu_read_timeout_s
        data = self._recv_by(nr_bytes, deadline)
        if nr_bytes == 6 and len(data) == 6:
            self._check_header(data, deadline)
        return data

    def _check_header(self, header: bytearray, deadline: float) -> None:
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in KNOWN_PDU_TYPES:
            return                      # the DUL aborts (Evt19) without reading a body
        if length > self.max_pdu_bytes:
            self._refuse(f"PDU of {length} bytes exceeds the maximum of {self.max_pdu_bytes}")
        if pdu_type == P_DATA_TF:
            self._pdata_bytes += length
            if self._pdata_bytes > self.max_association_pdata_bytes:
                # pynetdicom keeps every fragment of a message until the last one arrives
                self._refuse(f"P-DATA of more than {self.max_association_pdata_bytes} bytes "
                             "on one association")
        self._pending_body = (length, deadline)

    def _recv_by(self, nr_bytes: int, deadline: float) -> bytearray:
        """pynetdicom's recv loop, with a deadline for the whole read instead of per call."""
        sock = self.socket
        if sock is None:
            raise OSError("socket closed")
        per_call_timeout = sock.gettimeout()
        data = bytearray()
        try:
            while len(data) < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._refuse(f"PDU not received within {self.pdu_read_timeout_s:g} s "
                                 f"({len(data)} of {nr_bytes} bytes)")
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(min(nr_bytes - len(data), 65536))
                except TimeoutError:
                    continue            # the deadline check above decides
                if not chunk:
                    break               # closed by the peer: the DUL sees a short PDU
                data.extend(chunk)
        finally:
            sock.settimeout(per_call_timeout)
        return data

    def _refuse(self, why: str) -> None:
        """Log, send an A-ABORT (best effort) and raise; the DUL then closes the socket."""
        peer = self.assoc.requestor.address_info
        where = f"{peer.address}:{peer.port}" if peer is not None else "an unknown address"
        logger.warning("listener: association from %s aborted: %s", where, why)
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(A_ABORT_PDU)
            except OSError:
                pass                    # the peer may be gone; the socket is closed anyway
        raise PeerLimitExceeded(why)


class AgentAE(AE):  # type: ignore[misc]
    """An AE whose outgoing associations use no-delay sockets and bounded timeouts."""

    def __init__(self, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self.connection_timeout = CONNECTION_TIMEOUT_S
        self.acse_timeout = ACSE_TIMEOUT_S
        self.dimse_timeout = DIMSE_TIMEOUT_S
        self.network_timeout = NETWORK_TIMEOUT_S

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        sock = NoDelayAssociationSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def resolve_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """IP addresses for host names, for the listener's source-address allow-list."""
    addresses: set[str] = set()
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            addresses.add(host)
            continue
        except ValueError:
            pass
        try:
            for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
                addresses.add(str(info[4][0]))
        except OSError as err:
            logger.warning("cannot resolve archive host %s for the listener allow-list: %s",
                           host, err)
    return frozenset(addresses)


class BoundedRequestHandler(RequestHandler):  # type: ignore[misc]
    """Gives each accepted association an AcceptorAssociationSocket with the server's limits."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom builds a plain AssociationSocket here and has already queued its
        # connection event; re-creating it would queue a second one, so only the class is
        # swapped, to get the read deadline and the length and byte bounds
        assoc.dul.socket.__class__ = AcceptorAssociationSocket
        sock = cast(AcceptorAssociationSocket, assoc.dul.socket)
        server = self.server
        sock.pdu_read_timeout_s = getattr(server, "pdu_read_timeout_s", PDU_READ_TIMEOUT_S)
        sock.max_pdu_bytes = getattr(server, "max_pdu_bytes", MAX_PDU_READ_BYTES)
        sock.max_association_pdata_bytes = getattr(
            server, "max_association_pdata_bytes", MAX_ASSOCIATION_PDATA_BYTES)
        return assoc


class AllowListServer(ThreadedAssociationServer):  # type: ignore[misc]
    """Accepts TCP connections only from `allowed_addresses` (None = anyone), with no-delay
    and a bound on PDU length (pass `request_handler=BoundedRequestHandler`)."""

    allowed_addresses: frozenset[str] | None = None
    #: limits for each accepted association (AcceptorAssociationSocket)
    pdu_read_timeout_s: float = PDU_READ_TIMEOUT_S
    max_pdu_bytes: int = MAX_PDU_READ_BYTES
    max_association_pdata_bytes: int = MAX_ASSOCIATION_PDATA_BYTES

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = super().get_request()
        set_nodelay(client_socket)
        return client_socket, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        allowed = self.allowed_addresses
        if allowed is None:
            return True
        host = str(client_address[0])
        # an IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d
        host = host.removeprefix("::ffff:")
        if host in allowed:
            return True
        logger.warning("listener: refused connection from %s (not a configured archive)", host)
        return False


def associate(
    ae: AgentAE, host: str, port: int, called_ae: str, *,
    contexts: list[Any] | None = None, evt_handlers: list[Any] | None = None,
) -> tuple[Association, str]:
    """Request an association; returns it and, when it is not established, why, in words a
    service engineer can act on ("" when established).

    pynetdicom reports a refused or timed-out TCP connection as an abort; whether the
    connection ever opened (EVT_CONN_OPEN) tells the two apart.
    """
    connected = threading.Event()
    handlers = [*(evt_handlers or []), (evt.EVT_CONN_OPEN, lambda event: connected.set())]
    kwargs: dict[str, Any] = {"ae_title": called_ae, "evt_handlers": handlers}
    if contexts is not None:
        kwargs["contexts"] = contexts
    assoc = ae.associate(host, port, **kwargs)
    if assoc.is_established:
        return assoc, ""
    if not connected.is_set():
        return assoc, f"no connection to {host}:{port}"
    if assoc.is_rejected:
        return assoc, (f"association rejected (check AE titles: calling {ae.ae_title}, "
                       f"called {called_ae})")
    return assoc, "association aborted"
