"""The walking skeleton against real peers: simulated frames → Secondary Capture → durable
queue → Orthanc (C-STORE + Storage Commitment) or DCMTK storescp, through the real daemon
process and its CLI."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from support.agent_process import AGENT_AE, AgentProcess, Destination, make_agent
from support.peers import Peer, free_port, run_dciodvfy, wait_until

from agent.demo.orthanc import OrthancServer, RegisteredModality, start_orthanc
from drivers.simulated import phantom

pytestmark = pytest.mark.integration

FRAME_SIZE = 64
BITS = 12
PHI_NAME = "PHI^SENTINEL"
PHI_ID = "PHI-SENTINEL-7"


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def register_agent(orthanc: OrthancServer, agent: AgentProcess, listener_port: int) -> None:
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))


def acquire_json(agent: AgentProcess, frames: int, *extra: str) -> tuple[int, dict, str]:
    result = agent.cli("acquire", "--unscheduled", "--patient-id", PHI_ID,
                       "--patient-name", PHI_NAME, "--frames", str(frames), "--json", *extra)
    payload = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, payload, result.stderr


def test_acquire_wait_ends_committed_in_orthanc(tmp_path: Path, orthanc: OrthancServer,
                                               agents: list[AgentProcess]) -> None:
    listener_port = free_port()
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
                       listener_port=listener_port, frame_size=FRAME_SIZE, bits_stored=BITS)
    register_agent(orthanc, agent, listener_port)
    agents.append(agent)
    agent.start()

    code, payload, stderr = acquire_json(agent, 3, "--wait", "60")
    assert code == 0, stderr + agent.log()
    objects = payload["objects"]
    assert [o["state"] for o in objects] == ["committed"] * 3, objects
    assert len({o["sop_instance_uid"] for o in objects}) == 3

    for index, obj in enumerate(objects):
        orthanc_id = orthanc.find_instance(obj["sop_instance_uid"])
        assert orthanc_id is not None, f"{obj['sop_instance_uid']} not in Orthanc"
        stored = orthanc.instance_file(orthanc_id)
        ds = dcmread(io.BytesIO(stored))
        # the archive holds exactly the frame the device produced, bit for bit
        expected = phantom(FRAME_SIZE, FRAME_SIZE, BITS, index)
        assert np.array_equal(ds.pixel_array, expected)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.PatientName == PHI_NAME and ds.PatientID == PHI_ID
        assert ds.AccessionNumber == ""                  # unscheduled: no dummy values
        path = tmp_path / f"from-orthanc-{index}.dcm"
        path.write_bytes(stored)
        assert run_dciodvfy(path) == []
    # one study, one series for one acquisition
    tags = [orthanc.instance_tags(orthanc.find_instance(o["sop_instance_uid"]) or "")
            for o in objects]
    assert len({t["StudyInstanceUID"] for t in tags}) == 1
    assert len({t["SeriesInstanceUID"] for t in tags}) == 1

    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["queue"]["committed"] == 3 and status["queue"]["pending"] == 0
    # no patient data in the log at INFO or above
    log = agent.log()
    assert "committed" in log
    assert PHI_NAME not in log and PHI_ID not in log and "SENTINEL" not in log


def test_destination_without_commitment_is_done_when_stored(
        tmp_path: Path, storescp: Peer, agents: list[AgentProcess]) -> None:
    agent = make_agent(tmp_path, [Destination("scp", storescp.port, storescp.ae_title,
                                              storage_commitment=False)],
                       frame_size=FRAME_SIZE, bits_stored=16)
    agents.append(agent)
    agent.start()
    code, payload, stderr = acquire_json(agent, 2, "--wait", "60")
    assert code == 0, stderr + agent.log()
    assert [o["state"] for o in payload["objects"]] == ["sent", "sent"]
    received = {}
    for path in storescp.out_dir.iterdir():
        ds = dcmread(path)
        received[ds.SOPInstanceUID] = ds
    for index, obj in enumerate(payload["objects"]):
        ds = received[obj["sop_instance_uid"]]
        assert np.array_equal(ds.pixel_array, phantom(FRAME_SIZE, FRAME_SIZE, 16, index))


def test_archive_down_then_up_delivers_without_any_command(
        tmp_path: Path, agents: list[AgentProcess]) -> None:
    dicom_port, http_port, listener_port = free_port(), free_port(), free_port()
    agent = make_agent(tmp_path, [Destination("pacs", dicom_port, "ORTHANC")],
                       listener_port=listener_port, frame_size=FRAME_SIZE)
    agents.append(agent)
    agent.start()
    code, payload, stderr = acquire_json(agent, 2)
    assert code == 0, stderr
    ids = [o["queue_id"] for o in payload["objects"]]

    def waiting_with_reason() -> bool:
        status = agent.api("GET", "/api/status")
        dest = status["destinations"][0]
        return dest["reachable"] is False and "no connection" in dest["last_error"]

    wait_until(waiting_with_reason, 20, "status never showed the archive as unreachable")
    # waiting, never failed: an outage is not an error
    assert all(o["state"] in ("pending", "sending") for o in agent.objects(ids))
    assert agent.process is not None and agent.process.poll() is None   # still running
    text = agent.cli("status")
    assert "WAITING" in text.stdout and text.returncode == 0

    with start_orthanc(tmp_path / "orthanc", dicom_port=dicom_port, http_port=http_port,
                       modalities=[RegisteredModality("agent", AGENT_AE, "127.0.0.1",
                                                      listener_port)]) as orthanc:
        wait_until(lambda: all(o["state"] == "committed" for o in agent.objects(ids)), 30,
                   f"objects not committed after the archive came back: {agent.log()}")
        for obj in payload["objects"]:
            assert orthanc.find_instance(obj["sop_instance_uid"]) is not None


@pytest.mark.parametrize("archive_up_at_kill", [True, False])
def test_kill_9_right_after_acquire_loses_nothing(
        tmp_path: Path, agents: list[AgentProcess], archive_up_at_kill: bool) -> None:
    dicom_port, http_port, listener_port = free_port(), free_port(), free_port()
    modality = RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port)
    agent = make_agent(tmp_path, [Destination("pacs", dicom_port, "ORTHANC")],
                       listener_port=listener_port, frame_size=FRAME_SIZE)
    agents.append(agent)
    orthanc = None
    if archive_up_at_kill:
        orthanc = start_orthanc(tmp_path / "orthanc", dicom_port=dicom_port,
                                http_port=http_port, modalities=[modality])
    try:
        agent.start()
        code, payload, stderr = acquire_json(agent, 5)
        assert code == 0, stderr
        agent.kill9()                       # right after the UIDs were printed
        uids = {o["sop_instance_uid"] for o in payload["objects"]}
        if orthanc is None:
            orthanc = start_orthanc(tmp_path / "orthanc", dicom_port=dicom_port,
                                    http_port=http_port, modalities=[modality])
        agent.start()
        ids = [o["queue_id"] for o in payload["objects"]]
        wait_until(lambda: all(o["state"] == "committed" for o in agent.objects(ids)), 30,
                   f"not all committed after restart: {agent.log()}")
        held = {orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances()}
        # exactly those UIDs: none lost, none sent again under a new UID
        assert held == uids
    finally:
        if orthanc is not None:
            orthanc.stop()


def test_agent_not_registered_at_archive_is_explained(
        tmp_path: Path, orthanc: OrthancServer, agents: list[AgentProcess]) -> None:
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
                       frame_size=FRAME_SIZE)
    agents.append(agent)
    agent.start()
    code, payload, _ = acquire_json(agent, 1)
    assert code == 0
    [queue_id] = [o["queue_id"] for o in payload["objects"]]

    def explained() -> bool:
        [obj] = agent.objects([queue_id])
        return any("registered" in e for e in obj["errors"])

    wait_until(explained, 20, f"no hint about registration: {agent.log()}")
    [obj] = agent.objects([queue_id])
    assert obj["state"] in ("sent", "commit_requested")        # stored, never committed
    assert orthanc.find_instance(obj["sop_instance_uid"]) is not None


def test_bad_config_lists_every_problem_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(
        '[agent]\nae_title = "THIS-AE-TITLE-IS-TOO-LONG"\n'
        '[listener]\nport = "104a"\n'
        '[device]\ndriver = "simulated"\n[device.options]\nwidth = "wide"\n'
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 70000\ncalled_ae = "PACS"\n'
    )
    agent = AgentProcess(config, free_port(), tmp_path / "agent.log")
    for command in ("check-config", "run"):
        result = agent.cli(command, timeout_s=30)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "Traceback" not in output
        assert "[agent] ae_title" in output
        assert "[listener] port" in output and '"104a"' in output
        assert "port" in output and "70000" in output
    assert not (tmp_path / "spool").exists()          # nothing created for a broken config


def test_bad_driver_option_is_a_config_problem(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[device]\ndriver = "simulated"\n[device.options]\nwidth = "wide"\nfps = 3\n'
        '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 4242\ncalled_ae = "PACS"\n'
    )
    result = AgentProcess(config, free_port(), tmp_path / "agent.log").cli("check-config")
    assert result.returncode == 1
    assert "agent.toml: [device.options] width: expected int, got 'wide'" in result.stdout
    assert "[device.options] fps: unknown option" in result.stdout
