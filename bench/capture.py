"""Scenario 3, capture: the simulated device at 1024x1024 16-bit, 30 frames/s, for 60 s (10 s
with --quick), captured by the daemon while its forwarder sends to Orthanc with storage
commitment.

Frames dropped, two ways a device at 30 frames/s loses them: (1) the agent's own count, frames
its capture thread read but found its bounded buffer full (the spool did not keep up); (2)
frames the capture thread was too late to read: the simulated driver hands a late reader the
next frame at once but keeps at most one interval of lag, so a real device would have lost
30 x (first → last frame time) + 1 - frames read. `dropped` is their sum. The spool's write
rate (bytes queued / capture time) is set against the disk's own rate for the same pattern
(2 MB files: write, fsync, rename, fsync the folder), measured on the same file system just
before and just after the capture.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    MB,
    AgentDaemon,
    DestinationSpec,
    Workspace,
    cpu_seconds,
    frame_time,
    free_port,
    say,
    simulated_options,
    spool_rows,
    table,
)

SIZE = 1024
RATE = 30.0


def disk_fsync_rate(folder: Path, *, object_bytes: int, seconds: float) -> float:
    """Bytes per second of durable object writes: tmp file, write, fsync, rename, fsync dir."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(object_bytes)
    written = 0
    index = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tmp = folder / f"{index}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, folder / f"{index}.dcm")
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        written += object_bytes
        index += 1
    rate = written / (time.perf_counter() - t0)
    for entry in os.scandir(folder):
        os.unlink(entry.path)
    return rate


