"""Prometheus metrics for the hospital's monitoring (issue 17, item 2): one snapshot of the
station rendered in the text exposition format 0.0.4.

The station fills a `MetricsSnapshot` (plain numbers, destination names and states, never patient
data: no label can carry what the snapshot does not hold); `render_metrics` turns it into the body
of `GET /api/metrics`. prometheus-client writes the text (HELP/TYPE lines, label escaping, number
formatting) from a registry of our own built per scrape: nothing global, no process or platform
collector, so the exposition holds exactly the families documented in docs/monitoring.md.
`LatencyHistogram` is the one piece with state: the queue times its fsyncs with it.
"""

from __future__ import annotations

import bisect
import datetime
import itertools
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from agent.errors import AgentError

#: the text format 0.0.4; spelled out because prometheus-client's CONTENT_TYPE_LATEST moved to
#: 1.0.0 in 0.22, and what we write is 0.0.4 (legacy names only)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "modality_agent_"
#: every delivery state, in the queue's order (agent.records.DeliveryState values): each is
#: exported, zero included, so a series never disappears when its count drops to nothing
DELIVERY_STATES = ("pending", "sending", "sent", "commit_requested", "committed", "failed")
#: fsync on an SD card or eMMC takes from under a millisecond to seconds when the flash
#: controller collects garbage; the buckets cover that range, le="+Inf" the rest
FSYNC_BUCKETS_S: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsError(AgentError, ValueError):
    """A histogram given impossible bounds or an impossible observation."""


