"""Store-and-forward under faults (RELIABILITY.md §3): forged reports, refusing, aborting and slow
archives, crash points, a kill -9 storm, a full disk. Real daemon process, real peers."""

from __future__ import annotations

import io
import json
import random
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, config, dcmread
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance
from support.agent_process import AGENT_AE, AgentProcess, Destination, make_agent
from support.faultproxy import FaultProxy
from support.peers import LOCALHOST, free_port, start_storescp, stop_process, wait_until

from agent.acquisition import SPOOL_GROUP_MAX
from agent.crashpoints import POINTS
from agent.demo.orthanc import OrthancServer, RegisteredModality, start_orthanc

pytestmark = pytest.mark.integration

SC = "1.2.840.10008.5.1.4.1.1.7"
FINAL = {"committed"}


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def acquire(agent: AgentProcess, frames: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return agent.cli("acquire", "--unscheduled", "--patient-id", "FAULT-1", "--patient-name",
                     "Fault^Test", "--frames", str(frames), "--json", *extra)


def reported_uids(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The UIDs `acquire --json` acknowledged (also when it stopped part way)."""
    if not result.stdout.strip():
        return set()
    return {o["sop_instance_uid"] for o in json.loads(result.stdout)["objects"]}


def all_final(agent: AgentProcess) -> bool:
    rows = agent.queue_rows()
    return bool(rows) and all(r["state"] in FINAL for r in rows)


def orthanc_uids(orthanc: OrthancServer) -> list[str]:
    return [orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances()]


def orthanc_with_agent(tmp_path: Path, listener_port: int) -> OrthancServer:
    dicom_port = free_port(exclude={listener_port})
    return start_orthanc(
        tmp_path / "orthanc", dicom_port=dicom_port,
        http_port=free_port(exclude={listener_port, dicom_port}),
        modalities=[RegisteredModality("agent", AGENT_AE, LOCALHOST, listener_port)])


# -- forged and malformed commitment reports ---------------------------------------------------
def send_report(listener_port: int, calling_ae: str, event_type: int,
                info: Dataset) -> int | None:
    """What a hostile or broken archive could send; returns the status, None if refused."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(LOCALHOST, listener_port, ae_title=AGENT_AE)
    if not assoc.is_established:
        return None
    try:
        status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                              StorageCommitmentPushModelInstance)
    finally:
        assoc.release()
    return int(status.Status) if "Status" in status else None


def report(transaction_uid: str, committed: list[str] = (), failed: list[str] = ()) -> Dataset:
    with config.disable_value_validation():
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        items = []
        for uid in committed:
            item = Dataset()
            item.ReferencedSOPClassUID = SC
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
        ds.ReferencedSOPSequence = Sequence(items)
        if failed:
            f_items = []
            for uid in failed:
                item = Dataset()
                item.ReferencedSOPClassUID = SC
                item.ReferencedSOPInstanceUID = uid
                item.FailureReason = 0x0110
                f_items.append(item)
            ds.FailedSOPSequence = Sequence(f_items)
    return ds


def test_forged_reports_are_refused_or_ignored(tmp_path: Path,
                                               agents: list[AgentProcess]) -> None:
    listener_port = free_port()
    with orthanc_with_agent(tmp_path, listener_port) as orthanc:
        agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, "ORTHANC")],
                           listener_port=listener_port)
        agents.append(agent)
        agent.start()
        assert acquire(agent, 1, "--wait", "30").returncode == 0
        [row] = agent.queue_rows()
        assert row["state"] == "committed"
        txn, uid = row["transaction_uid"], row["sop_instance_uid"]
        files_before = sorted(p.name for p in (agent.spool_dir / "objects").iterdir())

        # an AE title that is not a configured archive: refused at association time
        assert send_report(listener_port, "EVIL", 1, report(txn, [uid])) is None
        # the archive's AE title, but a transaction we never started
        assert send_report(listener_port, "ORTHANC", 1, report("2.25.999", [uid])) == 0x0211
        # a real transaction, naming an instance we never sent: ignored
        assert send_report(listener_port, "ORTHANC", 1, report(txn, ["2.25.424242"])) == 0x0000
        # a late 'failed' for a committed instance cannot undo the commitment
        assert send_report(listener_port, "ORTHANC", 2, report(txn, [], [uid])) == 0x0000
        # malformed: unknown event type, a path in place of a UID
        assert send_report(listener_port, "ORTHANC", 3, report(txn, [uid])) == 0x0115
        assert send_report(listener_port, "ORTHANC", 1, report("../../x", [uid])) == 0x0115

        rows = agent.queue_rows()
        assert [(r["sop_instance_uid"], r["state"]) for r in rows] == [(uid, "committed")]
        assert sorted(p.name for p in (agent.spool_dir / "objects").iterdir()) == files_before
        assert "2.25.424242" in agent.log() and "ignored" in agent.log()
        # and the real archive is still heard
        assert acquire(agent, 1, "--wait", "30").returncode == 0


