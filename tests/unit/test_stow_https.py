"""HTTPS to a DICOMweb archive is verified: against [tls] ca_file when the config has [tls],
else the system's store; a certificate of another CA or for another name is refused, never
sent to unverified."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.certs import CertPair, TlsWorld, make_tls_world

from agent.config import AgentConfig, load_config
from agent.net.stow import DicomWebClient, ssl_context


class _Qido(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TlsWorld:
    return make_tls_world(tmp_path_factory.mktemp("tls"))


def https_server(pair: CertPair) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Qido)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.certificate, pair.private_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def serve(world: TlsWorld) -> Iterator[dict[str, int]]:
    started: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []
    ports = {}
    for name in ("server", "stranger", "wrong_host"):
        server, thread = https_server(getattr(world, name))
        started.append((server, thread))
        ports[name] = server.server_address[1]
    try:
        yield ports
    finally:
        for server, thread in started:
            server.shutdown()
            server.server_close()
            thread.join(5)


def config(tmp_path: Path, world: TlsWorld | None, port: int) -> AgentConfig:
    tls = "" if world is None else (
        f'[tls]\ncertificate = "{world.client.certificate}"\n'
        f'private_key = "{world.client.private_key}"\nca_file = "{world.ca.certificate}"\n')
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
ae_title = "HTTPS"
spool_dir = "spool"
[device]
driver = "simulated"
[modality]
modality = "OT"
{tls}
[[destinations]]
name = "web"
kind = "stow-rs"
url = "https://127.0.0.1:{port}/dicom-web"
request_timeout_s = 5
""")
    return load_config(path)


def probe(cfg: AgentConfig) -> tuple[bool, str]:
    [dest] = cfg.destinations
    with DicomWebClient(dest, tls=ssl_context(cfg)) as client:
        ok, detail, _ = client.probe()
    return ok, detail


def test_an_archive_our_ca_signed_is_trusted(tmp_path: Path, world: TlsWorld,
                                             serve: dict[str, int]) -> None:
    assert probe(config(tmp_path, world, serve["server"])) == (True, "QIDO-RS HTTP 200 OK")


def test_a_certificate_of_another_ca_is_refused(tmp_path: Path, world: TlsWorld,
                                                serve: dict[str, int]) -> None:
    ok, detail = probe(config(tmp_path, world, serve["stranger"]))
    assert not ok and "certificate verify failed" in detail


def test_a_certificate_for_another_name_is_refused(tmp_path: Path, world: TlsWorld,
                                                   serve: dict[str, int]) -> None:
    ok, detail = probe(config(tmp_path, world, serve["wrong_host"]))
    assert not ok and "certificate verify failed" in detail


def test_without_tls_section_the_system_store_decides(tmp_path: Path, world: TlsWorld,
                                                      serve: dict[str, int]) -> None:
    # our test CA is not in the system's store: refused, not sent to unverified
    ok, detail = probe(config(tmp_path, None, serve["server"]))
    assert not ok and "certificate verify failed" in detail
