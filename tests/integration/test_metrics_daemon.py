"""GET /api/metrics on the real daemon: Prometheus text that promtool accepts, behind the token,
and the committed count equal to status's (issue 17, item 2)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.agent_process import AGENT_AE, Destination, make_agent
from support.peers import LOCALHOST, free_port

from agent.demo.orthanc import OrthancServer, RegisteredModality

pytestmark = pytest.mark.integration
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def test_metrics_agree_with_status_and_need_the_token(tmp_path: Path,
                                                      orthanc: OrthancServer) -> None:
    listener_port = free_port()
    orthanc.register_modality(RegisteredModality("agent", AGENT_AE, "127.0.0.1", listener_port))
    agent = make_agent(tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
                       listener_port=listener_port)
    agent.start()
    try:
        result = agent.cli("acquire", "--unscheduled", "--patient-id", "PHI-CANARY-7",
                           "--patient-name", "Zzcanary^Phi", "--frames", "2", "--wait", "60")
        assert result.returncode == 0, result.stderr
        url = f"http://{LOCALHOST}:{agent.api_port}/api/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {agent.token()}"})

        def scrape() -> str:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                return str(response.read().decode())

        text = scrape()
        assert "PHI-CANARY" not in text and "Zzcanary" not in text
        committed = sum(float(v) for v in re.findall(
            r'^modality_agent_objects_committed_total\{[^}]*\} (\S+)$', text, re.M))
        status = json.loads(agent.cli("status", "--json").stdout)
        assert committed == status["queue"]["committed"] == 2
        assert re.search(r"^modality_agent_fsync_duration_seconds_count \d+", text, re.M)
        if Path(PROMTOOL).exists():
            check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, text=True,
                                   capture_output=True, timeout=30)
            assert check.returncode == 0, check.stdout + check.stderr
        stored = sum(float(v) for v in re.findall(
            r'^modality_agent_objects_stored_total\{[^}]*\} (\S+)$', text, re.M))
        assert stored == 2, text
    finally:
        agent.stop()