# -- archives that refuse, abort or crawl ------------------------------------------------------
def storescp_destination(tmp_path: Path, port: int) -> list[Destination]:
    return [Destination("scp", port, "STORESCP", storage_commitment=False)]


def test_refused_association_waits_and_recovers(tmp_path: Path,
                                                agents: list[AgentProcess]) -> None:
    port = free_port()
    out = tmp_path / "received"
    refusing = start_storescp(out, port, extra_args=["--refuse"])
    agent = make_agent(tmp_path, storescp_destination(tmp_path, port))
    agents.append(agent)
    try:
        agent.start()
        uids = reported_uids(acquire(agent, 2))
        assert len(uids) == 2
        wait_until(lambda: any("rejected" in r["last_error"] for r in agent.queue_rows()), 20,
                   "a refusing archive was not reported as such")
        assert all(r["state"] in ("pending", "sending") for r in agent.queue_rows())
    finally:
        stop_process(refusing)
    accepting = start_storescp(out, port)
    try:
        wait_until(lambda: all(r["state"] == "sent" for r in agent.queue_rows()), 30,
                   f"not delivered once the archive accepted: {agent.log()}")
        assert {dcmread(p).SOPInstanceUID for p in out.iterdir()} == uids
    finally:
        stop_process(accepting)


@pytest.mark.parametrize("fault", ["--abort-after", "--abort-during"])
def test_abort_mid_store_resends_the_same_bytes_once(tmp_path: Path, agents: list[AgentProcess],
                                                     fault: str) -> None:
    port = free_port()
    out = tmp_path / "received"
    aborting = start_storescp(out, port, extra_args=[fault])
    agent = make_agent(tmp_path, storescp_destination(tmp_path, port))
    agents.append(agent)
    try:
        agent.start()
        [uid] = reported_uids(acquire(agent, 1))
        wait_until(lambda: any(r["last_error"] for r in agent.queue_rows()), 20,
                   "the abort was not noticed")
        assert agent.queue_rows()[0]["state"] in ("pending", "sending")
    finally:
        stop_process(aborting)
    spooled = (agent.spool_dir / "objects").iterdir().__next__().read_bytes()
    accepting = start_storescp(out, port)
    try:
        wait_until(lambda: agent.queue_rows()[0]["state"] == "sent", 30,
                   f"not delivered after the aborts stopped: {agent.log()}")
        received = [dcmread(p) for p in out.iterdir()]
        # storescp names files by SOP Instance UID: one file means no second UID was made
        assert [ds.SOPInstanceUID for ds in received] == [uid]
        assert received[0].PixelData == dcmread(io.BytesIO(spooled)).PixelData
    finally:
        stop_process(accepting)


def test_slow_archive_is_not_a_timeout(tmp_path: Path, agents: list[AgentProcess]) -> None:
    port = free_port()
    out = tmp_path / "received"
    slow = start_storescp(out, port, extra_args=["--sleep-during", "3"])
    agent = make_agent(tmp_path, storescp_destination(tmp_path, port))
    agents.append(agent)
    try:
        agent.start()
        result = acquire(agent, 1, "--wait", "60")
        assert result.returncode == 0, result.stderr + agent.log()
        assert [r["attempts"] for r in agent.queue_rows()] == [1]
        assert all(not r["last_error"] for r in agent.queue_rows())
    finally:
        stop_process(slow)


# -- crashes -----------------------------------------------------------------------------------
# the MPPS points are exercised by tests/integration/test_mpps_scu.py against the MPPS peer
@pytest.mark.parametrize("point", sorted(p for p in POINTS if not p.startswith("mpps_")))
def test_crash_point_loses_nothing(tmp_path: Path, agents: list[AgentProcess],
                                   point: str) -> None:
    listener_port = free_port()
    with orthanc_with_agent(tmp_path, listener_port) as orthanc:
        agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, "ORTHANC")],
                           listener_port=listener_port)
        agents.append(agent)
        agent.start(env={"AGENT_CRASHPOINT": point})
        result = acquire(agent, 3)
        acknowledged = reported_uids(result)
        process = agent.process
        assert process is not None
        wait_until(lambda: process.poll() is not None, 20, f"crash point {point} never reached")
        assert process.returncode == 137
        agent.process = None
        agent.start()
        if not agent.queue_rows():
            # the crash came before the first object was acknowledged
            assert not acknowledged
            result = acquire(agent, 1)
            acknowledged = reported_uids(result)
        wait_until(lambda: all_final(agent), 30, f"not all committed after {point}: "
                   f"{agent.queue_rows()} {agent.log()}")
        queued = {r["sop_instance_uid"] for r in agent.queue_rows()}
        held = orthanc_uids(orthanc)
        assert acknowledged <= queued                   # nothing acknowledged was lost
        assert sorted(held) == sorted(queued)           # each once, and nothing else
        if point == "after_rename":
            # the renamed files whose rows never committed were never acknowledged: the first
            # frame's, or a group's when frames had waited for the spool (SPOOL_GROUP_MAX)
            quarantined = len(list((agent.spool_dir / "quarantine").iterdir()))
            assert 1 <= quarantined <= SPOOL_GROUP_MAX


