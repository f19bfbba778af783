"""Test certificates made with the `openssl` command line (OpenSSL 3.0): a CA, and certificates
it issues for servers and clients, including the bad ones the TLS tests need (expired, not yet
valid, a wrong host name, one from an unknown CA).

The files are plain PEM, usable by the agent (`[tls]`), DCMTK (`storescp +tls KEY CERT +cf CA`)
and Orthanc (`DicomTlsCertificate`, `DicomTlsPrivateKey`, `DicomTlsTrustedCertificates`). Keys
are EC P-256 by default (milliseconds to make); `key_type="rsa"` gives RSA 2048 for a peer that
negotiates only TLS 1.2, whose BCP 195 suites for the default profile are ECDHE-RSA/DHE-RSA.
Key files are mode 0600, as `check_tls` requires.

    ca = TestCA.create(tmp_path / "ca")
    server = ca.issue("server")                  # SAN DNS:localhost, IP:127.0.0.1
    expired = ca.issue("old", expired=True)
"""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"

# One config for every command: the system's openssl.cnf may add extensions we do not want.
_CONFIG = """\
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {folder}
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir/issued
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
[ policy_any ]
commonName = supplied
organizationName = optional
[ ca_cert ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key (PEM files); `ca_file` is the issuer's certificate."""

    name: str
    certificate: Path
    private_key: Path
    ca_file: Path


def _run(*args: str) -> None:
    result = subprocess.run([OPENSSL, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _stamp(moment: datetime.datetime) -> str:
    """The YYYYMMDDHHMMSSZ form `openssl ca -startdate/-enddate` takes (UTC)."""
    return moment.astimezone(datetime.UTC).strftime("%Y%m%d%H%M%SZ")


def make_key(path: Path, key_type: str = "ec") -> Path:
    """A new unencrypted PEM private key at `path`, mode 0600."""
    if key_type == "ec":
        _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))
    elif key_type == "rsa":
        _run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path))
    else:
        raise ValueError(f"key_type: expected ec or rsa, got {key_type!r}")
    os.chmod(path, 0o600)
    return path


@dataclass(frozen=True)
class TestCA:
    """A certification authority in `folder`: ca.crt, ca.key and what `openssl ca` keeps."""

    __test__ = False                    # not a pytest test class despite the name

    folder: Path
    certificate: Path
    private_key: Path
    config: Path

    @classmethod
    def create(cls, folder: Path, common_name: str = "Test Hospital CA",
               key_type: str = "ec") -> TestCA:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "issued").mkdir(exist_ok=True)
        (folder / "index.txt").write_text("")
        (folder / "serial").write_text("1000\n")
        config = folder / "openssl.cnf"
        config.write_text(_CONFIG.format(folder=folder))
        key = make_key(folder / "ca.key", key_type)
        certificate = folder / "ca.crt"
        _run("req", "-config", str(config), "-x509", "-new", "-key", str(key),
             "-subj", f"/CN={common_name}/O=Test", "-days", "3650",
             "-extensions", "ca_cert", "-out", str(certificate))
        return cls(folder, certificate, key, config)

    def issue(
        self,
        name: str,
        *,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        key_type: str = "ec",
        expired: bool = False,
        not_yet_valid: bool = False,
        days: int = 365,
        folder: Path | None = None,
    ) -> CertPair:
        """A certificate for `name` (CN) for both TLS server and client use (mutual TLS), with
        the given subject alternative names, in `folder` (default: the CA's folder)."""
        out = folder or self.folder
        out.mkdir(parents=True, exist_ok=True)
        key = make_key(out / f"{name}.key", key_type)
        request = out / f"{name}.csr"
        _run("req", "-config", str(self.config), "-new", "-key", str(key),
             "-subj", f"/CN={name}/O=Test", "-out", str(request))
        now = datetime.datetime.now(datetime.UTC)
        if expired:
            start, end = now - datetime.timedelta(days=60), now - datetime.timedelta(days=1)
        elif not_yet_valid:
            start, end = now + datetime.timedelta(days=1), now + datetime.timedelta(days=60)
        else:
            # a minute back: a peer whose clock is a little behind still accepts it
            start, end = now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=days)
        names = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        extensions = out / f"{name}.ext"
        extensions.write_text(
            "[ leaf ]\n"
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth, clientAuth\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid\n"
            + (f"subjectAltName = {', '.join(names)}\n" if names else "")
        )
        certificate = out / f"{name}.crt"
        _run("ca", "-batch", "-config", str(self.config), "-cert", str(self.certificate),
             "-keyfile", str(self.private_key), "-notext",
             "-startdate", _stamp(start), "-enddate", _stamp(end),
             "-extfile", str(extensions), "-extensions", "leaf",
             "-in", str(request), "-out", str(certificate))
        return CertPair(name, certificate, key, self.certificate)


@dataclass(frozen=True)
class TlsWorld:
    """Everything the TLS tests need, made once per test folder."""

    ca: TestCA
    server: CertPair                    # localhost / 127.0.0.1
    client: CertPair                    # localhost / 127.0.0.1 (a client certificate)
    expired: CertPair
    not_yet_valid: CertPair
    wrong_host: CertPair                # names only wrong.example
    stranger: CertPair                  # issued by another CA, which `ca` does not know


def make_tls_world(folder: Path, key_type: str = "ec") -> TlsWorld:
    """A CA with good and bad certificates, and a stranger CA's certificate, under `folder`."""
    ca = TestCA.create(folder / "ca", key_type=key_type)
    other = TestCA.create(folder / "other-ca", "Unknown CA", key_type=key_type)
    return TlsWorld(
        ca=ca,
        server=ca.issue("server", key_type=key_type),
        client=ca.issue("client", key_type=key_type),
        expired=ca.issue("expired", expired=True, key_type=key_type),
        not_yet_valid=ca.issue("future", not_yet_valid=True, key_type=key_type),
        wrong_host=ca.issue("wrong-host", dns=("wrong.example",), ips=(), key_type=key_type),
        stranger=other.issue("stranger", key_type=key_type),
    )
