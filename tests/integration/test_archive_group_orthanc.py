"""Archive group failover against two Orthanc nodes on one PostgreSQL database (issue 19 item
4), with the real daemon: node 1 is stopped while the agent sends, more is acquired, node 1
comes back; every object ends committed exactly once in the shared archive, each row names
the member that committed it, and objects captured while node 1 was down went to node 2."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agent_process import AGENT_AE, AgentProcess, Destination, make_agent
from support.peers import LOCALHOST, free_port, wait_until

from agent.demo.orthanc import OrthancNotInstalled, OrthancServer, RegisteredModality
from agent.demo.postgres import PostgresError, SharedArchive, start_shared_archive

pytestmark = pytest.mark.integration

GROUP = "archive"


@pytest.fixture
def archive_and_agent(tmp_path: Path) -> Iterator[tuple[SharedArchive, AgentProcess]]:
    listener_port = free_port()
    used = {listener_port}
    ports = []
    for _ in range(2):
        dicom, http = free_port(exclude=used), 0
        used.add(dicom)
        http = free_port(exclude=used)
        used.add(http)
        ports.append((dicom, http))
    try:
        archive = start_shared_archive(
            tmp_path / "archive", ports,
            modalities=[RegisteredModality("agent", AGENT_AE, LOCALHOST, listener_port)])
    except (OrthancNotInstalled, PostgresError) as err:
        pytest.fail(str(err), pytrace=False)     # a skipped peer test looks green
    try:
        agent = make_agent(
            tmp_path, [Destination(f"node{i}", node.dicom_port, node.ae_title, group=GROUP,
                                   dimse_timeout_s=10)
                       for i, node in enumerate(archive.nodes, start=1)],
            listener_port=listener_port,
            # paced, so that node 1 can be killed while a batch is still being captured and
            # sent: a fast machine commits a whole unpaced batch between two looks
            device_toml='[device]\ndriver = "simulated"\n[device.options]\nwidth = 512\n'
                        "height = 512\nbits_stored = 12\nframe_rate = 4.0\n")
        agent.start()
        try:
            yield archive, agent
        finally:
            agent.stop()
    finally:
        archive.stop()


def acquire(agent: AgentProcess, frames: int, *extra: str) -> list[str]:
    result = agent.cli("acquire", "--unscheduled", "--patient-id", "GROUP-1",
                       "--patient-name", "Group^Test", "--frames", str(frames), "--json",
                       *extra, timeout_s=120)
    assert result.returncode == 0, result.stderr + agent.log()[-3000:]
    return [o["sop_instance_uid"] for o in json.loads(result.stdout)["objects"]]


def archive_uids(node: OrthancServer) -> Counter[str]:
    """SOP Instance UIDs in the shared database, one count per stored instance."""
    return Counter(node.instance_tags(i)["SOPInstanceUID"] for i in node.instances())


def group_rows(agent: AgentProcess) -> dict[str, list[dict[str, object]]]:
    rows: dict[str, list[dict[str, object]]] = {}
    for row in agent.queue_rows():
        rows.setdefault(str(row["sop_instance_uid"]), []).append(row)
    return rows


def status_of(agent: AgentProcess) -> dict[str, dict[str, object]]:
    result = agent.cli("status", "--json")
    return {d["name"]: d for d in json.loads(result.stdout)["destinations"]}


def test_failover_to_the_second_node_loses_and_duplicates_nothing(
        archive_and_agent: tuple[SharedArchive, AgentProcess]) -> None:
    archive, agent = archive_and_agent
    node1, node2 = archive.nodes
    status = status_of(agent)
    assert status["node1"]["group"] == GROUP and status["node1"]["current"] is True
    assert status["node2"]["current"] is False

    before = acquire(agent, 3, "--wait", "60")
    # the two nodes share one database: what node 1 stored, node 2 serves
    assert set(archive_uids(node2)) == set(before)

    # node 1 dies (SIGKILL, as a crash) while a batch is being captured and sent to it: some
    # of it committed there, the rest queued, in flight or not yet captured
    known = {str(r["sop_instance_uid"]) for r in agent.queue_rows()}
    batch: list[list[str]] = []
    capture = threading.Thread(target=lambda: batch.append(acquire(agent, 16)))
    capture.start()
    try:
        def half_way() -> bool:
            rows = [r for r in agent.queue_rows() if r["sop_instance_uid"] not in known]
            return any(r["state"] == "committed" for r in rows) and len(rows) < 15

        wait_until(half_way, 60, "node1 to have committed part of the batch")
        os.kill(node1.pid, signal.SIGKILL)
        node1.stop()                                # reaps it, closes its log
    finally:
        capture.join(timeout=120)
    [during] = batch
    after = acquire(agent, 6)

    def moved_on() -> bool:
        return status_of(agent)["node2"]["current"] is True

    wait_until(moved_on, 30, "the group to fail over to node2")
    # captured once node 1 was known down: straight to node 2
    late = acquire(agent, 3, "--wait", "60")
    assert all(rows_of["destination"] == "node2"
               for uid in late for rows_of in group_rows(agent)[uid])

    # node 1 comes back on the same database: rows pinned to it (outcome unknown there) go
    # there, new objects go to it again
    node1 = archive.start_node(0)
    wait_until(lambda: status_of(agent)["node1"]["current"] is True, 30,
               "node1 to be the current member again")
    back = acquire(agent, 2, "--wait", "60")

    every = before + during + after + late + back
    wait_until(lambda: all(r["state"] == "committed" for r in agent.queue_rows()), 90,
               "every object to be committed")
    rows = group_rows(agent)
    assert sorted(rows) == sorted(every)
    # one row per object in the group: never routed to two members
    assert all(len(r) == 1 for r in rows.values())
    destination = {uid: str(r[0]["destination"]) for uid, r in rows.items()}
    assert {destination[uid] for uid in before} == {"node1"}
    assert {destination[uid] for uid in late} == {"node2"}
    assert {destination[uid] for uid in back} == {"node1"}
    assert "node2" in {destination[uid] for uid in after}      # moved off node 1
    # exactly once in the archive, whichever node is asked
    for node in (node1, node2):
        counts = archive_uids(node)
        assert set(counts) == set(every) and max(counts.values()) == 1
    log = agent.log()
    assert "archive group archive: node1 is not answering" in log
    assert "moved from node1 to node2 (queue items" in log
    assert "Group^Test" not in log and "GROUP-1" not in log

