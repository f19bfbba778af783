"""DICOM TLS (PS3.15 Annex B, BCP 195 profiles): this station's identity from `[tls]`, and the
SSL contexts every association and the listener use. Plaintext is never a fallback.

Shapes are fixed here so that the network code can carry them (they are plain, picklable
records: a sending process builds its own context from them). Besides the two context
builders: `peer_tls` (a config section to a `PeerTls`), `check_tls` (check-config),
`describe_tls_failure` (the reason `status` shows) and certificate facts (`read_certificate`).
No sockets are opened here.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.errors import ConfigError

if TYPE_CHECKING:
    # not at run time: a sending process builds client contexts and never reads the
    # configuration (agent.config is 0.6 MB per process)
    from agent.config import AgentConfig

#: `status` warns this many days before our certificate expires (issue 14)
EXPIRY_WARNING_DAYS = 30

# TLS 1.2 cipher suites per profile, as OpenSSL names, strongest first (the server picks by its
# own order, as BCP 195 recommends). The lists are the suites PS3.15 B.9-B.11 name, as DCMTK
# 3.6.7 (dcmtls/libsrc/tlsciphr.cc, our reference peer) implements them:
#   ECDHE-RSA-AES128-GCM-SHA256 = TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, and so on.
# TLS 1.3 suites are not set here: every TLS 1.3 suite is an AEAD suite, and Python's
# set_ciphers() does not touch them.
_BCP195_ND_SUITES = (
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256",
)
TLS12_SUITES: dict[str, tuple[str, ...]] = {
    "bcp195-nd": _BCP195_ND_SUITES,
    # B.9 adds TLS_RSA_WITH_AES_128_CBC_SHA for peers of the retired AES profile; we still
    # refuse anything older than TLS 1.2 (RFC 8996), so it only helps a TLS 1.2 peer without
    # AES-GCM
    "bcp195": (*_BCP195_ND_SUITES, "AES128-SHA"),
    # B.11 adds the ECDSA suites, so an EC certificate works over TLS 1.2
    "bcp195-extended": (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        *_BCP195_ND_SUITES,
    ),
}
#: the newest version a profile negotiates; DCMTK turns TLS 1.3 off for the Extended profile,
#: whose definition is a TLS 1.2 suite list, and so do we
MAXIMUM_VERSION: dict[str, ssl.TLSVersion] = {
    "bcp195-nd": ssl.TLSVersion.MAXIMUM_SUPPORTED,
    "bcp195": ssl.TLSVersion.MAXIMUM_SUPPORTED,
    "bcp195-extended": ssl.TLSVersion.TLSv1_2,
}
#: PS3.15 B.9 (BCP195), B.10 (Non-Downgrading BCP195, the default), B.11 (Extended BCP195):
#: the values of agent.config.TLS_PROFILES, in its order (a unit test checks they agree)
PROFILES: tuple[str, ...] = tuple(TLS12_SUITES)


class TlsConfigError(ConfigError):
    """The TLS identity cannot be used: each problem names the file and what is wrong. A
    ConfigError (so a ValueError): the daemon refuses to start rather than fall back."""


@dataclass(frozen=True)
class TlsIdentity:
    """This station's certificate and key, and the CAs it trusts for every peer (`[tls]`)."""

    certificate: Path
    private_key: Path
    ca_file: Path
    profile: str = "bcp195-nd"


@dataclass(frozen=True)
class PeerTls:
    """TLS on one path (`tls = true` in its section): whose identity, and whether the peer's
    certificate must also name the host we connect to."""

    identity: TlsIdentity
    verify_hostname: bool = True


class _TlsSettings(Protocol):
    """What [listener], [[destinations]], [worklist] and [mpps] have in common."""

    @property
    def tls(self) -> bool: ...

    @property
    def verify_hostname(self) -> bool: ...


