"""Scenario 5, soak: 10,000 objects (2,000 with --quick) in 4 procedures (one acquisition each, for
a new patient, ended "completed" as a technologist would) of 64x64 16-bit frames
at 50 frames/s (at 100/s the daemon drops ~5 % of them while it forwards with commitment), sent
to Orthanc with storage commitment. The daemon's RSS and open file descriptors are sampled every
half second throughout, and at an idle checkpoint after each acquisition (all committed, 1 s of
quiet).

Flat means: at the idle checkpoints after the first acquisition, RSS grows by less than 2 MB
and the descriptor count stays within 2 of the count before the first frame. An acquisition
holds per-frame records and builds one answer entry per object while it runs; those are
released when it ends, which only the idle checkpoints show (the continuous samples show the
per-acquisition rise as well).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.common import (
    MB,
    AgentDaemon,
    DestinationSpec,
    Workspace,
    children_rss_bytes,
    free_port,
    open_fds,
    rss_bytes,
    say,
    simulated_options,
    table,
    tiny,
)

RSS_LIMIT_BYTES = 2 * MB
RATE = 50.0
ROUNDS = 4


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    objects = 40 if tiny() else 2_000 if quick else 10_000
    per_round = objects // ROUNDS
    listener_port = free_port()
    orthanc = ws.orthanc("orthanc-soak", agent_listener_port=listener_port)
    daemon = AgentDaemon.create(
        ws, "agent-soak", listener_port=listener_port, device_options=simulated_options(64, RATE),
        destinations=[DestinationSpec("archive", orthanc.dicom_port, orthanc.ae_title,
                                      storage_commitment=True)])
    daemon.start()
    samples: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    dropped = 0
    t0 = time.monotonic()

    def sample(acquiring: bool) -> dict[str, Any]:
        queue = daemon.api("GET", "/api/status", timeout_s=30)["queue"]
        point = {"t": time.monotonic() - t0, "rss": rss_bytes(daemon.pid),
                 # the sending processes, one per association (agent.net.store_process)
                 "rss_senders": children_rss_bytes(daemon.pid),
                 "fds": open_fds(daemon.pid), "captured": sum(queue.values()),
                 "committed": queue["committed"], "failed": queue["failed"],
                 "acquiring": acquiring}
        samples.append(point)
        return point

    try:
        time.sleep(1.0)
        checkpoints.append(sample(False))
        for round_index in range(ROUNDS):
            acquired: dict[str, Any] = {}

            def acquire(acquired: dict[str, Any] = acquired,
                        round_index: int = round_index) -> None:
                try:
                    acquired["result"] = daemon.acquire(
                        per_round, timeout_s=1800, end="completed",
                        patient_id=f"BENCH-{round_index + 1:04d}")
                except Exception as err:  # noqa: BLE001 - reported by the main thread
                    acquired["error"] = err

            thread = threading.Thread(target=acquire, daemon=True)
            thread.start()
            deadline = time.monotonic() + per_round / RATE * 3 + 120
            while True:
                point = sample(thread.is_alive())
                if "error" in acquired:
                    raise RuntimeError(f"acquire failed: {acquired['error']}")
                if not thread.is_alive() and \
                        point["committed"] + point["failed"] >= point["captured"]:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"soak round {round_index + 1}: not done: {point}")
                time.sleep(0.5)
            dropped += int(acquired["result"].get("dropped_frames", 0))
            time.sleep(1.0)
            checkpoints.append(sample(False))
            say(f"soak: round {round_index + 1}/{ROUNDS}: {checkpoints[-1]['committed']} "
                f"committed, RSS {checkpoints[-1]['rss'] / MB:.1f} MB, "
                f"fds {checkpoints[-1]['fds']}")
    finally:
        daemon.stop()
    elapsed = samples[-1]["t"]
    first = checkpoints[1]
    last = checkpoints[-1]
    rss_growth = last["rss"] - first["rss"]
    senders_growth = last["rss_senders"] - first["rss_senders"]
    fds_delta = last["fds"] - checkpoints[0]["fds"]
    flat = rss_growth < RSS_LIMIT_BYTES and senders_growth < RSS_LIMIT_BYTES and \
        abs(fds_delta) <= 2 and \
        max(c["fds"] for c in checkpoints) - checkpoints[0]["fds"] <= 2
    result = {
        "objects": objects, "rounds": ROUNDS, "dropped": dropped, "seconds": elapsed,
        "samples": len(samples), "committed": last["committed"], "failed": last["failed"],
        "rss_mb_checkpoints": [round(c["rss"] / MB, 2) for c in checkpoints],
        "fds_checkpoints": [c["fds"] for c in checkpoints],
        "rss_mb_max": max(s["rss"] for s in samples) / MB,
        "fds_max": max(s["fds"] for s in samples),
        "rss_growth_mb": rss_growth / MB, "fds_delta": fds_delta, "flat": flat,
        "senders_rss_mb_checkpoints": [round(c["rss_senders"] / MB, 2) for c in checkpoints],
        "senders_rss_growth_mb": senders_growth / MB,
        "series": [[round(s["t"], 1), s["committed"], round(s["rss"] / MB, 1), s["fds"]]
                   for s in samples],
    }
    rows = [[("before" if i == 0 else f"after round {i}"), c["captured"], c["committed"],
             round(c["rss"] / MB, 1), c["fds"], round(c["rss_senders"] / MB, 1)]
            for i, c in enumerate(checkpoints)]
    rows.append(["max while running", "", "", round(result["rss_mb_max"], 1),
                 result["fds_max"], round(max(s["rss_senders"] for s in samples) / MB, 1)])
    text = table(
        f"soak ({objects} frames of 64x64 16-bit at {RATE:g}/s in {ROUNDS} acquisitions, "
        f"committed by Orthanc; idle checkpoints)",
        ["checkpoint", "captured", "committed", "RSS MB", "open fds",
         "sending processes RSS MB"],
        rows,
        notes=[f"{elapsed:.0f} s, {len(samples)} samples, {dropped} frames dropped, "
               f"{last['committed'] / elapsed:.0f} objects/s committed; verdict: "
               f"{'FLAT' if flat else 'NOT FLAT'} (RSS after round {ROUNDS} - after round 1: "
               f"{rss_growth / MB:+.1f} MB, sending processes {senders_growth / MB:+.1f} MB; "
               f"fds {fds_delta:+d} since before)",
               "RSS and fds are the daemon's; its sending processes (one per association) "
               "are summed in the last column"],
    )
    return result, [text]
