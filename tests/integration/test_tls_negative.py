"""DICOM TLS refusals (issue 14, "bad input"), each against the real daemon and real peers.

Sending side: a peer certificate from an unknown CA, an expired one, one for another host name
(refused with verify_hostname, accepted without), a plaintext archive where TLS is configured,
and our own certificate refused by the archive. In each, the objects stay pending with the
reason in `status --json` (destinations[].last_error) and nothing reaches the archive; once the
peer is fixed (a good one behind the same address, or a good certificate of ours on disk) they
go through by the forwarder's retry with backoff, with no command.

Listening side (a TLS listener): a TLS 1.1-only client, a plaintext association, a client
certificate from an unknown CA, and clients that stall mid-handshake, which hold neither a
slot nor the accept loop: a legitimate TLS echo still gets through, and the stalled
connections are closed within the handshake deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom.sop_class import Verification
from support.agent_process import AGENT_AE, AgentProcess, Destination, TlsFiles, make_agent
from support.certs import CertPair, TlsWorld, make_tls_world
from support.peers import (
    LOCALHOST,
    RecordingRelay,
    free_port,
    start_storescp,
    start_storescp_tls,
    stop_process,
    tls_stream_problem,
    wait_until,
)

from agent.errors import AssociationError
from agent.net.ae import TLS_HANDSHAKE_TIMEOUT_S, AgentAE, associate
from agent.net.echo import echo
from agent.net.tls import PeerTls, TlsIdentity

pytestmark = pytest.mark.integration

PHI_NAME = "Negativ^Geheim"
PHI_ID = "PID-TLS-NEG-7"
ARCHIVE_AE = "STORESCP"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TlsWorld:
    # RSA: storescp's default profile (BCP 195 non-downgrading) has only RSA suites in TLS 1.2
    return make_tls_world(tmp_path_factory.mktemp("tls"), key_type="rsa")


def agent_tls(world: TlsWorld) -> TlsFiles:
    return TlsFiles(world.client.certificate, world.client.private_key, world.ca.certificate)


@dataclass
class Scp:
    process: Any
    port: int
    out_dir: Path


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[list[Any]]:
    """Everything a test starts (storescp processes, relays, agents), stopped at the end."""
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, Scp):
            stop_process(thing.process)
        else:
            thing.stop() if isinstance(thing, AgentProcess) else thing.close()


def tls_scp(tmp_path: Path, world: TlsWorld, pair: CertPair, peers: list[Any],
            name: str) -> Scp:
    """storescp +tls presenting `pair`, trusting our CA (so it would accept our certificate)."""
    out_dir, port = tmp_path / name, free_port()
    process = start_storescp_tls(out_dir, port, private_key=pair.private_key,
                                 certificate=pair.certificate, ca_file=world.ca.certificate)
    scp = Scp(process, port, out_dir)
    peers.append(scp)
    return scp


def start_agent(tmp_path: Path, peers: list[Any], destinations: list[Destination],
                tls: TlsFiles) -> AgentProcess:
    agent = make_agent(tmp_path, destinations, tls=tls)
    peers.append(agent)
    agent.start()
    return agent


def acquire(agent: AgentProcess) -> str:
    """One image, queued (no wait: it is not meant to arrive yet); its SOP Instance UID."""
    result = agent.cli("acquire", "--unscheduled", "--patient-id", PHI_ID, "--patient-name",
                       PHI_NAME, "--frames", "1", "--json")
    assert result.returncode == 0, result.stderr + agent.log()[-3000:]
    [obj] = json.loads(result.stdout)["objects"]
    return str(obj["sop_instance_uid"])


def status(agent: AgentProcess) -> dict[str, Any]:
    result = agent.cli("status", "--json")
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def destination_error(agent: AgentProcess, name: str) -> str:
    [dest] = [d for d in status(agent)["destinations"] if d["name"] == name]
    return str(dest["last_error"] or "")


def wait_for_reason(agent: AgentProcess, name: str, reason: str) -> str:
    wait_until(lambda: reason in destination_error(agent, name), 30,
               f"status to show {reason!r} for {name}; log:\n{agent.log()[-2000:]}")
    return destination_error(agent, name)


def states(agent: AgentProcess, name: str) -> list[str]:
    return [r["state"] for r in agent.queue_rows() if r["destination"] == name]


#: not delivered: waiting, or claimed by the worker for its next attempt
WAITING = ({"pending"}, {"sending"})


def assert_waiting(agent: AgentProcess, name: str) -> None:
    assert [{r["state"]} for r in agent.queue_rows() if r["destination"] == name] in (
        [w] for w in WAITING), agent.queue_rows()


def assert_pending_and_nothing_stored(agent: AgentProcess, name: str, reason: str,
                                      out_dir: Path) -> None:
    error = wait_for_reason(agent, name, reason)
    assert "TLS handshake with 127.0.0.1:" in error, error
    rows = [r for r in agent.queue_rows() if r["destination"] == name]
    assert_waiting(agent, name)
    assert reason in (rows[0]["last_error"] or ""), rows
    queue = status(agent)["queue"]
    assert queue["pending"] + queue["sending"] == 1 and queue["sent"] == 0, queue
    assert not out_dir.exists() or not list(out_dir.iterdir())


def wait_sent(agent: AgentProcess, name: str) -> None:
    wait_until(lambda: states(agent, name) == ["sent"], 30,
               f"the pending object to reach {name} by itself; log:\n{agent.log()[-2000:]}")


def received(out_dir: Path) -> set[str]:
    return {str(dcmread(path).SOPInstanceUID) for path in out_dir.iterdir()}


# --- the archive's certificate ------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "reason"), [("stranger", "unknown CA"),
                                             ("expired", "certificate expired")])
def test_bad_archive_certificate_keeps_objects_pending_until_a_good_archive_answers(
        tmp_path: Path, world: TlsWorld, peers: list[Any], bad: str, reason: str) -> None:
    bad_scp = tls_scp(tmp_path, world, getattr(world, bad), peers, "bad")
    relay = RecordingRelay(bad_scp.port)
    peers.append(relay)
    agent = start_agent(tmp_path, peers, [Destination("scp", relay.port, ARCHIVE_AE,
                                                      storage_commitment=False, tls=True)],
                        agent_tls(world))
    uid = acquire(agent)
    assert_pending_and_nothing_stored(agent, "scp", reason, bad_scp.out_dir)
    # tried again with backoff, never in plaintext
    wait_until(lambda: len(relay.connections()) >= 2, 30, "a second attempt")
    for connection in relay.connections():
        assert tls_stream_problem(bytes(connection.upstream)) == ""
        assert PHI_NAME.encode() not in connection.upstream

    good = tls_scp(tmp_path, world, world.server, peers, "good")
    relay.upstream_port = good.port              # the archive gets its proper certificate
    wait_sent(agent, "scp")
    assert received(good.out_dir) == {uid}
    assert not list(bad_scp.out_dir.iterdir())


def test_wrong_host_name_refused_unless_verify_hostname_is_off(
        tmp_path: Path, world: TlsWorld, peers: list[Any]) -> None:
    scp = tls_scp(tmp_path, world, world.wrong_host, peers, "scp")   # names wrong.example only
    agent = start_agent(tmp_path, peers, [
        Destination("strict", scp.port, ARCHIVE_AE, storage_commitment=False, tls=True),
        Destination("lax", scp.port, ARCHIVE_AE, storage_commitment=False, tls=True,
                    verify_hostname=False)], agent_tls(world))
    uid = acquire(agent)
    wait_sent(agent, "lax")                      # the CA still vouches for it
    assert received(scp.out_dir) == {uid}
    error = wait_for_reason(agent, "strict", "host name mismatch")
    assert "TLS handshake with 127.0.0.1:" in error
    assert_waiting(agent, "strict")


def test_plaintext_archive_gets_no_plaintext_byte(
        tmp_path: Path, world: TlsWorld, peers: list[Any]) -> None:
    plain_port = free_port()
    plain = Scp(start_storescp(tmp_path / "plain", plain_port), plain_port, tmp_path / "plain")
    peers.append(plain)
    relay = RecordingRelay(plain_port)
    peers.append(relay)
    agent = start_agent(tmp_path, peers, [Destination("scp", relay.port, ARCHIVE_AE,
                                                      storage_commitment=False, tls=True)],
                        agent_tls(world))
    uid = acquire(agent)
    # storescp reads our ClientHello as a PDU of unknown type and drops the connection
    error = wait_for_reason(agent, "scp", "TLS handshake with 127.0.0.1:")
    # all a client can know: the peer hung up on its ClientHello
    assert error.endswith(("connection closed during the handshake",
                           "not a TLS peer (plaintext?)")), error
    assert_waiting(agent, "scp")
    assert not list(plain.out_dir.iterdir())
    wait_until(lambda: len(relay.connections()) >= 2, 30, "a second attempt")
    for index, connection in enumerate(relay.connections()):
        sent = bytes(connection.upstream)
        assert sent[:1] == b"\x16", f"connection {index} starts with {sent[:8].hex()}"
        assert tls_stream_problem(sent) == "", f"connection {index}: {error}"
        for text in (PHI_NAME, PHI_ID, AGENT_AE, ARCHIVE_AE, uid):
            assert text.encode() not in sent, f"{text} sent in plaintext"

    good = tls_scp(tmp_path, world, world.server, peers, "good")
    relay.upstream_port = good.port
    wait_sent(agent, "scp")
    assert received(good.out_dir) == {uid}


# --- our certificate ----------------------------------------------------------------------------

def test_our_refused_certificate_replaced_on_disk_is_used_without_a_restart(
        tmp_path: Path, world: TlsWorld, peers: list[Any]) -> None:
    """A certificate the archive's CA list does not hold: refused by the archive. A new pair
    placed on disk is picked up by the next association (renewal, docs/tls.md)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    ours = TlsFiles(mine / "agent.crt", mine / "agent.key", world.ca.certificate)
    install_pair(world.stranger, ours)
    scp = tls_scp(tmp_path, world, world.server, peers, "scp")
    agent = start_agent(tmp_path, peers, [Destination("scp", scp.port, ARCHIVE_AE,
                                                      storage_commitment=False, tls=True)], ours)
    uid = acquire(agent)
    # TLS 1.3: the server checks our certificate after our side finished; DCMTK then drops the
    # connection, so the refusal shows as a handshake or association failure
    wait_until(lambda: destination_error(agent, "scp") != "", 30, "a failure in status")
    assert_waiting(agent, "scp")
    assert not list(scp.out_dir.iterdir())

    install_pair(world.client, ours)             # the renewed certificate, signed by our CA
    wait_sent(agent, "scp")
    assert received(scp.out_dir) == {uid}
    assert agent.process is not None and agent.process.poll() is None   # no restart