def tls_identity(config: AgentConfig) -> TlsIdentity | None:
    """The `[tls]` identity of `config`, or None if it has no `[tls]` section."""
    if config.tls is None:
        return None
    section = config.tls
    return TlsIdentity(section.certificate, section.private_key, section.ca_file, section.profile)


def peer_tls(config: AgentConfig, section: _TlsSettings) -> PeerTls | None:
    """The TLS settings of one DICOM path: `config.listener`, `config.worklist`, `config.mpps`
    or one of `config.destinations`.

    Returns
    -------
    PeerTls | None
        None when the section has `tls = false` (plaintext, as configured).

    Raises
    ------
    TlsConfigError
        If the section has `tls = true` but the config has no `[tls]` (load_config refuses such
        a file; this guards a config built by hand).
    """
    if not section.tls:
        return None
    identity = tls_identity(config)
    if identity is None:
        raise TlsConfigError([f"{config.path.name}: tls = true needs a [tls] section "
                              "(certificate, private_key, ca_file), and there is none"])
    return PeerTls(identity, section.verify_hostname)


# --- contexts -----------------------------------------------------------------------------------


def client_context(tls: PeerTls) -> ssl.SSLContext:
    """The context for an association we open (mutual authentication: our certificate is
    presented, the peer's verified against `ca_file`, and its name unless switched off).

    Pass the host connected to as ``server_hostname`` (pynetdicom:
    ``ae.associate(host, port, tls_args=(context, host))``); an IP address is checked against
    the certificate's IP address names.

    Raises
    ------
    TlsConfigError
        If a file is missing or unreadable, the key does not match the certificate, or the CA
        file holds no certificate; each problem names the file.
    """
    # PROTOCOL_TLS_CLIENT = Purpose.SERVER_AUTH: a client that authenticates the server.
    # (ssl.create_default_context(Purpose.CLIENT_AUTH) builds a *server* context: pynetdicom
    # #709, RELIABILITY.md 2.1.)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_profile(context, tls.identity.profile)
    _load_identity(context, tls.identity)
    context.check_hostname = tls.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """The context for the listener: only TLS, a client certificate required and verified.

    Raises
    ------
    TlsConfigError
        As `client_context`.
    """
    # PROTOCOL_TLS_SERVER = Purpose.CLIENT_AUTH: a server that authenticates its clients.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_profile(context, identity.profile)
    _load_identity(context, identity)
    # a client without a certificate, or one ca_file does not vouch for, fails the handshake:
    # no DIMSE message of it is ever read (issue 14, node authentication)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _apply_profile(context: ssl.SSLContext, profile: str) -> None:
    if profile not in PROFILES:
        raise TlsConfigError([f"[tls] profile: expected one of {', '.join(PROFILES)}, "
                              f"got {profile!r}"])
    # TLS 1.2 at least for every profile: RFC 8996 (BCP 195) deprecates TLS 1.0 and 1.1
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = MAXIMUM_VERSION[profile]
    context.set_ciphers(":".join(TLS12_SUITES[profile]))
    # no compression (CRIME), no renegotiation (PS3.15 B.10 and BCP 195 section 3.5), the
    # server's suite order wins (BCP 195 section 4.2)
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                        | ssl.OP_CIPHER_SERVER_PREFERENCE)


def _no_password() -> bytes:
    # called by OpenSSL only for an encrypted key: the agent starts unattended, so there is
    # nobody to type a password (and without this callback OpenSSL would prompt on stdin)
    raise _EncryptedKey


class _EncryptedKey(Exception):
    pass


def _load_identity(context: ssl.SSLContext, identity: TlsIdentity) -> None:
    problems = list(_file_problems(identity).values())
    if not problems:
        problems = _load_problems(context, identity)
    if problems:
        raise TlsConfigError([f"[tls] {problem}" for problem in problems])


# --- check-config -------------------------------------------------------------------------------


