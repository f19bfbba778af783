"""`modality-agent selftest` against real peers: passes against Orthanc, names the broken peer
when one is down, and stores one marked test object that Orthanc commits (issue 17, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread
from support.agent_process import AGENT_AE, Destination, make_agent
from support.peers import free_port

from agent.demo.orthanc import OrthancServer, RegisteredModality

pytestmark = pytest.mark.integration


def test_selftest_passes_and_stores_a_marked_test_object(tmp_path: Path,
                                                         orthanc: OrthancServer) -> None:
    import io

    listener_port = free_port()
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
                       listener_port=listener_port)
    agent.start()
    try:
        result = agent.cli("selftest", "--store-test-object", "--json", timeout_s=120)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        by_name = {c["name"]: c for c in report["checks"]}
        assert by_name["destination pacs echo"]["ok"]
        assert by_name["spool"]["ok"] and by_name["clock"]["ok"]
        assert by_name["worklist query"]["skipped"]
        test_object = by_name["test object"]
        assert test_object["ok"] and "committed" in test_object["detail"], test_object
        uid = test_object["detail"].split()[3].rstrip(":")
        stored = dcmread(io.BytesIO(orthanc.instance_file(orthanc.find_instance(uid) or "")))
        assert stored.PatientName == "MODALITY-AGENT^SELFTEST"
        assert "not a patient image" in stored.ImageComments
        # the device was not used: a selftest never exposes
        assert json.loads(agent.cli("status", "--json").stdout)["device"]["frames_read"] == 0
    finally:
        agent.stop()


def test_selftest_names_the_peer_that_is_down(tmp_path: Path, orthanc: OrthancServer) -> None:
    down = free_port()
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title),
                                  Destination("backup", down, "BACKUP")])
    result = agent.cli("selftest")                        # no daemon needed for these checks
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("OK") and "destination pacs echo" in line for line in lines)
    [bad] = [line for line in lines if "destination backup echo" in line]
    assert bad.startswith("FAILED") and f"127.0.0.1:{down}" in bad
    assert "selftest failed: destination backup echo" in result.stderr
