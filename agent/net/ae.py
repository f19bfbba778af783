"""The network boundary: every association the agent opens goes through `associate()`, every
one it accepts through the server `make_server()` builds.

What the boundary applies, so no caller can forget it:

- TCP_NODELAY. pynetdicom never sets it; with Nagle on, the last write of each DIMSE message
  waits for the peer's delayed ACK, ~40 ms per exchange (shared/design/PEERS.md).
- Bounded timeouts (connection, TLS handshake, ACSE, DIMSE, idle) and PDU lengths.
- DICOM TLS (PS3.15 Annex B) when a path is configured for it: never a plaintext fallback.
- Failures raised by type (agent.errors.AssociationError and its subclasses), never returned.

pynetdicom creates the requestor socket in AssociationSocket._create_socket, connects in
AssociationSocket.connect and accepts in AssociationServer.get_request; those are overridden
here, nothing is patched globally.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import (
    T_CONNECT,
    AddressInformation,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from agent.errors import (
    AssociationAborted,
    AssociationRejected,
    PeerUnreachable,
    TlsHandshakeError,
)
from agent.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from agent.net import quiet_reactor
from agent.net.quiet_reactor import Waker, wait_ready
from agent.net.tls import (
    PeerTls,
    certificate_names_address,
    client_context,
    describe_tls_failure,
)

logger = logging.getLogger(__name__)

#: ARTIM/ACSE, DIMSE and idle timeouts (seconds) for every association we make or accept;
#: pynetdicom's connection_timeout default is None (unbounded TCP connect)
CONNECTION_TIMEOUT_S = 10.0
ACSE_TIMEOUT_S = 15.0
DIMSE_TIMEOUT_S = 60.0
NETWORK_TIMEOUT_S = 60.0
#: the TLS handshake of an association we accept must be complete within this many seconds
#: (one we open is bounded by its connection timeout)
TLS_HANDSHAKE_TIMEOUT_S = 10.0
#: the maximum PDU we announce on associations we open (pynetdicom's default)
REQUESTOR_MAX_PDU_BYTES = 16382


#: told of each connection the server turns away: (kind, peer address, peer port, detail), kind
#: "address" (not in the allow-list) or "tls" (handshake failed); for the audit trail
RefusalHook = Callable[[str, str, int, str], None]


def _tell_refused(server: Any, kind: str, host: str, port: int, detail: str) -> None:
    hook: RefusalHook | None = getattr(server, "on_refused", None)
    if hook is None:
        return
    try:
        hook(kind, host, port, detail)
    except Exception:  # the refusal stands whatever the hook does
        logger.exception("listener: the refusal of %s could not be reported", host)


def set_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: the largest PDU we read from any peer. pynetdicom reads whatever length a PDU header claims
#: (dul._read_pdu_data), so a 4 GB header would hold a worker and memory (RELIABILITY.md 1.4 b)
MAX_PDU_READ_BYTES = 4 * 1024 * 1024


class NoDelayAssociationSocket(AssociationSocket):
    """No-delay, refuses to read a PDU longer than MAX_PDU_READ_BYTES, and connects in two
    steps (TCP, then TLS) so that a failure says which step failed."""

    #: why connect() failed (None: it did not), and whether it was the TLS handshake
    connect_error: OSError | None = None
    tls_failed: bool = False
    #: a TLS alert that arrived after the handshake looked done: in TLS 1.3 the server judges
    #: our certificate only then, so its refusal shows up at the first read (issue 14)
    tls_error: ssl.SSLError | None = None

    #: held by every write on this connection: the DUL's PDUs (send below) and a C-STORE
    #: written whole by agent.net.direct_store, which must not be interleaved
    write_lock: threading.Lock

    #: over TLS, held by every call into the connection's SSL object (a read by the DUL, a
    #: write by anyone): OpenSSL allows one SSL object to be used from several threads, but
    #: never by two at once. Taken after write_lock, never before it.
    ssl_lock: threading.Lock

    #: the sending thread reads this connection's PDUs itself while it sends C-STOREs one
    #: after another (agent.net.direct_response.take_reading): the DUL then neither waits on
    #: the socket nor reads from it. Changed only under read_lock, which the DUL holds while
    #: it reads a PDU, so the two never read at once.
    direct_reader: bool = False
    read_lock: threading.Lock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.write_lock = threading.Lock()
        self.ssl_lock = threading.Lock()
        self.read_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock = super()._create_socket(address)
        set_nodelay(sock)
        return sock

    def send(self, bytestream: bytes) -> None:
        with self.write_lock:
            if isinstance(self.socket, ssl.SSLSocket):
                with self.ssl_lock:
                    super().send(bytestream)
            else:
                super().send(bytestream)

    #: set by AgentAE on associations we open: the DUL then waits in `ready` instead of
    #: polling (agent.net.quiet_reactor)
    waker: Waker | None = None

    @property
    def ready(self) -> bool:
        waker = self.waker
        if waker is None:
            return bool(super().ready)
        return wait_ready(self, waker)

    def close(self) -> None:
        super().close()         # shuts the socket down, which closes the waker

    def connect(self, primitive: T_CONNECT) -> None:
        """pynetdicom 3.0's connect, but the TLS handshake runs after the TCP connection
        instead of inside it, bounded by the same connection timeout. pynetdicom reports both
        failures alike (an abort without EVT_CONN_OPEN); associate() needs them apart."""
        sock = self.socket
        if sock is None:
            raise ValueError("A socket must be created before calling connect()")
        try:
            sock.settimeout(self.assoc.connection_timeout)
            sock.connect(primitive.address_info.as_tuple)
            if self.tls_args:
                context, server_hostname = self.tls_args
                self.tls_failed = True
                # connected, so wrap_socket does the handshake now, under the same timeout
                sock = context.wrap_socket(sock, server_side=False,
                                           server_hostname=server_hostname or None)
                self.socket = sock
                self.tls_failed = False
            sock.settimeout(None)
            self.assoc.requestor.address_info = AddressInformation.from_tuple(
                sock.getsockname())
            self._is_connected = True
            evt.trigger(self.assoc, evt.EVT_CONN_OPEN,
                        {"address": primitive.address_info.as_tuple})
            primitive.result = "Evt2"       # transport connection confirmation
            self.provider_queue.put(primitive)
        except OSError as exc:
            self.connect_error = exc
            if self.socket is not None:
                self._shutdown_socket()
                self.socket = None
            primitive.result = "Evt17"      # transport connection closed
            self.provider_queue.put(primitive)
        finally:
            self._ready.set()

    def _shutdown_socket(self) -> None:
        sock = self.socket
        super()._shutdown_socket()
        if sock is not None:
            # pynetdicom closes only after a successful shutdown(), which fails on a socket
            # that never connected: the fd was left to the garbage collector
            sock.close()
        waker = self.waker
        if waker is not None:
            dul = self.assoc.dul
            # Association.abort() shuts the socket down from its own thread once the DUL has
            # stopped; while the DUL runs, only its own thread may close what it selects on
            if threading.current_thread() is dul or not dul.is_alive():
                waker.close()

    #: bytes read from the connection and given back (agent.net.direct_response), served
    #: before the connection's own; then the error that reading met, if any
    _unread: bytearray | None = None
    _unread_error: BaseException | None = None

    def has_unread(self) -> bool:
        """Whether bytes (or an error) were given back and wait to be read."""
        return self._unread is not None

    def unread(self, data: bytes | bytearray, error: BaseException | None = None) -> None:
        """Give back bytes read from this connection (and the error reading more met): the
        next recv() calls return them first, as if they had never been read.

        Bytes given back earlier and not read yet come after these (they were read after
        them): the sending thread gives back a whole PDU it read, say an A-ABORT, and the
        DUL's PDU reader gives back the header it took of it."""
        if self._unread:
            self._unread[:0] = data      # an error met beyond the older bytes stays theirs
            return
        pending_error = self._unread_error if self._unread is not None else None
        self._unread = bytearray(data)
        self._unread_error = error if error is not None else pending_error

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_PDU_READ_BYTES:
            # the DUL treats this as a closed connection (Evt17) and aborts the association
            logger.warning("peer announced a %d-byte PDU (limit %d): connection closed",
                           nr_bytes, MAX_PDU_READ_BYTES)
            raise OSError(f"PDU of {nr_bytes} bytes exceeds the limit")
        if self._unread is None:
            return self._recv(nr_bytes)
        data = self._unread[:nr_bytes]
        del self._unread[:nr_bytes]
        if len(data) == nr_bytes:
            if not self._unread and self._unread_error is None:
                self._unread = None
            return data
        # given back bytes used up; then the error reading them met, or the connection
        error, self._unread, self._unread_error = self._unread_error, None, None
        if error is not None:
            raise error
        return data + self._recv(nr_bytes - len(data))

    def _recv(self, nr_bytes: int) -> bytearray:
        try:
            if isinstance(self.socket, ssl.SSLSocket):
                return self._recv_tls(self.socket, nr_bytes)
            data: bytearray = super().recv(nr_bytes)
        except ssl.SSLError as err:
            self.tls_error = err
            raise
        return data

    def _recv_tls(self, sock: ssl.SSLSocket, nr_bytes: int) -> bytearray:
        """pynetdicom's recv loop with each SSL read under ssl_lock (a C-STORE may be written
        from another thread: agent.net.direct_store). The DUL reads only once `ready` saw data,
        so a read holds the lock only while a record arrives."""
        data = bytearray()
        while len(data) < nr_bytes:
            with self.ssl_lock:
                chunk = sock.recv(min(nr_bytes - len(data), 65536))
            if not chunk:
                break                   # closed: the DUL sees a short PDU
            data.extend(chunk)
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
    """An AE whose outgoing associations use no-delay sockets and bounded timeouts. Open
    associations with `associate()`, not with `AE.associate`."""

    def __init__(self, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        # the agent's identity in A-ASSOCIATE-RQ/-AC, as in its files (agent.implementation),
        # instead of pynetdicom's own
        self.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        self.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        self.connection_timeout = CONNECTION_TIMEOUT_S
        self.acse_timeout = ACSE_TIMEOUT_S
        self.dimse_timeout = DIMSE_TIMEOUT_S
        self.network_timeout = NETWORK_TIMEOUT_S

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        sock = NoDelayAssociationSocket(assoc, address=address)
        sock.tls_args = tls_args
        if quiet_reactor.applies():
            sock.waker = quiet_reactor.install(assoc)
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
    """Gives each accepted association an AcceptorAssociationSocket with the server's limits,
    after the TLS handshake when the server has TLS.

    socketserver runs this on the connection's own thread: a client that connects and sends
    no ClientHello holds only that thread, for at most the server's tls_handshake_timeout_s.
    (pynetdicom handshakes in get_request, in the accept loop, where one such client would
    stall every new connection: RELIABILITY.md 1.4 a.)
    """

    def handle(self) -> None:
        sock = self.request
        if isinstance(sock, ssl.SSLSocket) and not self._tls_handshake(sock):
            # no association was made: the socket is ours to close
            self.server.shutdown_request(sock)
            return
        super().handle()

    def _tls_handshake(self, sock: ssl.SSLSocket) -> bool:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        timeout_s = getattr(self.server, "tls_handshake_timeout_s", TLS_HANDSHAKE_TIMEOUT_S)
        try:
            handshake(sock, timeout_s)
        except (OSError, ValueError) as err:
            # a certificate that does not verify, a plaintext association, TLS < 1.2, a stall
            reason = describe_tls_failure(err)
            logger.warning("listener: TLS handshake with %s failed: %s; connection closed",
                           peer, reason)
            _tell_refused(self.server, "tls", str(self.client_address[0]),
                          int(self.client_address[1]), f"TLS handshake failed: {reason}")
            return False
        certificate = sock.getpeercert()
        if getattr(self.server, "verify_peer_address", False) and not certificate_names_address(
                certificate, str(self.client_address[0])):
            # [listener] verify_hostname: the archive's certificate must name the address it
            # connects from (an IP name, or a DNS name resolving to it)
            logger.warning("listener: TLS peer %s presented %s, which does not name its address; "
                           "connection closed", peer, certificate_subject(certificate))
            _tell_refused(self.server, "tls", str(self.client_address[0]),
                          int(self.client_address[1]),
                          "TLS peer certificate does not name its address")
            return False
        logger.info("listener: TLS connection from %s (%s), peer certificate subject %s",
                    peer, sock.version(), certificate_subject(certificate))
        return True

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom builds a plain AssociationSocket here and has already queued its
        # connection event; re-creating it would queue a second one, so only the class is
        # swapped, to get the read deadline and the length and byte bounds
        assoc.dul.socket.__class__ = AcceptorAssociationSocket
        sock = cast(AcceptorAssociationSocket, assoc.dul.socket)
        sock.write_lock = threading.Lock()      # no __init__ ran for the swapped class
        sock.ssl_lock = threading.Lock()
        server = self.server
        sock.pdu_read_timeout_s = getattr(server, "pdu_read_timeout_s", PDU_READ_TIMEOUT_S)
        sock.max_pdu_bytes = getattr(server, "max_pdu_bytes", MAX_PDU_READ_BYTES)
        sock.max_association_pdata_bytes = getattr(
            server, "max_association_pdata_bytes", MAX_ASSOCIATION_PDATA_BYTES)
        return assoc


class AllowListServer(ThreadedAssociationServer):  # type: ignore[misc]
    """Accepts TCP connections only from `allowed_addresses` (None = anyone), with no-delay,
    a bound on PDU length and, with `ssl_context`, only TLS (pass
    `request_handler=BoundedRequestHandler`; `make_server()` does)."""

    allowed_addresses: frozenset[str] | None = None
    #: limits for each accepted association (AcceptorAssociationSocket)
    pdu_read_timeout_s: float = PDU_READ_TIMEOUT_S
    max_pdu_bytes: int = MAX_PDU_READ_BYTES
    max_association_pdata_bytes: int = MAX_ASSOCIATION_PDATA_BYTES
    tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S
    on_refused: RefusalHook | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listening = self.socket
        assert listening is not None
        client_socket, address = listening.accept()
        set_nodelay(client_socket)
        context = self.ssl_context
        if context is not None:
            # no I/O here: the handshake is done on the connection's thread
            # (BoundedRequestHandler), never in this accept loop
            client_socket = context.wrap_socket(client_socket, server_side=True,
                                                do_handshake_on_connect=False)
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
        _tell_refused(self, "address", host, int(client_address[1]),
                      "connection from an address that is not a configured archive")
        return False


def make_server(
    ae: AgentAE, address: tuple[str, int], *, evt_handlers: list[Any],
    allowed_addresses: frozenset[str] | None, ssl_context: ssl.SSLContext | None = None,
    pdu_read_timeout_s: float = PDU_READ_TIMEOUT_S, max_pdu_bytes: int = MAX_PDU_READ_BYTES,
    max_association_pdata_bytes: int = MAX_ASSOCIATION_PDATA_BYTES,
    tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
    verify_peer_address: bool = False,
    on_refused: RefusalHook | None = None,
) -> AllowListServer:
    """The one server the agent accepts associations on, bound and not yet serving (call
    serve_forever on a thread). With `ssl_context` it speaks only TLS: a plaintext association
    or a client certificate that does not verify is refused before any DIMSE. `on_refused` is
    told of each connection refused by address or TLS handshake.

    Raises
    ------
    OSError
        If the address cannot be bound (port in use, address not local).
    """
    server = cast(AllowListServer, ae.make_server(
        address, evt_handlers=evt_handlers, server_class=AllowListServer,
        request_handler=BoundedRequestHandler, ssl_context=ssl_context,
    ))
    server.allowed_addresses = allowed_addresses
    server.pdu_read_timeout_s = pdu_read_timeout_s
    server.max_pdu_bytes = max_pdu_bytes
    server.max_association_pdata_bytes = max_association_pdata_bytes
    server.tls_handshake_timeout_s = tls_handshake_timeout_s
    server.verify_peer_address = verify_peer_address
    server.on_refused = on_refused
    return server


def handshake(sock: ssl.SSLSocket, timeout_s: float) -> None:
    """Complete the server side of a TLS handshake within `timeout_s` in all (a per-read
    timeout would let a client that drips its ClientHello hold the connection for longer).

    Raises
    ------
    TimeoutError
        If the handshake is not complete in time.
    ssl.SSLError, OSError
        If it fails (certificate not verified, no common protocol, peer closed...).
    """
    deadline = time.monotonic() + timeout_s
    previous = sock.gettimeout()
    sock.setblocking(False)
    poller = select.poll()
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete TLS handshake within {timeout_s:g} s")
            poller.register(sock, events)
            try:
                poller.poll(remaining * 1000)
            finally:
                poller.unregister(sock)
    finally:
        sock.settimeout(previous)


#: RFC 4514 short names of the attributes Python's getpeercert() spells out
_RDN_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
              "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
              "domainComponent": "DC"}