def check_tls(config: AgentConfig, *, now: datetime.datetime | None = None) -> list[str]:
    """Everything wrong with the `[tls]` identity, for check-config and the start of the daemon.

    Parameters
    ----------
    config
        A loaded config; without `[tls]` there is nothing to check.
    now
        The time certificates must be valid at (default: now).

    Returns
    -------
    list[str]
        One problem a line, ``agent.toml: [tls] key: expected X, got Y``; empty if usable.
        Files missing or unreadable, a private key group or others may read, a key that does
        not match the certificate or is encrypted, a certificate expired or not yet valid, a CA
        file without a CA certificate, an unknown profile.

    Raises
    ------
    Nothing
        Every problem is returned.
    """
    identity = tls_identity(config)
    if identity is None:
        return []
    by_key = _file_problems(identity)
    problems = list(by_key.values())
    if identity.profile not in PROFILES:
        problems.append(f"profile: expected one of {', '.join(PROFILES)}, "
                        f"got {identity.profile!r}")
    # only files that can be read can be parsed
    if "certificate" not in by_key:
        problems.extend(_validity_problems(identity.certificate, now))
    if not by_key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        problems.extend(p for p in _load_problems(context, identity) if p not in problems)
    return [f"{config.path.name}: [tls] {problem}" for problem in problems]


def _file_problems(identity: TlsIdentity) -> dict[str, str]:
    """Missing, unreadable or unsafe files: key -> ``key: expected X, got Y``."""
    problems = {}
    for key, path in (("certificate", identity.certificate),
                      ("private_key", identity.private_key),
                      ("ca_file", identity.ca_file)):
        why = _unreadable(path)
        if why:
            problems[key] = f"{key}: expected a readable PEM file, got \"{path}\" ({why})"
        elif key == "private_key":
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                # the key is our identity: whoever reads it can be this modality to the archive
                problems[key] = (f"private_key: expected a file only its owner may read "
                                 f"(chmod 600), got \"{path}\" with mode {mode:04o}")
    return problems