# -- the fsync latency histogram -------------------------------------------------------------------
@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram at one moment: `cumulative[i]` observations were <= `bounds_s[i]`; `count`
    is all of them (the le="+Inf" bucket), `sum_s` their total."""

    bounds_s: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum_s: float


class LatencyHistogram:
    """Durations in seconds, bucketed; thread-safe (the queue fsyncs from the acquisition, the
    listener and the forwarder's threads).

    ``with histogram.time(): os.fsync(fd)`` records how long the fsync took, also when it raised:
    a failing disk is slow first.
    """

    def __init__(self, bounds_s: Sequence[float] = FSYNC_BUCKETS_S) -> None:
        bounds = tuple(float(b) for b in bounds_s)
        if not bounds or any(not math.isfinite(b) or b <= 0 for b in bounds) \
                or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise MetricsError(f"histogram bounds: expected finite positive seconds in "
                               f"increasing order, got {list(bounds_s)}")
        self._bounds = bounds
        self._lock = threading.Lock()
        self._counts = [0] * (len(bounds) + 1)   # the last one: above every bound (+Inf)
        self._sum_s = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration.

        Raises
        ------
        MetricsError
            For a negative or non-finite duration (a clock error, never a real fsync).
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise MetricsError(f"histogram: expected a duration >= 0 s, got {seconds!r}")
        # bucket i holds le=bounds[i]: the first bound >= seconds (Prometheus buckets are <=)
        index = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum_s += seconds

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe the duration of the `with` block (perf_counter: monotonic)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - started)

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts = list(self._counts)
            sum_s = self._sum_s
        cumulative: list[int] = []
        running = 0
        for n in counts[:-1]:
            running += n
            cumulative.append(running)
        return HistogramSnapshot(self._bounds, tuple(cumulative), running + counts[-1], sum_s)


# -- the snapshot ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DestinationMetrics:
    """One destination. Counts come from the queue database (they survive restarts); the
    `*_total` failure and stored counters are the process's own (None: not counted yet, and then
    the family is left out rather than shown as a false zero)."""

    name: str
    #: delivery rows per state (`QueueStore.counts()[name]`); a missing state is exported as 0
    deliveries: Mapping[str, int]
    #: age of the oldest object waiting to be sent here (pending or sending); None: nothing waits
    oldest_pending_age_s: float | None = None
    open_commitment_transactions: int = 0
    #: None until the forwarder has tried this destination once
    reachable: bool | None = None
    consecutive_failures: int = 0
    last_success_at: float | None = None
    association_failures_total: int | None = None
    tls_failures_total: int | None = None
    stored_total: int | None = None
    failed_total: int | None = None


@dataclass(frozen=True)
class ThreadMetrics:
    """A background thread of the daemon (purge, watch_folder, worklist, ...)."""

    name: str
    alive: bool
    has_error: bool


@dataclass(frozen=True)
class MetricsSnapshot:
    """What `GET /api/metrics` shows: numbers, destination and thread names, states. Optional
    fields (None) are left out of the exposition: the feature is off or does not exist yet."""

    version: str
    uptime_s: float
    destinations: tuple[DestinationMetrics, ...] = ()
    threads: tuple[ThreadMetrics, ...] = ()
    device_connected: bool = False
    frames_read_total: int = 0
    frames_dropped_total: int = 0
    spool_free_bytes: int = 0
    spool_min_free_bytes: int = 0
    capture_blocked: bool = False
    #: None without [worklist], or before the first answer or cache
    worklist_cache_age_s: float | None = None
    worklist_error: bool | None = None
    #: our TLS certificate's notAfter as Unix time; None without [tls] or when unreadable
    certificate_expiry_at: float | None = None
    #: audit messages not yet delivered to the audit repository; None until auditing exists
    audit_backlog: int | None = None
    fsync: HistogramSnapshot | None = None


# -- rendering -------------------------------------------------------------------------------------
def render_metrics(snapshot: MetricsSnapshot) -> bytes:
    """The snapshot in the Prometheus text format 0.0.4 (serve it with `CONTENT_TYPE`).

    Raises
    ------
    MetricsError
        A destination or thread name appears twice (two series with the same labels would make
        the whole scrape fail at the Prometheus server).
    """
    _check_unique("destination", [d.name for d in snapshot.destinations])
    _check_unique("thread", [t.name for t in snapshot.threads])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


def _check_unique(what: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise MetricsError(f"metrics snapshot: {what} {name!r} appears twice")
        seen.add(name)


class _SnapshotCollector:
    """prometheus-client's custom-collector protocol (`collect()`), over one snapshot."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot
        for families in (_agent_families(s), _destination_families(s.destinations),
                         _device_families(s), _spool_families(s), _optional_families(s)):
            # a family without samples would still print HELP/TYPE: leave it out entirely
            yield from (family for family in families if family.samples)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _agent_families(s: MetricsSnapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily(PREFIX + "build_info", "Always 1; the agent's version as a label.",
                             labels=["version"])
    info.add_metric([s.version], 1)
    yield info
    yield _gauge("uptime_seconds", "Seconds since the daemon started.", s.uptime_s)
    alive = GaugeMetricFamily(PREFIX + "thread_alive",
                              "1 while the background thread runs, 0 once it has stopped.",
                              labels=["thread"])
    error = GaugeMetricFamily(PREFIX + "thread_error",
                              "1 while the background thread reports an error, else 0.",
                              labels=["thread"])
    for thread in s.threads:
        alive.add_metric([thread.name], int(thread.alive))
        error.add_metric([thread.name], int(thread.has_error))
    yield alive
    yield error


def _destination_families(destinations: Sequence[DestinationMetrics]) -> Iterator[Metric]:
    by_dest = ["destination"]
    deliveries = GaugeMetricFamily(
        PREFIX + "queue_deliveries",
        "Queue rows per destination and delivery state (one row per object and destination).",
        labels=["destination", "state"])
    committed = CounterMetricFamily(
        PREFIX + "objects_committed",
        "Objects the destination has committed (storage commitment), from the queue database: "
        "equals the committed count of status.", labels=by_dest)
    oldest = GaugeMetricFamily(
        PREFIX + "oldest_pending_age_seconds",
        "Age of the oldest object waiting to be sent to the destination; 0 when none waits.",
        labels=by_dest)
    open_txn = GaugeMetricFamily(
        PREFIX + "commitment_open_transactions",
        "Storage commitment requests still waiting for the archive's report.", labels=by_dest)
    reachable = GaugeMetricFamily(
        PREFIX + "destination_reachable",
        "1 if the last association with the destination succeeded, 0 if it failed; absent "
        "before the first attempt.", labels=by_dest)
    failures = GaugeMetricFamily(
        PREFIX + "destination_consecutive_failures",
        "Failed attempts since the destination last accepted an object.", labels=by_dest)
    last_success = GaugeMetricFamily(
        PREFIX + "destination_last_success_timestamp_seconds",
        "Unix time the destination last stored an object; absent before the first.",
        labels=by_dest)
    for d in destinations:
        for state in (*DELIVERY_STATES,
                      *sorted(set(d.deliveries) - set(DELIVERY_STATES))):
            deliveries.add_metric([d.name, state], d.deliveries.get(state, 0))
        committed.add_metric([d.name], d.deliveries.get("committed", 0))
        oldest.add_metric([d.name], d.oldest_pending_age_s or 0.0)
        open_txn.add_metric([d.name], d.open_commitment_transactions)
        failures.add_metric([d.name], d.consecutive_failures)
        if d.reachable is not None:
            reachable.add_metric([d.name], int(d.reachable))
        if d.last_success_at is not None:
            last_success.add_metric([d.name], d.last_success_at)
    yield from (deliveries, committed, oldest, open_txn, reachable, failures, last_success)
    yield from _process_counters(destinations)


#: the forwarder's own counters: (field, metric name, help); counted since the daemon started
_PROCESS_COUNTERS = (
    ("stored_total", "objects_stored",
     "C-STORE successes (Success or Warning) at the destination since the daemon started; a "
     "resend counts again."),
    ("failed_total", "objects_failed",
     "Deliveries to the destination marked failed (kept, retried only by hand) since the "
     "daemon started."),
    ("association_failures_total", "association_failures",
     "Associations with the destination that could not be established (unreachable, "
     "rejected, aborted, TLS handshake failed) since the daemon started."),
    ("tls_failures_total", "tls_handshake_failures",
     "TLS handshakes with the destination that failed since the daemon started (also counted "
     "in association_failures_total)."),
)


def _process_counters(destinations: Sequence[DestinationMetrics]) -> Iterator[Metric]:
    for attribute, name, doc in _PROCESS_COUNTERS:
        family = CounterMetricFamily(PREFIX + name, doc, labels=["destination"])
        for d in destinations:
            value = getattr(d, attribute)
            if value is not None:         # not counted: absent rather than a false zero
                family.add_metric([d.name], value)
        yield family


def _device_families(s: MetricsSnapshot) -> Iterator[Metric]:
    yield _gauge("device_connected", "1 while the device is open and online, else 0.",
                 int(s.device_connected))
    yield CounterMetricFamily(PREFIX + "frames_read",
                              "Frames read from the device (counted by the driver since it was "
                              "opened).", value=s.frames_read_total)
    yield CounterMetricFamily(PREFIX + "frames_dropped",
                              "Frames the device delivered that were dropped before reaching "
                              "an object, since the daemon started.",
                              value=s.frames_dropped_total)


def _spool_families(s: MetricsSnapshot) -> Iterator[Metric]:
    yield _gauge("spool_free_bytes", "Free space for the agent in the spool's file system.",
                 s.spool_free_bytes)
    yield _gauge("spool_min_free_bytes",
                 "Free space below which capture stops ([queue] min_free_mb).",
                 s.spool_min_free_bytes)
    yield _gauge("capture_blocked", "1 while capture is stopped because the spool is full.",
                 int(s.capture_blocked))
    if s.fsync is not None:
        h = s.fsync
        buckets = [(repr(bound), count)   # a float's repr parses back exactly
                   for bound, count in zip(h.bounds_s, h.cumulative, strict=True)]
        buckets.append(("+Inf", h.count))
        yield HistogramMetricFamily(
            PREFIX + "fsync_duration_seconds",
            "Duration of each fsync the queue makes (object files and the spool folders).",
            buckets=buckets, sum_value=h.sum_s)


def _optional_families(s: MetricsSnapshot) -> Iterator[Metric]:
    if s.worklist_cache_age_s is not None:
        yield _gauge("worklist_cache_age_seconds",
                     "Age of the worklist the technologist sees (0 right after an answer).",
                     s.worklist_cache_age_s)
    if s.worklist_error is not None:
        yield _gauge("worklist_error", "1 while the last worklist query failed, else 0.",
                     int(s.worklist_error))
    if s.certificate_expiry_at is not None:
        yield _gauge("tls_certificate_expiry_timestamp_seconds",
                     "Unix time our TLS certificate expires (notAfter).",
                     s.certificate_expiry_at)
    if s.audit_backlog is not None:
        yield _gauge("audit_backlog_messages",
                     "Audit messages waiting to be delivered to the audit repository.",
                     s.audit_backlog)


# -- from the station's status -------------------------------------------------------------------
def snapshot_from_status(status: Mapping[str, Any], *,
                         fsync: HistogramSnapshot | None = None) -> MetricsSnapshot:
    """The snapshot from `Station.status()`'s answer, so `/api/metrics` and `status` cannot
    disagree. Only numbers, booleans and names are read: the procedures, MPPS entries, error
    texts and paths in `status` never reach the exposition.

    Raises
    ------
    KeyError
        `status` lacks a part every running daemon reports (agent, device, spool,
        destinations).
    """
    agent = status["agent"]
    device = status["device"]
    spool = status["spool"]
    worklist = status.get("worklist")
    audit = status.get("audit")
    return MetricsSnapshot(
        version=str(agent["version"]),
        uptime_s=float(agent.get("uptime_s") or 0.0),
        destinations=tuple(_destination_from_status(d) for d in status["destinations"]),
        threads=tuple(ThreadMetrics(str(name), bool(h.get("alive", True)), bool(h.get("error")))
                      for name, h in (agent.get("threads") or {}).items()),
        device_connected=bool(device.get("connected")),
        frames_read_total=int(device.get("frames_read") or 0),
        frames_dropped_total=int(device.get("frames_dropped") or 0),
        # free_mb is rounded down to MB for people; free_bytes when the station gives it
        spool_free_bytes=int(spool.get("free_bytes", int(spool.get("free_mb", 0)) * 2**20)),
        spool_min_free_bytes=int(spool.get("min_free_bytes",
                                           int(spool.get("min_free_mb", 0)) * 2**20)),
        capture_blocked=bool(spool.get("capture_blocked")),
        worklist_cache_age_s=None if not worklist or worklist.get("age_s") is None
        else float(worklist["age_s"]),
        worklist_error=None if not worklist else bool(worklist.get("error")),
        certificate_expiry_at=_certificate_expiry(status.get("tls")),
        audit_backlog=None if not audit or audit.get("backlog") is None
        else int(audit["backlog"]),
        fsync=fsync,
    )


def _destination_from_status(d: Mapping[str, Any]) -> DestinationMetrics:
    def optional_int(key: str) -> int | None:
        value = d.get(key)
        return None if value is None else int(value)

    reachable = d.get("reachable")
    return DestinationMetrics(
        name=str(d["name"]),
        deliveries={str(k): int(v) for k, v in (d.get("queue") or {}).items()},
        oldest_pending_age_s=d.get("oldest_pending_age_s"),
        open_commitment_transactions=int(d.get("open_commitment_requests") or 0),
        reachable=None if reachable is None else bool(reachable),
        consecutive_failures=int(d.get("consecutive_failures") or 0),
        last_success_at=d.get("last_success_at"),
        association_failures_total=optional_int("association_failures_total"),
        tls_failures_total=optional_int("tls_failures_total"),
        stored_total=optional_int("stored_total"),
        failed_total=optional_int("failed_total"),
    )


def _certificate_expiry(tls: Mapping[str, Any] | None) -> float | None:
    if not tls or not tls.get("not_after"):
        return None               # no [tls], or the certificate could not be read
    not_after = datetime.datetime.fromisoformat(str(tls["not_after"]))
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=datetime.UTC)   # X.509 times are UTC
    return not_after.timestamp()


__all__ = [
    "CONTENT_TYPE",
    "FSYNC_BUCKETS_S",
    "DestinationMetrics",
    "HistogramSnapshot",
    "LatencyHistogram",
    "MetricsError",
    "MetricsSnapshot",
    "ThreadMetrics",
    "render_metrics",
    "snapshot_from_status",
]