def test_our_certificate_refused_by_the_archive_is_named_in_status(
        tmp_path: Path, world: TlsWorld, peers: list[Any]) -> None:
    """Over TLS 1.3 the server judges our certificate after our side of the handshake is
    done: its alert (unknown CA) arrives with the first read, the A-ASSOCIATE-AC's."""
    scp = tls_scp(tmp_path, world, world.server, peers, "scp")
    stranger = TlsFiles(world.stranger.certificate, world.stranger.private_key,
                        world.ca.certificate)
    agent = start_agent(tmp_path, peers, [Destination("scp", scp.port, ARCHIVE_AE,
                                                      storage_commitment=False, tls=True)],
                        stranger)
    acquire(agent)
    wait_until(lambda: destination_error(agent, "scp") != "", 30, "a failure in status")
    assert "the peer does not trust ours" in destination_error(agent, "scp")


def install_pair(pair: CertPair, target: TlsFiles) -> None:
    """Put a key and certificate in place as a service engineer would, each file replaced
    whole (a reader sees the old file or the new one)."""
    for source, destination in ((pair.private_key, target.private_key),
                                (pair.certificate, target.certificate)):
        staging = destination.with_suffix(".new")
        shutil.copyfile(source, staging)
        os.chmod(staging, 0o600)
        os.replace(staging, destination)


