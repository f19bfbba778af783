"""agent.net.tls: the SSL contexts per PS3.15 profile, proven by real handshakes between
`client_context` and `server_context` over a socket pair (certificates made with `openssl` by
support.certs), the reasons `describe_tls_failure` gives, and what `check_tls` finds."""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.certs import CertPair, TestCA, TlsWorld, make_tls_world

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.net.tls import (
    EXPIRY_WARNING_DAYS,
    PROFILES,
    TLS12_SUITES,
    PeerTls,
    TlsConfigError,
    TlsIdentity,
    certificate_days_left,
    certificate_names_address,
    certificate_subject,
    check_tls,
    client_context,
    describe_tls_failure,
    peer_tls,
    read_certificate,
    server_context,
    tls_identity,
)

HANDSHAKE_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TlsWorld:
    return make_tls_world(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def rsa(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertPair, CertPair]:
    """RSA server and client: the only kind the default profile's TLS 1.2 suites can use."""
    ca = TestCA.create(tmp_path_factory.mktemp("rsa"), "RSA CA", key_type="rsa")
    return ca.issue("server", key_type="rsa"), ca.issue("client", key_type="rsa")


def identity(pair: CertPair, profile: str = "bcp195-nd", ca_file: Path | None = None,
             ) -> TlsIdentity:
    return TlsIdentity(pair.certificate, pair.private_key, ca_file or pair.ca_file, profile)


def client(pair: CertPair, *, verify_hostname: bool = True, profile: str = "bcp195-nd",
           ca_file: Path | None = None) -> ssl.SSLContext:
    return client_context(PeerTls(identity(pair, profile, ca_file), verify_hostname))


@dataclasses.dataclass
class Outcome:
    client_error: BaseException | None = None
    server_error: BaseException | None = None
    peer_certificate: dict[str, Any] | None = None      # the client's, as the server saw it
    version: str | None = None
    cipher: str | None = None

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
              server_hostname: str = "localhost") -> Outcome:
    """A full handshake over a socket pair; the server answers b"ok" once it has accepted the
    client, so a refusal the server makes after the client's side of a TLS 1.3 handshake is
    done still reaches the client (as it would at the first DICOM PDU)."""
    client_sock, server_sock = socket.socketpair()
    for sock in (client_sock, server_sock):
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
    outcome = Outcome()

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                outcome.peer_certificate = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as err:
            outcome.server_error = err
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve, name="tls-test-server")
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            outcome.version, outcome.cipher = tls.version(), tls.cipher()[0]
            answer = tls.recv(2)
            if answer != b"ok":
                outcome.client_error = ConnectionResetError(f"server answered {answer!r}")
    except (ssl.SSLError, OSError) as err:
        outcome.client_error = err
    finally:
        client_sock.close()
        thread.join(HANDSHAKE_TIMEOUT_S)
    assert not thread.is_alive(), "the server side of the handshake did not finish"
    return outcome


# --- contexts per profile -------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_contexts_require_tls_1_2_no_compression_no_renegotiation(
    world: TlsWorld, profile: str
) -> None:
    for context in (client(world.client, profile=profile),
                    server_context(identity(world.server, profile))):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
        assert context.options & ssl.OP_NO_RENEGOTIATION
        assert context.verify_mode == ssl.CERT_REQUIRED
        # the TLS 1.2 suites (AES128-SHA is listed as TLSv1.0: the oldest version it exists in)
        tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}
        assert tls12 == set(TLS12_SUITES[profile])


