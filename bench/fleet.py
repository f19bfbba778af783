"""Scenario fleet (issue 19 item 3): N agent daemons, each with its own spool, AE title and
simulated device, send to one archive made of two Orthanc nodes on one PostgreSQL database
(index and storage in PostgreSQL); every agent has both nodes in one archive group, half of
them node 1 first and half node 2 first (the load spreads by the order of the group).

Run: all agents acquire at once (phase 1); as soon as phase 1 is captured, Orthanc node 1 is
killed (SIGKILL, a crash: objects in flight to it have an unknown outcome); all agents acquire
again (phase 2) while node 1 is down; then node 1 is started again on the same database (the
rows pinned to it, whose outcome there was unknown, are resent there, same UID) and the bench
waits until every row of every agent is committed.

Reported: aggregate objects/s and MB/s (objects and bytes over first frame → last commitment
recorded, all agents), per-agent p95 frame → committed (the row's committed_at minus the
frame's read-out time in Content Date/Time, as in e2e), the rows moved off node 1 and those
pinned to it, and the archive's side: SOP Instance UIDs counted in the shared database through
node 2's REST API — committed exactly once, lost = acquired but not in the database,
duplicates = a UID stored twice or routed to two members.

BENCH_FLEET_LOGS=DIR in the environment keeps every agent's and node's log there.

`--agents N` (default 10: what 2 cores carry with max_associations = 1); `--quick`: 2 agents
and a few small frames (the smoke test runs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    LOCALHOST,
    MB,
    AgentDaemon,
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

#: set by `python -m bench fleet --agents N`
AGENTS: dict[str, int | None] = {"n": None}
DEFAULT_AGENTS = 10
GROUP = "archive"


def _settings(quick: bool) -> dict[str, Any]:
    if quick or tiny():
        # the smoke test: 2 agents, small frames, < 60 s
        return {"agents": 2, "size": 128, "rate": 10.0, "phase1": 6, "phase2": 6}
    # per agent: 2 frames/s of 512x512 16-bit (0.5 MB): 10 agents = 20 objects/s, 10 MB/s
    return {"agents": DEFAULT_AGENTS, "size": 512, "rate": 2.0, "phase1": 30, "phase2": 30}


def _agent_config(folder: Path, *, number: int, listener_port: int, api_port: int,
                  nodes: list[tuple[str, int, str]], size: int, rate: float) -> Path:
    options = simulated_options(size, rate)
    lines = [
        "[agent]", f'ae_title = "FLEET{number:03d}"', f'spool_dir = "{folder / "spool"}"',
        'log_level = "INFO"',
        "[listener]", f'host = "{LOCALHOST}"', f"port = {listener_port}",
        "[api]", f'host = "{LOCALHOST}"', f"port = {api_port}", "max_frames = 10000",
        "[device]", 'driver = "simulated"', "[device.options]",
        *(f"{k} = {json.dumps(v)}" for k, v in options.items()),
        "[modality]", 'modality = "OT"', f'station_name = "FLEET{number:03d}"',
        "[queue]", "retry_initial_s = 0.5", "retry_max_s = 5", "retention_s = 86400",
        "min_free_mb = 0",
    ]
    for name, port, ae in nodes:
        lines += ["[[destinations]]", f'name = "{name}"', f'host = "{LOCALHOST}"',
                  f"port = {port}", f'called_ae = "{ae}"', "storage_commitment = true",
                  # two cores for everything: one association (one sending process) each
                  "max_associations = 1", f'group = "{GROUP}"']
    path = folder / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _archive_uids(node: Any) -> Counter[str]:
    """SOP Instance UIDs in the shared database, one count per stored instance (one REST
    call: /instances?expand lists each instance's main tags)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{node.rest_url}/instances?expand", timeout=120) as response:
        listed = json.loads(response.read())
    return Counter(i["MainDicomTags"]["SOPInstanceUID"] for i in listed)


def _wait_all_committed(spools: list[Path], timeout_s: float) -> list[list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [spool_rows(s) for s in spools]
        flat = [r for agent in rows for r in agent]
        if flat and all(r["state"] == "committed" for r in flat):
            return rows
        failed = [r for r in flat if r["state"] == "failed"]
        if failed:
            raise RuntimeError(f"fleet: {len(failed)} row(s) failed, e.g. "
                               f"{failed[0]['last_error']}")
        if time.monotonic() > deadline:
            states = Counter(r["state"] for r in flat)
            raise TimeoutError(f"fleet: not all committed within {timeout_s:g} s: "
                               f"{dict(states)}")
        time.sleep(0.5)


def _reroutes(spool: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{spool / 'queue.db'}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM reroutes").fetchone()[0])
    finally:
        conn.close()


def _copy_logs(root: Path, target: Path) -> None:
    for log in root.rglob("*.log"):
        dest = target / log.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, dest)


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    from agent.demo.orthanc import RegisteredModality
    from agent.demo.postgres import start_shared_archive

    settings = _settings(quick)
    count = AGENTS["n"] or settings["agents"]
    rate, size = settings["rate"], settings["size"]
    used: set[int] = set()

    def port() -> int:
        chosen = free_port(exclude=used)
        used.add(chosen)
        return chosen

    listeners = [port() for _ in range(count)]
    apis = [port() for _ in range(count)]
    node_ports = [(port(), port()) for _ in range(2)]
    modalities = [RegisteredModality(f"fleet{i:03d}", f"FLEET{i:03d}", LOCALHOST, listeners[i])
                  for i in range(count)]
    keep = os.environ.get("BENCH_FLEET_LOGS")
    if keep:
        # runs last (the workspace undoes in reverse): every log, once all have stopped
        ws.on_close("copy of the logs", lambda: _copy_logs(ws.root, Path(keep)))
    say(f"fleet: PostgreSQL and 2 Orthanc nodes for {count} agents")
    archive = start_shared_archive(ws.path("archive"), node_ports, modalities=modalities)
    ws.on_close("shared archive", archive.stop)
    named = [(f"node{i + 1}", node.dicom_port, node.ae_title)
             for i, node in enumerate(archive.nodes)]
    daemons: list[AgentDaemon] = []
    for i in range(count):
        folder = ws.path(f"agent{i:03d}")
        # half the agents try node 1 first, half node 2: the load spreads over both nodes
        order = named if i % 2 == 0 else named[::-1]
        config = _agent_config(folder, number=i, listener_port=listeners[i], api_port=apis[i],
                               nodes=order, size=size, rate=rate)
        daemons.append(AgentDaemon(ws, config, apis[i], folder / "agent.log"))
    say(f"fleet: starting {count} agents")
    for daemon in daemons:
        daemon.start(wait_api=False)
    for daemon in daemons:
        daemon.wait_api(timeout_s=120)
    spools = [d.config_path.parent / "spool" for d in daemons]

    def acquire_all(frames: int, phase: int) -> list[str]:
        def one(item: tuple[int, AgentDaemon]) -> list[str]:
            number, daemon = item
            result = daemon.acquire(frames, timeout_s=frames / rate * 10 + 120,
                                    patient_id=f"FLEET-{number:03d}-{phase}")
            return [o["sop_instance_uid"] for o in result["objects"]]

        with ThreadPoolExecutor(max_workers=count) as pool:
            return [uid for uids in pool.map(one, enumerate(daemons)) for uid in uids]

    t0 = time.time()
    say(f"fleet: phase 1, {settings['phase1']} frames per agent at {rate:g}/s")
    acquired = acquire_all(settings["phase1"], 1)
    in_flight = Counter(r["state"] for s in spools for r in spool_rows(s))
    say(f"fleet: killing Orthanc node 1 (rows now: {dict(in_flight)})")
    node1 = archive.nodes[0]
    os.kill(node1.pid, signal.SIGKILL)
    node1.stop()                                  # reaps it
    t_down = time.time()
    say(f"fleet: phase 2, {settings['phase2']} frames per agent, node 1 down")
    acquired += acquire_all(settings["phase2"], 2)

    def node1_down(daemon: AgentDaemon) -> bool:
        status = daemon.api("GET", "/api/status", timeout_s=30)
        return any(d["name"] == "node1" and d.get("down") for d in status["destinations"])

    # every agent that sends to node 1 first has noticed (the others never try it)
    deadline = time.monotonic() + 120
    while not all(node1_down(d) for d in daemons[::2]):
        if time.monotonic() > deadline:
            raise TimeoutError("fleet: the agents did not notice node 1 was down in 120 s")
        time.sleep(0.2)

    def pinned_now() -> int:
        return sum(1 for s in spools for r in spool_rows(s)
                   if r["destination"] == "node1" and r["state"] != "committed")

    # what waits for node 1 once everything else is done: rows whose outcome there is unknown
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        rows_now = [r for s in spools for r in spool_rows(s)]
        if all(r["state"] == "committed" or r["destination"] == "node1" for r in rows_now):
            break
        time.sleep(0.5)
    pinned = pinned_now()
    in_db_while_down = _archive_uids(archive.nodes[1])
    pinned_in_db = sum(1 for s in spools for r in spool_rows(s)
                       if r["destination"] == "node1" and r["state"] != "committed"
                       and r["sop_instance_uid"] in in_db_while_down)
    say(f"fleet: {pinned} row(s) pinned to node 1 ({pinned_in_db} already in the database); "
        "starting node 1 again")
    t_up = time.time()
    archive.start_node(0)
    rows_by_agent = _wait_all_committed(spools, 600)
    for daemon in daemons:
        daemon.stop()

    # -- figures ---------------------------------------------------------------------------
    flat = [r for rows in rows_by_agent for r in rows]
    first_frame = min(frame_time(spools[a] / "objects" / f"{r['queue_id']:010d}.dcm")
                      for a, rows in enumerate(rows_by_agent) for r in rows[:1])
    last_commit = max(r["committed_at"] for r in flat)
    window = last_commit - first_frame
    total_bytes = sum(r["size_bytes"] for r in flat)
    per_agent = []
    for number, rows in enumerate(rows_by_agent):
        latencies = [r["committed_at"] - frame_time(spools[number] / "objects"
                                                   / f"{r['queue_id']:010d}.dcm")
                     for r in rows]
        before = [lat for r, lat in zip(rows, latencies, strict=True)
                  if r["committed_at"] < t_up]
        per_agent.append({
            "agent": f"FLEET{number:03d}", "objects": len(rows),
            "first_member": "node1" if number % 2 == 0 else "node2",
            "to_node1": sum(r["destination"] == "node1" for r in rows),
            "to_node2": sum(r["destination"] == "node2" for r in rows),
            "moved": _reroutes(spools[number]),
            "p95_s": percentile(latencies, 95), "max_s": max(latencies),
            "p95_before_node1_back_s": percentile(before, 95) if before else None,
        })
    archive_counts = _archive_uids(archive.nodes[1])
    routed = Counter(r["sop_instance_uid"] for r in flat)
    acquired_set = set(acquired)
    result = {
        "agents": count, "frame_size": size, "frame_rate_per_agent": rate,
        "objects": len(acquired_set), "bytes": total_bytes,
        "objects_s": len(flat) / window, "mb_s": total_bytes / MB / window,
        "window_s": window, "node1_down_after_s": t_down - t0,
        "node1_down_for_s": t_up - t_down,
        "moved_off_node1": sum(a["moved"] for a in per_agent),
        "pinned_to_node1": pinned, "pinned_already_in_database": pinned_in_db,
        "committed_exactly_once": sum(
            1 for uid in acquired_set if archive_counts.get(uid) == 1 and routed[uid] == 1),
        "lost": len(acquired_set - set(archive_counts)),
        "duplicates": sum(n - 1 for n in archive_counts.values() if n > 1)
        + sum(n - 1 for n in routed.values() if n > 1),
        "foreign_in_archive": len(set(archive_counts) - acquired_set),
        "per_agent": per_agent,
    }
    say(f"fleet: {result['objects']} objects, {result['objects_s']:.1f} objects/s, "
        f"lost {result['lost']}, duplicates {result['duplicates']}")
    head = table(
        f"fleet ({'quick; ' if quick else ''}{count} agents x {size}x{size} 16-bit frames at "
        f"{rate:g}/s each → 2 Orthanc nodes on one PostgreSQL; node 1 killed mid-run)",
        ["agents", "objects", "objects/s", "MB/s", "moved off node 1", "pinned to node 1",
         "committed exactly once", "lost", "duplicates"],
        [[count, result["objects"], result["objects_s"], result["mb_s"],
          result["moved_off_node1"], result["pinned_to_node1"],
          result["committed_exactly_once"], result["lost"], result["duplicates"]]],
        notes=["objects/s, MB/s: all agents' objects over first frame → last commitment "
               "recorded (includes node 1's downtime and its restart)",
               f"node 1 killed {result['node1_down_after_s']:.0f} s in, down "
               f"{result['node1_down_for_s']:.0f} s; pinned: rows whose outcome at node 1 was "
               f"unknown, resent there once it was back ({pinned_in_db} of them were already "
               "in the database)",
               "exactly once / lost / duplicates: SOP Instance UIDs in the shared database "
               "(node 2's REST) against what the agents acquired, and rows per object"])
    agents_table = table(
        "fleet: per agent (frame → committed)",
        ["agent", "first", "objects", "→ node1", "→ node2", "moved", "p95 s",
         "p95 before node 1 back s", "max s"],
        [[a["agent"], a["first_member"], a["objects"], a["to_node1"], a["to_node2"],
          a["moved"], a["p95_s"], a["p95_before_node1_back_s"], a["max_s"]]
         for a in per_agent])
    return result, [head, agents_table]
