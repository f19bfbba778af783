"""The network boundary (agent.net.ae) against real peers: every failure to associate is raised
by type, TLS is carried on the requestor side (DCMTK storescp +tls) and on the listener, and a
client that never sends its ClientHello holds neither the accept loop nor an association slot
(issue 14, item 4; RELIABILITY.md 1.4 a)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom.sop_class import Verification
from support.certs import TlsWorld, make_tls_world
from support.peers import LOCALHOST, free_port, start_storescp, stop_process, wait_until

from agent.config import DestinationSection
from agent.errors import AssociationRejected, PeerUnreachable, TlsHandshakeError
from agent.listener import CommitmentReportHandler, Listener
from agent.net.ae import AgentAE, associate
from agent.net.echo import echo
from agent.net.tls import PeerTls, TlsIdentity, server_context
from agent.queue import QueueStore

pytestmark = pytest.mark.integration

AGENT = "AGENT"
ARCHIVE = "ARCHIVE"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TlsWorld:
    # RSA: storescp's default profile (BCP 195 non-downgrading) has only RSA suites in TLS 1.2
    return make_tls_world(tmp_path_factory.mktemp("tls"), key_type="rsa")


def identity(world: TlsWorld, name: str = "client", ca_file: Path | None = None) -> TlsIdentity:
    pair = getattr(world, name)
    return TlsIdentity(pair.certificate, pair.private_key, ca_file or world.ca.certificate)


def verification_ae() -> AgentAE:
    ae = AgentAE(AGENT)
    ae.add_requested_context(Verification)
    return ae


# --- requestor side -----------------------------------------------------------------------------

def test_a_refusing_peer_is_association_rejected(tmp_path: Path) -> None:
    port = free_port()
    storescp = start_storescp(tmp_path / "out", port, extra_args=["--refuse"])
    try:
        with pytest.raises(AssociationRejected, match=r"^association rejected \(check AE titles: "
                                                      rf"calling {AGENT}, called STORESCP\)"):
            associate(verification_ae(), LOCALHOST, port, "STORESCP")
    finally:
        stop_process(storescp)


@pytest.fixture
def tls_storescp(tmp_path: Path, world: TlsWorld) -> Iterator[int]:
    port = free_port()
    server = world.server
    process = start_storescp(tmp_path / "out", port, extra_args=[
        "+tls", str(server.private_key), str(server.certificate), "+cf", str(server.ca_file)])
    try:
        yield port
    finally:
        stop_process(process)


def test_echo_over_tls_to_storescp(tls_storescp: int, world: TlsWorld) -> None:
    ok, detail, _ = echo(AGENT, LOCALHOST, tls_storescp, "STORESCP",
                         tls=PeerTls(identity(world)))
    assert (ok, detail) == (True, "0x0000")


def test_a_peer_from_an_unknown_ca_is_a_tls_error(tls_storescp: int, world: TlsWorld) -> None:
    # we trust only the stranger's CA: storescp's certificate does not verify
    ours = identity(world, ca_file=world.stranger.ca_file)
    with pytest.raises(TlsHandshakeError, match=f"TLS handshake with {LOCALHOST}:"
                                                f"{tls_storescp} failed") as caught:
        associate(verification_ae(), LOCALHOST, tls_storescp, "STORESCP", tls=PeerTls(ours))
    assert caught.value.reason == "unknown CA"
    assert not isinstance(caught.value, PeerUnreachable)


def test_a_plaintext_peer_is_a_tls_error_not_a_plaintext_association(
        tmp_path: Path, world: TlsWorld) -> None:
    port = free_port()
    plaintext = start_storescp(tmp_path / "out", port)
    try:
        with pytest.raises(TlsHandshakeError) as caught:
            associate(verification_ae(), LOCALHOST, port, "STORESCP",
                      tls=PeerTls(identity(world)))
        # storescp takes the ClientHello for a broken PDU and hangs up; nothing was sent
        assert caught.value.reason == "connection closed during the handshake"
    finally:
        stop_process(plaintext)


def test_nothing_listening_with_tls_is_peer_unreachable(world: TlsWorld) -> None:
    with pytest.raises(PeerUnreachable, match="no connection to"):
        associate(verification_ae(), LOCALHOST, free_port(), "STORESCP",
                  tls=PeerTls(identity(world)))


# --- the listener -----------------------------------------------------------------------------

@pytest.fixture
def tls_listener(tmp_path: Path, world: TlsWorld) -> Iterator[int]:
    queue = QueueStore(tmp_path / "spool", ["pacs"])
    queue.open()
    destinations = [DestinationSection("pacs", LOCALHOST, 1, ARCHIVE)]
    listener = Listener(
        ae_title=AGENT, host=LOCALHOST, port=0, destinations=destinations,
        report_handler=CommitmentReportHandler(queue, destinations, retry_commit_s=1),
        ssl_context=server_context(identity(world, "server")), tls_handshake_timeout_s=1.0,
    )
    listener.start()
    try:
        yield listener.port
    finally:
        listener.stop()
        queue.close()


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_the_tls_listener_logs_the_peer_and_is_not_held_by_a_silent_client(
        tls_listener: int, world: TlsWorld, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.net.ae")
    silent = [socket.create_connection((LOCALHOST, tls_listener)) for _ in range(3)]
    try:
        started = time.monotonic()
        ok, detail, _ = echo(ARCHIVE, LOCALHOST, tls_listener, AGENT,
                             tls=PeerTls(identity(world)))
        assert (ok, detail) == (True, "0x0000")
        # pynetdicom would handshake in its accept loop and wait on the first silent client
        assert time.monotonic() - started < 1.0
        wait_until(lambda: all(closed_by_peer(s) for s in silent), 5,
                   "the listener to close the connections without a ClientHello")
    finally:
        for sock in silent:
            sock.close()
    assert "peer certificate subject CN=client, O=Test" in caplog.text


def test_the_tls_listener_refuses_plaintext_and_unknown_certificates(
        tls_listener: int, world: TlsWorld, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.net.ae")
    ok, _detail, _ = echo(ARCHIVE, LOCALHOST, tls_listener, AGENT)
    assert not ok
    stranger = identity(world, "stranger", ca_file=world.ca.certificate)
    ok, _detail, _ = echo(ARCHIVE, LOCALHOST, tls_listener, AGENT, tls=PeerTls(stranger))
    assert not ok
    wait_until(lambda: caplog.text.count("TLS handshake with") >= 2, 5,
               "both refusals to be logged")
