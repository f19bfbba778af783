"""AuditTrail end to end against loopback receivers in this process: octet-counted frames over
TCP, datagrams over UDP with the size cap, backlog and alerts in status, the disabled trail."""

from __future__ import annotations

import datetime
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from support.peers import wait_until

from agent.audit import AlertKind, AuditPeer, AuditTrail, AuditUnavailable, Outcome
from agent.audit.messages import Node
from agent.audit.syslog import split_octet_counted
from agent.config import AgentConfig, load_config

NODE = Node("MODALITY1", "acq1.example", 4242)
PACS = AuditPeer("127.0.0.1", "PACS", 104)


def write_config(tmp_path: Path, audit: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nspool_dir = "spool"\n[[destinations]]\nname = "pacs"\n'
                    f'host = "127.0.0.1"\nport = 4242\ncalled_ae = "PACS"\n{audit}')
    return load_config(path)


class TcpReceiver:
    """Accepts connections one at a time and keeps every octet-counted frame received."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.frames: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                pending = b""
                while data := conn.recv(65536):
                    frames, pending = split_octet_counted(pending + data)
                    self.frames.extend(frames)

    def close(self) -> None:
        self.server.close()
        self._thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[TcpReceiver]:
    server = TcpReceiver()
    try:
        yield server
    finally:
        server.close()


def sequence_ids(frames: list[bytes]) -> list[int]:
    return [int(f.split(b'sequenceId="')[1].split(b'"')[0]) for f in frames]


def test_events_arrive_in_order_as_octet_counted_frames(tmp_path: Path,
                                                         receiver: TcpReceiver) -> None:
    config = write_config(tmp_path, f'[audit]\nhost = "127.0.0.1"\nport = {receiver.port}\n'
                                    'transport = "tcp"\n')
    trail = AuditTrail(config, node=NODE, confirm_s=0.05)
    trail.start()
    try:
        trail.application_start()
        query = Dataset()
        query.Modality = "OT"
        trail.worklist_query(AuditPeer("127.0.0.1", "RIS"), query)
        trail.begin_transferring(PACS, patient_id="PID-1", study_uid="1.2.3",
                                 sop_classes={"1.2.840.10008.5.1.4.1.1.7": 2})
        trail.instances_transferred(PACS, patient_id="PID-1", study_uid="1.2.3",
                                    sop_classes={"1.2.840.10008.5.1.4.1.1.7": 2},
                                    outcome=Outcome.SUCCESS)
        trail.security_alert(AlertKind.REFUSED_ASSOCIATION, "calling AE not allowed",
                             AuditPeer("127.0.0.2", "EVIL"))
        trail.procedure_record("create", patient_id="PID-1", study_uid="1.2.3",
                               mpps_uid="1.2.4", sop_classes={})
        trail.application_stop()
        wait_until(lambda: len(receiver.frames) == 7, 10, "7 audit frames at the receiver")
        wait_until(lambda: trail.status()["backlog"] == 0, 10, "the backlog confirmed")
        status = trail.status()
    finally:
        trail.stop()
    assert sequence_ids(receiver.frames) == [1, 2, 3, 4, 5, 6, 7]
    events = [f.split(b'<EventID csd-code="')[1][:6] for f in receiver.frames]
    assert events == [b"110100", b"110112", b"110102", b"110104", b"110113", b"110111",
                      b"110100"]
    assert receiver.frames[4].startswith(b"<84>1 ")      # the refusal: a warning
    assert status["receiver_reachable"] is True and status["alert"] is None
    assert status["delivered"] == 7


def test_a_backlog_older_than_the_limit_is_an_alert(tmp_path: Path) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                      # nothing listens there now
    config = write_config(tmp_path, f'[audit]\nhost = "127.0.0.1"\nport = {port}\n'
                                    'transport = "tcp"\nbacklog_alert_s = 3600\n')
    two_hours_ago = datetime.datetime.now().astimezone() - datetime.timedelta(hours=2)
    trail = AuditTrail(config, node=NODE, clock=lambda: two_hours_ago)
    trail.start()
    try:
        trail.application_start()
        wait_until(lambda: trail.status()["receiver_reachable"] is False, 10,
                   "the sender to find the repository down")
        status = trail.status()
    finally:
        trail.stop(flush_timeout_s=0)
    assert status["backlog"] == 1
    assert status["oldest_age_s"] > 3600
    assert "cannot connect" in status["last_error"]
    assert status["alert"].startswith("audit backlog: 1 message(s) undelivered")
    # stopped with the backlog: it stays for the next start
    again = AuditTrail(config, node=NODE)
    assert again.status()["backlog"] == 1
    again.stop()


def test_udp_datagrams_and_the_size_cap(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(10)
        config = write_config(tmp_path, f'[audit]\nhost = "127.0.0.1"\n'
                                        f'port = {udp.getsockname()[1]}\ntransport = "udp"\n'
                                        'udp_max_bytes = 1500\n')
        trail = AuditTrail(config, node=NODE)
        trail.start()
        try:
            trail.security_alert(AlertKind.REFUSED_API_REQUEST, "x" * 2000,
                                 AuditPeer("127.0.0.9"))
            trail.application_start()
            datagram = udp.recv(65536)
            # the datagram can arrive before the sender has recorded its delivery: wait for both
            wait_until(lambda: trail.status()["held"] == 1 and trail.status()["backlog"] == 0,
                       10, "the large message held and the small one delivered")
            status = trail.status()
        finally:
            trail.stop()
    # one message per datagram, no octet count (RFC 5426 3.1); the big one was never cut
    assert datagram.startswith(b"<85>1 ") and b'sequenceId="2"' in datagram
    assert len(datagram) <= 1500
    assert "udp_max_bytes" in status["alert"] and status["backlog"] == 0


def test_without_an_audit_section_nothing_is_recorded(tmp_path: Path) -> None:
    trail = AuditTrail(write_config(tmp_path, ""))
    trail.start()
    trail.application_start()
    trail.security_alert(AlertKind.TLS_FAILURE, "unknown CA", PACS)
    trail.stop()
    assert trail.status() == {"enabled": False, "alert": None}
    assert not (tmp_path / "spool" / "audit").exists()


def test_an_event_that_cannot_be_recorded_raises(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[audit]\nhost = "127.0.0.1"\nport = 9\n'
                                    'transport = "tcp"\n')
    trail = AuditTrail(config, node=NODE)
    trail.application_start()
    db = trail._spool._db  # type: ignore[union-attr]
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(AuditUnavailable):
        trail.security_alert(AlertKind.REFUSED_API_REQUEST, "y" * 200_000)
    trail.stop()
    with pytest.raises(AuditUnavailable, match="stopped"):
        trail.application_stop()


def test_patient_data_never_reaches_the_operational_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    config = write_config(tmp_path, '[audit]\nhost = "127.0.0.1"\nport = 9\n'
                                    'transport = "udp"\nudp_max_bytes = 480\n')
    trail = AuditTrail(config, node=NODE)
    trail.start()
    try:
        trail.instances_transferred(PACS, patient_id="PHI^SENTINEL", study_uid="1.2.3",
                                    sop_classes={}, outcome=Outcome.SUCCESS)
        wait_until(lambda: trail.status()["held"] == 1, 10, "the oversize message held")
    finally:
        trail.stop()
    assert caplog.records, "the held message should have been logged"
    assert not [r for r in caplog.records if "PHI^SENTINEL" in r.getMessage()]
