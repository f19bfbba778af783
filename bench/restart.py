"""Scenario 4, restart: the daemon started on a spool that already holds 10,000 queued objects
(as after a long archive outage, or a reboot), against the same start on a spool of one object.

Measured from the moment the process is created (time.time() before fork): when its log says
it is running, when its API first answers, when the first C-STORE reaches the archive (a
Storage SCP in the bench process stamps it); then, while it sends the backlog, the response
time of `GET /api/status` and of `modality-agent status --json` (a whole CLI process), and,
once it is stopped, of `status --json` reading the spool directly.
"""

from __future__ import annotations

import random
import statistics
import time
import urllib.error
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from bench.common import (
    AgentDaemon,
    DestinationSpec,
    StampingSCP,
    TestObject,
    Workspace,
    fill_spool,
    make_objects,
    python_env,
    say,
    simulated_options,
    summary,
    table,
    tiny,
)

QUEUED = 10_000
IMPORT_PROBE = "import agent.daemon"


def small_objects(count: int) -> Iterator[TestObject]:
    """`count` distinct small SC objects (64x64, ~9 KB): one built by the agent's IOD code,
    the others the same bytes with a new SOP Instance UID of the same length (building 10,000
    would take longer than the rest of the scenario)."""
    template = make_objects(64, 1)[0]
    old = template.sop_instance_uid
    digits = len(old) - len("2.25.")
    rng = random.Random()
    seen = set()
    while len(seen) < count:
        uid = "2.25." + str(rng.randrange(10 ** (digits - 1), 10**digits))
        if uid in seen:
            continue
        seen.add(uid)
        payload = template.payload.replace(old.encode(), uid.encode())
        yield TestObject(uid, payload)


def _log_time(log: Path, needle: str) -> float | None:
    """time.time() of the first log line containing `needle` (asctime: local, ms)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if needle in line:
            try:
                moment = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            except ValueError:
                continue
            return moment.timestamp()
    return None


def _requeue(spool: Path) -> None:
    """Everything back to pending through the queue's own API, for the next repeat."""
    from agent.queue import QueueStore
    from agent.records import DeliveryState

    store = QueueStore(spool, ["archive"], min_free_bytes=0)
    store.open()
    try:
        rows = store.deliveries(destination="archive", limit=10 * QUEUED)
        again = [d.delivery_id for d in rows if d.state is not DeliveryState.PENDING]
        if again:
            store.mark_retry(again, "bench: next run", time.time() - 1)
    finally:
        store.close()


def _one_start(ws: Workspace, name: str, spool: Path, scp: StampingSCP, *,
               status_samples: int, cli_samples: int) -> dict[str, Any]:
    scp.first_connection_at = scp.first_store_at = None
    daemon = AgentDaemon.create(
        ws, name, spool_dir=spool, device_options=simulated_options(64, 0),
        destinations=[DestinationSpec("archive", scp.port, scp.ae_title,
                                      storage_commitment=False)])
    daemon.start(wait_api=False)
    t0 = daemon.started_at
    api_up: float | None = None
    deadline = time.monotonic() + 120
    try:
        while api_up is None or scp.first_store_at is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no API or no C-STORE within 120 s:\n"
                                   f"{daemon.log_tail()}")
            if daemon.process is not None and daemon.process.poll() is not None:
                raise RuntimeError(f"{name}: agent exited: {daemon.log_tail()}")
            if api_up is None:
                try:
                    daemon.api("GET", "/api/status", timeout_s=5)
                    api_up = time.time()
                except (urllib.error.URLError, ConnectionError, TimeoutError, AgentError):
                    pass
            time.sleep(0.005)
        # the daemon is now sending its backlog: how long does status take meanwhile?
        api_ms = []
        for _ in range(status_samples):
            t = time.perf_counter()
            daemon.api("GET", "/api/status", timeout_s=30)
            api_ms.append((time.perf_counter() - t) * 1000)
            time.sleep(0.05)
        cli_s = []
        for _ in range(cli_samples):
            t = time.perf_counter()
            result = daemon.cli("status", "--json")
            cli_s.append(time.perf_counter() - t)
            if result.returncode != 0:
                raise RuntimeError(f"status --json failed: {result.stderr.strip()}")
        stores_seen = scp.stores
    finally:
        daemon.stop()
    t = time.perf_counter()
    offline = daemon.cli("status", "--json")
    offline_s = time.perf_counter() - t
    if offline.returncode != 0:
        raise RuntimeError(f"offline status --json failed: {offline.stderr.strip()}")
    running_at = _log_time(daemon.log_path, "running: AE")
    assert scp.first_store_at is not None and api_up is not None
    return {
        "seconds_to_running_log": None if running_at is None else running_at - t0,
        "seconds_to_api": api_up - t0,
        "seconds_to_first_connection": (scp.first_connection_at or 0) - t0,
        "seconds_to_first_store": scp.first_store_at - t0,
        "status_api_ms": api_ms,
        "status_cli_s": cli_s,
        "status_offline_cli_s": offline_s,
        "stores_during_measurement": stores_seen,
    }


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    import subprocess
    import sys

    scp = StampingSCP()
    scp.start(ws)
    t_prep = time.perf_counter()
    spools = {}
    queued = 200 if tiny() else QUEUED
    for count in (1, queued):
        spool = ws.root / f"spool-{count}"
        fill_spool(spool, ["archive"], small_objects(count))
        spools[count] = spool
    say(f"restart: spools of 1 and {queued} queued objects made in "
        f"{time.perf_counter() - t_prep:.1f} s")
    imports = []
    for _ in range(max(repeats, 2)):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORT_PROBE], check=True, env=python_env())
        imports.append(time.perf_counter() - t)
    results: dict[int, list[dict[str, Any]]] = {1: [], queued: []}
    for repeat in range(repeats):
        for count, spool in spools.items():
            if repeat:
                _requeue(spool)
            run_result = _one_start(ws, f"agent-{count}-{repeat}", spool, scp,
                                    status_samples=10 if count == queued else 3,
                                    cli_samples=3 if count == queued else 1)
            results[count].append(run_result)
            say(f"restart: {count} queued: first C-STORE after "
                f"{run_result['seconds_to_first_store']:.2f} s")
    return _report(results, imports, quick, repeats)


