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
import threading
from collections.abc import Iterable
from typing import Any

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
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom builds a plain AssociationSocket here and has already queued its
        # connection event; re-creating it would queue a second one, so only the class is
        # swapped, to get the PDU length bound
        assoc.dul.socket.__class__ = NoDelayAssociationSocket
        return assoc


class AllowListServer(ThreadedAssociationServer):  # type: ignore[misc]
    """Accepts TCP connections only from `allowed_addresses` (None = anyone), with no-delay
    and a bound on PDU length (pass `request_handler=BoundedRequestHandler`)."""

    allowed_addresses: frozenset[str] | None = None

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
