"""The benchmarks keep working: every scenario at a tiny size (`python -m bench --tiny`).

No timing is asserted (performance is measured by the bench itself, beside the reference tools);
this checks that each scenario runs its real peers to the end and reports the JSON shape that
scripts rely on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.fixture
def bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench` is not an installed package: it runs from the repository root."""
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.mark.usefixtures("bench_on_path")
def test_a_stall_in_a_run_is_counted() -> None:
    from bench.send import STALL_S, count_stalls, latency_ms

    # synthetic round trips: one run of normal sends, one with a 63 s stall (a lost response
    # waiting out the DIMSE timeout) and one just over the limit
    assert count_stalls([0.01, 0.02, 0.5, STALL_S]) == 0
    assert count_stalls([0.01, 63.0, 0.02]) == 1
    assert count_stalls([STALL_S + 0.001, 0.01, 63.0]) == 2
    assert count_stalls([]) == 0
    stats = latency_ms([0.01] * 98 + [0.02, 63.0])
    assert stats == {"p50": 10.0, "p99": 20.0, "max": 63000.0}
    assert latency_ms([]) is None


@pytest.mark.usefixtures("bench_on_path")
def test_cpu_measured_as_zero_is_a_ratio_of_zero() -> None:
    from bench.send import cpu_ratio

    # CI: a tiny run's agent finished within one clock tick, and the report said None
    assert cpu_ratio(0.0, 0.002) == 0.0
    assert cpu_ratio(1.0, 0.002) == pytest.approx(0.5)
    assert cpu_ratio(None, 0.002) is None
    assert cpu_ratio(1.0, 0.0) is None and cpu_ratio(1.0, None) is None


def test_tls_ratio_of_ratios_sets_like_against_like() -> None:
    from bench.send import DEFAULT_ASSOCIATIONS, Row, _tls_report, tls_ratio

    assert tls_ratio(0.6, 0.8) == pytest.approx(0.75)
    assert tls_ratio(None, 0.8) is None and tls_ratio(0.6, None) is None
    # synthetic medians (seconds): the agent loses 40 % to TLS, one storescu 20 %, storescu
    # as N processes 40 % as well
    seconds = {("storescp", "agent"): 1.0, ("storescp-tls", "agent"): 1 / 0.6,
               ("storescp", "storescu"): 2.0, ("storescp-tls", "storescu"): 2 / 0.8,
               ("storescp", "storescu-parallel"): 1.2,
               ("storescp-tls", "storescu-parallel"): 1.2 / 0.6}
    rows = [Row("0.5 MB", receiver, tool, 10, 5_000_000, seconds=[value],
                receiver_name=receiver) for (receiver, tool), value in seconds.items()]
    result, text = _tls_report(rows)
    assert result["ratio_of_ratios"] == pytest.approx(0.75)
    assert result["ratio_of_ratios_parallel"] == pytest.approx(1.0)
    assert f"vs storescu x {DEFAULT_ASSOCIATIONS}" in text


@pytest.mark.usefixtures("bench_on_path")
def test_scaling_reports_each_row_against_the_best_rate() -> None:
    from bench.scaling import Cell, busy_share, report

    # /proc/stat ticks: 100 in all, 25 of them idle or waiting
    assert busy_share((1000, 400), (1100, 425)) == pytest.approx(0.75)
    assert busy_share((1000, 400), (1000, 400)) is None
    cells = [Cell("agent", 3, seconds=[2.0, 1.0, 1.1], archive_cpu_s=[0.4, 0.4, 0.5]),
             Cell("storescu", 3, seconds=[1.0, 1.2, 0.8], busy=[0.8]),
             Cell("agent", 6, seconds=[0.5], archive_cpu_s=[0.3]),
             Cell("storescu", 6, problems=["exit 1"])]
    result, [text] = report(cells, count=100)
    assert result["ceiling_objects_per_s"] == pytest.approx(200.0)        # agent x 6
    by = {(r["sender"], r["n"]): r for r in result["rows"]}
    assert by[("agent", 3)]["objects_per_s"] == pytest.approx(100 / 1.1)
    assert by[("agent", 3)]["share_of_ceiling"] == pytest.approx(100 / 1.1 / 200)
    assert by[("agent", 3)]["archive_cpu_ms_per_object"] == pytest.approx(4.0)
    assert by[("storescu", 3)]["machine_busy"] == pytest.approx(0.8)
    assert by[("storescu", 6)]["objects_per_s"] is None
    assert by[("storescu", 6)]["problems"] == ["exit 1"]
    # storescu x 3 at 1.0 s, the agent at 1.1 s
    assert result["ratio_by_n"]["3"] == pytest.approx(1.0 / 1.1)
    assert result["ratio_by_n"]["6"] is None
    assert "N=3 0.91" in text and "exit 1" in text


def test_rss_slope_is_least_squares() -> None:
    from bench.soak import least_squares_slope

    assert least_squares_slope([0, 1000, 2000, 3000], [100.0, 100.5, 101.0, 101.5]) == \
        pytest.approx(0.0005)
    assert least_squares_slope([1000, 1000], [1.0, 2.0]) is None


def test_every_scenario_runs_at_tiny_size() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    for scenario in ("send", "scaling", "restart", "capture", "build", "e2e", "soak", "footprint"):
        assert scenario in report, scenario
        assert not report[scenario].get("error"), (scenario, report[scenario]["error"])
    send = report["send"]
    assert isinstance(send["ratio_vs_storescu"], float) and send["ratio_vs_storescu"] > 0
    senders = {row["tool"] for row in send["rows"]}
    assert any("storescu" in s for s in senders) and any("agent" in s for s in senders)
    assert "storescu-parallel" in senders
    # issue 18: the fair baseline, stalls, per-object latency, CPU, footprint, RSS slope
    assert is_number(send["ratio_vs_storescu_parallel"]) and send["ratio_vs_storescu_parallel"] > 0
    assert isinstance(send["parallel_n"], int) and send["parallel_n"] >= 1
    assert isinstance(send["stalls"], int) and send["stalls"] >= 0
    assert all(is_number(send["latency_ms"][k]) for k in ("p50", "p99", "max"))
    assert is_number(send["cpu_per_object_vs_storescu"])
    # TLS: issue 14's ratio of ratios against one storescu, and like for like against N
    assert is_number(send["tls"]["ratio_of_ratios"])
    assert is_number(send["tls"]["ratio_of_ratios_parallel"])
    assert is_number(report["footprint"]["idle_pss_mb"]) and report["footprint"]["idle_pss_mb"] > 0
    assert is_number(report["soak"]["rss_slope_mb_per_1000"])
    assert report["capture"]["frames"] > 0 and report["capture"]["dropped"] >= 0
    assert report["restart"]["queued"] > 1 and report["restart"]["seconds_to_first_store"] > 0


def test_soak_objects_below_one_per_acquisition_is_refused() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "soak", "--soak-objects", "5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "--soak-objects: at least 6" in result.stderr