def test_profiles_offer_the_suites_of_ps3_15_b9_to_b11() -> None:
    nd = {"ECDHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES128-GCM-SHA256",
          "ECDHE-RSA-AES256-GCM-SHA384", "DHE-RSA-AES256-GCM-SHA384"}
    assert set(TLS12_SUITES["bcp195-nd"]) == nd
    assert set(TLS12_SUITES["bcp195"]) == nd | {"AES128-SHA"}
    assert set(TLS12_SUITES["bcp195-extended"]) == nd | {
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"}


def test_only_the_extended_profile_stops_at_tls_1_2(world: TlsWorld) -> None:
    assert client(world.client, profile="bcp195-extended").maximum_version == \
        ssl.TLSVersion.TLSv1_2
    for profile in ("bcp195-nd", "bcp195"):
        assert client(world.client, profile=profile).maximum_version == \
            ssl.TLSVersion.MAXIMUM_SUPPORTED


def test_client_checks_the_host_name_unless_told_not_to(world: TlsWorld) -> None:
    assert client(world.client).check_hostname is True
    assert client(world.client, verify_hostname=False).check_hostname is False
    assert client(world.client, verify_hostname=False).verify_mode == ssl.CERT_REQUIRED
    # the listener is a server context: it cannot check a client's name the TLS way
    assert server_context(identity(world.server)).check_hostname is False


def test_client_context_is_a_client_and_server_context_a_server(world: TlsWorld) -> None:
    # pynetdicom #709: Purpose.CLIENT_AUTH makes a server context; a requestor needs a client one
    assert client(world.client).protocol == ssl.PROTOCOL_TLS_CLIENT
    assert server_context(identity(world.server)).protocol == ssl.PROTOCOL_TLS_SERVER


# --- handshakes -------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_mutual_handshake_succeeds_and_the_server_sees_the_client_certificate(
    world: TlsWorld, profile: str
) -> None:
    outcome = handshake(client(world.client, profile=profile),
                        server_context(identity(world.server, profile)))

    assert outcome.ok, outcome
    assert outcome.peer_certificate is not None
    assert certificate_subject(outcome.peer_certificate) == "CN=client, O=Test"
    # EC certificates: TLS 1.3 where the profile allows it, ECDSA suites of B.11 on TLS 1.2
    assert outcome.version == ("TLSv1.2" if profile == "bcp195-extended" else "TLSv1.3")


def test_default_profile_over_tls_1_2_uses_its_bcp195_suite(
    rsa: tuple[CertPair, CertPair]
) -> None:
    server, client_pair = rsa
    context = client(client_pair)
    context.maximum_version = ssl.TLSVersion.TLSv1_2      # a peer without TLS 1.3

    outcome = handshake(context, server_context(identity(server)))

    assert outcome.ok, outcome
    assert (outcome.version, outcome.cipher) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")


def test_server_with_a_certificate_of_an_unknown_ca_is_refused(world: TlsWorld) -> None:
    outcome = handshake(client(world.client), server_context(identity(world.stranger)))

    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert describe_tls_failure(outcome.client_error) == "unknown CA"
    assert outcome.server_error is not None
    assert describe_tls_failure(outcome.server_error) == \
        "unknown CA (the peer does not trust ours)"


def test_client_with_a_certificate_of_an_unknown_ca_is_refused(world: TlsWorld) -> None:
    stranger = client(world.stranger, ca_file=world.ca.certificate)
    outcome = handshake(stranger, server_context(identity(world.server)))

    assert outcome.peer_certificate is None
    assert outcome.server_error is not None and outcome.client_error is not None
    assert describe_tls_failure(outcome.server_error) == "unknown CA"
    assert describe_tls_failure(outcome.client_error) == \
        "unknown CA (the peer does not trust ours)"


def test_expired_server_certificate_is_refused(world: TlsWorld) -> None:
    outcome = handshake(client(world.client), server_context(identity(world.expired)))

    assert outcome.client_error is not None and outcome.server_error is not None
    assert describe_tls_failure(outcome.client_error) == "certificate expired"
    assert describe_tls_failure(outcome.server_error) == \
        "certificate expired (the peer refused ours)"


def test_expired_client_certificate_is_refused(world: TlsWorld) -> None:
    outcome = handshake(client(world.expired), server_context(identity(world.server)))

    assert outcome.peer_certificate is None
    assert outcome.server_error is not None and outcome.client_error is not None
    assert describe_tls_failure(outcome.server_error) == "certificate expired"
    assert describe_tls_failure(outcome.client_error) == \
        "certificate expired (the peer refused ours)"


