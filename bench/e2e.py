"""Scenario 2, end-to-end: frames from the simulated driver (512x512 16-bit) → captured → sent →
committed by Orthanc, at 1, 10 and 30 objects/s; and 1024x1024 16-bit at 30/s (issue 18 item 5:
p95 frame → committed ≤ 250 ms there).

Latency of an object = when Orthanc's commitment report for it was durably recorded by the agent
(the row's committed_at) - when its frame was read out (the frame's wall-clock time, written as
Content Date/Time into the object). Objects/s = the sustained commitment rate, (objects - 1) /
(first → last commitment recorded).
A new daemon per rate (the frame rate is a device option); one Orthanc throughout.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    AgentDaemon,
    DestinationSpec,
    Workspace,
    frame_time,
    free_port,
    percentile,
    say,
    simulated_options,
    spool_rows,
    table,
    tiny,
)

#: (frame size, frames/s, frames in a full run, in a quick run)
RUNS = ((512, 1.0, 20, 5), (512, 10.0, 100, 30), (512, 30.0, 300, 60), (1024, 30.0, 300, 90))


def _one_rate(ws: Workspace, size: int, rate: float, frames: int, listener_port: int,
              orthanc_port: int, orthanc_ae: str) -> dict[str, Any]:
    daemon = AgentDaemon.create(
        ws, f"agent-e2e-{size}-{rate:g}", listener_port=listener_port,
        device_options=simulated_options(size, rate),
        destinations=[DestinationSpec("archive", orthanc_port, orthanc_ae,
                                      storage_commitment=True)])
    spool = daemon.config_path.parent / "spool"
    daemon.start()
    try:
        result = daemon.acquire(frames, timeout_s=frames / rate * 4 + 60)
        queue_ids = {o["queue_id"] for o in result["objects"]}
        deadline = time.monotonic() + 120
        while True:
            rows = [r for r in spool_rows(spool) if r["queue_id"] in queue_ids]
            if rows and all(r["state"] == "committed" for r in rows):
                break
            if any(r["state"] == "failed" for r in rows):
                raise RuntimeError(f"rate {rate:g}: an object failed: "
                                   f"{[r['last_error'] for r in rows if r['last_error']][:1]}")
            if time.monotonic() > deadline:
                states = sorted({r["state"] for r in rows})
                raise TimeoutError(f"rate {rate:g}: not all committed within 120 s ({states})")
            time.sleep(0.05)
    finally:
        daemon.stop()
    objects_dir = spool / "objects"
    latencies, stored = [], []
    commits = sorted(row["committed_at"] for row in rows)
    for row in rows:
        t_frame = frame_time(objects_dir / f"{row['queue_id']:010d}.dcm")
        latencies.append(row["committed_at"] - t_frame)
        stored.append(row["stored_at"] - t_frame)
    return {
        "size": size, "rate": rate, "objects": len(rows),
        # coalesced commitment (one report for several objects) can record every commit of a
        # tiny run at one instant: no span, no rate
        "objects_s": (len(commits) - 1) / (commits[-1] - commits[0])
        if len(commits) > 1 and commits[-1] > commits[0] else None,
        "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
        "latency_max_s": max(latencies),
        "stored_p50_s": percentile(stored, 50), "stored_p95_s": percentile(stored, 95),
        "stored_max_s": max(stored),
    }


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    listener_port = free_port()
    orthanc = ws.orthanc("orthanc-e2e", agent_listener_port=listener_port)
    results = []
    for size, rate, frames_full, frames_quick in RUNS:
        if tiny() and size != RUNS[0][0]:
            continue                    # --tiny proves the scenario works, at one size
        frames = 2 if tiny() else frames_quick if quick else frames_full
        row = _one_rate(ws, size, rate, frames, listener_port, orthanc.dicom_port,
                        orthanc.ae_title)
        say(f"e2e: {size}² at {rate:g}/s: p50 {row['latency_p50_s'] * 1000:.0f} ms, "
            f"p95 {row['latency_p95_s'] * 1000:.0f} ms")
        results.append(row)
    text = table(
        f"end-to-end ({'quick; ' if quick else ''}16-bit frames → committed in Orthanc, "
        "storage commitment on)",
        ["frame", "frames/s", "objects", "objects/s", "frame→committed p50 ms", "p95 ms",
         "max ms", "frame→stored p50 ms", "p95 ms", "max ms"],
        [[f"{r['size']}²", f"{r['rate']:g}", r["objects"], r["objects_s"],
          r["latency_p50_s"] * 1000,
          r["latency_p95_s"] * 1000, r["latency_max_s"] * 1000, r["stored_p50_s"] * 1000,
          r["stored_p95_s"] * 1000, r["stored_max_s"] * 1000] for r in results],
        notes=["objects/s: (objects - 1) / (first → last commitment recorded); one run per "
               "rate (latencies are per object)"],
    )
    return {"rates": results}, [text]
