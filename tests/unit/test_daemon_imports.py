"""What the daemon imports is resident for its whole life (issue 18 item 4a: the whole agent
≤ 120 MB PSS at idle): a library only some configurations need is imported where it is used."""

from __future__ import annotations

import subprocess
import sys

#: library -> the configuration that needs it
ON_DEMAND = {
    "httpx": "a DICOMweb (STOW-RS) destination",     # ~3.4 MB resident, 50 modules
}


def test_the_daemon_module_leaves_on_demand_libraries_unimported() -> None:
    code = ("import sys, agent.daemon, agent.stow_forwarder, agent.net.stow; "
            f"print(sorted(m for m in {sorted(ON_DEMAND)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]", f"imported at daemon start: {out} (only {ON_DEMAND} needs them)"
