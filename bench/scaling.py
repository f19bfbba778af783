"""Scenario: the archive's ceiling. The same 0.5 MB objects sent into Orthanc (fsync per object)
by the agent with 1..6 associations and by DCMTK storescu as 1..6 processes, interleaved.

Why: issue 18's target 1 sets the agent's default 3 associations against storescu x 3 into
Orthanc. If more associations or processes no longer raise the rate, the archive is the
bottleneck for both senders, and a ratio near 1.0 is the archive's answer, not the sender's:
this table shows where that point is. Beside each run: Orthanc's own CPU per object and how
busy the machine's two cores were (from /proc/stat), so that a sender that slows the archive
by taking its CPU would show it.

Each repeat runs every (sender, N) once, the order rotating; Orthanc is emptied and the files
read into the page cache before each run, as in `send`. The agent is timed as in `send` (from
before its first association to the last object recorded), storescu by wall clock.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import send
from bench.common import Workspace, cpu_seconds, fill_spool, make_objects, say, table, tiny

PIXELS = 512                       # 0.5 MB, the size where target 1 sits at the line
COUNT_FULL, COUNT_QUICK = 400, 200
NS_FULL, NS_QUICK = (1, 2, 3, 4, 6), (3, 6)
SENDERS = ("agent", "storescu")


@dataclass
class Cell:
    sender: str
    n: int
    seconds: list[float] = field(default_factory=list)
    archive_cpu_s: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def machine_ticks() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of every CPU since boot, from /proc/stat's first line."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of the machine's CPU time that was not idle between two `machine_ticks`."""
    total = after[0] - before[0]
    return 1 - (after[1] - before[1]) / total if total > 0 else None


def _run_one(ws: Workspace, cell: Cell, receiver: send.Receiver, spool: Path,
             files: list[Path], file_list: Path, archive_pid: int) -> None:
    receiver.clear()
    send.warm_cache(files)
    cpu0, ticks0 = cpu_seconds(archive_pid), machine_ticks()
    if cell.sender == "agent":
        run = send._run_tool(ws, f"agent-{cell.n}", receiver, spool, files, file_list)
    else:
        run = send._run_dcmtk(ws, "storescu-parallel", receiver, files, parts=cell.n)
    cpu1, ticks1 = cpu_seconds(archive_pid), machine_ticks()
    held = receiver.count()
    problem = run.problem or ("" if held == len(files) else f"Orthanc holds {held}/{len(files)}")
    if problem:
        cell.problems.append(problem)
        say(f"scaling: {cell.sender} x {cell.n}: {problem}")
        return
    cell.seconds.append(run.seconds)
    cell.archive_cpu_s.append(cpu1 - cpu0)
    busy = busy_share(ticks0, ticks1)
    if busy is not None and cell.sender == "storescu":
        # the agent's span also holds its start-up (imports, sending processes), which its
        # own clock leaves out: the machine's share is only comparable for storescu's runs
        cell.busy.append(busy)
    say(f"scaling: {cell.sender} x {cell.n}: {run.seconds:.3f} s")


def run(ws: Workspace, *, quick: bool, repeats: int) -> tuple[dict[str, Any], list[str]]:
    count = 3 if tiny() else COUNT_QUICK if quick else COUNT_FULL
    ns = (3,) if tiny() else NS_QUICK if quick else NS_FULL
    rounds = 1 if tiny() else max(repeats, 1 if quick else 3)
    orthanc = ws.orthanc("orthanc-scaling")
    receiver = send.Receiver("orthanc", "Orthanc (fsync)", orthanc.dicom_port, orthanc.ae_title,
                             orthanc.count, orthanc.clear)
    objects = make_objects(PIXELS, count)
    spool = ws.root / "spool"
    files = fill_spool(spool, [receiver.name], objects)
    del objects
    file_list = ws.root / "files.txt"
    file_list.write_text("\n".join(map(str, files)) + "\n")
    cells = [Cell(s, n) for n in ns for s in SENDERS]
    t0 = time.perf_counter()
    for repeat in range(rounds):
        order = cells[repeat % len(cells):] + cells[:repeat % len(cells)]
        for cell in order:
            _run_one(ws, cell, receiver, spool, files, file_list, orthanc.pid)
    say(f"scaling: {rounds} round(s) of {len(cells)} runs in {time.perf_counter() - t0:.0f} s")
    return report(cells, count)


def report(cells: list[Cell], count: int) -> tuple[dict[str, Any], list[str]]:
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    rates = {(c.sender, c.n): count / m for c in cells if (m := median(c.seconds))}
    ceiling = max(rates.values()) if rates else None
    rows_json = []
    rows = []
    for cell in cells:
        seconds = median(cell.seconds)
        rate = rates.get((cell.sender, cell.n))
        archive_ms = median([s / count * 1000 for s in cell.archive_cpu_s])
        busy = median(cell.busy)
        share = rate / ceiling if rate and ceiling else None
        rows_json.append({"sender": cell.sender, "n": cell.n, "median_s": seconds,
                          "objects_per_s": rate, "share_of_ceiling": share,
                          "archive_cpu_ms_per_object": archive_ms, "machine_busy": busy,
                          "runs": len(cell.seconds), "problems": cell.problems})
        label = (f"agent, {cell.n} assoc" if cell.sender == "agent"
                 else f"storescu x {cell.n} processes")
        rows.append([label, cell.n, seconds, rate and round(rate),
                     share and f"{share:.0%}", archive_ms,
                     busy and f"{busy:.0%}" if cell.sender == "storescu" else "-",
                     "; ".join(cell.problems)])
    ratio = {}
    for n in sorted({c.n for c in cells}):
        agent, reference = rates.get(("agent", n)), rates.get(("storescu", n))
        ratio[n] = agent / reference if agent and reference else None
    text = table(
        f"archive ceiling: {count} objects of 0.5 MB into Orthanc (fsync) at N associations / "
        "processes",
        ["sender", "N", "median s", "objects/s", "of ceiling", "Orthanc CPU ms/obj",
         "machine busy", "note"],
        rows,
        notes=["ceiling = the best median rate of any row; 'of ceiling' = this row's rate / it",
               "Orthanc CPU: utime+stime of the Orthanc process over the run ÷ objects (median)",
               "machine busy: share of both cores not idle over storescu's runs (the agent's "
               "span holds its start-up)",
               "agent / storescu at equal N: " + ", ".join(
                   f"N={n} {r:.2f}" if r else f"N={n} -" for n, r in ratio.items())])
    result = {"objects": count, "ceiling_objects_per_s": ceiling, "rows": rows_json,
              "ratio_by_n": {str(n): r for n, r in ratio.items()}}
    return result, [text]