def _unreadable(path: Path) -> str:
    """Why `path` cannot be read as a file, or "" if it can."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "a directory"
    except PermissionError:
        return "permission denied"
    except OSError as err:
        return err.strerror or str(err)
    return ""


def _not_a_certificate(path: Path) -> str:
    return f"certificate: expected a PEM certificate, got \"{path}\" (no certificate in it)"


def _validity_problems(path: Path, now: datetime.datetime | None) -> list[str]:
    try:
        info = read_certificate(path)
    except TlsConfigError:
        return [_not_a_certificate(path)]
    moment = now or datetime.datetime.now(datetime.UTC)
    if info.not_after < moment:
        return [f"certificate: expected a certificate valid now, got \"{path}\", which expired "
                f"on {_when(info.not_after)}"]
    if info.not_before > moment:
        return [f"certificate: expected a certificate valid now, got \"{path}\", which is not "
                f"valid before {_when(info.not_before)}"]
    return []


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _load_problems(context: ssl.SSLContext, identity: TlsIdentity) -> list[str]:
    """What OpenSSL says of the three (readable) files, as ``key: expected X, got Y``."""
    problems = []
    try:
        context.load_cert_chain(identity.certificate, identity.private_key,
                                password=_no_password)
    except _EncryptedKey:
        problems.append(f"private_key: expected an unencrypted PEM private key (the agent starts "
                        f"unattended), got \"{identity.private_key}\" (encrypted)")
    except ssl.SSLError as err:
        problems.append(_chain_problem(identity, err))
    try:
        context.load_verify_locations(cafile=identity.ca_file)
    except ssl.SSLError:
        problems.append(f"ca_file: expected a PEM file with at least one CA certificate, got "
                        f"\"{identity.ca_file}\" (no certificate in it)")
    else:
        if context.cert_store_stats()["x509_ca"] == 0:
            problems.append(f"ca_file: expected a PEM file with at least one CA certificate, "
                            f"got \"{identity.ca_file}\" (no CA certificate in it)")
    return problems


def _chain_problem(identity: TlsIdentity, err: ssl.SSLError) -> str:
    if err.reason == "KEY_VALUES_MISMATCH":
        return (f"private_key: expected the key of [tls] certificate \"{identity.certificate}\", "
                f"got \"{identity.private_key}\", which does not match it")
    # OpenSSL says "PEM lib" for either file: the certificate is the one that does not decode
    try:
        read_certificate(identity.certificate)
    except TlsConfigError:
        return _not_a_certificate(identity.certificate)
    return (f"private_key: expected a PEM private key, got \"{identity.private_key}\" "
            f"(no private key in it)")


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateInfo:
    """What `status` and the logs show of a certificate (no patient data is ever in one)."""

    subject: str                        # "CN=modality1, O=Hospital"
    issuer: str
    not_before: datetime.datetime       # UTC
    not_after: datetime.datetime        # UTC
    names: tuple[str, ...]              # subject alternative names: "DNS:host", "IP Address:..."

    def days_left(self, now: datetime.datetime | None = None) -> float:
        """Days until it expires (negative once expired)."""
        moment = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - moment).total_seconds() / 86_400


def read_certificate(path: Path) -> CertificateInfo:
    """The first certificate of a PEM file.

    Raises
    ------
    TlsConfigError
        If the file cannot be read or holds no PEM certificate.
    """
    return _certificate_info(_decode_certificate(path))


def certificate_days_left(path: Path, now: datetime.datetime | None = None) -> float:
    """Days until the certificate in `path` expires (negative once expired).

    Raises
    ------
    TlsConfigError
        If the file cannot be read or holds no PEM certificate.
    """
    return read_certificate(path).days_left(now)


def certificate_subject(certificate: Path | dict[str, Any]) -> str:
    """The subject as ``CN=..., O=...``: of a PEM file, or of a peer's certificate as
    ``SSLSocket.getpeercert()`` returns it (what the listener logs for an accepted peer).

    Raises
    ------
    TlsConfigError
        If a path is given that cannot be read or holds no PEM certificate.
    """
    decoded = certificate if isinstance(certificate, dict) else _decode_certificate(certificate)
    return _name(decoded.get("subject", ()))


def certificate_names_address(certificate: dict[str, Any], address: str) -> bool:
    """Whether a peer's certificate (``getpeercert()``) names the address it connected from:
    an IP address name equal to it, or a DNS name that resolves to it. For `[listener]
    verify_hostname`: a server cannot check a host name the TLS way, the client sends none.

    Raises
    ------
    Nothing
        A name that does not resolve simply does not match.
    """
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    for kind, value in certificate.get("subjectAltName", ()):
        if kind == "IP Address" and _same_address(value, peer):
            return True
        if kind == "DNS" and "*" not in value and peer in _resolve(value):
            return True
    return False


def _same_address(text: str, peer: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text.strip()) == peer
    except ValueError:
        return False


def _resolve(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    return {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}


def _decode_certificate(path: Path) -> dict[str, Any]:
    # The one use of a private CPython function: the standard library decodes a PEM
    # certificate file only through ssl._ssl._test_decode_cert (the same code as getpeercert()).
    # The alternative, the `cryptography` package, would be a new runtime dependency for
    # reading two dates. Kept in this one function so it is easy to replace.
    why = _unreadable(path)
    if why:
        raise TlsConfigError([f"{path}: expected a readable PEM certificate, got {why}"])
    try:
        decoded: dict[str, Any] = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    except (ssl.SSLError, ValueError) as err:
        raise TlsConfigError([f"{path}: expected a PEM certificate, got none"]) from err
    return decoded


def _certificate_info(decoded: dict[str, Any]) -> CertificateInfo:
    return CertificateInfo(
        subject=_name(decoded.get("subject", ())),
        issuer=_name(decoded.get("issuer", ())),
        not_before=_time(decoded["notBefore"]),
        not_after=_time(decoded["notAfter"]),
        names=tuple(f"{kind}:{value}" for kind, value in decoded.get("subjectAltName", ())),
    )


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(text), datetime.UTC)


_SHORT_NAMES = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
    "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
}


def _name(rdns: Any) -> str:
    return ", ".join(f"{_SHORT_NAMES.get(key, key)}={value}"
                     for rdn in rdns for key, value in rdn)


# --- failures -----------------------------------------------------------------------------------

# X509_V_ERR_* codes (OpenSSL include/openssl/x509_vfy.h) of a peer certificate we refused
_VERIFY_REASONS = {
    2: "unknown CA",            # UNABLE_TO_GET_ISSUER_CERT
    9: "certificate not yet valid",
    10: "certificate expired",
    18: "unknown CA",           # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "unknown CA",           # SELF_SIGNED_CERT_IN_CHAIN
    20: "unknown CA",           # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "unknown CA",           # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    23: "certificate revoked",
    26: "certificate not for this purpose",     # INVALID_PURPOSE (extended key usage)
    62: "host name mismatch",   # HOSTNAME_MISMATCH
    64: "host name mismatch",   # IP_ADDRESS_MISMATCH
}

# OpenSSL reasons (SSLError.reason) on our side of a failed handshake
_SSL_REASONS = {
    # the peer's alert: it refused our certificate
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate expired (the peer refused ours)",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown CA (the peer does not trust ours)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate refused by the peer",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "certificate refused by the peer",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate refused by the peer",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate revoked (the peer refused ours)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires our certificate",
    # protocol versions: one side offers only what the other refuses (TLS 1.1 and older)
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol version refused",
    "UNSUPPORTED_PROTOCOL": "protocol version refused",
    "NO_PROTOCOLS_AVAILABLE": "protocol version refused",
    "VERSION_TOO_LOW": "protocol version refused",
    "WRONG_SSL_VERSION": "protocol version refused",
    # a client without a certificate, at our listener
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "peer sent no certificate",
    # not TLS at all: a plaintext DICOM peer (an A-ASSOCIATE-RQ starts 01 00) or HTTP
    "WRONG_VERSION_NUMBER": "not a TLS peer (plaintext?)",
    "HTTP_REQUEST": "not a TLS peer (plaintext?)",
    "PACKET_LENGTH_TOO_LONG": "not a TLS peer (plaintext?)",
    "RECORD_LAYER_FAILURE": "not a TLS peer (plaintext?)",
    # no suite of the profile in common
    "NO_SHARED_CIPHER": "handshake failure (no cipher suite in common)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake failure",
}


def describe_tls_failure(exc: BaseException) -> str:
    """A short reason for a failed TLS connection, for `status`, the queue and the logs.

    One of: ``certificate expired``, ``certificate not yet valid``, ``unknown CA``,
    ``host name mismatch``, ``certificate revoked``, ``certificate not for this purpose``
    (the peer's certificate, refused by us); the same with ``(the peer refused ours)`` or
    ``certificate refused by the peer`` when the peer refused our certificate; ``protocol
    version refused``, ``peer sent no certificate``, ``the peer requires our certificate``,
    ``not a TLS peer (plaintext?)``, ``handshake timed out``, ``connection closed during the
    handshake``, and ``handshake failure`` (with OpenSSL's reason in brackets when known).

    Raises
    ------
    Nothing
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_REASONS.get(exc.verify_code)
        if reason:
            return reason
        return f"certificate not accepted ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return "connection closed during the handshake"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _SSL_REASONS:
            return _SSL_REASONS[reason]
        return f"handshake failure ({reason or exc})"
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    if isinstance(exc, ConnectionError):
        return "connection closed during the handshake"
    return f"handshake failure ({type(exc).__name__}: {exc})"
