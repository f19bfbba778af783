"""Scenario 3, capture: the simulated device at 1024x1024 16-bit, 30 frames/s, for 60 s (10 s
with --quick), captured by the daemon while its forwarder sends to Orthanc with storage
commitment.

Frames dropped, two ways a device at 30 frames/s loses them: (1) the agent's own count, frames
its capture thread read but found its bounded buffer full (the spool did not keep up); (2)
frames the capture thread was too late to read: the simulated driver hands a late reader the
next frame at once but keeps at most one interval of lag, so a real device would have lost
30 x (first → last frame time) + 1 - frames read. `dropped` is their sum. The spool's write
rate (bytes queued / capture time) is set against the disk's own rate for the same pattern
(2 MB files: write, fsync, drop from the page cache, rename, fsync the folder), measured on
the same file system just before and just after the capture.
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
    Orthanc,
    Workspace,
    cpu_seconds,
    descendants,
    frame_time,
    free_port,
    say,
    simulated_options,
    spool_rows,
    table,
    tiny,
)

SIZE = 1024
RATE = 30.0


def disk_fsync_rate(folder: Path, *, object_bytes: int, seconds: float) -> float:
    """Bytes per second of durable object writes as the spool makes them: tmp file, write,
    fsync, drop its pages from the page cache (agent.queue.spool.drop_cached: without it, on
    the project's VM, this rate swung between ~60 and ~900 MB/s with how long the kernel's
    free pages had lain unused, not with the disk), rename, fsync dir."""
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
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
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
        used: dict[str, float] = {}
        for name, pid in self.pids.items():
            try:
                used[name] = round(100 * (cpu_seconds(pid) - self._start[name]) / elapsed, 1)
            except OSError:
                used[name] = float("nan")      # ended (a sending process replaced)
        senders = [v for k, v in used.items() if k.startswith("sender")]
        used["senders"] = round(sum(senders), 1) if senders else 0.0
        return used


def _capture_once(ws: Workspace, name: str, *, frames: int, duration: int,
                  destination_port: int, orthanc: Orthanc, listener_port: int,
                  drain_limit_s: float) -> dict[str, Any]:
    """One acquisition of `frames` frames; with `drain_limit_s`, wait for the commitments."""
    daemon = AgentDaemon.create(
        ws, name, listener_port=listener_port, device_options=simulated_options(SIZE, RATE),
        destinations=[DestinationSpec("archive", destination_port, orthanc.ae_title,
                                      storage_commitment=True)])
    spool = daemon.config_path.parent / "spool"
    daemon.start()
    try:
        backlog_samples: list[int] = []
        stop_sampling = threading.Event()

        def sample_backlog() -> None:
            while not stop_sampling.wait(1.0):
                try:
                    queue = daemon.api("GET", "/api/status", timeout_s=10)["queue"]
                    backlog_samples.append(queue["pending"] + queue["sending"])
                except OSError:
                    pass

        sampler = threading.Thread(target=sample_backlog, daemon=True)
        cpu = CpuSampler({"agent": daemon.pid, "orthanc": orthanc.pid,
                          **{f"sender{i}": pid
                             for i, pid in enumerate(descendants(daemon.pid))}})
        sampler.start()
        t0 = time.time()
        try:
            result = daemon.acquire(frames, timeout_s=duration * 4 + 120)
        finally:
            stop_sampling.set()
        elapsed = time.time() - t0
        cpu_capture = cpu.percent()
        sampler.join(timeout=15)
        rows = [r for r in spool_rows(spool) if r["destination"] == "archive"]
        backlog_end = sum(1 for r in rows if r["state"] in ("pending", "sending"))
        drain_s = None
        if drain_limit_s:
            say(f"capture: {len(rows)} frames in {elapsed:.1f} s; backlog {backlog_end}; "
                "draining")
            drain_t0 = time.monotonic()
            while time.monotonic() - drain_t0 < drain_limit_s:
                if all(r["state"] == "committed" for r in spool_rows(spool)):
                    break
                time.sleep(0.25)
            drain_s = time.monotonic() - drain_t0
        committed = sum(1 for r in spool_rows(spool) if r["state"] == "committed")
    finally:
        daemon.stop()
    captured = len(result["objects"])
    spooled_bytes = sum(r["size_bytes"] for r in rows)
    frame_times = sorted(frame_time(spool / "objects" / f"{r['queue_id']:010d}.dcm")
                         for r in rows)
    gaps = [b - a for a, b in itertools.pairwise(frame_times)]
    agent_dropped = int(result.get("dropped_frames", 0))
    last_queued = max(r["created_at"] for r in rows)
    # from the first frame read to the last object durably queued
    capture_s = last_queued - frame_times[0]
    # frames a 30 fps device shows between the first and the last captured frame, against the
    # frames the capture thread read (captured + dropped by the agent) in that time
    span = frame_times[-1] - frame_times[0]
    late_reads = max(0, round(span * RATE) + 1 - captured - agent_dropped)
    return {
        "frames": captured,
        "dropped": agent_dropped + late_reads,
        "dropped_by_agent": agent_dropped,
        "dropped_late_reads": late_reads,
        "frames_requested": frames,
        "request_s": elapsed,
        "capture_s": capture_s,
        "frames_per_s": (captured + agent_dropped - 1) / span if span else None,
        "last_frame_to_last_queued_s": last_queued - frame_times[-1],
        "gaps_over_1_5_intervals": sum(1 for g in gaps if g > 1.5 / RATE),
        "spool_write_mb_s": spooled_bytes / capture_s / MB,
        "needed_mb_s": RATE * (spooled_bytes / max(captured, 1)) / MB,
        "backlog_at_end": backlog_end,
        "backlog_max": max(backlog_samples, default=None),
        "drain_s": drain_s,
        "committed": committed,
        "cpu_percent": cpu_capture,
        "error": result.get("error", ""),
    }


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    duration = 1 if tiny() else 10 if quick else 60
    frames = int(duration * RATE)
    listener_port = free_port()
    orthanc = ws.orthanc("orthanc-capture", agent_listener_port=listener_port)
    object_bytes = SIZE * SIZE * 2 + 2048
    probe_s = 0.5 if tiny() else 2 if quick else 4
    disk_before = disk_fsync_rate(ws.root / "disk-probe", object_bytes=object_bytes,
                                  seconds=probe_s)
    say(f"capture: disk, durable 2 MB writes: {disk_before / MB:.0f} MB/s")
    forwarding = _capture_once(ws, "agent-capture", frames=frames, duration=duration,
                               destination_port=orthanc.dicom_port, orthanc=orthanc,
                               listener_port=listener_port,
                               drain_limit_s=60 if quick else 180)
    # the same capture with nothing to forward to (the archive's port closed: the forwarder
    # only retries now and then): what the capture path does without the forwarder beside it
    alone = _capture_once(ws, "agent-capture-alone", frames=frames, duration=duration,
                          destination_port=free_port(), orthanc=orthanc,
                          listener_port=free_port(), drain_limit_s=0)
    disk_after = disk_fsync_rate(ws.root / "disk-probe", object_bytes=object_bytes,
                                 seconds=probe_s)
    disk_rate = (disk_before + disk_after) / 2
    data = {**forwarding,
            "disk_fsync_write_mb_s": disk_rate / MB,
            "disk_before_mb_s": disk_before / MB, "disk_after_mb_s": disk_after / MB,
            "spool_vs_disk": forwarding["spool_write_mb_s"] * MB / disk_rate,
            "without_forwarding": alone}

    def both(key: str, digits: int = 2) -> list[Any]:
        return [forwarding[key], alone[key]]

    text = table(
        f"capture ({SIZE}x{SIZE} 16-bit at {RATE:g} frames/s for {duration} s; the forwarder "
        f"sending to Orthanc with commitment, and the same capture alone)",
        ["what", "while forwarding", "capture alone"],
        [["frames captured / asked", f"{forwarding['frames']} / {frames}",
          f"{alone['frames']} / {frames}"],
         ["frames dropped: buffer full (agent's count)", *both("dropped_by_agent")],
         ["frames dropped: read too late", *both("dropped_late_reads")],
         ["gaps > 1.5/30 s between captured frames", *both("gaps_over_1_5_intervals")],
         ["frames/s read from the device", *both("frames_per_s")],
         ["first frame → last object queued s", *both("capture_s")],
         ["last frame → last object queued s (buffer tail)",
          *both("last_frame_to_last_queued_s")],
         ["spool write MB/s (durable)", *both("spool_write_mb_s")],
         ["needed at 30 frames/s MB/s", *both("needed_mb_s")],
         ["disk: durable 2 MB writes MB/s (before / after)",
          f"{disk_before / MB:.0f} / {disk_after / MB:.0f}", ""],
         ["spool rate / disk rate", f"{data['spool_vs_disk']:.0%}",
          f"{alone['spool_write_mb_s'] * MB / disk_rate:.0%}"],
         ["forwarder backlog at end of capture (max seen)",
          f"{forwarding['backlog_at_end']} ({forwarding['backlog_max']})", "-"],
         ["then all committed within s",
          f"{forwarding['drain_s']:.1f} ({forwarding['committed']}/{forwarding['frames']})",
          "-"],
         ["CPU % of one core: agent", forwarding["cpu_percent"]["agent"],
          alone["cpu_percent"]["agent"]],
         ["CPU % of one core: its sending processes", forwarding["cpu_percent"]["senders"],
          alone["cpu_percent"]["senders"]],
         ["CPU % of one core: Orthanc", forwarding["cpu_percent"]["orthanc"], "-"]],
        left=1,
        notes=["the simulated device draws its frames in the agent's own process "
               "(scrolling bars: ~1 ms per frame, a real device costs nothing there)",
               "capture alone: the archive's port is closed, so the forwarder sends nothing"],
    )
    return data, [text]
