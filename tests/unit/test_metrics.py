"""Prometheus metrics (issue 17 item 2): names, types, label escaping, the fsync histogram, no
patient data, and the shipped docs and alert rules in step with what is rendered. promtool's
own checks are in tests/integration/test_metrics_promtool.py."""

from __future__ import annotations

import datetime
import re
import threading
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import (
    CONTENT_TYPE,
    DELIVERY_STATES,
    DestinationMetrics,
    HistogramSnapshot,
    LatencyHistogram,
    MetricsError,
    MetricsSnapshot,
    ThreadMetrics,
    render_metrics,
    snapshot_from_status,
)

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
DOCS = ROOT / "docs" / "monitoring.md"
SENTINEL = "PHI^SENTINEL"
SENTINEL_ID = "PID-SENTINEL-4711"


def full_snapshot(**changes: Any) -> MetricsSnapshot:
    """Every optional family present."""
    histogram = LatencyHistogram()
    for seconds in (0.0002, 0.004, 0.3, 12.0):
        histogram.observe(seconds)
    fields: dict[str, Any] = {
        "version": "0.1.0", "uptime_s": 42.5,
        "destinations": (DestinationMetrics(
            "PACS", {"pending": 3, "committed": 7}, oldest_pending_age_s=12.0,
            open_commitment_transactions=1, reachable=True, consecutive_failures=0,
            last_success_at=1.7e9, association_failures_total=2, tls_failures_total=1,
            stored_total=9, failed_total=0),),
        "threads": (ThreadMetrics("purge", True, False),),
        "device_connected": True, "frames_read_total": 120, "frames_dropped_total": 2,
        "spool_free_bytes": 10 * 2**30, "spool_min_free_bytes": 512 * 2**20,
        "capture_blocked": False, "worklist_cache_age_s": 3.0, "worklist_error": False,
        "certificate_expiry_at": 1.8e9, "audit_backlog": 0, "fsync": histogram.snapshot()}
    fields.update(changes)
    return MetricsSnapshot(**fields)


