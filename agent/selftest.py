"""`modality-agent selftest`: the site acceptance test a service engineer runs before handing
the device over. One check per line; each names what it tried, against whom, and what happened.

Checks: C-ECHO to every destination, the worklist and the MPPS peer (over TLS where configured,
so the handshake is tested too), a worklist query actually answered, our certificate's expiry,
the spool writable with free space, the clock sane, the audit record repository reachable (a TLS
handshake with our certificate where configured) with the audit backlog, and optionally one
marked test object stored and committed through the running daemon.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.net.echo import echo
from agent.net.tls import (
    EXPIRY_WARNING_DAYS,
    PeerTls,
    TlsConfigError,
    peer_tls,
    read_certificate,
    tls_identity,
)

#: the clock is "sane" when it is past this agent's release and before this
_EARLIEST = datetime(2026, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    ms: float = 0.0
    skipped: bool = False

    def line(self) -> str:
        verdict = "SKIP" if self.skipped else ("OK" if self.ok else "FAILED")
        timing = f" ({self.ms:.0f} ms)" if self.ms else ""
        return f"{verdict:6} {self.name}: {self.detail}{timing}"

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def _timed(name: str, run: Callable[[], tuple[bool, str]]) -> Check:
    started = time.monotonic()
    try:
        ok, detail = run()
    except AgentError as err:
        ok, detail = False, str(err)
    return Check(name, ok, detail, (time.monotonic() - started) * 1000)


def echo_checks(config: AgentConfig) -> list[Check]:
    """C-ECHO to each configured peer; with `tls = true` the echo goes over TLS."""
    peers = [(f"destination {d.name}", d.host, d.port, d.called_ae, peer_tls(config, d))
             for d in config.destinations if d.kind == "dimse"]
    if config.worklist is not None:
        peers.append(("worklist", config.worklist.host, config.worklist.port,
                      config.worklist.called_ae, peer_tls(config, config.worklist)))
    if config.mpps is not None:
        peers.append(("mpps", config.mpps.host, config.mpps.port, config.mpps.called_ae,
                      peer_tls(config, config.mpps)))
    checks = []
    for d in config.destinations:
        if d.kind == "stow-rs":
            # a DICOMweb archive has no C-ECHO: a QIDO-RS request with the credentials
            from agent.net.stow import probe_destination

            ok, detail, elapsed_s = probe_destination(config, d)
            checks.append(Check(f"destination {d.name} echo", ok,
                                f"GET {d.url}/studies?limit=1: {detail}", elapsed_s * 1000))
    for name, host, port, called_ae, tls in peers:
        how = f"C-ECHO {called_ae}@{host}:{port}{' over TLS' if tls else ''}"
        ok, detail, elapsed_s = echo(config.agent.ae_title, host, port, called_ae, tls=tls)
        checks.append(Check(f"{name} echo", ok, f"{how}: {detail}", elapsed_s * 1000))
    return checks


def worklist_check(config: AgentConfig) -> Check:
    """A real broad query (this station, today): answered by the RIS, not from a cache."""
    if config.worklist is None:
        return Check("worklist query", True, "no [worklist] configured", skipped=True)
    from agent.worklist import WorklistService

    wl = config.worklist

    def run() -> tuple[bool, str]:
        with tempfile.TemporaryDirectory(prefix="selftest-worklist-") as cache:
            service = WorklistService(
                wl, ae_title=config.agent.ae_title, modality=config.modality.modality,
                cache_dir=Path(cache), max_results=wl.max_results,
                days_before=wl.days_before, days_after=wl.days_after,
                fallback_charsets=wl.fallback_charsets, timeout_s=wl.timeout_s,
                tls=peer_tls(config, wl))
            snapshot = service.refresh_now()
        if snapshot.source != "ris":
            return False, f"the RIS did not answer: {snapshot.error}"
        return True, f"answered: {len(snapshot.items)} item(s) for this station today"
    return _timed("worklist query", run)


def certificate_check(config: AgentConfig, now: datetime | None = None) -> Check:
    if config.tls is None:
        return Check("certificate", True, "no [tls] configured", skipped=True)
    try:
        info = read_certificate(config.tls.certificate)
    except TlsConfigError as err:
        return Check("certificate", False, str(err))
    days = info.days_left(now)
    if days < 0:
        return Check("certificate", False, f"{info.subject} expired {-days:.0f} day(s) ago")
    ok = days >= EXPIRY_WARNING_DAYS
    return Check("certificate", ok, f"{info.subject} valid for {days:.0f} more day(s)"
                 + ("" if ok else ": renew it now"))


def spool_check(config: AgentConfig) -> Check:
    """The spool can be written and has more free space than `[queue] min_free_mb`."""
    spool = Path(config.agent.spool_dir)

    def run() -> tuple[bool, str]:
        if not spool.is_dir():
            return False, f"{spool} does not exist (the daemon creates it at its first start)"
        try:
            fd, probe = tempfile.mkstemp(prefix=".selftest-", dir=spool)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            return False, f"{spool} is not writable by this user: {err.strerror}"
        stats = os.statvfs(spool)
        free_mb = stats.f_bavail * stats.f_frsize // 2**20
        need = config.queue.min_free_mb
        if free_mb < need:
            return False, f"{free_mb} MB free, below [queue] min_free_mb = {need:g}"
        return True, f"writable, {free_mb} MB free (capture stops below {need:g} MB)"
    return _timed("spool", run)


def clock_check(now: datetime | None = None) -> Check:
    moment = now or datetime.now(UTC)
    if not _EARLIEST <= moment < _LATEST:
        return Check("clock", False, f"the system clock says {moment:%Y-%m-%d %H:%M} UTC: "
                     f"set it (NTP); DICOM dates and certificate checks depend on it")
    offset = datetime.now().astimezone().strftime("%z")
    return Check("clock", True, f"{moment:%Y-%m-%d %H:%M:%S} UTC, local offset {offset}")


def audit_check(config: AgentConfig) -> Check:
    """The audit record repository: a connection as the daemon's sender opens it (TLS: our
    certificate presented, the repository's verified), and the messages waiting in the spool.
    Nothing is sent (an empty connection is closed)."""
    audit = config.audit
    if audit is None:
        return Check("audit receiver", True, "no [audit] configured", skipped=True)
    from agent.audit.transport import AuditTransportError, connect

    where = f"{audit.transport} {audit.host}:{audit.port}"

    def run() -> tuple[bool, str]:
        waiting = _audit_backlog(config)
        tls = None
        if audit.transport == "tls":
            identity = tls_identity(config)
            if identity is None:
                return False, f"{where}: transport tls needs a [tls] section"
            tls = PeerTls(identity, audit.verify_hostname)
        try:
            connect(audit.host, audit.port, audit.transport, tls=tls).close()
        except (AuditTransportError, TlsConfigError) as err:
            return False, f"{err}{waiting}"
        if audit.transport == "udp":
            return True, f"{where}: UDP gives no answer to test, datagrams go there{waiting}"
        what = "TLS handshake done, certificate verified" if tls else "TCP connection made"
        return True, f"{where}: {what}{waiting}"
    return _timed("audit receiver", run)


def _audit_backlog(config: AgentConfig) -> str:
    """", or "; N message(s) waiting in the audit spool" read without writing."""
    from agent.audit.spool import DB_NAME
    from agent.audit.trail import AUDIT_FOLDER

    db = Path(config.agent.spool_dir) / AUDIT_FOLDER / DB_NAME
    if not db.exists():
        return ""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            count = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as err:
        return f"; audit spool unreadable here ({err})"
    return f"; {count} message(s) waiting in the audit spool"


def run_selftest(config: AgentConfig) -> list[Check]:
    """Every check that needs no running daemon."""
    return [*echo_checks(config), worklist_check(config), certificate_check(config),
            spool_check(config), clock_check(), audit_check(config)]
