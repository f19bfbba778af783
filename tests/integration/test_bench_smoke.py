"""The benchmarks keep working: every scenario at a tiny size (`python -m bench --tiny`).

No timing is asserted (performance is measured by the bench itself, beside the reference tools);
this checks that each scenario runs its real peers to the end and reports the JSON shape that
scripts rely on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_every_scenario_runs_at_tiny_size() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    for scenario in ("send", "restart", "capture", "build", "e2e", "soak"):
        assert scenario in report, scenario
        assert not report[scenario].get("error"), (scenario, report[scenario]["error"])
    send = report["send"]
    assert isinstance(send["ratio_vs_storescu"], float) and send["ratio_vs_storescu"] > 0
    senders = {row["tool"] for row in send["rows"]}
    assert any("storescu" in s for s in senders) and any("agent" in s for s in senders)
    assert report["capture"]["frames"] > 0 and report["capture"]["dropped"] >= 0
    assert report["restart"]["queued"] > 1 and report["restart"]["seconds_to_first_store"] > 0
