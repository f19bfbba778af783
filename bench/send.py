"""Scenario 1, send: objects already in the spool, sent to Orthanc (fsync per object) and to
DCMTK storescp writing to tmpfs, by the agent's forwarder and by the reference tools, on the
same spooled files, in one run, plus the loopback TCP ceiling.

DICOM TLS (issue 14): a third receiver, storescp +tls (tmpfs too), gets the same files from the
agent over TLS and from DCMTK storescu +tls. What TLS costs the agent is judged against what it
costs DCMTK on the same data and machine: (agent TLS rate / agent plaintext rate) divided by
(storescu TLS rate / storescu plaintext rate), the "ratio of ratios"; the target is >= 0.9.

Each repeat runs every tool once per receiver (the order rotates between repeats); the receiver
is emptied before each run and checked to hold every object after it. Orthanc must be emptied:
it keeps the first copy of a UID, so a resend would skip the fsync and look faster.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import DestinationSection
from bench.common import (
    LOCALHOST,
    MB,
    REPO,
    STORESCU,
    BenchTls,
    Orthanc,
    Workspace,
    clear_folder,
    count_files,
    fill_spool,
    make_bench_tls,
    make_objects,
    nodelay_env,
    percentile,
    profile_prefix,
    python_env,
    say,
    stop_process,
    summary,
    table,
    tiny,
)

DEFAULT_ASSOCIATIONS: int = DestinationSection.__dataclass_fields__["max_associations"].default
#: "agent" is the forwarder as configured by default; "agent-N" the same with N associations,
#: to show where the default comes from (full runs only: --quick must stay under 4 minutes)
TOOLS = ("agent", "agent-1", "agent-2", "agent-4", "storescu", "storescu-parallel",
         "dcmsend-parallel", "pynetdicom-one", "pynetdicom-per-object")
#: --quick leaves the plain pynetdicom references out (the slowest runs, and no news: full runs
#: have them) so that it stays under 4 minutes with the fair baseline's 3 repeats
QUICK_TOOLS = ("agent", "storescu", "storescu-parallel", "dcmsend-parallel")
#: issue 18: the fair comparison runs at least this many interleaved repeats into the plain
#: receivers, also in --quick (one run of 12 objects takes ~0.2 s and scatters by ±30 %); the
#: other tools, and everything into storescp +tls, run --repeats (--quick: 1, to stay < 4 min)
FAIR_TOOLS = ("agent", "storescu", "storescu-parallel")
FAIR_REPEATS = 3
#: ...and in a full run this many: three repeats' paired ratios (agent / storescu x N in the
#: same repeat) spread from 0.75 to 0.98 into Orthanc at 0.5 MB (2026-12-07), so a median of
#: three moved by a tenth with the luck of one run; five cost ~1 minute more
FAIR_REPEATS_FULL = 5
#: a C-STORE whose round trip took longer than this is a stall (issue 18 item 2)
STALL_S = 5.0
DCMSEND = Path("/usr/bin/dcmsend")
#: what runs into storescp +tls: the agent (as configured by default) and its references, one
#: storescu (issue 14's) and storescu as N processes (like for like with the agent's N
#: associations: TLS adds work per byte and N senders share two cores, so a single sender's
#: TLS/plain share is not what N of them keep)
TLS_TOOLS = ("agent", "storescu", "storescu-parallel")
#: issue 14: the agent's TLS rate, relative to its plaintext rate, within 10 % of storescu's
TLS_TARGET = 0.9
TOOL_LABELS = {
    "agent": f"agent forwarder ({DEFAULT_ASSOCIATIONS} assoc)",
    "agent-1": "agent forwarder, 1 assoc",
    "agent-2": "agent forwarder, 2 assoc",
    "agent-4": "agent forwarder, 4 assoc",
    "storescu": "DCMTK storescu, 1 assoc",
    "storescu-parallel": f"DCMTK storescu x {DEFAULT_ASSOCIATIONS} processes",
    "dcmsend-parallel": f"DCMTK dcmsend x {DEFAULT_ASSOCIATIONS} processes",
    "pynetdicom-one": "pynetdicom, 1 assoc",
    "pynetdicom-per-object": "pynetdicom, assoc/object",
}


@dataclass(frozen=True)
class Size:
    label: str
    pixels: int
    count_full: int
    count_quick: int


SIZES = (Size("0.5 MB", 512, 400, 200), Size("8 MB", 2048, 25, 12))


@dataclass
class Receiver:
    name: str            # "orthanc" | "storescp": also the destination name in the spool
    label: str
    port: int
    ae_title: str
    count: Any           # () -> int
    clear: Any           # () -> None
    tls: BenchTls | None = None     # a DICOM TLS receiver: senders use the "client" pair
    tools: tuple[str, ...] | None = None   # None: every tool of the run


@dataclass
class Row:
    size: str
    receiver: str
    tool: str
    objects: int
    bytes: int
    seconds: list[float] = field(default_factory=list)
    max_pdu: int | None = None
    ok: bool = True
    note: str = ""
    receiver_name: str = ""     # Receiver.name: "storescp", "storescp-tls"...
    #: per run: CPU seconds of the sender's processes (utime + stime), and stalls counted
    cpu_s: list[float] = field(default_factory=list)
    stalls: list[int] = field(default_factory=list)
    #: every C-STORE round trip of every run (the agent only: its sending processes time them)
    latencies_s: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        return summary(self.seconds)


@dataclass
class RunResult:
    seconds: float
    problem: str = ""
    max_pdu: int | None = None
    cpu_s: float | None = None
    latencies_s: list[float] = field(default_factory=list)


def count_stalls(latencies_s: Sequence[float], threshold_s: float = STALL_S) -> int:
    """How many C-STOREs took longer than `threshold_s` from first byte out to response in."""
    return sum(1 for s in latencies_s if s > threshold_s)


def latency_ms(latencies_s: Sequence[float]) -> dict[str, float] | None:
    """p50 / p99 / max of per-object round trips, in ms (None without any)."""
    if not latencies_s:
        return None
    return {"p50": percentile(latencies_s, 50) * 1000, "p99": percentile(latencies_s, 99) * 1000,
            "max": max(latencies_s) * 1000}


def _sink(port: int, total_bytes: int, chunk: int) -> None:
    with socket.create_connection((LOCALHOST, port)) as conn:
        view = memoryview(bytearray(chunk))
        received = 0
        while received < total_bytes:
            n = conn.recv_into(view)
            if not n:
                break
            received += n
        conn.sendall(received.to_bytes(8, "big"))


def loopback_ceiling(total_bytes: int, chunk: int = 4 << 20) -> float:
    """Bytes per second through one loopback TCP connection, sender and receiver in two
    processes (sendall → recv_into, 4 MB buffers): what no DICOM sender can beat here."""
    server = socket.create_server((LOCALHOST, 0))
    port = server.getsockname()[1]
    sink = multiprocessing.get_context("fork").Process(target=_sink,
                                                       args=(port, total_bytes, chunk))
    sink.start()
    try:
        conn, _ = server.accept()
        with conn:
            payload = memoryview(bytes(chunk))
            t0 = time.perf_counter()
            sent = 0
            while sent < total_bytes:
                conn.sendall(payload)
                sent += chunk
            received = int.from_bytes(conn.recv(8), "big")
            seconds = time.perf_counter() - t0
    finally:
        server.close()
        sink.join(timeout=30)
        if sink.is_alive():
            sink.terminate()
            sink.join()
    return received / seconds


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def warm_cache(files: Sequence[Path]) -> None:
    """Read every file into the page cache, so that every run starts as the earlier rounds'
    runs did, with the objects in memory: the agent drops a file from the cache once it has
    sent it (agent.net.direct_store), and a tool run after it would otherwise read from the
    disk what the agent's run read from memory, or the other way round."""
    chunk = bytearray(1 << 20)
    for path in files:
        with path.open("rb", buffering=0) as file:
            while file.readinto(chunk):
                pass