class CpuSampler:
    """CPU use (% of one core) of some PIDs over an interval."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self._t0 = time.monotonic()

    def percent(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t0
        return {name: round(100 * (cpu_seconds(pid) - self._start[name]) / elapsed, 1)
                for name, pid in self.pids.items()}


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    duration = 10 if quick else 60
    frames = int(duration * RATE)
    listener_port = free_port()
    orthanc = ws.orthanc("orthanc-capture", agent_listener_port=listener_port)
    daemon = AgentDaemon.create(
        ws, "agent-capture", listener_port=listener_port,
        device_options=simulated_options(SIZE, RATE),
        destinations=[DestinationSpec("archive", orthanc.dicom_port, orthanc.ae_title,
                                      storage_commitment=True)])
    spool = daemon.config_path.parent / "spool"
    object_bytes = SIZE * SIZE * 2 + 2048
    disk_before = disk_fsync_rate(ws.root / "disk-probe", object_bytes=object_bytes,
                                  seconds=2 if quick else 4)
    say(f"capture: disk, durable 2 MB writes: {disk_before / MB:.0f} MB/s")
    daemon.start()
    backlog_samples: list[tuple[float, int]] = []
    stop_sampling = threading.Event()

    def sample_backlog() -> None:
        t0 = time.monotonic()
        while not stop_sampling.wait(1.0):
            try:
                queue = daemon.api("GET", "/api/status", timeout_s=10)["queue"]
                backlog_samples.append((time.monotonic() - t0,
                                        queue["pending"] + queue["sending"]))
            except OSError:
                pass

    sampler = threading.Thread(target=sample_backlog, daemon=True)
    cpu = CpuSampler({"agent": daemon.pid, "orthanc": orthanc.pid})
    sampler.start()
    t0 = time.time()
    try:
        result = daemon.acquire(frames, timeout_s=duration * 4 + 120)
    finally:
        stop_sampling.set()
    elapsed = time.time() - t0
    cpu_capture = cpu.percent()
    sampler.join(timeout=15)
    captured = len(result["objects"])
    rows = [r for r in spool_rows(spool) if r["destination"] == "archive"]
    spooled_bytes = sum(r["size_bytes"] for r in rows)
    frame_times = sorted(frame_time(spool / "objects" / f"{r['queue_id']:010d}.dcm")
                         for r in rows)
    gaps = [b - a for a, b in itertools.pairwise(frame_times)]
    late_gaps = sum(1 for g in gaps if g > 1.5 / RATE)
    agent_dropped = int(result.get("dropped_frames", 0))
    last_queued = max(r["created_at"] for r in rows)
    # from the first frame read to the last object durably queued
    capture_s = last_queued - frame_times[0]
    tail_s = last_queued - frame_times[-1]
    backlog_end = sum(1 for r in rows if r["state"] in ("pending", "sending"))
    say(f"capture: {captured} frames in {elapsed:.1f} s; backlog {backlog_end}; draining")
    drain_t0 = time.monotonic()
    drain_limit = 60 if quick else 180
    while time.monotonic() - drain_t0 < drain_limit:
        states = [r["state"] for r in spool_rows(spool)]
        if all(s == "committed" for s in states):
            break
        time.sleep(0.25)
    drain_s = time.monotonic() - drain_t0
    final = spool_rows(spool)
    committed = sum(1 for r in final if r["state"] == "committed")
    daemon.stop()
    disk_after = disk_fsync_rate(ws.root / "disk-probe", object_bytes=object_bytes,
                                 seconds=2 if quick else 4)
    # frames a 30 fps device shows between the first and the last captured frame, against the
    # frames the capture thread read (captured + dropped by the agent) in that time
    span = frame_times[-1] - frame_times[0] if frame_times else 0.0
    expected = round(span * RATE) + 1 if frame_times else 0
    late_reads = max(0, expected - captured - agent_dropped)
    dropped = agent_dropped + late_reads
    spool_rate = spooled_bytes / capture_s
    disk_rate = (disk_before + disk_after) / 2
    data = {
        "frames": captured,
        "dropped": dropped,
        "frames_requested": frames,
        "seconds": elapsed,
        "span_s": span,
        "capture_s": capture_s,
        "frames_per_s": (captured + agent_dropped - 1) / span if span else None,
        "last_frame_to_last_queued_s": tail_s,
        "dropped_by_agent": agent_dropped,
        "dropped_late_reads": late_reads,
        "gaps_over_1_5_intervals": late_gaps,
        "spool_write_mb_s": spool_rate / MB,
        "needed_mb_s": RATE * (spooled_bytes / max(captured, 1)) / MB,
        "disk_fsync_write_mb_s": disk_rate / MB,
        "disk_before_mb_s": disk_before / MB,
        "disk_after_mb_s": disk_after / MB,
        "spool_vs_disk": spool_rate / disk_rate,
        "backlog_at_end": backlog_end,
        "backlog_max": max((n for _, n in backlog_samples), default=None),
        "drain_s": drain_s,
        "committed": committed,
        "cpu_percent_during_capture": cpu_capture,
        "error": result.get("error", ""),
    }
    text = table(
        f"capture ({SIZE}x{SIZE} 16-bit at {RATE:g} frames/s for {duration} s, forwarding "
        f"to Orthanc with commitment)",
        ["what", "value"],
        [["frames captured / asked", f"{captured} / {frames}"],
         ["acquire request s (API call, end to end)", elapsed],
         ["first frame → last object queued s", capture_s],
         ["last frame → last object queued s (buffer tail)", tail_s],
         ["frames/s read from the device", data["frames_per_s"]],
         ["frames dropped: buffer full (agent's count)", agent_dropped],
         ["frames dropped: read too late (30/s x span + 1 - read)", late_reads],
         ["gaps > 1.5/30 s between captured frames", late_gaps],
         ["spool write MB/s (bytes queued / first frame → last queued)",
          data["spool_write_mb_s"]],
         ["needed at 30 frames/s MB/s", data["needed_mb_s"]],
         ["disk: durable 2 MB writes MB/s (before / after)",
          f"{disk_before / MB:.0f} / {disk_after / MB:.0f}"],
         ["spool rate / disk rate", f"{data['spool_vs_disk']:.0%}"],
         ["forwarder backlog at end of capture (max seen)",
          f"{backlog_end} ({data['backlog_max']})"],
         ["then committed in s", f"{drain_s:.1f} ({committed}/{len(final)} committed)"],
         ["CPU % of one core: agent / Orthanc",
          f"{cpu_capture['agent']:.0f} / {cpu_capture['orthanc']:.0f}"]],
        left=1,
        notes=["the simulated device draws its frames in the agent's own process "
               "(scrolling bars: ~1 ms per frame, a real device costs nothing there)"],
    )
    return data, [text]