# --- the TLS listener ---------------------------------------------------------------------------

@dataclass
class ListeningAgent:
    agent: AgentProcess
    port: int


@pytest.fixture(scope="module")
def listening(tmp_path_factory: pytest.TempPathFactory,
              world: TlsWorld) -> Iterator[ListeningAgent]:
    """A daemon whose listener speaks only TLS; the archive it accepts reports from is
    ARCHIVE_AE on 127.0.0.1 (nothing listens at its port: only the listener matters here)."""
    tmp_path = tmp_path_factory.mktemp("listening")
    port = free_port()
    agent = make_agent(tmp_path, [Destination("pacs", free_port(exclude={port}), ARCHIVE_AE,
                                              tls=True)],
                       listener_port=port, tls=agent_tls(world), listener_tls=True)
    agent.start()
    try:
        yield ListeningAgent(agent, port)
    finally:
        agent.stop()


def archive_tls(world: TlsWorld, pair: CertPair | None = None) -> PeerTls:
    """What a legitimate archive presents to our listener: a certificate our CA issued."""
    pair = pair or world.server
    return PeerTls(TlsIdentity(pair.certificate, pair.private_key, world.ca.certificate))


def wait_for_log(agent: AgentProcess, text: str, timeout_s: float = 20) -> None:
    wait_until(lambda: text in agent.log(), timeout_s, f"{text!r} in the daemon log")


