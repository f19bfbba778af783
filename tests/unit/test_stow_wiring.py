"""A stow-rs destination beside a DIMSE one: the daemon builds a StowWorker for it, check-config
checks its secret file, the listener's allow-lists and the conformance statement leave its
empty host/AE title out, done means committed only with verify = true, and the audit names
the URL's host."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.conformance import render_conformance
from agent.daemon import Daemon, preflight
from agent.forwarder import DestinationWorker, _peer
from agent.records import DeliveryState
from agent.selftest import echo_checks
from agent.station import final_state_by_destination
from agent.stow_forwarder import StowWorker


def config(tmp_path: Path, stow: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
ae_title = "WIRING"
spool_dir = "spool"
[listener]
host = "127.0.0.1"
port = 11112
[api]
host = "127.0.0.1"
port = 18080
[device]
driver = "simulated"
[modality]
modality = "OT"
[[destinations]]
name = "pacs"
host = "127.0.0.1"
port = 4242
called_ae = "PACS"
[[destinations]]
name = "web"
kind = "stow-rs"
url = "https://archive.example:8443/dicom-web/"
{stow}
""")
    return load_config(path)


def test_the_daemon_builds_a_stow_worker_for_a_stow_rs_destination(tmp_path: Path) -> None:
    daemon = Daemon(config(tmp_path, "verify = true"))
    try:
        kinds = {w.destination.name: type(w) for w in daemon.forwarder.workers}
        assert kinds == {"pacs": DestinationWorker, "web": StowWorker}
        assert [w.destination.url for w in daemon.forwarder.workers
                if isinstance(w, StowWorker)] == ["https://archive.example:8443/dicom-web"]
    finally:
        daemon.forwarder.stop()


def test_done_means_committed_only_with_verify(tmp_path: Path) -> None:
    assert final_state_by_destination(config(tmp_path, "verify = true"))["web"] \
        is DeliveryState.COMMITTED
    assert final_state_by_destination(config(tmp_path, "verify = false"))["web"] \
        is DeliveryState.SENT


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_check_config_names_an_unsafe_token_file(tmp_path: Path, mode: int) -> None:
    token = tmp_path / "token"
    token.write_text("Qx7-secret\n")
    token.chmod(mode)
    problems = preflight(config(tmp_path, f'token_file = "{token}"'))
    [problem] = [p for p in problems if "token_file" in p]
    assert problem.startswith("agent.toml: [[destinations]] web token_file:")
    assert "chmod 600" in problem and "Qx7" not in problem


def test_check_config_names_a_missing_credentials_file(tmp_path: Path) -> None:
    problems = preflight(config(tmp_path, 'credentials_file = "nowhere"'))
    assert any("[[destinations]] web credentials_file" in p and "nowhere" in p
               for p in problems)


def test_a_safe_token_file_is_no_problem(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("Qx7-secret\n")
    token.chmod(0o600)
    assert not [p for p in preflight(config(tmp_path, f'token_file = "{token}"'))
                if "web" in p]


def test_the_listener_allows_only_the_dimse_archive(tmp_path: Path) -> None:
    daemon = Daemon(config(tmp_path, ""))
    try:
        assert [d.name for d in daemon.listener._destinations] == ["pacs"]
    finally:
        daemon.forwarder.stop()


def test_conformance_lists_stow_rs_as_dicomweb_not_as_an_association(tmp_path: Path) -> None:
    text = render_conformance(config(tmp_path, "verify = true"))
    assert "STOW-RS (PS3.18 10.5)" in text and "`web` (https://archive.example:8443" in text
    assert "Destination web (DICOMweb STOW-RS)" in text
    assert "Associations to web" not in text and "destination `web`" not in text
    assert ":0" not in text                    # no empty host:port for web


def test_audit_names_the_urls_host_and_port(tmp_path: Path) -> None:
    web = next(d for d in config(tmp_path, "").destinations if d.name == "web")
    peer = _peer(web)
    assert (peer.host, peer.port, peer.ae_title) == ("archive.example", 8443, "")


def test_selftest_probes_a_dicomweb_destination_instead_of_c_echo(tmp_path: Path) -> None:
    cfg = config(tmp_path, "request_timeout_s = 2")
    web = next(d for d in cfg.destinations if d.name == "web")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                   # nobody listens there now
    cfg = dataclasses.replace(cfg, destinations=(dataclasses.replace(
        web, url=f"http://127.0.0.1:{port}/dicom-web"),))
    [check] = echo_checks(cfg)
    assert check.name == "destination web echo" and not check.ok
    assert check.detail.startswith(f"GET http://127.0.0.1:{port}/dicom-web/studies?limit=1: "
                                   "cannot reach")
