"""A procedure end to end through the daemon: acquisitions into one procedure, MPPS IN PROGRESS
then COMPLETED or DISCONTINUED at the RIS, images in Orthanc naming their MPPS."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from support.agent_process import AGENT_AE, AgentProcess, Destination, make_agent
from support.mpps_peer import COMPLETED, DISCONTINUED, IN_PROGRESS, MppsPeer
from support.peers import free_port, run_dciodvfy, wait_until

from agent.demo.orthanc import OrthancServer, RegisteredModality

pytestmark = pytest.mark.integration


@pytest.fixture
def ris() -> Iterator[tuple[MppsPeer, int]]:
    peer = MppsPeer("RIS")
    port = free_port()
    peer.start(port)
    yield peer, port
    peer.stop()


@pytest.fixture
def agent(tmp_path: Path, orthanc: OrthancServer,
          ris: tuple[MppsPeer, int]) -> Iterator[AgentProcess]:
    listener_port = free_port()
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))
    process = make_agent(
        tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
        listener_port=listener_port,
        extra_toml=f'[mpps]\nhost = "127.0.0.1"\nport = {ris[1]}\ncalled_ae = "RIS"\n')
    process.start()
    yield process
    process.stop()


def acquire(agent: AgentProcess, *extra: str) -> dict:
    result = agent.cli("acquire", "--unscheduled", "--patient-id", "MPPS-1", "--patient-name",
                       "Mpps^Test", "--json", "--wait", "60", *extra)
    assert result.returncode == 0, result.stderr + agent.log()[-2000:]
    return json.loads(result.stdout)


def test_two_acquisitions_one_procedure_completed(
        agent: AgentProcess, ris: tuple[MppsPeer, int], orthanc: OrthancServer,
        tmp_path: Path) -> None:
    peer, _ = ris
    first = acquire(agent, "--frames", "2")
    [procedure] = json.loads(agent.cli("status", "--json").stdout)["procedures"]
    mpps_uid = procedure["mpps_uid"]
    wait_until(lambda: peer.states.get(mpps_uid) == [IN_PROGRESS], 20,
               f"no MPPS IN PROGRESS at the RIS: {peer.states}")
    second = acquire(agent, "--frames", "1", "--end", "completed")
    wait_until(lambda: peer.states.get(mpps_uid) == [IN_PROGRESS, COMPLETED], 20,
               f"MPPS not completed: {peer.states}")
    final = peer.instances[mpps_uid]
    performed = {s.SeriesInstanceUID: [r.ReferencedSOPInstanceUID
                                       for r in s.ReferencedImageSequence]
                 for s in final.PerformedSeriesSequence}
    uids = [o["sop_instance_uid"] for o in first["objects"] + second["objects"]]
    assert sorted(u for images in performed.values() for u in images) == sorted(uids)
    assert len(performed) == 2                         # one series per acquisition
    studies = set()
    for uid in uids:
        stored = orthanc.instance_file(orthanc.find_instance(uid) or "")
        ds = dcmread(io.BytesIO(stored))
        [reference] = ds.ReferencedPerformedProcedureStepSequence
        assert reference.ReferencedSOPInstanceUID == mpps_uid
        assert reference.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.3"
        assert ds.PerformedProcedureStepID == final.PerformedProcedureStepID
        studies.add(ds.StudyInstanceUID)
        path = tmp_path / "with-mpps.dcm"
        path.write_bytes(stored)
        assert run_dciodvfy(path) == []
    assert studies == {final.ScheduledStepAttributesSequence[0].StudyInstanceUID}
    assert json.loads(agent.cli("status", "--json").stdout)["procedures"] == []
    assert "Mpps^Test" not in agent.log() and "MPPS-1" not in agent.log()


def test_discontinued_with_a_reason(agent: AgentProcess, ris: tuple[MppsPeer, int]) -> None:
    peer, _ = ris
    acquire(agent, "--frames", "1", "--end", "discontinued", "--reason", "110501")
    wait_until(lambda: any(s == [IN_PROGRESS, DISCONTINUED] for s in peer.states.values()), 20,
               f"MPPS not discontinued: {peer.states}")
    [final] = peer.instances.values()
    [reason] = final.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert reason.CodeValue == "110501"
    bad = agent.cli("acquire", "--unscheduled", "--patient-id", "MPPS-2", "--patient-name",
                    "Other^Patient", "--end", "discontinued", "--reason", "999")
    assert bad.returncode == 1 and "unknown discontinuation reason" in bad.stderr
    assert len(peer.instances) == 1             # refused before anything was started