def _run_dcmtk(ws: Workspace, tool: str, receiver: Receiver, files: list[Path],
               parts: int | None = None) -> RunResult:
    """storescu (one process) or storescu/dcmsend as N processes started together on the
    files split N ways (round robin), each with its own association; timed by wall clock
    from the first start to the last exit, CPU summed over the processes (getrusage of the
    children waited for in between: only these). `parts`: N (default: the agent's default
    number of associations for the "-parallel" tools)."""
    log = ws.root / f"send-{tool}.log"
    if parts is None:
        parts = 1 if tool == "storescu" else DEFAULT_ASSOCIATIONS
    tls_args = receiver.tls.dcmtk_args("client") if receiver.tls else []
    commands = []
    for index in range(parts):
        chunk = [str(f) for f in files[index::parts]]
        if not chunk:
            continue
        if tool.startswith("dcmsend"):
            commands.append([str(DCMSEND), "-aet", "BENCHDCMTK", "-aec", receiver.ae_title,
                             "-nh", "-nuc", LOCALHOST, str(receiver.port), *chunk])
        else:
            commands.append([str(STORESCU), "-aet", "BENCHDCMTK", "-aec", receiver.ae_title,
                             "-nh", *tls_args, LOCALHOST, str(receiver.port), *chunk])
    with log.open("ab") as out:
        cpu0 = _children_cpu_s()
        t0 = time.perf_counter()
        processes = [subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, env=nodelay_env())
                     for args in commands]
        codes = []
        try:
            for process in processes:
                codes.append(process.wait(timeout=600))
        finally:
            for process in processes:
                stop_process(process)
        seconds = time.perf_counter() - t0
        cpu = _children_cpu_s() - cpu0
    bad = [c for c in codes if c != 0]
    return RunResult(seconds, f"exit {bad[0]}" if bad else "", None, cpu)


