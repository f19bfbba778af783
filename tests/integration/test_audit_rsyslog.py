"""Audit messages at a real audit record repository: Debian's rsyslogd, started by the test on a
free port (imtcp, imtcp + gtls with certificates made here, imudp), writing each raw message to
a file this test parses. Every received XML must validate against the PS3.15 A.5.1 schema."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydicom import Dataset
from support.certs import CertPair, TestCA
from support.peers import free_port, wait_until
from support.rsyslog import ReceivedMessage, Rsyslog, rsyslog, start_rsyslog

from agent.audit import AlertKind, AuditPeer, AuditTrail, Outcome
from agent.config import AgentConfig, load_config

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "audit" / "audit-message.rng"
SC = "1.2.840.10008.5.1.4.1.1.7"
PACS = AuditPeer("127.0.0.1", "PACS", 4242)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "ca")


def write_config(tmp_path: Path, port: int, transport: str, client: CertPair | None = None,
                 extra: str = "") -> AgentConfig:
    tls = ""
    if client is not None:
        tls = (f'[tls]\ncertificate = "{client.certificate}"\n'
               f'private_key = "{client.private_key}"\nca_file = "{client.ca_file}"\n')
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nae_title = "MODALITY1"\nspool_dir = "spool"\n'
                    '[[destinations]]\nname = "pacs"\nhost = "127.0.0.1"\nport = 4242\n'
                    f'called_ae = "PACS"\n[audit]\nhost = "127.0.0.1"\nport = {port}\n'
                    f'transport = "{transport}"\nretry_initial_s = 0.2\nretry_max_s = 0.5\n'
                    f"{extra}{tls}")
    return load_config(path)


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


def event_ids(received: list[ReceivedMessage]) -> list[str]:
    return [m.xml.split(b'<EventID csd-code="')[1][:6].decode() for m in received]


def a_session(trail: AuditTrail) -> None:
    """start -> worklist -> acquire (MPPS, store) -> commit -> refused association -> stop."""
    trail.application_start()
    query = Dataset()
    query.ScheduledProcedureStepSequence = []
    trail.worklist_query(AuditPeer("127.0.0.1", "RIS", 4243), query)
    trail.procedure_record("create", patient_id="PID-1", study_uid="1.2.3", mpps_uid="1.2.4",
                           sop_classes={SC: 0}, accession="ACC-1")
    trail.begin_transferring(PACS, patient_id="PID-1", study_uid="1.2.3",
                             sop_classes={SC: 2}, accession="ACC-1")
    trail.instances_transferred(PACS, patient_id="PID-1", study_uid="1.2.3",
                                sop_classes={SC: 2}, outcome=Outcome.SUCCESS)
    trail.procedure_record("update", patient_id="PID-1", study_uid="1.2.3", mpps_uid="1.2.4",
                           sop_classes={SC: 2})
    trail.instances_transferred(PACS, patient_id="PID-1", study_uid="1.2.3",
                                sop_classes={SC: 2}, outcome=Outcome.SUCCESS, committed=True)
    trail.security_alert(AlertKind.REFUSED_ASSOCIATION, "calling AE EVIL not allowed",
                         AuditPeer("127.0.0.5", "EVIL"))
    trail.application_stop()


SESSION_EVENTS = ["110100", "110112", "110111", "110102", "110104", "110111", "110104",
                  "110113", "110100"]


@pytest.mark.parametrize("transport", ["tls", "tcp", "udp"])
def test_a_session_arrives_schema_valid_in_order(tmp_path: Path, ca: TestCA,
                                                 transport: str) -> None:
    port = free_port()
    client = ca.issue("agent") if transport == "tls" else None
    server = ca.issue("arr") if transport == "tls" else None
    config = write_config(tmp_path, port, transport, client)
    with rsyslog(tmp_path / "rsyslog", port, transport, server=server) as repository:
        trail = AuditTrail(config)
        trail.start()
        try:
            a_session(trail)
            wait_until(lambda: len(repository.messages()) >= len(SESSION_EVENTS), 20,
                       f"{len(SESSION_EVENTS)} audit messages at rsyslog over {transport}")
            wait_until(lambda: trail.status()["backlog"] == 0, 10, "the backlog confirmed")
        finally:
            trail.stop()
        received = repository.messages()
    assert event_ids(received) == SESSION_EVENTS
    assert [m.sequence_id for m in received] == list(range(1, len(SESSION_EVENTS) + 1))
    assert {m.msgid for m in received} == {"IHE+RFC-3881"}
    assert {m.app_name for m in received} == {"modality-agent"}
    assert [m.pri for m in received] == [85] * 7 + [84, 85]
    assert {m.procid for m in received} == {str(os.getpid())}
    assert all(m.msg.startswith(b"\xef\xbb\xbf<?xml") for m in received)
    assert_schema_valid(received, tmp_path / "xml")
    assert b'ParticipantObjectID="PID-1"' in received[4].xml
    assert b'AlternativeUserID="AETITLES=MODALITY1"' in received[0].xml


def test_repository_down_then_back_delivers_everything_once_in_order(
        tmp_path: Path, ca: TestCA) -> None:
    port = free_port()
    client, server = ca.issue("agent"), ca.issue("arr")
    trail = AuditTrail(write_config(tmp_path, port, "tls", client))
    trail.start()
    repository: Rsyslog | None = None
    try:
        for n in range(10):
            trail.security_alert(AlertKind.REFUSED_API_REQUEST, f"request {n}")
        wait_until(lambda: trail.status()["receiver_reachable"] is False, 10,
                   "the sender to find the repository down")
        assert trail.status()["backlog"] == 10
        repository = start_rsyslog(tmp_path / "rsyslog", port, "tls", server=server)
        wait_until(lambda: len(repository.messages()) >= 10, 20, "the 10 spooled messages")
        wait_until(lambda: trail.status()["backlog"] == 0, 10, "the backlog confirmed")
        # down again, while connected: messages written meanwhile wait, none is lost
        repository.stop()
        for n in range(10, 20):
            trail.security_alert(AlertKind.REFUSED_API_REQUEST, f"request {n}")
        wait_until(lambda: trail.status()["receiver_reachable"] is False, 10,
                   "the sender to notice the closed connection")
        repository = start_rsyslog(tmp_path / "rsyslog", port, "tls", server=server)
        wait_until(lambda: len(repository.messages()) >= 20, 20, "all 20 messages")
        wait_until(lambda: trail.status()["backlog"] == 0, 10, "the backlog confirmed")
        received = repository.messages()
    finally:
        trail.stop()
        if repository is not None:
            repository.stop()
    assert [m.sequence_id for m in received] == list(range(1, 21))
    assert_schema_valid(received, tmp_path / "xml")


def test_untrusted_repository_certificate_sends_nothing(tmp_path: Path, ca: TestCA) -> None:
    port = free_port()
    stranger = TestCA.create(tmp_path / "other-ca", "Unknown CA").issue("arr")
    trail = AuditTrail(write_config(tmp_path, port, "tls", ca.issue("agent")))
    with rsyslog(tmp_path / "rsyslog", port, "tls", server=stranger) as repository:
        trail.start()
        try:
            trail.application_start()
            wait_until(lambda: trail.status()["last_error"] is not None, 10,
                       "the failed handshake in status")
            status = trail.status()
        finally:
            trail.stop(flush_timeout_s=0)
        assert repository.messages() == []
    assert "unknown CA" in status["last_error"]
    assert status["alert"].startswith("audit repository not trusted")
    assert status["backlog"] == 1 and status["receiver_reachable"] is False


_CRASHING_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from agent.audit import AlertKind, AuditTrail
    from agent.config import load_config
    trail = AuditTrail(load_config(Path(sys.argv[1])))
    for n in range(5):
        trail.security_alert(AlertKind.REFUSED_API_REQUEST, f"before the crash {n}")
    # the events are reported done; the process dies before its sender ever runs
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_kill_9_between_writing_and_sending_loses_and_repeats_nothing(
        tmp_path: Path, ca: TestCA) -> None:
    port = free_port()
    config = write_config(tmp_path, port, "tcp")
    child = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(config.path)],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, check=False, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    with rsyslog(tmp_path / "rsyslog", port, "tcp") as repository:
        trail = AuditTrail(config)
        trail.start()
        try:
            trail.application_start()
            wait_until(lambda: len(repository.messages()) >= 6, 20, "the 6 messages")
            wait_until(lambda: trail.status()["backlog"] == 0, 10, "the backlog confirmed")
        finally:
            trail.stop()
        received = repository.messages()
    assert [m.sequence_id for m in received] == [1, 2, 3, 4, 5, 6]
    assert event_ids(received) == ["110113"] * 5 + ["110100"]
    assert len({m.procid for m in received[:5]}) == 1     # written by the killed process
    assert received[5].procid == str(os.getpid())