def test_kill_9_storm(tmp_path: Path, agents: list[AgentProcess]) -> None:
    rng = random.Random(20261124)
    listener_port = free_port()
    with orthanc_with_agent(tmp_path, listener_port) as orthanc:
        agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, "ORTHANC")],
                           listener_port=listener_port)
        agents.append(agent)
        acknowledged: set[str] = set()
        kills = 0
        while kills < 10 or len(acknowledged) < 200:
            agent.start()
            results: list[subprocess.CompletedProcess[str]] = []

            def keep_acquiring(out: list[subprocess.CompletedProcess[str]] = results) -> None:
                # small acquisitions one after another until the daemon dies under one: the
                # CLI acknowledges an acquisition only when it completes, so one long one
                # (30 frames ~ 1 s at the simulated 30 fps) was rarely acknowledged before
                # the kill and the storm's count depended on the machine's speed
                while not out or out[-1].returncode == 0:
                    out.append(acquire(agent, 10))

            acquirer = threading.Thread(target=keep_acquiring)
            acquirer.start()
            # once the restarted daemon has acknowledged something (its first acquisition after
            # a restart waits for recovery and the device), kill it at a random instant of the
            # acquisitions that follow
            wait_until(lambda: bool(results) or not acquirer.is_alive(), 60,
                       "no acquisition answered after the restart")
            threading.Event().wait(rng.uniform(0.0, 1.0))     # a random instant, not a sync
            agent.kill9()
            kills += 1
            acquirer.join(timeout=60)
            for result in results:
                acknowledged |= reported_uids(result)
            if kills > 40:
                break
        agent.start()
        wait_until(lambda: all_final(agent), 60,
                   f"not all committed after the storm: {agent.log()[-3000:]}")
        queued = {r["sop_instance_uid"] for r in agent.queue_rows()}
        held = orthanc_uids(orthanc)
        assert kills >= 10 and len(acknowledged) >= 200, (kills, len(acknowledged))
        assert acknowledged <= set(held)
        assert len(held) == len(set(held))             # no UID twice
        assert set(held) == queued                     # no UID the agent did not queue


# -- disk space --------------------------------------------------------------------------------
def test_capture_stops_before_the_disk_fills(tmp_path: Path, agents: list[AgentProcess]) -> None:
    import shutil

    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    agent = make_agent(tmp_path, [Destination("pacs", free_port(), "NOBODY")],
                       min_free_mb=free_mb + 1024)
    agents.append(agent)
    agent.start()
    result = acquire(agent, 1)
    assert result.returncode == 1
    assert "capture stopped" in result.stderr and "MB free" in result.stderr
    status = json.loads(agent.cli("status", "--json").stdout)
    assert status["spool"]["capture_blocked"] is True
    assert not list((agent.spool_dir / "objects").iterdir())


# -- the network in between: lost responses, stalls, resets -----------------------------------
@pytest.fixture
def proxied_storescp(tmp_path: Path) -> Iterator[tuple[FaultProxy, Path]]:
    port = free_port()
    out = tmp_path / "received"
    scp = start_storescp(out, port)
    proxy = FaultProxy(port)
    try:
        yield proxy, out
    finally:
        proxy.close()
        stop_process(scp)