def test_server_certificate_not_yet_valid_is_refused(world: TlsWorld) -> None:
    outcome = handshake(client(world.client), server_context(identity(world.not_yet_valid)))

    assert outcome.client_error is not None
    assert describe_tls_failure(outcome.client_error) == "certificate not yet valid"


def test_wrong_host_name_is_refused_when_verified_and_accepted_when_not(
    world: TlsWorld
) -> None:
    wrong = server_context(identity(world.wrong_host))

    refused = handshake(client(world.client), wrong)
    accepted = handshake(client(world.client, verify_hostname=False), wrong)

    assert refused.client_error is not None
    assert describe_tls_failure(refused.client_error) == "host name mismatch"
    assert accepted.ok, accepted


def test_ip_address_is_checked_against_the_ip_address_names(world: TlsWorld) -> None:
    server = server_context(identity(world.server))

    assert handshake(client(world.client), server, server_hostname="127.0.0.1").ok
    mismatch = handshake(client(world.client), server, server_hostname="127.0.0.2")
    assert mismatch.client_error is not None
    assert describe_tls_failure(mismatch.client_error) == "host name mismatch"


def test_client_without_a_certificate_is_refused_by_the_server(world: TlsWorld) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cafile=world.ca.certificate)

    outcome = handshake(anonymous, server_context(identity(world.server)))

    assert outcome.peer_certificate is None
    assert outcome.server_error is not None and outcome.client_error is not None
    assert describe_tls_failure(outcome.server_error) == "peer sent no certificate"
    assert describe_tls_failure(outcome.client_error) == "the peer requires our certificate"


def test_tls_1_1_only_client_is_refused(world: TlsWorld) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # TLSVersion.TLSv1_1 is
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")                      # what a 2010 client offers
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.load_cert_chain(world.client.certificate, world.client.private_key)

    outcome = handshake(old, server_context(identity(world.server)))

    assert outcome.server_error is not None and outcome.client_error is not None
    assert describe_tls_failure(outcome.server_error) == "protocol version refused"
    assert describe_tls_failure(outcome.client_error) == "protocol version refused"


def test_plaintext_association_to_a_tls_listener_is_refused(world: TlsWorld) -> None:
    client_sock, server_sock = socket.socketpair()
    server_sock.settimeout(HANDSHAKE_TIMEOUT_S)
    # the first bytes of an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2): type 01, reserved, length
    client_sock.sendall(bytes.fromhex("01000000020000010000") + b"\x00" * 64)
    with pytest.raises(ssl.SSLError) as info:
        server_context(identity(world.server)).wrap_socket(server_sock, server_side=True)
    client_sock.close()
    server_sock.close()
    assert describe_tls_failure(info.value) == "not a TLS peer (plaintext?)"


@pytest.mark.parametrize(("exc", "reason"), [
    (TimeoutError("timed out"), "handshake timed out"),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
     "connection closed during the handshake"),
    (ConnectionResetError(104, "reset"), "connection closed during the handshake"),
])
def test_other_failures_have_a_reason_too(exc: BaseException, reason: str) -> None:
    assert describe_tls_failure(exc) == reason


# --- errors building a context ------------------------------------------------------------


def test_context_with_a_missing_file_names_it(world: TlsWorld, tmp_path: Path) -> None:
    missing = dataclasses.replace(identity(world.client), certificate=tmp_path / "none.crt")

    with pytest.raises(TlsConfigError) as info:
        client_context(PeerTls(missing))

    assert isinstance(info.value, ConfigError)
    assert info.value.problems == [
        f'[tls] certificate: expected a readable PEM file, got "{tmp_path / "none.crt"}" '
        "(no such file)"]


def test_context_with_a_key_of_another_certificate_says_so(world: TlsWorld) -> None:
    mismatched = dataclasses.replace(identity(world.server),
                                     private_key=world.client.private_key)
    with pytest.raises(TlsConfigError, match="private_key: expected the key of"):
        server_context(mismatched)


# --- check-config -------------------------------------------------------------------------