def test_legitimate_tls_echo_to_the_listener(listening: ListeningAgent, world: TlsWorld) -> None:
    ok, detail, _ = echo(ARCHIVE_AE, LOCALHOST, listening.port, AGENT_AE, tls=archive_tls(world))
    assert (ok, detail) == (True, "0x0000")
    wait_for_log(listening.agent, "peer certificate subject CN=server, O=Test")


def test_tls_1_1_only_client_is_refused(listening: ListeningAgent, world: TlsWorld) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)    # TLS 1.1 is deprecated: the point
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3 refuses TLS 1.1's SHA-1 signatures at its default security level: level 0
    # lets this client really offer TLS 1.1, so the refusal we see is the listener's
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(world.server.certificate, world.server.private_key)
    with socket.create_connection((LOCALHOST, listening.port), timeout=10) as raw:
        local_port = raw.getsockname()[1]
        with pytest.raises(ssl.SSLError) as refused:
            context.wrap_socket(raw, server_hostname=LOCALHOST)
    # the listener's alert, not this client's own refusal (that would be NO_PROTOCOLS_AVAILABLE)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value
    wait_for_log(listening.agent, f"TLS handshake with 127.0.0.1:{local_port} failed: "
                                  "protocol version refused")


def test_plaintext_association_to_the_tls_listener_is_refused(
        listening: ListeningAgent) -> None:
    ae = AgentAE(ARCHIVE_AE)
    ae.add_requested_context(Verification)
    with pytest.raises(AssociationError):
        associate(ae, LOCALHOST, listening.port, AGENT_AE)
    wait_for_log(listening.agent, "failed: not a TLS peer (plaintext?); connection closed")


def test_client_certificate_from_an_unknown_ca_is_refused_before_any_dimse(
        listening: ListeningAgent, world: TlsWorld) -> None:
    stranger = PeerTls(TlsIdentity(world.stranger.certificate, world.stranger.private_key,
                                   world.ca.certificate))
    ok, detail, _ = echo(ARCHIVE_AE, LOCALHOST, listening.port, AGENT_AE, tls=stranger)
    assert not ok, detail
    wait_for_log(listening.agent, "failed: unknown CA; connection closed")


def half_a_client_hello() -> bytes:
    """The first half of a real ClientHello: a client that stalls mid-handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=LOCALHOST)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100
    return hello[: len(hello) // 2]


def test_clients_stalled_mid_handshake_hold_no_slot_and_are_cut_off(
        listening: ListeningAgent, world: TlsWorld) -> None:
    # more stalled clients than the listener has association slots (8)
    stalled = []
    for _ in range(10):
        sock = socket.create_connection((LOCALHOST, listening.port), timeout=5)
        sock.sendall(half_a_client_hello())
        stalled.append(sock)
    started = time.monotonic()
    try:
        ok, detail, seconds = echo(ARCHIVE_AE, LOCALHOST, listening.port, AGENT_AE,
                                   tls=archive_tls(world))
        assert (ok, detail) == (True, "0x0000")
        assert seconds < TLS_HANDSHAKE_TIMEOUT_S / 2, f"the echo waited {seconds:.1f} s"
        # each stalled connection is closed by the listener at its handshake deadline
        for sock in stalled:
            sock.settimeout(TLS_HANDSHAKE_TIMEOUT_S + 10)
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
        elapsed = time.monotonic() - started
        assert elapsed < TLS_HANDSHAKE_TIMEOUT_S + 10, elapsed
        wait_for_log(listening.agent, "failed: handshake timed out; connection closed")
        # and the listener is still fine afterwards
        ok, detail, _ = echo(ARCHIVE_AE, LOCALHOST, listening.port, AGENT_AE,
                             tls=archive_tls(world))
        assert (ok, detail) == (True, "0x0000")
    finally:
        for sock in stalled:
            sock.close()


def test_listener_refuses_a_certificate_that_does_not_name_the_peer_address(
        listening: ListeningAgent, world: TlsWorld) -> None:
    """[listener] verify_hostname (default true): a certificate our CA signed, but for another
    host (wrong.example, no IP names), is refused before any DIMSE."""
    ok, detail, _ = echo(ARCHIVE_AE, LOCALHOST, listening.port, AGENT_AE,
                         tls=archive_tls(world, world.wrong_host))
    assert not ok, detail
    wait_for_log(listening.agent, "which does not name its address; connection closed")
