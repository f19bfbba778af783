"""Scenario footprint (issue 18 item 4): the memory of the whole agent — the daemon and every
process it starts (its sending processes), found by walking /proc from the daemon's PID — as
PSS from /proc/PID/smaps_rollup, at idle after start and at idle after 3 objects captured,
sent and committed by Orthanc (Storage Commitment on, as shipped).

PSS divides each shared page among the processes that map it, so the sum over processes is
what the agent costs the device (RSS would count the shared interpreter and libraries once per
process). The target is <= 120 MB.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    MB,
    AgentDaemon,
    DestinationSpec,
    Workspace,
    descendants,
    free_port,
    process_label,
    pss_bytes,
    rss_bytes,
    say,
    simulated_options,
    table,
    wait_until,
)

TARGET_MB = 120.0
OBJECTS = 3
#: quiet before a reading: the daemon's threads settle, the sending processes are idle
SETTLE_S = 2.0


def agent_memory(pid: int) -> list[dict[str, Any]]:
    """PSS and RSS of `pid` and of every process below it."""
    rows = []
    for one in [pid, *descendants(pid)]:
        try:
            rows.append({"pid": one, "process": process_label(one),
                         "pss_mb": pss_bytes(one) / MB, "rss_mb": rss_bytes(one) / MB})
        except OSError:
            pass            # ended between listing and reading
    return rows


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    listener_port = free_port()
    orthanc = ws.orthanc("orthanc-footprint", agent_listener_port=listener_port)
    daemon = AgentDaemon.create(
        ws, "agent-footprint", listener_port=listener_port,
        device_options=simulated_options(64, 10.0),
        destinations=[DestinationSpec("archive", orthanc.dicom_port, orthanc.ae_title,
                                      storage_commitment=True)])
    daemon.start()
    try:
        # the sending processes are started at start-up, without work (restart times it)
        time.sleep(SETTLE_S)
        at_start = agent_memory(daemon.pid)
        daemon.acquire(OBJECTS, timeout_s=120, end="completed")

        def committed() -> bool:
            queue = daemon.api("GET", "/api/status", timeout_s=30)["queue"]
            return queue.get("committed", 0) >= OBJECTS

        wait_until(committed, 120, f"{OBJECTS} objects committed", poll_s=0.2)
        time.sleep(SETTLE_S)
        after = agent_memory(daemon.pid)
    finally:
        daemon.stop()
    idle_start = sum(r["pss_mb"] for r in at_start)
    idle_after = sum(r["pss_mb"] for r in after)
    say(f"footprint: PSS {idle_start:.1f} MB at start, {idle_after:.1f} MB after {OBJECTS} "
        f"objects, {len(after)} processes")
    result = {"idle_pss_mb": idle_after, "idle_pss_mb_at_start": idle_start,
              "target_mb": TARGET_MB, "met": idle_after <= TARGET_MB,
              "processes": len(after), "by_process": after, "at_start_by_process": at_start}
    rows = [[r["process"], r["pid"], r["pss_mb"], r["rss_mb"]] for r in after]
    rows.append(["whole agent", "", idle_after, sum(r["rss_mb"] for r in after)])
    text = table(
        f"footprint (idle after start and {OBJECTS} objects sent and committed)",
        ["process", "pid", "PSS MB", "RSS MB"], rows, left=1,
        notes=[f"PSS from /proc/PID/smaps_rollup, summed over the daemon and every process "
               f"below it; at start (before any object): {idle_start:.1f} MB; "
               f"target ≤ {TARGET_MB:g} MB: {'met' if idle_after <= TARGET_MB else 'NOT MET'}",
               "MB = 10^6 bytes"])
    return result, [text]
