"""`python -m bench fleet --quick` keeps working (issue 19 item 3): 2 agent daemons, two Orthanc
nodes on one PostgreSQL, node 1 killed mid-run; the report says nothing was lost or duplicated.
No timing is asserted (the bench measures; this checks it runs to the end and its JSON shape)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_fleet_bench_runs_with_two_agents() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "fleet", "--quick", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-4000:]
    fleet = json.loads(result.stdout)["fleet"]
    assert not fleet.get("error"), fleet["error"]
    assert fleet["agents"] == 2 and len(fleet["per_agent"]) == 2
    assert fleet["objects"] == 24
    assert fleet["committed_exactly_once"] == fleet["objects"]
    assert fleet["lost"] == 0 and fleet["duplicates"] == 0
    assert fleet["foreign_in_archive"] == 0
    # node 1 was down while agent 0 (node 1 first) still sent: its objects went to node 2
    first = fleet["per_agent"][0]
    assert first["first_member"] == "node1" and first["to_node2"] > 0
    assert fleet["per_agent"][1]["to_node1"] == 0       # node 2 first, and node 2 never failed
    assert fleet["objects_s"] > 0 and fleet["mb_s"] > 0
    assert all(a["p95_s"] > 0 for a in fleet["per_agent"])
    assert "fleet (quick; 2 agents" in result.stderr