def families(body: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(body: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} of one sample name (e.g. x_total, x_bucket)."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def status_with_phi() -> dict[str, Any]:
    """`Station.status()`'s shape (agent/station.py), with patient data wherever it has any."""
    return {
        "agent": {"ae_title": "MODALITY1", "version": "0.1.0", "uptime_s": 100.0,
                  "running": True,
                  "threads": {"purge": {"alive": True, "error": ""},
                              "worklist": {"alive": False, "error": f"no answer for {SENTINEL}"}},
                  "errors": [f"worklist: no answer for {SENTINEL}"]},
        "device": {"driver": "simulated", "connected": True, "detail": SENTINEL,
                   "emits_radiation": False, "frames_read": 55, "frames_dropped": 1,
                   "last_frame_at": 1.7e9, "error": SENTINEL},
        "listener": {"host": "127.0.0.1", "port": 11112},
        "spool": {"path": f"/var/lib/modality-agent/{SENTINEL_ID}", "free_mb": 2048,
                  "min_free_mb": 512, "capture_blocked": False},
        "destinations": [
            {"name": "PACS", "reachable": False, "unreachable_since": 1.7e9,
             "consecutive_failures": 4,
             "last_error": f"PACS: refused {SENTINEL} {SENTINEL_ID}",
             "last_success_at": None,
             "queue": {"pending": 2, "sending": 1, "sent": 0, "commit_requested": 3,
                       "committed": 11, "failed": 1},
             "oldest_pending_at": 1.7e9, "oldest_pending_age_s": 4000.0,
             "open_commitment_requests": 2},
            {"name": "VNA", "reachable": None, "unreachable_since": None,
             "consecutive_failures": 0, "last_error": "", "last_success_at": 1.7e9,
             "queue": dict.fromkeys(DELIVERY_STATES, 0) | {"committed": 5},
             "oldest_pending_at": None, "oldest_pending_age_s": None,
             "open_commitment_requests": 0}],
        "queue": {"pending": 2, "sending": 1, "sent": 0, "commit_requested": 3, "committed": 16,
                  "failed": 1},
        "worklist": {"source": "cache", "age_s": 30.5, "items": 1, "truncated": False,
                     "error": "", "summary": f"1 item: {SENTINEL}"},
        "procedures": [{"patient_name": SENTINEL, "patient_id": SENTINEL_ID,
                        "state": "in_progress"}],
        "tls": {"certificate": f"/etc/{SENTINEL_ID}.pem", "subject": f"CN={SENTINEL}",
                "not_after": "2030-01-02T03:04:05+00:00", "days_left": 1000.0,
                "profile": "bcp195", "warning": ""},
        "limits": {"max_frames": 100, "import_enabled": False},
        "mpps": [{"uid": "1.2.3", "pps_id": SENTINEL_ID, "state": "IN PROGRESS",
                  "pending": "", "images": 1, "attempts": 0, "last_error": SENTINEL,
                  "failed": False}],
    }


# -- names, types, format --------------------------------------------------------------------------
def test_every_family_is_prefixed_has_help_and_type_and_units() -> None:
    text = render_metrics(full_snapshot()).decode()
    helps = re.findall(r"^# HELP (\S+) \S", text, re.MULTILINE)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    assert helps and sorted(helps) == sorted(types)
    for name, kind in types.items():
        assert name.startswith("modality_agent_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert name is not None
            base = re.sub(r"_(bucket|count|sum)$", "", name.group())
            assert base in types or name.group() in types, line


def test_types_and_values() -> None:
    found = families(render_metrics(full_snapshot()))
    expected_types = {
        "modality_agent_queue_deliveries": "gauge",
        "modality_agent_objects_committed": "counter",
        "modality_agent_objects_stored": "counter",
        "modality_agent_objects_failed": "counter",
        "modality_agent_association_failures": "counter",
        "modality_agent_tls_handshake_failures": "counter",
        "modality_agent_oldest_pending_age_seconds": "gauge",
        "modality_agent_commitment_open_transactions": "gauge",
        "modality_agent_destination_reachable": "gauge",
        "modality_agent_frames_read": "counter",
        "modality_agent_frames_dropped": "counter",
        "modality_agent_spool_free_bytes": "gauge",
        "modality_agent_fsync_duration_seconds": "histogram",
        "modality_agent_worklist_cache_age_seconds": "gauge",
        "modality_agent_tls_certificate_expiry_timestamp_seconds": "gauge",
        "modality_agent_audit_backlog_messages": "gauge",
    }
    assert {name: found[name].type for name in expected_types} == expected_types
    body = render_metrics(full_snapshot())
    assert samples(body, "modality_agent_objects_committed_total") == {
        (("destination", "PACS"),): 7.0}
    assert samples(body, "modality_agent_spool_free_bytes") == {(): 10 * 2**30}
    assert samples(body, "modality_agent_tls_handshake_failures_total") == {
        (("destination", "PACS"),): 1.0}


def test_every_state_is_exported_even_at_zero() -> None:
    by_state = samples(render_metrics(full_snapshot()), "modality_agent_queue_deliveries")
    assert {dict(k)["state"]: v for k, v in by_state.items()} == {
        "pending": 3, "sending": 0, "sent": 0, "commit_requested": 0, "committed": 7,
        "failed": 0}


def test_content_type_is_the_0_0_4_text_format() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_only_our_families_and_no_global_registry() -> None:
    body = render_metrics(full_snapshot())
    assert all(name.startswith("modality_agent_") for name in families(body))
    # nothing registered in prometheus-client's process-wide registry, before or after
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "modality_agent_" not in default


# -- label values ----------------------------------------------------------------------------------
def test_a_destination_name_with_quote_backslash_and_newline_is_escaped() -> None:
    name = 'PACS "east"\\wing\nB'
    body = render_metrics(full_snapshot(destinations=(DestinationMetrics(name, {}),)))
    text = body.decode()
    # the text format escapes exactly these three in label values
    assert 'destination="PACS \\"east\\"\\\\wing\\nB"' in text
    assert all(line.count('"') % 2 == 0 or '\\"' in line for line in text.splitlines())
    # and it reads back as the same name
    assert (("destination", name), ("state", "pending")) in samples(
        body, "modality_agent_queue_deliveries")


def test_the_same_destination_twice_is_refused() -> None:
    with pytest.raises(MetricsError, match="destination 'PACS' appears twice"):
        render_metrics(full_snapshot(destinations=(DestinationMetrics("PACS", {}),
                                                   DestinationMetrics("PACS", {}))))


# -- the fsync histogram ---------------------------------------------------------------------------
def test_histogram_buckets_are_cumulative_with_inf_equal_to_count() -> None:
    histogram = LatencyHistogram((0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.5, 0.7, 3.0):   # 0.01 lands in le="0.01": buckets are <=
        histogram.observe(seconds)
    snap = histogram.snapshot()
    assert snap == HistogramSnapshot((0.01, 0.1, 1.0), (2, 3, 5), 6, pytest.approx(4.265))
    body = render_metrics(full_snapshot(fsync=snap))
    buckets = {dict(k)["le"]: v for k, v in
               samples(body, "modality_agent_fsync_duration_seconds_bucket").items()}
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 5, "+Inf": 6}
    assert samples(body, "modality_agent_fsync_duration_seconds_count") == {(): 6}
    assert samples(body, "modality_agent_fsync_duration_seconds_sum")[()] == pytest.approx(4.265)
    text = body.decode()
    order = re.findall(r'fsync_duration_seconds_bucket\{le="([^"]+)"\} (\S+)', text)
    assert [le for le, _ in order] == ["0.01", "0.1", "1.0", "+Inf"]
    counts = [float(v) for _, v in order]
    assert counts == sorted(counts)


def test_histogram_times_a_block_even_when_it_raises() -> None:
    histogram = LatencyHistogram()
    with histogram.time():
        pass
    with pytest.raises(OSError), histogram.time():
        raise OSError("EIO")
    snap = histogram.snapshot()
    assert snap.count == 2 and snap.cumulative[-1] == 2   # both far below 10 s
    assert 0 <= snap.sum_s < 1


def test_histogram_is_thread_safe() -> None:
    histogram = LatencyHistogram()
    threads = [threading.Thread(target=lambda: [histogram.observe(0.001) for _ in range(5000)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = histogram.snapshot()
    assert snap.count == 20_000 and snap.sum_s == pytest.approx(20.0)


@pytest.mark.parametrize("bounds", [(), (0.1, 0.1), (1.0, 0.5), (0.0, 1.0), (float("inf"),)])
def test_histogram_refuses_bad_bounds(bounds: tuple[float, ...]) -> None:
    with pytest.raises(MetricsError, match="increasing order"):
        LatencyHistogram(bounds)


@pytest.mark.parametrize("seconds", [-0.1, float("nan"), float("inf")])
def test_histogram_refuses_impossible_durations(seconds: float) -> None:
    with pytest.raises(MetricsError, match="duration"):
        LatencyHistogram().observe(seconds)


# -- optional families -----------------------------------------------------------------------------
def test_features_not_there_are_absent_not_zero() -> None:
    body = render_metrics(MetricsSnapshot(
        version="0.1.0", uptime_s=1.0,
        destinations=(DestinationMetrics("PACS", {"pending": 1}),)))
    names = set(families(body))
    for absent in ("modality_agent_audit_backlog_messages",
                   "modality_agent_tls_certificate_expiry_timestamp_seconds",
                   "modality_agent_worklist_cache_age_seconds",
                   "modality_agent_fsync_duration_seconds",
                   "modality_agent_destination_reachable",
                   "modality_agent_association_failures",
                   "modality_agent_thread_alive"):
        assert absent not in names
    assert "# HELP modality_agent_thread_alive" not in body.decode()
    assert samples(body, "modality_agent_oldest_pending_age_seconds") == {
        (("destination", "PACS"),): 0.0}


# -- from status: same numbers, no patient data ----------------------------------------------------
def test_from_status_the_committed_count_equals_status() -> None:
    status = status_with_phi()
    body = render_metrics(snapshot_from_status(status))
    committed = samples(body, "modality_agent_objects_committed_total")
    assert {dict(k)["destination"]: v for k, v in committed.items()} == {
        d["name"]: d["queue"]["committed"] for d in status["destinations"]}
    assert sum(committed.values()) == status["queue"]["committed"]


def test_from_status_reads_every_number() -> None:
    body = render_metrics(snapshot_from_status(status_with_phi()))
    pacs = (("destination", "PACS"),)
    assert samples(body, "modality_agent_destination_reachable") == {pacs: 0.0}  # VNA: unknown
    assert samples(body, "modality_agent_destination_consecutive_failures")[pacs] == 4
    assert samples(body, "modality_agent_oldest_pending_age_seconds")[pacs] == 4000.0
    assert samples(body, "modality_agent_commitment_open_transactions")[pacs] == 2
    assert samples(body, "modality_agent_frames_read_total") == {(): 55}
    assert samples(body, "modality_agent_frames_dropped_total") == {(): 1}
    assert samples(body, "modality_agent_spool_free_bytes") == {(): 2048 * 2**20}
    assert samples(body, "modality_agent_worklist_cache_age_seconds") == {(): 30.5}
    assert samples(body, "modality_agent_thread_alive") == {
        (("thread", "purge"),): 1, (("thread", "worklist"),): 0}
    expiry = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp()
    assert samples(body, "modality_agent_tls_certificate_expiry_timestamp_seconds") == {
        (): expiry}
    # counters the station does not report yet stay absent
    assert "modality_agent_objects_stored" not in families(body)


def test_from_status_takes_the_process_counters_and_audit_backlog_once_reported() -> None:
    status = status_with_phi()
    status["destinations"][0] |= {"association_failures_total": 6, "tls_failures_total": 2,
                                  "stored_total": 40, "failed_total": 1}
    status["spool"]["free_bytes"] = 123_456_789
    status["audit"] = {"backlog": 17}
    body = render_metrics(snapshot_from_status(status))
    pacs = (("destination", "PACS"),)
    assert samples(body, "modality_agent_association_failures_total") == {pacs: 6}
    assert samples(body, "modality_agent_tls_handshake_failures_total") == {pacs: 2}
    assert samples(body, "modality_agent_objects_stored_total") == {pacs: 40}
    assert samples(body, "modality_agent_objects_failed_total") == {pacs: 1}
    assert samples(body, "modality_agent_spool_free_bytes") == {(): 123_456_789}
    assert samples(body, "modality_agent_audit_backlog_messages") == {(): 17}


def test_no_patient_data_or_path_reaches_the_exposition() -> None:
    status = status_with_phi()
    histogram = LatencyHistogram()
    histogram.observe(0.002)
    text = render_metrics(snapshot_from_status(status, fsync=histogram.snapshot())).decode()
    for secret in (SENTINEL, "SENTINEL", SENTINEL_ID, "/var/lib", "/etc", "CN="):
        assert secret not in text
    labels = set(re.findall(r'([a-z_]+)="', text))
    assert labels <= {"destination", "state", "thread", "version", "le"}


# -- docs and rules in step with what is rendered --------------------------------------------------
def test_the_alert_rules_use_only_metrics_we_render() -> None:
    rendered = set()
    for family in families(render_metrics(full_snapshot())).values():
        rendered.update(s.name for s in family.samples)
    used = set(re.findall(r"modality_agent_[a-z_]+", ALERTS.read_text(encoding="utf-8")))
    assert used, "no metric in the alert rules"
    assert used <= rendered, used - rendered


def test_docs_describe_every_metric_with_its_type() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    for family in families(render_metrics(full_snapshot())).values():
        shown = family.name + ("_total" if family.type == "counter" else "")
        row = re.search(rf"^\| `{shown}` \| (\w+) \|", docs, re.MULTILINE)
        assert row is not None, f"docs/monitoring.md has no table row for {shown}"
        assert row.group(1) == family.type, shown


def test_docs_show_the_shipped_alert_rules_verbatim() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(# Alert rules for modality-agent.*?)```", docs, re.DOTALL)
    assert block is not None, "docs/monitoring.md: no ```yaml block with the alert rules"
    assert block.group(1) == ALERTS.read_text(encoding="utf-8")
