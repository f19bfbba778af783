"""`spool backup PATH` and `spool verify` from the command line, while the daemon runs and
holds the spool (issue 17, item 3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agent_process import AgentProcess, Destination, make_agent
from support.peers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def running(tmp_path: Path) -> Iterator[AgentProcess]:
    # an archive that is down: the objects stay queued, which is what a backup is for
    agent = make_agent(tmp_path, [Destination("pacs", free_port(), "PACS")])
    agent.start()
    yield agent
    agent.stop()


def test_backup_and_verify_while_running(tmp_path: Path, running: AgentProcess) -> None:
    acquired = running.cli("acquire", "--unscheduled", "--patient-id", "P1", "--patient-name",
                           "Spool^Test", "--frames", "3", "--json")
    assert acquired.returncode == 0, acquired.stderr
    verify = running.cli("spool", "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] and report["objects"] == 3 and report["hashes_checked"] == 3

    dest = tmp_path / "backup"
    backup = running.cli("spool", "backup", str(dest))
    assert backup.returncode == 0, backup.stderr
    assert "3 of 3 object files" in backup.stdout
    assert (dest / "queue.db").is_file() and len(list((dest / "objects").iterdir())) == 3
    again = running.cli("spool", "backup", str(dest))          # never over an earlier one
    assert again.returncode == 1 and "backup" in again.stderr

    # a damaged object file is named by its queue id
    victim = sorted((running.spool_dir / "objects").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    damaged = running.cli("spool", "verify")
    assert damaged.returncode == 1
    assert "SHA-256" in damaged.stderr or "size" in damaged.stderr, damaged.stderr
    assert "Spool^Test" not in damaged.stdout + damaged.stderr
