"""The serial device end to end: `modality-agent simulate serial` (the firmware stub on a
pseudo-terminal) → the real serial driver in the daemon → Orthanc, committed, pixel for pixel."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from support.agent_process import AGENT_AE, Destination, make_agent
from support.peers import free_port, run_dciodvfy, stop_process, wait_until

from agent.demo.orthanc import OrthancServer, RegisteredModality
from firmware_stubs.xray_phantom import xray_phantom

pytestmark = pytest.mark.integration


def test_serial_device_to_archive(tmp_path: Path, orthanc: OrthancServer) -> None:
    link = tmp_path / "ttyXRAY"
    stub_log = tmp_path / "stub.log"
    with stub_log.open("w") as log:
        stub = subprocess.Popen([sys.executable, "-m", "agent", "simulate", "serial",
                                 "--link", str(link)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(link.exists, 10, "simulate serial did not make its link")
        listener_port = free_port()
        orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1",
                                                     listener_port))
        agent = make_agent(
            tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
            listener_port=listener_port,
            device_toml=f'[device]\ndriver = "serial"\n[device.options]\nport = "{link}"\n'
                        f"kvp = 81.0\nmas = 4.0\n",
        )
        assert agent.cli("check-config").returncode == 0
        agent.start()
        try:
            status = json.loads(agent.cli("status", "--json").stdout)
            assert status["device"]["driver"] == "serial" and status["device"]["connected"]
            result = agent.cli("acquire", "--unscheduled", "--patient-id", "SER-1",
                               "--patient-name", "Serial^Test", "--frames", "3",
                               "--wait", "60", "--json", timeout_s=120)
            assert result.returncode == 0, result.stderr + agent.log()[-2000:]
            objects = json.loads(result.stdout)["objects"]
            assert [o["state"] for o in objects] == ["committed"] * 3
            candidates = [xray_phantom(512, 512, 12, frame_id) for frame_id in range(8)]
            matched = []
            for obj in objects:
                stored = orthanc.instance_file(orthanc.find_instance(obj["sop_instance_uid"])
                                               or "")
                ds = dcmread(io.BytesIO(stored))
                hits = [i for i, c in enumerate(candidates) if np.array_equal(ds.pixel_array, c)]
                assert len(hits) == 1, "the archive holds pixels the device never sent"
                matched.append(hits[0])
                path = tmp_path / "serial.dcm"
                path.write_bytes(stored)
                assert run_dciodvfy(path) == []
            assert len(set(matched)) == 3                  # three distinct exposures
        finally:
            agent.stop()
    finally:
        stop_process(stub)
    assert stub.returncode == 0
    assert f"{link} -> " in stub_log.read_text()         # it told the engineer the port
