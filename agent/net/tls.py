"""DICOM TLS (PS3.15 Annex B, BCP 195 profiles): this station's identity from `[tls]`, and the
SSL contexts every association and the listener use. Plaintext is never a fallback.

Shapes are fixed here so that the network code can carry them (they are plain, picklable
records: a sending process builds its own context from them); building and checking the
contexts is implemented below.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

#: PS3.15 B.9 (BCP195), B.10 (Non-Downgrading BCP195, the default), B.11 (Extended BCP195)
PROFILES = ("bcp195-nd", "bcp195", "bcp195-extended")


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


def client_context(tls: PeerTls) -> ssl.SSLContext:
    """The context for an association we open (mutual authentication: our certificate is
    presented, the peer's verified against `ca_file`, and its name unless switched off)."""
    raise NotImplementedError


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """The context for the listener: only TLS, a client certificate required and verified."""
    raise NotImplementedError
