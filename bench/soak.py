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
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    MB,
    REPO,
    TRACEMALLOC,
    AgentDaemon,
    DestinationSpec,
    Workspace,
    children_rss_bytes,
    descendants,
    free_port,
    open_fds,
    process_label,
    rss_bytes,
    say,
    simulated_options,
    table,
    tiny,
    wait_until,
)

RSS_LIMIT_BYTES = 2 * MB
RATE = 50.0
ROUNDS = 6
#: issue 18 item 4: RSS of the whole agent after warm-up (the first acquisition)
SLOPE_TARGET_MB_PER_1000 = 0.1
TRACEMALLOC_TOP = 12


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The slope of the least-squares line through (xs, ys); None with fewer than 2 distinct
    x."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def request_snapshots(folder: Path, number: int, pids: Sequence[int]) -> dict[int, Path]:
    """Ask every traced process for a snapshot (bench/tracemalloc_hook) and wait for them."""
    (folder / f"request-{number}").write_text("")
    wanted = {pid: folder / f"{pid}-{number}.snap" for pid in pids}
    wait_until(lambda: all(p.exists() for p in wanted.values()), 120,
               f"tracemalloc snapshots {number}", poll_s=0.2)
    return wanted


def snapshot_growth(first: Path, last: Path, top: int = TRACEMALLOC_TOP) -> list[dict[str, Any]]:
    """What grew between two snapshots of one process, by allocating line (the agent's and
    its libraries' code; tracemalloc's own and the import machinery's left out)."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
              tracemalloc.Filter(False, "*/bench/tracemalloc_hook/*")]
    old = tracemalloc.Snapshot.load(str(first)).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(str(last)).filter_traces(ignore)
    grown = []
    for stat in new.compare_to(old, "traceback")[:top]:
        frames = [f"{_short(f.filename)}:{f.lineno}" for f in stat.traceback]
        grown.append({"size_diff_kb": stat.size_diff / 1024, "count_diff": stat.count_diff,
                      "where": frames[-1] if frames else "?", "traceback": frames})
    return grown


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    objects = 40 if tiny() else 2_000 if quick else 10_000
    per_round = objects // ROUNDS
    listener_port = free_port()
    orthanc = ws.orthanc("orthanc-soak", agent_listener_port=listener_port)
    daemon = AgentDaemon.create(
        ws, "agent-soak", listener_port=listener_port, device_options=simulated_options(64, RATE),
        destinations=[DestinationSpec("archive", orthanc.dicom_port, orthanc.ae_title,
                                      storage_commitment=True)])
    traced = ws.path("tracemalloc") if TRACEMALLOC["on"] else None
    daemon.start(tracemalloc_dir=traced)
    if traced is not None:
        # every process of the agent starts tracing now (bench/tracemalloc_hook)
        (traced / "start").write_text("")
    snapshots: list[dict[int, Path]] = []
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
            if traced is not None and round_index in (0, ROUNDS - 1):
                snapshots.append(request_snapshots(
                    traced, len(snapshots) + 1, [daemon.pid, *descendants(daemon.pid)]))
            say(f"soak: round {round_index + 1}/{ROUNDS}: {checkpoints[-1]['committed']} "
                f"committed, RSS {checkpoints[-1]['rss'] / MB:.1f} MB, "
                f"fds {checkpoints[-1]['fds']}")
    finally:
        daemon_pid = daemon.pid if daemon.process is not None else -1
        labels = {pid: process_label(pid) for pid in descendants(daemon_pid)} \
            if daemon_pid > 0 else {}
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
    # after warm-up (the first acquisition): the idle checkpoints, x = objects committed
    after_warmup = checkpoints[1:]
    xs = [c["committed"] for c in after_warmup]

    def slope(key: Any) -> float | None:
        value = least_squares_slope(xs, [key(c) / MB for c in after_warmup])
        return None if value is None else value * 1000

    slope_total = slope(lambda c: c["rss"] + c["rss_senders"])
    slope_daemon = slope(lambda c: c["rss"])
    slope_senders = slope(lambda c: c["rss_senders"])
    growth: dict[str, Any] = {}
    if len(snapshots) == 2:
        for pid, first_snap in snapshots[0].items():
            if pid in snapshots[1]:
                name = "daemon" if pid == daemon_pid else f"{labels.get(pid, '?')} {pid}"
                growth[name] = snapshot_growth(first_snap, snapshots[1][pid])
    result = {
        "rss_slope_mb_per_1000": slope_total,
        "rss_slope_daemon_mb_per_1000": slope_daemon,
        "rss_slope_senders_mb_per_1000": slope_senders,
        "rss_slope_target": SLOPE_TARGET_MB_PER_1000,
        "rss_slope_objects": (xs[-1] - xs[0]) if xs else 0,
        "rss_slope_note": "least squares over the idle checkpoints after the first "
                          "acquisition, daemon + sending processes"
                          + ("; a --quick estimate (shorter run)" if quick else "")
                          + ("; TRACED run: tracemalloc inflates RSS" if traced else ""),
        "tracemalloc": growth or None,
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
               "are summed in the last column",
               "RSS slope after warm-up (least squares over the idle checkpoints after round 1"
               f"{', --quick estimate' if quick else ''}), MB per 1,000 objects: whole agent "
               f"{_fmt_slope(slope_total)}, daemon {_fmt_slope(slope_daemon)}, sending "
               f"processes {_fmt_slope(slope_senders)}; target ≤ {SLOPE_TARGET_MB_PER_1000:g}: "
               + ("-" if slope_total is None else "met" if slope_total <=
                  SLOPE_TARGET_MB_PER_1000 else "NOT MET")],
    )
    texts = [text]
    for name, grown in growth.items():
        texts.append(table(
            f"tracemalloc: what grew in the {name} between the idle checkpoint after round 1 "
            f"and after round {ROUNDS}",
            ["allocated at (innermost frame)", "KB", "blocks", "called from"],
            [[g["where"], g["size_diff_kb"], g["count_diff"],
              " < ".join(reversed(g["traceback"][:-1]))[:160]] for g in grown], left=1))
    return result, texts


def _short(filename: str) -> str:
    """A file name without the interpreter's, the venv's or the repository's folder."""
    for marker in ("site-packages/", f"{REPO}/", "/lib/python3."):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return filename


def _fmt_slope(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