def config_with(tmp_path: Path, pair: CertPair, *, key: Path | None = None,
                ca_file: Path | None = None, certificate: Path | None = None,
                extra: str = "") -> AgentConfig:
    text = (
        "[tls]\n"
        f'certificate = "{certificate or pair.certificate}"\n'
        f'private_key = "{key or pair.private_key}"\n'
        f'ca_file = "{ca_file or pair.ca_file}"\n'
        "[listener]\ntls = true\n"
        '[[destinations]]\nname = "pacs"\nhost = "localhost"\nport = 2762\ncalled_ae = "PACS"\n'
        "tls = true\n" + extra
    )
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def copy_key(pair: CertPair, folder: Path, mode: int) -> Path:
    path = folder / "copied.key"
    path.write_bytes(pair.private_key.read_bytes())
    os.chmod(path, mode)
    return path


def test_check_tls_passes_a_good_identity_and_skips_a_config_without_tls(
    world: TlsWorld, tmp_path: Path
) -> None:
    assert check_tls(config_with(tmp_path, world.client)) == []
    plain = tmp_path / "plain.toml"
    plain.write_text('[[destinations]]\nname = "p"\nhost = "h"\nport = 104\ncalled_ae = "P"\n')
    assert check_tls(load_config(plain)) == []


def _encrypted_key(pair: CertPair, folder: Path) -> Path:
    path = folder / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(pair.private_key), "-aes256", "-passout",
                    "pass:secret", "-out", str(path)], check=True, capture_output=True)
    os.chmod(path, 0o600)
    return path


BAD_IDENTITIES: list[tuple[str, Callable[[TlsWorld, Path], dict[str, Any]], str]] = [
    ("missing certificate", lambda w, d: {"certificate": d / "absent.crt"},
     'certificate: expected a readable PEM file, got "{d}/absent.crt" (no such file)'),
    ("key is a directory", lambda w, d: {"key": d},
     'private_key: expected a readable PEM file, got "{d}" (a directory)'),
    ("missing ca_file", lambda w, d: {"ca_file": d / "absent.pem"},
     'ca_file: expected a readable PEM file, got "{d}/absent.pem" (no such file)'),
    ("key readable by others", lambda w, d: {"key": copy_key(w.client, d, 0o644)},
     'private_key: expected a file only its owner may read (chmod 600), got "{d}/copied.key" '
     "with mode 0644"),
    ("key readable by the group", lambda w, d: {"key": copy_key(w.client, d, 0o640)},
     "with mode 0640"),
    ("key of another certificate", lambda w, d: {"key": w.server.private_key},
     "private_key: expected the key of [tls] certificate"),
    ("encrypted key", lambda w, d: {"key": _encrypted_key(w.client, d)},
     "private_key: expected an unencrypted PEM private key"),
    ("certificate file holds a key", lambda w, d: {"certificate": w.client.private_key},
     "certificate: expected a PEM certificate, got"),
    ("expired certificate", lambda w, d: {"certificate": w.expired.certificate,
                                          "key": w.expired.private_key},
     "certificate: expected a certificate valid now, got \"{w.expired.certificate}\", which "
     "expired on "),
    ("certificate not yet valid", lambda w, d: {"certificate": w.not_yet_valid.certificate,
                                                "key": w.not_yet_valid.private_key},
     "which is not valid before "),
    ("ca_file without a certificate", lambda w, d: {"ca_file": w.client.private_key},
     'ca_file: expected a PEM file with at least one CA certificate, got '
     '"{w.client.private_key}" (no certificate in it)'),
    ("ca_file with a leaf, no CA", lambda w, d: {"ca_file": w.client.certificate},
     "(no CA certificate in it)"),
]


@pytest.mark.parametrize(("case", "change", "expected"), BAD_IDENTITIES,
                         ids=[case for case, _, _ in BAD_IDENTITIES])
