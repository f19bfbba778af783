"""Prometheus's own tool on what we ship (issue 17 item 2): `promtool check metrics` on the
rendered exposition (format and lint: counter names, HELP, units), `promtool check rules` and
`promtool test rules` on packaging/prometheus/alerts.yml. promtool comes with Debian's
`prometheus` package (install.sh --dev)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.metrics import (
    DestinationMetrics,
    LatencyHistogram,
    MetricsSnapshot,
    ThreadMetrics,
    render_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "data" / "prometheus" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus': "
                             "install.sh --dev installs it)")


def promtool(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60,
                            check=False)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(), result.stderr.decode())


def busy_snapshot() -> MetricsSnapshot:
    """Every family present, two destinations, one with a name that needs escaping."""
    histogram = LatencyHistogram()
    for seconds in (0.0001, 0.002, 0.04, 0.9, 30.0):
        histogram.observe(seconds)
    counters = {"association_failures_total": 3, "tls_failures_total": 1, "stored_total": 50,
                "failed_total": 2}
    return MetricsSnapshot(
        version="0.1.0", uptime_s=3600.0,
        destinations=(
            DestinationMetrics("PACS", {"pending": 4, "sent": 1, "committed": 45, "failed": 2},
                               oldest_pending_age_s=75.5, open_commitment_transactions=1,
                               reachable=True, last_success_at=1.7e9, **counters),
            DestinationMetrics('VNA "b"\\2\nx', {}, reachable=False, consecutive_failures=5,
                               **counters)),
        threads=(ThreadMetrics("purge", True, False), ThreadMetrics("worklist", False, True)),
        device_connected=True, frames_read_total=1000, frames_dropped_total=3,
        spool_free_bytes=8 * 2**30, spool_min_free_bytes=512 * 2**20, capture_blocked=False,
        worklist_cache_age_s=12.0, worklist_error=False, certificate_expiry_at=1.9e9,
        audit_backlog=4, fsync=histogram.snapshot())


@pytest.mark.parametrize("snapshot", [
    busy_snapshot(),
    MetricsSnapshot(version="0.1.0", uptime_s=0.0),     # a fresh daemon, nothing configured
], ids=["everything", "minimal"])
def test_the_exposition_passes_promtool_check_metrics(snapshot: MetricsSnapshot) -> None:
    result = promtool("check", "metrics", stdin=render_metrics(snapshot))
    # promtool exits 0 only without format errors and without lint problems; both are printed
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_promtool_check_metrics_does_reject_a_bad_exposition() -> None:
    """The test above can fail: a counter without _total and a missing HELP are reported."""
    bad = b"# TYPE modality_agent_frames_read counter\nmodality_agent_frames_read 3\n"
    result = promtool("check", "metrics", stdin=bad)
    assert result.returncode != 0
    assert "modality_agent_frames_read" in result.stdout + result.stderr


def test_the_alert_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_each_alert_fires_on_its_failure_and_not_on_a_healthy_series() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rule_tests_cover_every_alert() -> None:
    alerts = {line.split(":", 1)[1].strip() for line in ALERTS.read_text(encoding="utf-8")
              .splitlines() if line.strip().startswith("- alert:")}
    tested = RULE_TESTS.read_text(encoding="utf-8")
    assert alerts, "no alert in packaging/prometheus/alerts.yml"
    for alert in alerts:
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels" in tested, \
            f"{alert}: no rule test where it fires"
        assert f"alertname: {alert}\n        exp_alerts: []" in tested, \
            f"{alert}: no rule test where it stays silent"
