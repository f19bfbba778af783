"""`modality-agent reject` through the daemon (issue 16 item 2, IHE IOCM): an image rejected
before it was sent never reaches the archive; one rejected after gets a rejection note that the
archive receives once it has committed the image."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.agent_process import AGENT_AE, Destination, make_agent
from support.peers import free_port, start_storescp, stop_process, wait_until

from agent.demo.orthanc import OrthancServer, RegisteredModality

pytestmark = pytest.mark.integration


def acquire(agent, frames: int, *wait: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    result = agent.cli("acquire", "--unscheduled", "--patient-id", "REJ-1", "--patient-name",
                       "Reject^Test", "--frames", str(frames), "--json", *wait, timeout_s=120)
    assert result.returncode == 0, result.stderr
    objects: list[dict[str, str]] = json.loads(result.stdout)["objects"]
    return objects


def test_reject_after_committing_sends_a_note(tmp_path: Path, orthanc: OrthancServer) -> None:
    listener_port = free_port()
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
                       listener_port=listener_port)
    agent.start()
    try:
        blurred, kept = acquire(agent, 2, "--wait", "60")
        assert blurred["state"] == kept["state"] == "committed"
        result = agent.cli("reject", blurred["sop_instance_uid"], "--reason", "quality",
                           "--json")
        assert result.returncode == 0, result.stderr
        [note] = json.loads(result.stdout)["notes"]
        wait_until(lambda: orthanc.find_instance(note["sop_instance_uid"]) is not None, 30,
                   f"the rejection note in Orthanc ({agent.log()[-1500:]})")
        again = agent.cli("reject", blurred["sop_instance_uid"], "--reason", "quality")
        assert again.returncode == 1 and blurred["sop_instance_uid"] in again.stderr
        unknown = agent.cli("reject", "1.2.3.4.5.6.7", "--reason", "patient-safety")
        assert unknown.returncode == 1 and "1.2.3.4.5.6.7" in unknown.stderr
    finally:
        agent.stop()


def test_an_image_rejected_before_sending_is_never_sent(tmp_path: Path) -> None:
    archive_port = free_port()          # nothing listens here yet: the archive is down
    agent = make_agent(tmp_path, [Destination("pacs", archive_port, "STORESCP",
                                              storage_commitment=False)])
    agent.start()
    archive = None
    try:
        rejected, kept = acquire(agent, 2)
        # with the archive down the forwarder still takes the image for a moment at each
        # attempt (claimed, the connection refused, put back): a reject that meets that moment
        # is refused, rejecting nothing, and says to try again, as an operator would (CI met
        # it once in ~2,500 tests)
        deadline = time.monotonic() + 30
        while True:
            result = agent.cli("reject", rejected["sop_instance_uid"], "--reason",
                               "incorrect-modality-worklist", "--json")
            if "being sent to pacs right now" not in result.stderr or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["cancelled"] and not report["notes"]
        # the archive comes back: the other image goes, the rejected one never does
        received = tmp_path / "received"
        archive = start_storescp(received, archive_port)
        wait_until(lambda: any(kept["sop_instance_uid"] in f.name for f in received.iterdir()),
                   60, f"the kept image at the archive ({agent.log()[-1500:]})")
        assert not any(rejected["sop_instance_uid"] in f.name for f in received.iterdir())
        [row] = [r for r in agent.queue_rows()
                 if r["sop_instance_uid"] == rejected["sop_instance_uid"]]
        assert row["state"] == "failed" and "rejected" in row["last_error"]
    finally:
        agent.stop()
        if archive is not None:
            stop_process(archive)
