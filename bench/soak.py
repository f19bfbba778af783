"""Scenario 5, soak: 10,000 frames (2,000 with --quick) from the simulated device (64x64 16-bit at
100 frames/s, which the agent keeps up with) sent to Orthanc with storage commitment, while the
daemon's RSS and open file descriptors are sampled every half second until every object is
committed.

Flat means: after a warm-up (the first 10 % of the objects), RSS grows by less than 10 MB and
the descriptor count ends where it started (+-2).
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
    free_port,
    open_fds,
    rss_bytes,
    say,
    simulated_options,
    table,
)

RSS_LIMIT_BYTES = 10 * MB
RATE = 100.0


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    objects = 2_000 if quick else 10_000
    listener_port = free_port()
    orthanc = ws.orthanc("orthanc-soak", agent_listener_port=listener_port)
    daemon = AgentDaemon.create(
        ws, "agent-soak", listener_port=listener_port, device_options=simulated_options(64, RATE),
        destinations=[DestinationSpec("archive", orthanc.dicom_port, orthanc.ae_title,
                                      storage_commitment=True)])
    daemon.start()
    samples: list[dict[str, Any]] = []
    acquired: dict[str, Any] = {}

    def acquire() -> None:
        try:
            acquired["result"] = daemon.acquire(objects, timeout_s=1800)
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            acquired["error"] = err

    thread = threading.Thread(target=acquire, daemon=True)
    t0 = time.monotonic()
    thread.start()
    deadline = t0 + (600 if quick else 1800)
    try:
        while True:
            queue = daemon.api("GET", "/api/status", timeout_s=30)["queue"]
            samples.append({"t": time.monotonic() - t0, "rss": rss_bytes(daemon.pid),
                            "fds": open_fds(daemon.pid), "captured": sum(queue.values()),
                            "committed": queue["committed"], "failed": queue["failed"]})
            if "error" in acquired:
                raise RuntimeError(f"acquire failed: {acquired['error']}")
            if not thread.is_alive() and queue["committed"] + queue["failed"] >= \
                    sum(queue.values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"soak: not done after {deadline - t0:.0f} s: {queue}")
            time.sleep(0.5)
    finally:
        thread.join(timeout=5)
        daemon.stop()
    elapsed = samples[-1]["t"]
    warm = next((s for s in samples if s["committed"] >= objects // 10), samples[0])
    after = [s for s in samples if s["t"] >= warm["t"]]
    rss_growth = after[-1]["rss"] - warm["rss"]
    fds_delta = after[-1]["fds"] - warm["fds"]
    flat = rss_growth < RSS_LIMIT_BYTES and abs(fds_delta) <= 2
    say(f"soak: {objects} objects in {elapsed:.0f} s; RSS {warm['rss'] / MB:.0f} → "
        f"{after[-1]['rss'] / MB:.0f} MB, fds {warm['fds']} → {after[-1]['fds']}")
    dropped = int(acquired.get("result", {}).get("dropped_frames", 0))
    result = {
        "objects": objects, "dropped": dropped, "seconds": elapsed, "samples": len(samples),
        "committed": samples[-1]["committed"], "failed": samples[-1]["failed"],
        "rss_mb_start": samples[0]["rss"] / MB, "rss_mb_after_warmup": warm["rss"] / MB,
        "rss_mb_max": max(s["rss"] for s in after) / MB, "rss_mb_end": after[-1]["rss"] / MB,
        "rss_growth_mb": rss_growth / MB,
        "fds_after_warmup": warm["fds"], "fds_max": max(s["fds"] for s in after),
        "fds_end": after[-1]["fds"], "flat": flat,
        "series": [[round(s["t"], 1), s["committed"], round(s["rss"] / MB, 1), s["fds"]]
                   for s in samples],
    }
    text = table(
        f"soak ({objects} frames of 64x64 16-bit at {RATE:g}/s, committed by Orthanc)",
        ["what", "start", "after warm-up", "max", "end"],
        [["RSS MB", samples[0]["rss"] / MB, warm["rss"] / MB, result["rss_mb_max"],
          result["rss_mb_end"]],
         ["open fds", samples[0]["fds"], warm["fds"], result["fds_max"], result["fds_end"]],
         ["committed", samples[0]["committed"], warm["committed"],
          "", samples[-1]["committed"]]],
        notes=[f"{elapsed:.0f} s, {len(samples)} samples, {dropped} frames dropped, "
               f"{samples[-1]['committed'] / elapsed:.0f} objects/s committed; "
               f"verdict: {'FLAT' if flat else 'NOT FLAT'} (RSS +{rss_growth / MB:.1f} MB, "
               f"fds {fds_delta:+d} after warm-up)"],
    )
    return result, [text]