@pytest.mark.parametrize("mode", ["drop_response", "stall_after", "refuse"])
def test_network_faults_end_in_exactly_one_copy(
        tmp_path: Path, agents: list[AgentProcess],
        proxied_storescp: tuple[FaultProxy, Path], mode: str) -> None:
    proxy, out = proxied_storescp
    proxy.mode = mode
    proxy.after_up_bytes = 4000          # past the association request, inside the C-STORE
    agent = make_agent(tmp_path, [Destination("scp", proxy.port, "STORESCP",
                                              storage_commitment=False, dimse_timeout_s=2)])
    agents.append(agent)
    agent.start()
    [uid] = reported_uids(acquire(agent, 1))
    if mode == "refuse":
        wait_until(lambda: any(r["last_error"] for r in agent.queue_rows()), 20,
                   "a reset connection was not noticed")
        proxy.mode = "pass"
    wait_until(lambda: agent.queue_rows()[0]["state"] == "sent", 40,
               f"not delivered after {mode}: {agent.queue_rows()} {agent.log()[-2000:]}")
    [row] = agent.queue_rows()
    assert row["attempts"] >= 2, "the fault did not hit the transfer"
    assert [dcmread(p).SOPInstanceUID for p in out.iterdir()] == [uid]
    if mode != "refuse":
        assert proxy.faults == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a real ENOSPC, not a simulated one. Needs root (CI runs as root)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_stops_capture_cleanly_and_resumes(
        tmp_path: Path, small_disk: Path, agents: list[AgentProcess]) -> None:
    import hashlib
    import sqlite3

    agent = make_agent(tmp_path, [Destination("pacs", free_port(), "NOBODY")],
                       frame_size=256, bits_stored=16, min_free_mb=0)
    agent.spool_dir = small_disk / "spool"
    text = agent.config_path.read_text().replace(str(tmp_path / "spool"), str(agent.spool_dir))
    agent.config_path.write_text(text)
    agents.append(agent)
    agent.start()
    acknowledged: set[str] = set()
    refusal = ""
    for _ in range(40):                        # 2 MB / ~130 KB objects: full well before this
        result = acquire(agent, 3)
        acknowledged |= reported_uids(result)
        if result.returncode != 0:
            refusal = result.stderr
            break
    assert refusal, "the disk never filled"
    assert "disk full" in refusal or "capture stopped" in refusal, refusal
    assert "Traceback" not in refusal
    assert agent.process is not None and agent.process.poll() is None    # still running
    # what was acknowledged is intact: rows, files and checksums agree
    conn = sqlite3.connect(f"file:{agent.spool_dir / 'queue.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT queue_id, sop_instance_uid, sha256 FROM objects").fetchall()
    finally:
        conn.close()
    assert acknowledged <= {uid for _, uid, _ in rows}
    for queue_id, _, sha256 in rows:
        data = (agent.spool_dir / "objects" / f"{queue_id:010d}.dcm").read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256
    assert not list((agent.spool_dir / "tmp").iterdir())      # no half-written leftovers
    # space returns: capture resumes without a restart
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    resumed = acquire(agent, 2)
    assert resumed.returncode == 0, resumed.stderr
    assert len(reported_uids(resumed)) == 2
    # and nothing was left stranded in 'sending' by rounds that could not record their outcome
    wait_until(lambda: all(r["state"] == "pending" for r in agent.queue_rows()), 20,
               f"rows stuck: {[r['state'] for r in agent.queue_rows()]}")
    assert "Traceback" not in agent.log()


# -- the listener under abuse ------------------------------------------------------------------
def test_listener_survives_huge_pdus_and_idle_connections(
        tmp_path: Path, agents: list[AgentProcess]) -> None:
    import socket
    import struct
    import time

    from agent.net.echo import echo

    listener_port = free_port()
    agent = make_agent(tmp_path, [Destination("pacs", free_port(), "ORTHANC")],
                       listener_port=listener_port)
    agents.append(agent)
    agent.start()
    # an A-ASSOCIATE-RQ header announcing 4 GB: closed at once, nothing allocated
    with socket.create_connection((LOCALHOST, listener_port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 64)
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(1024):
            answer += chunk
        # the listener closed the connection, after at most an A-ABORT (PDU type 0x07)
        assert answer in (b"", bytes.fromhex("07000000000400000000")) or \
            answer[:1] == b"\x07", answer
        assert time.monotonic() - started < 5
    # twelve connections that never speak must not keep the archive out
    idle = [socket.create_connection((LOCALHOST, listener_port), timeout=10) for _ in range(12)]
    try:
        ok, detail, _ = echo("ORTHANC", LOCALHOST, listener_port, "MODALITY1")
        deadline = time.monotonic() + 10
        while not ok and time.monotonic() < deadline:
            ok, detail, _ = echo("ORTHANC", LOCALHOST, listener_port, "MODALITY1")
        assert ok, detail
    finally:
        for sock in idle:
            sock.close()
    assert agent.process is not None and agent.process.poll() is None
    assert "PDU" in agent.log()


def test_report_on_the_same_association(tmp_path: Path, agents: list[AgentProcess]) -> None:
    from support.commitment_peer import SameAssociationArchive

    archive = SameAssociationArchive()
    port = free_port()
    archive.start(port)
    try:
        agent = make_agent(tmp_path, [Destination("pacs", port, archive.ae_title,
                                                  commitment_report_wait_s=5)])
        agents.append(agent)
        agent.start()
        result = acquire(agent, 2, "--wait", "30")
        assert result.returncode == 0, result.stderr + agent.log()
        assert {r["state"] for r in agent.queue_rows()} == {"committed"}
        assert archive.reports_sent and set(archive.reports_sent) == {0x0000}   # on that assoc.
        assert set(archive.held) == reported_uids(result)
    finally:
        archive.stop()