def test_check_tls_names_each_problem(
    world: TlsWorld, tmp_path: Path, case: str,
    change: Callable[[TlsWorld, Path], dict[str, Any]], expected: str,
) -> None:
    config = config_with(tmp_path, world.client, **change(world, tmp_path))

    problems = check_tls(config)

    assert len(problems) == 1, problems
    assert problems[0].startswith("agent.toml: [tls] "), problems
    assert expected.format(d=tmp_path, w=world) in problems[0], problems


def test_check_tls_reports_every_problem_at_once(world: TlsWorld, tmp_path: Path) -> None:
    config = config_with(tmp_path, world.expired, key=copy_key(world.expired, tmp_path, 0o644),
                         ca_file=tmp_path / "absent.pem")
    problems = check_tls(config)
    assert [p.split(":")[1].strip() for p in problems] == [
        "[tls] private_key", "[tls] ca_file", "[tls] certificate"], problems


def test_check_tls_refuses_an_unknown_profile_in_a_config_built_by_hand(
    world: TlsWorld, tmp_path: Path
) -> None:
    config = config_with(tmp_path, world.client)
    assert config.tls is not None
    odd = dataclasses.replace(config, tls=dataclasses.replace(config.tls, profile="tls1.0"))
    assert check_tls(odd) == [
        "agent.toml: [tls] profile: expected one of bcp195-nd, bcp195, bcp195-extended, "
        "got 'tls1.0'"]


def test_check_tls_at_a_given_time(world: TlsWorld, tmp_path: Path) -> None:
    config = config_with(tmp_path, world.client)
    in_two_years = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=730)
    assert "which expired on" in check_tls(config, now=in_two_years)[0]


# --- from config to PeerTls -----------------------------------------------------------------


def test_peer_tls_of_each_section(world: TlsWorld, tmp_path: Path) -> None:
    config = config_with(tmp_path, world.client,
                         extra="verify_hostname = false\n[worklist]\nhost = \"ris\"\nport = 104\n"
                               'called_ae = "RIS"\n')
    expected = identity(world.client)

    assert tls_identity(config) == expected
    assert peer_tls(config, config.listener) == PeerTls(expected, verify_hostname=True)
    assert peer_tls(config, config.destinations[0]) == PeerTls(expected, verify_hostname=False)
    assert config.worklist is not None
    assert peer_tls(config, config.worklist) is None           # tls = false: plaintext


def test_peer_tls_without_an_identity_refuses(world: TlsWorld, tmp_path: Path) -> None:
    config = dataclasses.replace(config_with(tmp_path, world.client), tls=None)
    with pytest.raises(TlsConfigError, match=r"agent.toml: tls = true needs a \[tls\] section"):
        peer_tls(config, config.listener)


# --- certificates -------------------------------------------------------------------------


def test_certificate_facts(world: TlsWorld) -> None:
    info = read_certificate(world.server.certificate)

    assert info.subject == "CN=server, O=Test"
    assert info.issuer == "CN=Test Hospital CA, O=Test"
    assert info.names == ("DNS:localhost", "IP Address:127.0.0.1")
    assert 364 < certificate_days_left(world.server.certificate) <= 365
    assert certificate_days_left(world.expired.certificate) < 0
    assert certificate_subject(world.client.certificate) == "CN=client, O=Test"
    assert EXPIRY_WARNING_DAYS == 30


def test_reading_a_file_without_a_certificate_raises_tls_config_error(world: TlsWorld) -> None:
    with pytest.raises(TlsConfigError, match="expected a PEM certificate"):
        read_certificate(world.client.private_key)


def test_certificate_names_address() -> None:
    by_ip = {"subjectAltName": (("IP Address", "127.0.0.1"),)}
    by_name = {"subjectAltName": (("DNS", "localhost"),)}

    assert certificate_names_address(by_ip, "127.0.0.1")
    assert not certificate_names_address(by_ip, "10.1.2.3")
    assert certificate_names_address(by_name, "127.0.0.1")     # localhost resolves to it
    assert not certificate_names_address({"subjectAltName": (("DNS", "*.example"),)},
                                         "127.0.0.1")
    assert not certificate_names_address({}, "127.0.0.1")
    assert not certificate_names_address(by_ip, "not an address")