def _run_tool(ws: Workspace, tool: str, receiver: Receiver, spool: Path, files: list[Path],
              file_list: Path) -> RunResult:
    """Run one send: its time, problem or "", the receiver's max PDU if known, CPU time and
    (the agent) every C-STORE's round trip."""
    log = ws.root / f"send-{tool}.log"
    if tool in ("storescu", "storescu-parallel", "dcmsend-parallel"):
        return _run_dcmtk(ws, tool, receiver, files)
    start = log.stat().st_size if log.exists() else 0
    try:
        return _run_python_tool(ws, tool, receiver, spool, len(files), file_list, log)
    finally:
        _say_problems(log, start, tool, receiver.name)


def _say_problems(log: Path, start: int, tool: str, receiver: str) -> None:
    """The warnings and errors a sender logged in this run, on the progress stream: an
    outlier in the table should come with its cause (the workspace is removed afterwards)."""
    if not log.exists():
        return
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    problems = [line for line in lines
                if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    for line in problems[:10]:
        say(f"send: {tool} → {receiver}: {line[:300]}")


def _run_python_tool(ws: Workspace, tool: str, receiver: Receiver, spool: Path, count: int,
                     file_list: Path, log: Path) -> RunResult:
    result_path = ws.root / "sender-result.json"
    result_path.unlink(missing_ok=True)
    args = [*profile_prefix(f"send-{tool}-{receiver.name}-{count}"), sys.executable,
            "-m", "bench.sender", tool.split("-")[0] if tool.startswith("agent") else tool,
            "--port", str(receiver.port), "--called-ae",
            receiver.ae_title, "--result", str(result_path)]
    if tool.startswith("agent"):
        args += ["--spool", str(spool), "--destination", receiver.name]
        if tool != "agent":
            args += ["--max-associations", tool.split("-")[1]]
        if receiver.tls:
            args += ["--tls-certificate", str(receiver.tls.certificate("client")),
                     "--tls-key", str(receiver.tls.private_key("client")),
                     "--tls-ca", str(receiver.tls.ca_file)]
    else:
        args += ["--files", str(file_list)]
    with log.open("ab") as err:
        result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=err,
                                stderr=subprocess.STDOUT, env=python_env(), cwd=REPO,
                                check=False, timeout=900)
    if result.returncode != 0 or not result_path.exists():
        return RunResult(float("nan"), f"exit {result.returncode} (see {log.name})")
    report = json.loads(result_path.read_text())
    problem = f"{report['failed']} failed" if report.get("failed") else ""
    return RunResult(float(report["seconds"]), problem, report.get("negotiated_max_pdu"),
                     report.get("cpu_s"), list(report.get("latencies_s") or []))


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    scp_dir, scp_kind = ws.tmpfs("storescp-out", size_mb=1024)
    orthanc: Orthanc = ws.orthanc("orthanc-send")
    say(f"send: Orthanc pid {orthanc.pid} on port {orthanc.dicom_port}")
    scp_pid, scp_port = ws.storescp(scp_dir)
    say(f"send: storescp pid {scp_pid} on port {scp_port}, writing to {scp_kind} {scp_dir}")
    tls = make_bench_tls(ws.path("tls"))
    tls_dir, tls_kind = ws.tmpfs("storescp-tls-out", size_mb=1024)
    tls_pid, tls_port = ws.storescp(tls_dir, tls=tls)
    say(f"send: storescp +tls pid {tls_pid} on port {tls_port}, writing to {tls_kind}")
    receivers = [
        Receiver("orthanc", "Orthanc (fsync)", orthanc.dicom_port, orthanc.ae_title,
                 orthanc.count, orthanc.clear),
        Receiver("storescp", f"storescp ({scp_kind})", scp_port, "STORESCP",
                 lambda: count_files(scp_dir), lambda: clear_folder(scp_dir)),
        Receiver("storescp-tls", f"storescp +tls ({tls_kind})", tls_port, "STORESCP",
                 lambda: count_files(tls_dir), lambda: clear_folder(tls_dir), tls=tls,
                 tools=TLS_TOOLS),
    ]
    tools = QUICK_TOOLS if quick else TOOLS
    rows: list[Row] = []
    ceiling_total = (64 if tiny() else 1024 if quick else 4096) * (1 << 20)
    for size in SIZES:
        count = 3 if tiny() else size.count_quick if quick else size.count_full
        t_prep = time.perf_counter()
        objects = make_objects(size.pixels, count)
        total_bytes = sum(len(o.payload) for o in objects)
        spool = ws.root / f"spool-{size.pixels}"
        files = fill_spool(spool, [r.name for r in receivers], objects)
        del objects
        file_list = ws.root / f"files-{size.pixels}.txt"
        file_list.write_text("\n".join(map(str, files)) + "\n")
        say(f"send: {count} objects of {total_bytes / count / MB:.2f} MB spooled in "
            f"{time.perf_counter() - t_prep:.1f} s")
        by_key = {(r.name, t): Row(size.label, r.label, t, count, total_bytes,
                                   receiver_name=r.name)
                  for r in receivers for t in tools if t in (r.tools or tools)}
        # --tiny proves the code runs: one repeat, not the fair comparison's three (five)
        fair_repeats = FAIR_REPEATS if quick else FAIR_REPEATS_FULL
        for repeat in range(max(repeats, 1 if tiny() else fair_repeats)):
            # interleaved: every tool once per repeat, the order rotating; the tools outside
            # the fair comparison stop after --repeats
            active = tuple(t for t in tools if repeat < repeats or t in FAIR_TOOLS)
            order = active[repeat % len(active):] + active[:repeat % len(active)]
            for receiver in receivers:
                if repeat >= repeats and receiver.tls is not None:
                    continue
                for tool in (t for t in order if t in (receiver.tools or tools)):
                    receiver.clear()
                    warm_cache(files)
                    run = _run_tool(ws, tool, receiver, spool, files, file_list)
                    problem = run.problem
                    held = receiver.count()
                    if held != count:
                        problem = (problem + "; " if problem else "") + \
                            f"receiver holds {held}/{count}"
                    row = by_key[(receiver.name, tool)]
                    row.max_pdu = run.max_pdu or row.max_pdu
                    stalls = count_stalls(run.latencies_s)
                    row.stalls.append(stalls)
                    row.latencies_s.extend(run.latencies_s)
                    if stalls:
                        say(f"send: {size.label} {tool} → {receiver.name}: {stalls} STALL(S): "
                            f"C-STORE round trip > {STALL_S:g} s "
                            f"(max {max(run.latencies_s):.1f} s)")
                    if problem:
                        row.ok = False
                        row.note = problem
                        say(f"send: {size.label} {tool} → {receiver.name}: {problem}")
                    else:
                        row.seconds.append(run.seconds)
                        if run.cpu_s is not None:
                            row.cpu_s.append(run.cpu_s)
                    say(f"send: {size.label} → {receiver.name}: {tool} {run.seconds:.2f} s")
        for receiver in receivers:
            receiver.clear()
        rows.extend(by_key.values())
    ceilings = [loopback_ceiling(ceiling_total) for _ in range(max(repeats, 2))]
    return _report(rows, ceilings, ceiling_total, scp_kind, quick, repeats)


