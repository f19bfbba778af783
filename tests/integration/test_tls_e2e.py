"""DICOM TLS end to end against two independent TLS peers (issue 14): Orthanc 1.10 with
DicomTls* (worklist C-FIND, C-STORE, the Storage Commitment N-ACTION, and Orthanc's commitment
report to our TLS listener), DCMTK storescp +tls (C-STORE, C-ECHO); a recording relay proves
that every byte the agent put on the wire was inside TLS records.

Certificates are RSA: Orthanc and storescp offer TLS 1.3, but over TLS 1.2 the default profile
(BCP 195 non-downgrading) has only RSA suites (docs/tls.md).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from support.agent_process import AGENT_AE, AgentProcess, Destination, TlsFiles, make_agent
from support.certs import TlsWorld, make_tls_world
from support.peers import (
    LOCALHOST,
    RecordingRelay,
    free_port,
    start_storescp_tls,
    stop_process,
    tls_stream_problem,
    wait_until,
)
from support.worklist_data import Entry, write_wl

from agent.demo.orthanc import (
    OrthancNotInstalled,
    OrthancServer,
    OrthancTls,
    RegisteredModality,
    start_orthanc,
)

pytestmark = pytest.mark.integration

TODAY = date.today().strftime("%Y%m%d")
PHI_NAME = "Tlsmann^Geheim"
PHI_ID = "PID-TLS-SECRET-42"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TlsWorld:
    return make_tls_world(tmp_path_factory.mktemp("tls"), key_type="rsa")


def agent_tls(world: TlsWorld) -> TlsFiles:
    return TlsFiles(world.client.certificate, world.client.private_key, world.ca.certificate)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def start_tls_orthanc(tmp_path: Path, world: TlsWorld, listener_port: int) -> OrthancServer:
    """Orthanc speaking only DICOM TLS, worklist plugin on, the agent registered with
    UseDicomTls (so the commitment report comes over TLS too)."""
    workdir = tmp_path / "orthanc"
    dicom_port = free_port()
    try:
        return start_orthanc(
            workdir, dicom_port=dicom_port, http_port=free_port(exclude={dicom_port}),
            worklist_dir=workdir / "worklists",
            modalities=[RegisteredModality("agent", AGENT_AE, LOCALHOST, listener_port,
                                           use_tls=True)],
            tls=OrthancTls(world.server.certificate, world.server.private_key,
                           world.ca.certificate))
    except OrthancNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)


def test_worklist_store_and_commitment_all_over_tls_with_orthanc(
        tmp_path: Path, world: TlsWorld, agents: list[AgentProcess]) -> None:
    listener_port = free_port()
    orthanc = start_tls_orthanc(tmp_path, world, listener_port)
    try:
        entry = Entry(patient_name=PHI_NAME, patient_id=PHI_ID, start_date=TODAY,
                      accession_number="ACC-TLS-1")
        write_wl(orthanc.workdir / "worklists", entry, "item")
        agent = make_agent(
            tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title, tls=True)],
            listener_port=listener_port, tls=agent_tls(world), listener_tls=True,
            extra_toml=f'[worklist]\nhost = "{LOCALHOST}"\nport = {orthanc.dicom_port}\n'
                       f'called_ae = "{orthanc.ae_title}"\nrefresh_s = 3600\ntls = true\n')
        agents.append(agent)
        agent.start()

        # worklist C-FIND over TLS
        listed = agent.cli("worklist", "--json")
        assert listed.returncode == 0, listed.stderr + agent.log()[-3000:]
        worklist = json.loads(listed.stdout)
        assert worklist["source"] == "ris"
        assert [i["accession_number"] for i in worklist["items"]] == ["ACC-TLS-1"]

        # acquire -> C-STORE and N-ACTION over TLS -> Orthanc's report to our TLS listener
        result = agent.cli("acquire", "--accession", "ACC-TLS-1", "--frames", "2",
                           "--wait", "60", "--json")
        assert result.returncode == 0, result.stderr + agent.log()[-3000:]
        objects = json.loads(result.stdout)["objects"]
        assert [o["state"] for o in objects] == ["committed", "committed"], objects
        for obj in objects:
            orthanc_id = orthanc.find_instance(obj["sop_instance_uid"])
            assert orthanc_id is not None
            ds = dcmread(io.BytesIO(orthanc.instance_file(orthanc_id)))
            assert str(ds.PatientName) == PHI_NAME and ds.PatientID == PHI_ID
            assert ds.StudyInstanceUID == entry.study_instance_uid
        rows = agent.queue_rows()
        assert {r["state"] for r in rows} == {"committed"} and len(rows) == 2

        log = agent.log()
        # the report came on an association Orthanc opened to our listener, over TLS, from
        # the certificate our CA issued to it
        assert "listener: TLS connection from 127.0.0.1:" in log
        assert "peer certificate subject CN=server, O=Test" in log
        assert "commitment report" in log
        assert "with DICOM TLS only" in log
        for secret in (PHI_NAME, PHI_ID, "Tlsmann", "Geheim"):
            assert secret not in log
        status = json.loads(agent.cli("status", "--json").stdout)
        assert status["tls"]["subject"] == "CN=client, O=Test"
        assert status["tls"]["warning"] == ""
    finally:
        for agent in agents:
            agent.stop()
        orthanc.stop()


@pytest.fixture
def tls_storescp(tmp_path: Path, world: TlsWorld) -> Iterator[tuple[int, Path]]:
    out_dir = tmp_path / "storescp"
    port = free_port()
    server = world.server
    process = start_storescp_tls(out_dir, port, private_key=server.private_key,
                                 certificate=server.certificate, ca_file=world.ca.certificate)
    try:
        yield port, out_dir
    finally:
        stop_process(process)


def acquire(agent: AgentProcess, frames: int) -> list[dict[str, object]]:
    result = agent.cli("acquire", "--unscheduled", "--patient-id", PHI_ID, "--patient-name",
                       PHI_NAME, "--frames", str(frames), "--wait", "60", "--json")
    assert result.returncode == 0, result.stderr + agent.log()[-3000:]
    objects: list[dict[str, object]] = json.loads(result.stdout)["objects"]
    return objects


def received_uids(out_dir: Path) -> set[str]:
    return {str(dcmread(path).SOPInstanceUID) for path in out_dir.iterdir()}


def test_store_over_tls_into_storescp(tmp_path: Path, world: TlsWorld,
                                      tls_storescp: tuple[int, Path],
                                      agents: list[AgentProcess]) -> None:
    port, out_dir = tls_storescp
    agent = make_agent(tmp_path, [Destination("scp", port, "STORESCP", storage_commitment=False,
                                              tls=True)], tls=agent_tls(world))
    agents.append(agent)
    agent.start()
    objects = acquire(agent, 2)
    assert [o["state"] for o in objects] == ["sent", "sent"]
    assert received_uids(out_dir) == {str(o["sop_instance_uid"]) for o in objects}


def test_every_byte_the_agent_sends_is_inside_tls(tmp_path: Path, world: TlsWorld,
                                                  tls_storescp: tuple[int, Path],
                                                  agents: list[AgentProcess]) -> None:
    port, out_dir = tls_storescp
    with RecordingRelay(port) as relay:
        agent = make_agent(tmp_path, [Destination("scp", relay.port, "STORESCP",
                                                  storage_commitment=False, tls=True)],
                           tls=agent_tls(world))
        agents.append(agent)
        agent.start()
        objects = acquire(agent, 2)
        assert [o["state"] for o in objects] == ["sent", "sent"]
        echo = agent.cli("echo", "--json")       # C-ECHO goes through the relay too
        assert echo.returncode == 0, echo.stdout + echo.stderr
        uids = {str(o["sop_instance_uid"]) for o in objects}
        assert received_uids(out_dir) == uids
        agent.stop()
        connections = relay.connections()
    # at least the store association and the echo
    assert len(connections) >= 2
    plaintext = [PHI_NAME.encode(), PHI_ID.encode(), AGENT_AE.encode(), b"STORESCP",
                 *(uid.encode() for uid in uids)]
    for index, connection in enumerate(connections):
        sent = bytes(connection.upstream)
        assert sent[:1] == b"\x16", f"connection {index} starts with {sent[:8].hex()}"
        assert tls_stream_problem(sent) == "", f"connection {index}"
        assert tls_stream_problem(bytes(connection.downstream)) == "", f"connection {index}"
        for text in plaintext:
            assert text not in sent, f"{text!r} crossed connection {index} in plaintext"
    assert sum(len(c.upstream) for c in connections) > 2 * 64 * 64 * 2   # the pixels went


def test_the_relay_would_see_plaintext(tmp_path: Path, agents: list[AgentProcess]) -> None:
    """The relay check can fail: without TLS the same send shows an A-ASSOCIATE-RQ and the
    patient's name on the wire."""
    from support.peers import start_storescp

    port = free_port()
    process = start_storescp(tmp_path / "plain", port)
    try:
        with RecordingRelay(port) as relay:
            agent = make_agent(tmp_path, [Destination("scp", relay.port, "STORESCP",
                                                      storage_commitment=False)])
            agents.append(agent)
            agent.start()
            acquire(agent, 1)
            wait_until(lambda: relay.connections() != [], 10, "a connection through the relay")
            sent = bytes(relay.connections()[0].upstream)
    finally:
        stop_process(process)
    assert sent[:2] == b"\x01\x00"                          # A-ASSOCIATE-RQ
    assert tls_stream_problem(sent) != ""
    assert PHI_NAME.encode() in sent