def _med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _report(results: dict[int, list[dict[str, Any]]], imports: list[float], quick: bool,
            repeats: int) -> tuple[dict[str, Any], list[str]]:
    rows = []
    per_count: dict[int, dict[str, Any]] = {}
    for count, runs in results.items():
        first = [r["seconds_to_first_store"] for r in runs]
        api = [ms for r in runs for ms in r["status_api_ms"]]
        cli = [s for r in runs for s in r["status_cli_s"]]
        offline = [r["status_offline_cli_s"] for r in runs]
        summary_row = {
            "queued": count,
            "seconds_to_running_log": _med([r["seconds_to_running_log"] for r in runs]),
            "seconds_to_api": _med([r["seconds_to_api"] for r in runs]),
            "seconds_to_first_store": _med(first),
            "seconds_to_first_store_min": min(first),
            "status_api_ms_median": statistics.median(api),
            "status_api_ms_max": max(api),
            "status_cli_s_median": statistics.median(cli),
            "status_offline_cli_s_median": statistics.median(offline),
            "runs": runs,
        }
        per_count[count] = summary_row
        rows.append([count, summary_row["seconds_to_running_log"], summary_row["seconds_to_api"],
                     min(first), summary_row["seconds_to_first_store"],
                     summary_row["status_api_ms_median"], summary_row["status_api_ms_max"],
                     summary_row["status_cli_s_median"],
                     summary_row["status_offline_cli_s_median"]])
    big = per_count[max(per_count)]
    imp = summary(imports)
    text = table(
        f"restart ({'quick, ' if quick else ''}{repeats} run(s); daemon process start → ...)",
        ["queued", "log 'running' s", "API up s", "1st C-STORE min s", "1st C-STORE med s",
         "GET status med ms", "max ms", "status --json s", "offline status s"],
        rows,
        notes=[
            f"python -c '{IMPORT_PROBE}' alone takes {imp['median']:.2f} s (median of "
            f"{len(imports)}): the floor of a daemon start (the CLI imports less)",
            "status is measured while the daemon sends its backlog to a pynetdicom SCP; "
            "'status --json' is the whole CLI process (python start, imports, HTTP)",
            "offline status: the daemon stopped, the CLI reads the spool's database itself",
        ],
    )
    result = {
        "queued": max(per_count),
        "seconds_to_first_store": big["seconds_to_first_store"],
        "status_json_s": big["status_cli_s_median"],
        "status_api_ms": big["status_api_ms_median"],
        "python_import_s": imp["median"],
        "by_queue_size": {str(k): v for k, v in per_count.items()},
    }
    return result, [text]
