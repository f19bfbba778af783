"""The README's main job (`modality-agent demo`) and `echo`, against real peers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.agent_process import AgentProcess, Destination, write_config
from support.peers import Peer, free_port

from agent.demo.orthanc import OrthancServer

pytestmark = pytest.mark.integration


def test_demo_commits_every_object_in_a_real_archive() -> None:
    result = subprocess.run([sys.executable, "-m", "agent", "demo", "--json", "--frames", "2"],
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert len(summary["objects"]) == 2
    for obj in summary["objects"]:
        assert obj["state"] == "committed" and obj["in_archive"] is True
        assert obj["seconds_to_commit"] is not None and obj["seconds_to_commit"] >= 0


def test_echo_reports_each_peer(tmp_path: Path, orthanc: OrthancServer, storescp: Peer) -> None:
    dead_port = free_port()
    config = write_config(
        tmp_path / "agent.toml", listener_port=free_port(), api_port=free_port(),
        spool_dir=tmp_path / "spool",
        destinations=[Destination("orthanc", orthanc.dicom_port, orthanc.ae_title),
                      Destination("scp", storescp.port, storescp.ae_title),
                      Destination("down", dead_port, "NOBODY")],
    )
    agent = AgentProcess(config, 0, tmp_path / "agent.log")
    result = agent.cli("echo", "--json")
    assert result.returncode == 1                      # one peer is down
    peers = {p["name"]: p for p in json.loads(result.stdout)["peers"]}
    assert peers["orthanc"]["ok"] and peers["scp"]["ok"]
    assert not peers["down"]["ok"] and peers["down"]["detail"].startswith("no connection")
    single = agent.cli("echo", "scp")
    assert single.returncode == 0 and "scp (STORESCP@" in single.stdout and "OK" in single.stdout
    unknown = agent.cli("echo", "nosuch")
    assert unknown.returncode == 1 and "no configured peer named 'nosuch'" in unknown.stderr
