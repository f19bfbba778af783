"""The technologist's path: worklist from a real RIS (DCMTK wlmscpfs), `acquire --accession`,
and images in a real archive (Orthanc) that carry the worklist item's patient, study and
request attributes exactly."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from support.agent_process import AGENT_AE, AgentProcess, Destination, make_agent
from support.peers import free_port, run_dciodvfy, stop_process
from support.worklist_data import Entry, numbered, running_wlmscpfs, write_wl

from agent.demo.orthanc import OrthancServer, RegisteredModality

pytestmark = pytest.mark.integration

TODAY = date.today().strftime("%Y%m%d")


@pytest.fixture
def ris(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    with running_wlmscpfs(tmp_path / "ris", "-csk") as server:
        called_ae, folder = server.new_called_ae()
        yield server.port, called_ae, folder


def start_agent(tmp_path: Path, orthanc: OrthancServer, ris_port: int,
                ris_ae: str) -> AgentProcess:
    listener_port = free_port()
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))
    agent = make_agent(
        tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
        listener_port=listener_port,
        extra_toml=f'[worklist]\nhost = "127.0.0.1"\nport = {ris_port}\n'
                   f'called_ae = "{ris_ae}"\nrefresh_s = 3600\n',
    )
    agent.start()
    return agent


def test_scheduled_acquisition_carries_the_worklist_item(
        tmp_path: Path, orthanc: OrthancServer, ris: tuple[int, str, Path]) -> None:
    port, called_ae, folder = ris
    # patient IDs that no procedure or step ID contains, so the log check means something
    greek = numbered(1, patient_name="Παπαδόπουλος^Γιάννης", patient_id="PID-GREEK-77",
                     start_date=TODAY)
    german = numbered(2, patient_name="Müller^Jürgen", patient_id="PID-GERMAN-88",
                      start_date=TODAY)
    elsewhere = numbered(3, station_ae_title="OTHERROOM", start_date=TODAY)
    for index, entry in enumerate((greek, german, elsewhere)):
        write_wl(folder, entry, f"item{index}")
    agent = start_agent(tmp_path, orthanc, port, called_ae)
    try:
        listed = agent.cli("worklist", "--json")
        assert listed.returncode == 0, listed.stderr
        worklist = json.loads(listed.stdout)
        assert worklist["source"] == "ris"
        names = sorted(i["patient_name"] for i in worklist["items"])
        assert names == sorted([greek.patient_name, german.patient_name])   # not OTHERROOM's

        result = agent.cli("acquire", "--accession", greek.accession_number, "--frames", "2",
                           "--wait", "60", "--json")
        assert result.returncode == 0, result.stderr + agent.log()[-2000:]
        uids = [o["sop_instance_uid"] for o in json.loads(result.stdout)["objects"]]
        for uid in uids:
            orthanc_id = orthanc.find_instance(uid)
            assert orthanc_id is not None
            stored = orthanc.instance_file(orthanc_id)
            ds = dcmread(io.BytesIO(stored))
            assert str(ds.PatientName) == greek.patient_name
            assert ds.PatientID == greek.patient_id
            assert ds.PatientBirthDate == greek.birth_date and ds.PatientSex == greek.sex
            assert ds.StudyInstanceUID == greek.study_instance_uid    # never a new one
            assert ds.AccessionNumber == greek.accession_number
            assert ds.StudyDescription == greek.requested_procedure_description
            [request] = ds.RequestAttributesSequence
            assert request.RequestedProcedureID == greek.requested_procedure_id
            assert request.ScheduledProcedureStepID == greek.sps_id
            assert request.ScheduledProcedureStepDescription == greek.sps_description
            path = tmp_path / f"{uid}.dcm"
            path.write_bytes(stored)
            assert run_dciodvfy(path) == []
        # acquired here: the entry is now marked, and a repeat is warned about, not refused
        again = agent.cli("acquire", "--accession", greek.accession_number, "--json")
        assert again.returncode == 0 and "warning" in again.stderr
        marked = json.loads(agent.cli("worklist", "--json").stdout)
        [item] = [i for i in marked["items"] if i["accession_number"] == greek.accession_number]
        assert item["status"] == "ACQUIRED"
        unknown = agent.cli("acquire", "--accession", "NO-SUCH-ACC")
        assert unknown.returncode == 1 and "NO-SUCH-ACC" in unknown.stderr
        log = agent.log()
        for secret in (greek.patient_name, greek.patient_id, german.patient_name, "Jürgen"):
            assert secret not in log
    finally:
        agent.stop()


def test_ris_down_uses_the_cache_with_its_age(tmp_path: Path, orthanc: OrthancServer) -> None:
    with running_wlmscpfs(tmp_path / "ris", "-csk") as server:
        called_ae, folder = server.new_called_ae()
        entry = Entry(start_date=TODAY)
        write_wl(folder, entry, "item")
        agent = start_agent(tmp_path, orthanc, server.port, called_ae)
        try:
            assert json.loads(agent.cli("worklist", "--json").stdout)["source"] == "ris"
            stop_process(server.process)                  # the RIS goes down
            offline = agent.cli("worklist", "--json")
            assert offline.returncode == 1                # not the live list: say so
            cached = json.loads(offline.stdout)
            assert cached["source"] == "cache" and cached["age_s"] is not None
            assert [i["accession_number"] for i in cached["items"]] == [entry.accession_number]
            text = agent.cli("worklist")
            assert "CACHE" in text.stdout and "RIS offline" in text.stdout
            # the technologist can still acquire for the cached entry
            result = agent.cli("acquire", "--accession", entry.accession_number, "--wait", "60")
            assert result.returncode == 0, result.stderr
        finally:
            agent.stop()