def certificate_subject(cert: dict[str, Any] | None) -> str:
    """A peer certificate's subject as "CN=..., O=..." (names a machine, never a patient)."""
    if not cert:
        return "(none)"
    parts = [f"{_RDN_NAMES.get(key, key)}={value}"
             for rdn in cert.get("subject", ()) for key, value in rdn]
    return ", ".join(parts) or "(empty)"


#: client contexts by TLS settings and the files' modification times: built once per
#: identity, and again when a new certificate or key is put in place
_contexts_lock = threading.Lock()
_client_contexts: dict[tuple[PeerTls, tuple[int, ...]], ssl.SSLContext] = {}


def _client_context(tls: PeerTls) -> ssl.SSLContext:
    identity = tls.identity
    stamps: list[int] = []
    for path in (identity.certificate, identity.private_key, identity.ca_file):
        try:
            stamps.append(os.stat(Path(path)).st_mtime_ns)
        except OSError:
            stamps.append(-1)     # client_context names the missing file
    key = (tls, tuple(stamps))
    with _contexts_lock:
        context = _client_contexts.get(key)
        if context is None:
            context = client_context(tls)
            _client_contexts.clear()   # one identity per station: keep just the newest
            _client_contexts[key] = context
        return context


def _tls_args(tls: PeerTls | None, host: str, where: str) -> tuple[ssl.SSLContext, str] | None:
    if tls is None:
        return None
    try:
        context = _client_context(tls)
    except (OSError, ValueError, NotImplementedError) as err:
        # unreadable files, a key that does not match... (check-config names them); nothing
        # is sent in plaintext instead
        problems = "; ".join(str(err).splitlines())
        raise TlsHandshakeError(f"TLS to {where} not set up: {problems}",
                                reason="TLS not set up") from err
    return context, (host if tls.verify_hostname else "")


