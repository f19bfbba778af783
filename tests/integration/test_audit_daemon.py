"""The real daemon's audit trail at a real audit record repository (issue 15): Debian's rsyslogd
over TLS (certificates made here), Orthanc as archive and RIS, the agent in its own process.
A session start -> worklist -> acquire -> store + commit -> refused association -> refused API
request -> stop arrives as exactly the expected messages, each valid against the PS3.15 A.5.1
schema; the operational log holds no patient data; and a kill -9 loses and repeats nothing."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support.agent_process import AGENT_AE, AgentProcess, Destination, TlsFiles, make_agent
from support.certs import TestCA
from support.peers import LOCALHOST, free_port, wait_until
from support.rsyslog import ReceivedMessage, rsyslog

from agent.demo.orthanc import OrthancServer, RegisteredModality

pytestmark = pytest.mark.integration

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "audit" / "audit-message.rng"
PHI_ID = "PHI-AUDIT-4711"
PHI_NAME = "AUDIT^SENTINEL"


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def audit_toml(port: int, transport: str) -> str:
    return (f'[audit]\nhost = "{LOCALHOST}"\nport = {port}\ntransport = "{transport}"\n'
            "retry_initial_s = 0.2\nretry_max_s = 0.5\n")


def event(message: ReceivedMessage) -> str:
    """EventID, and the EventTypeCode or EventActionCode that tells events of one ID apart."""
    xml = message.xml
    event_id = xml.split(b'<EventID csd-code="')[1][:6].decode()
    if b"<EventTypeCode" in xml:
        type_code = xml.split(b'<EventTypeCode csd-code="')[1][:6].decode()
        return f"{event_id}/{type_code}"
    if event_id == "110104":
        stored = b'value="c3RvcmVk"' in xml          # base64("stored")
        return f"{event_id}/{'stored' if stored else 'committed'}"
    return event_id


def assert_schema_valid(received: list[ReceivedMessage], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, message in enumerate(received):
        path = folder / f"{number}.xml"
        path.write_bytes(message.xml)
        paths.append(str(path))
    result = subprocess.run(["/usr/bin/xmllint", "--noout", "--relaxng", str(SCHEMA), *paths],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def refused_association(listener_port: int) -> None:
    """An association from an AE title the listener does not accept."""
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOCALHOST, listener_port, ae_title=AGENT_AE)
    assert assoc.is_rejected
    ae.shutdown()


def refused_api_request(agent: AgentProcess) -> None:
    request = urllib.request.Request(f"http://{LOCALHOST}:{agent.api_port}/api/status",
                                     headers={"Authorization": "Bearer wrong-token"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code in (401, 403)


def acquire(agent: AgentProcess) -> None:
    result = agent.cli("acquire", "--unscheduled", "--patient-id", PHI_ID, "--patient-name",
                       PHI_NAME, "--frames", "1", "--json", "--wait", "60")
    assert result.returncode == 0, result.stderr + agent.log()
    payload: dict = json.loads(result.stdout)
    assert [o["state"] for o in payload["objects"]] == ["committed"], payload


def test_a_session_arrives_as_exactly_the_expected_messages_over_tls(
        tmp_path: Path, orthanc: OrthancServer, agents: list[AgentProcess]) -> None:
    ca = TestCA.create(tmp_path / "ca")
    ours, repository_pair = ca.issue("modality1"), ca.issue("arr")
    syslog_port, listener_port = free_port(), free_port()
    extra = audit_toml(syslog_port, "tls") + (
        f'[worklist]\nhost = "{LOCALHOST}"\nport = {orthanc.dicom_port}\n'
        f'called_ae = "{orthanc.ae_title}"\nrefresh_s = 3600\n')
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
                       listener_port=listener_port, extra_toml=extra,
                       tls=TlsFiles(ours.certificate, ours.private_key, ours.ca_file))
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, LOCALHOST, listener_port))
    agents.append(agent)
    with rsyslog(tmp_path / "rsyslog", syslog_port, "tls", server=repository_pair) as arr:
        agent.start()
        wait_until(lambda: len(arr.messages()) >= 2, 30, "Application Start and the first "
                   "worklist query at the repository")
        assert agent.cli("worklist").returncode == 0, agent.log()
        acquire(agent)
        [procedure] = agent.api("GET", "/api/procedures")["procedures"]
        refused_association(listener_port)
        refused_api_request(agent)
        status = agent.api("GET", "/api/status")
        assert status["audit"]["enabled"] is True and status["audit"]["alert"] is None
        agent.stop()
        expected = 9
        wait_until(lambda: len(arr.messages()) >= expected, 30, f"{expected} audit messages")
        received = arr.messages()
    events = [event(m) for m in received]
    # the worklist thread queries while the daemon starts: either may be recorded first
    assert sorted(events[:2]) == ["110100/110120", "110112"], events
    assert events[2:] == ["110112", "110102", "110104/stored", "110104/committed",
                          "110113/110126", "110113/110132", "110100/110121"], events
    assert [m.sequence_id for m in received] == list(range(1, len(received) + 1))
    assert_schema_valid(received, tmp_path / "xml")
    study = procedure["study_instance_uid"]
    for message in received:
        if event(message).startswith(("110102", "110104")):
            assert f'ParticipantObjectID="{PHI_ID}"'.encode() in message.xml
            assert f'ParticipantObjectID="{study}"'.encode() in message.xml
            assert b'UserID="ORTHANC"' in message.xml
    refusal = next(m for m in received if event(m) == "110113/110126")
    assert b"INTRUDER" in refusal.xml
    # the operational log (INFO and above) never names the patient
    log = agent.log()
    assert PHI_ID not in log and PHI_NAME not in log


def test_kill_9_with_the_repository_down_loses_and_repeats_nothing(
        tmp_path: Path, agents: list[AgentProcess]) -> None:
    """Events written while the repository is down, the daemon killed before it could send
    them: the next start sends each once, in order, after them its own; a config file changed
    in between is a Software Configuration alert."""
    syslog_port = free_port()
    agent = make_agent(tmp_path, [Destination("pacs", free_port(), "PACS")],
                       extra_toml=audit_toml(syslog_port, "tcp"))
    agents.append(agent)
    agent.start()
    wait_until(lambda: agent.api("GET", "/api/status")["audit"]["backlog"] == 1, 20,
               "Application Start spooled")
    refused_api_request(agent)
    status = agent.api("GET", "/api/status")["audit"]
    assert status["backlog"] == 2 and status["receiver_reachable"] is False, status
    agent.kill9()
    with agent.config_path.open("a") as config:
        config.write("# changed by the service engineer\n")
    with rsyslog(tmp_path / "rsyslog", syslog_port, "tcp") as arr:
        agent.start()
        wait_until(lambda: len(arr.messages()) >= 4, 30, "the 2 spooled messages and 2 new")
        agent.stop()
        wait_until(lambda: len(arr.messages()) >= 5, 30, "Application Stop")
        received = arr.messages()
    assert [event(m) for m in received] == ["110100/110120", "110113/110132", "110113/110131",
                                            "110100/110120", "110100/110121"]
    assert [m.sequence_id for m in received] == [1, 2, 3, 4, 5]
    assert len({m.procid for m in received[:2]} | {m.procid for m in received[2:]}) == 2
    assert_schema_valid(received, tmp_path / "xml")
