"""The agent names itself in its associations as in its files (agent.implementation), not as
pynetdicom: seen by DCMTK on both sides, storescp when the agent requests an association and
echoscu when the agent's listener accepts one. Both print the peer's Implementation Class UID
and Version Name in debug mode."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from support.agent_process import AGENT_AE, make_agent
from support.peers import DCMTK, LOCALHOST, free_port, nodelay_env, start_storescp, stop_process

from agent.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from agent.net.echo import echo

pytestmark = pytest.mark.integration


def assert_names_the_agent(log: str) -> None:
    assert IMPLEMENTATION_CLASS_UID in log, log[-3000:]
    assert IMPLEMENTATION_VERSION_NAME in log, log[-3000:]
    assert str(PYNETDICOM_IMPLEMENTATION_UID) not in log
    assert PYNETDICOM_IMPLEMENTATION_VERSION not in log


def test_an_association_the_agent_requests_names_the_agent(tmp_path: Path) -> None:
    port = free_port()
    out_dir = tmp_path / "storescp"
    process = start_storescp(out_dir, port, extra_args=["--debug"])
    try:
        ok, detail, _ = echo("MODALITY1", LOCALHOST, port, "STORESCP")
    finally:
        stop_process(process)
    assert ok, detail
    # storescp's dump of the A-ASSOCIATE-RQ it received
    assert_names_the_agent((tmp_path / f"storescp-{port}.log").read_text(errors="replace"))


def test_an_association_the_agent_accepts_names_the_agent(tmp_path: Path) -> None:
    from support.agent_process import Destination

    listener_port = free_port()
    agent = make_agent(tmp_path, [Destination("pacs", free_port(exclude=[listener_port]),
                                              "ARCHIVE")], listener_port=listener_port)
    agent.start()
    try:
        result = subprocess.run(
            [str(DCMTK / "echoscu"), "--debug", "-aet", "ARCHIVE", "-aec", AGENT_AE,
             LOCALHOST, str(listener_port)],
            capture_output=True, text=True, timeout=30, env=nodelay_env(),
            stdin=subprocess.DEVNULL)
    finally:
        agent.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    # echoscu's dump of the A-ASSOCIATE-AC the listener answered with
    assert_names_the_agent(result.stdout + result.stderr)