def associate(
    ae: AgentAE, host: str, port: int, called_ae: str, *,
    contexts: list[PresentationContext] | None = None, evt_handlers: list[Any] | None = None,
    tls: PeerTls | None = None, max_pdu: int = REQUESTOR_MAX_PDU_BYTES,
) -> Association:
    """Open an association: the only place the agent does (no-delay socket, `ae`'s bounded
    timeouts, `max_pdu`, and TLS when `tls` is given: our certificate presented, the peer's
    verified against the CA file and, with verify_hostname, against `host`).

    Returns
    -------
    Association
        Established; the caller releases it.

    Raises
    ------
    PeerUnreachable
        No TCP connection (refused, timed out, no route, unknown host).
    TlsHandshakeError
        The TLS handshake failed or TLS could not be set up; `reason` is short. There is
        never a plaintext attempt after it.
    AssociationRejected
        The peer answered A-ASSOCIATE-RJ.
    AssociationAborted
        Connected, but no association: A-ABORT, connection closed, no accepted presentation
        context or no answer within the ACSE timeout.
    """
    where = f"{host}:{port}"
    tls_args = _tls_args(tls, host, where)
    # pynetdicom reports a refused connection and a failed handshake as an abort; whether the
    # connection ever opened (EVT_CONN_OPEN) tells those apart from a real abort, and the
    # socket says which step failed
    connected = threading.Event()
    handlers = [*(evt_handlers or []), (evt.EVT_CONN_OPEN, lambda event: connected.set())]
    kwargs: dict[str, Any] = {"ae_title": called_ae, "evt_handlers": handlers,
                              "max_pdu": max_pdu, "tls_args": tls_args}
    if contexts is not None:
        kwargs["contexts"] = contexts
    started = time.monotonic()
    assoc = ae.associate(host, port, **kwargs)
    if assoc.is_established:
        return assoc
    if not connected.is_set():
        raise _connect_failure(assoc, where)
    if assoc.is_rejected or _unread_rejection(assoc):
        raise _rejection(assoc, ae.ae_title, called_ae)
    if not assoc.accepted_contexts and assoc.rejected_contexts:
        raise AssociationAborted(f"{where} accepted none of the {len(assoc.rejected_contexts)} "
                                 "presentation context(s) proposed (SOP class or transfer "
                                 "syntax not supported there)")
    late_tls_error = getattr(assoc.dul.socket, "tls_error", None)
    if late_tls_error is not None:
        reason = describe_tls_failure(late_tls_error)
        raise TlsHandshakeError(f"TLS handshake with {where} failed: {reason}", reason=reason)
    acse_timeout = assoc.acse_timeout
    if acse_timeout is not None and time.monotonic() - started >= acse_timeout:
        raise AssociationAborted(f"association aborted: {where} did not answer the "
                                 f"association request within {acse_timeout:g} s")
    raise AssociationAborted("association aborted")