def _report(rows: list[Row], ceilings: list[float], ceiling_total: int, scp_kind: str,
            quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    reference: dict[tuple[str, str], float] = {}
    parallel: dict[tuple[str, str], float] = {}
    parallel_cpu: dict[tuple[str, str], float] = {}
    for row in rows:
        if row.tool == "storescu" and row.seconds:
            reference[(row.size, row.receiver)] = row.stats()["median"]
        if row.tool == "storescu-parallel" and row.seconds:
            parallel[(row.size, row.receiver)] = row.stats()["median"]
            if row.cpu_s:
                parallel_cpu[(row.size, row.receiver)] = \
                    statistics.median(row.cpu_s) / row.objects
    json_rows: list[dict[str, Any]] = []
    table_rows: list[list[Any]] = []
    for row in rows:
        entry: dict[str, Any] = {"size": row.size, "receiver": row.receiver,
                                 "tool": row.tool, "objects": row.objects,
                                 "bytes": row.bytes, "runs": len(row.seconds), "ok": row.ok,
                                 "seconds": row.seconds, "receiver_max_pdu": row.max_pdu,
                                 "stalls": sum(row.stalls),
                                 "latency_ms": latency_ms(row.latencies_s),
                                 "cpu_s": row.cpu_s}
        if row.note:
            entry["note"] = row.note
        cells: list[Any] = [row.size, row.receiver, TOOL_LABELS[row.tool], row.objects]
        cpu_ms = statistics.median(row.cpu_s) / row.objects * 1000 if row.cpu_s else None
        ref_cpu = parallel_cpu.get((row.size, row.receiver))
        entry["cpu_ms_per_object"] = cpu_ms
        entry["cpu_vs_storescu_parallel"] = cpu_ratio(cpu_ms, ref_cpu)
        if row.seconds:
            stats = row.stats()
            ref = reference.get((row.size, row.receiver))
            ref_n = parallel.get((row.size, row.receiver))
            ratio = ref / stats["median"] if ref else None
            ratio_n = ref_n / stats["median"] if ref_n else None
            entry.update({"min_s": stats["min"], "median_s": stats["median"],
                          "mb_s": row.bytes / MB / stats["median"],
                          "objects_s": row.objects / stats["median"], "ratio": ratio,
                          "ratio_vs_storescu_parallel": ratio_n})
            if row.tool.startswith(("storescu", "dcmsend")):
                # per object only as a whole-run mean: DCMTK does not time each C-STORE
                per_process = 1 if row.tool == "storescu" else DEFAULT_ASSOCIATIONS
                entry["mean_ms_per_object_whole_run"] = \
                    stats["median"] * per_process / row.objects * 1000
            lat = entry["latency_ms"]
            cells += [stats["median"], entry["mb_s"],
                      f"{ratio:.0%}" if ratio else "-", f"{ratio_n:.0%}" if ratio_n else "-",
                      cpu_ms,
                      f"{entry['cpu_vs_storescu_parallel']:.1f}x"
                      if entry["cpu_vs_storescu_parallel"] is not None else "-",
                      f"{lat['p50']:.0f}/{lat['p99']:.0f}/{lat['max']:.0f}" if lat else
                      f"(mean {entry['mean_ms_per_object_whole_run']:.0f})"
                      if "mean_ms_per_object_whole_run" in entry else "-",
                      sum(row.stalls) if row.tool.startswith("agent") else "-"]
        else:
            entry.update({"min_s": None, "median_s": None, "mb_s": None, "objects_s": None,
                          "ratio": None, "ratio_vs_storescu_parallel": None})
            cells += [None, None, "-", "-", None, "-", "-", "-"]
        cells.append(row.note or ("" if row.ok else "FAILED"))
        json_rows.append(entry)
        table_rows.append(cells)
    ceiling = summary(ceilings)
    json_rows.append({"size": "-", "receiver": "-", "tool": "loopback-tcp",
                      "bytes": ceiling_total, "runs": len(ceilings),
                      "mb_s": ceiling["median"] / MB, "max_mb_s": ceiling["max"] / MB})
    table_rows.append(["-", "loopback TCP ceiling", "sendall → recv_into", "-",
                       ceiling_total / ceiling["median"], ceiling["median"] / MB,
                       "-", "-", None, "-", "-", "-", ""])

    def least(key: str, pick: Any = min) -> float | None:
        values = [r[key] for r in json_rows
                  if r["tool"] == "agent" and r["receiver"].startswith("Orthanc")]
        return pick(values) if values and all(v is not None for v in values) else None

    agent_rows = [r for r in rows if r.tool == "agent"]
    all_latencies = [s for r in agent_rows for s in r.latencies_s]
    runs = min((len(r.seconds) for r in rows
                if r.tool in FAIR_TOOLS and r.receiver_name != "storescp-tls"), default=0)
    text = table(
        f"send ({'quick, ' if quick else ''}{runs}+ interleaved runs of the fair comparison, "
        f"{repeats} of the rest; same spooled files)",
        ["size", "receiver", "sender", "objects", "median s", "MB/s", "vs storescu",
         f"vs storescux{DEFAULT_ASSOCIATIONS}", "CPU ms/obj",
         f"CPU vs storescux{DEFAULT_ASSOCIATIONS}", "per object ms p50/p99/max", "stalls",
         "note"],
        table_rows,
        left=3,
        notes=[
            "MB = 10^6 bytes; MB/s from the median; 'vs storescu' = storescu's median time / "
            f"this one's, same receiver and size; 'vs storescux{DEFAULT_ASSOCIATIONS}' the "
            f"same against {DEFAULT_ASSOCIATIONS} storescu processes on the files split "
            f"{DEFAULT_ASSOCIATIONS} ways (the fair baseline for the agent's "
            f"{DEFAULT_ASSOCIATIONS} associations)",
            "Python senders are timed in-process from before the first association to after "
            "the last release (imports excluded); DCMTK by wall clock of its processes",
            "CPU: utime+stime, median run ÷ objects; the agent's forwarder process + its "
            "sending processes over the timed span, DCMTK's processes summed (start-up "
            "included)",
            "per object: the agent's C-STORE round trips as its sending processes time them "
            f"(p50/p99/max over all runs); DCMTK: (mean) = wall time x processes ÷ objects; "
            f"stall = a round trip > {STALL_S:g} s",
            f"storescp writes to {scp_kind}; Orthanc has SyncStorageArea (fsync per object); "
            "both run with TCP_NODELAY=1; the agent sends without storage commitment here",
            "receivers' maximum PDU as negotiated: "
            + ", ".join(sorted({f"{r.receiver} {r.max_pdu}" for r in rows if r.max_pdu})),
        ],
    )
    tls_result, tls_text = _tls_report(rows)
    return ({"ratio_vs_storescu": least("ratio"),
             "ratio_vs_storescu_parallel": least("ratio_vs_storescu_parallel"),
             "parallel_n": DEFAULT_ASSOCIATIONS,
             "stalls": sum(sum(r.stalls) for r in agent_rows),
             "stall_threshold_s": STALL_S,
             "latency_ms": latency_ms(all_latencies),
             "cpu_per_object_vs_storescu": least("cpu_vs_storescu_parallel", max),
             "fair_runs": runs,
             "rows": json_rows, "tls": tls_result},
            [text, tls_text])


def cpu_ratio(cpu_ms_per_object: float | None, ref_cpu_s_per_object: float | None
              ) -> float | None:
    """CPU per object against the reference's; None only when there is nothing to divide by.
    A measured 0 (a short run within one clock tick of /proc's CPU times) is 0, not missing:
    the tiny bench's agent sometimes finishes within a tick."""
    if cpu_ms_per_object is None or not ref_cpu_s_per_object:
        return None
    return cpu_ms_per_object / 1000 / ref_cpu_s_per_object


def _median_s(rows: list[Row], size: str, receiver: str, tool: str) -> float | None:
    for row in rows:
        if (row.size, row.receiver_name, row.tool) == (size, receiver, tool) and row.seconds:
            return row.stats()["median"]
    return None


def _tls_report(rows: list[Row]) -> tuple[dict[str, Any], str]:
    """Issue 14 item 6: per size, what TLS costs the agent (TLS rate / plaintext rate, both
    into storescp on tmpfs) against what it costs storescu, and their ratio: against one
    storescu (`ratio_of_ratios`, issue 14's) and against storescu as N processes
    (`ratio_of_ratios_parallel`, like for like with the agent's N associations)."""
    json_rows: list[dict[str, Any]] = []
    table_rows: list[list[Any]] = []
    for size in dict.fromkeys(row.size for row in rows):
        entry: dict[str, Any] = {"size": size}
        cells: list[Any] = [size]
        for tool in TLS_TOOLS:
            plain = _median_s(rows, size, "storescp", tool)
            secure = _median_s(rows, size, "storescp-tls", tool)
            nbytes = next(r.bytes for r in rows if r.size == size)
            share = plain / secure if plain and secure else None
            entry[tool] = {"plain_mb_s": nbytes / MB / plain if plain else None,
                           "tls_mb_s": nbytes / MB / secure if secure else None,
                           "tls_vs_plain": share}
            cells += [entry[tool]["plain_mb_s"], entry[tool]["tls_mb_s"],
                      f"{share:.0%}" if share else "-"]
        for key, reference in (("ratio_of_ratios", "storescu"),
                               ("ratio_of_ratios_parallel", "storescu-parallel")):
            ratio = tls_ratio(entry["agent"]["tls_vs_plain"], entry[reference]["tls_vs_plain"])
            entry[key] = ratio
            cells += [f"{ratio:.2f}" if ratio else "-",
                      "-" if ratio is None else "met" if ratio >= TLS_TARGET else "NOT MET"]
        json_rows.append(entry)
        table_rows.append(cells)

    def smallest(key: str) -> float | None:
        ratios = [r[key] for r in json_rows]
        return min(ratios) if ratios and all(r is not None for r in ratios) else None

    n = DEFAULT_ASSOCIATIONS
    text = table(
        "send over DICOM TLS (storescp +tls vs plain storescp, same files, same run)",
        ["size", "agent plain MB/s", "agent TLS MB/s", "agent TLS/plain",
         "storescu plain MB/s", "storescu TLS MB/s", "storescu TLS/plain",
         f"storescu x {n} plain MB/s", f"storescu x {n} TLS MB/s", f"storescu x {n} TLS/plain",
         "ratio of ratios vs storescu", f"≥ {TLS_TARGET}", f"vs storescu x {n}",
         f"≥ {TLS_TARGET}"],
        table_rows, left=1,
        notes=["ratio of ratios = (agent TLS/plain) / (reference TLS/plain); both receivers are "
               "storescp --fork on tmpfs; TLS: BCP 195 non-downgrading profile on both sides "
               "(TLS 1.3 negotiated), RSA 2048 certificates, mutual authentication",
               f"the agent sends with its default {n} associations; 'vs storescu' is against one "
               f"storescu process (issue 14's reference), 'vs storescu x {n}' against {n} "
               "processes on the files split as in the plain comparison (like for like)"])
    return {"ratio_of_ratios": smallest("ratio_of_ratios"),
            "ratio_of_ratios_parallel": smallest("ratio_of_ratios_parallel"),
            "target": TLS_TARGET, "rows": json_rows}, text


def tls_ratio(agent_share: float | None, reference_share: float | None) -> float | None:
    """(agent TLS rate / plain rate) / (the reference's); None when a share is missing."""
    return agent_share / reference_share if agent_share and reference_share else None