def _unread_rejection(assoc: Association) -> bool:
    """Whether the peer's A-ASSOCIATE-RJ is still in the DUL's queue for the user, unread (then
    it becomes the association's answer, as pynetdicom would have made it).

    Why: pynetdicom <= 3.0.4's requestor waits for the connection to open, then aborts if it
    is no longer open, before it reads the answer. A peer that rejects and closes at once
    (storescp --refuse) can be past both when that thread runs late on a loaded machine: seen
    once in 2,477 tests in CI and 2 in 40 runs under load, reported as "association aborted"
    instead of the rejection that says which AE titles to check
    (tests/integration/test_rejection_race.py). The association is over either way, so its
    queue is drained here."""
    pending = assoc.dul.to_user_queue
    while True:
        try:
            primitive = pending.get_nowait()
        except queue.Empty:
            return False
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            assoc.acceptor.primitive = primitive
            assoc.is_rejected = True
            return True


def _connect_failure(assoc: Association, where: str) -> PeerUnreachable | TlsHandshakeError:
    sock = assoc.dul.socket
    error = getattr(sock, "connect_error", None)
    if getattr(sock, "tls_failed", False):
        reason = describe_tls_failure(error) if error is not None else "handshake failure"
        return TlsHandshakeError(f"TLS handshake with {where} failed: {reason}", reason=reason)
    if error is None:
        return PeerUnreachable(f"no connection to {where}")
    cause = str(error.strerror or error) if not isinstance(error, TimeoutError) else (
        f"timed out after {assoc.connection_timeout:g} s")
    return PeerUnreachable(f"no connection to {where} ({cause.lower()})")


def _rejection(assoc: Association, calling_ae: str, called_ae: str) -> AssociationRejected:
    """PS3.8 9.3.4: result 1 permanent, 2 transient; source and reason say who and why."""
    primitive = assoc.acceptor.primitive
    result = getattr(primitive, "result", None)
    reason = str(getattr(primitive, "reason_str", "") or "").lower()
    transient = result == 0x02
    titles = f"check AE titles: calling {calling_ae}, called {called_ae}"
    if transient:
        return AssociationRejected(f"association rejected for now ({reason or 'transient'})",
                                   transient=True)
    diagnostic = getattr(primitive, "diagnostic", None)
    source = getattr(primitive, "result_source", None)
    # service user (1): 1 no reason, 3 calling / 7 called AE title not recognised
    ae_titles_likely = source == 1 and diagnostic in (None, 1, 3, 7)
    if ae_titles_likely or not reason:
        message = f"association rejected ({titles})"
        return AssociationRejected(f"{message}: {reason}" if reason else message)
    return AssociationRejected(f"association rejected ({reason})")
