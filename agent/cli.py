"""`modality-agent [--config FILE] COMMAND`: the command line contract of ARCHITECTURE.md.

Every command exits non-zero with a one-line reason on failure (no traceback); `--json` prints
machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, default_config_path, load_config
from agent.errors import AgentError, ConfigError, DaemonUnavailable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(f"modality-agent: {text}\n")


# -- talking to the daemon -------------------------------------------------------------------
def api_call(config: AgentConfig, method: str, path: str, body: dict[str, Any] | None = None,
             timeout_s: float = 600.0) -> dict[str, Any]:
    """Call the daemon's API.

    Raises
    ------
    DaemonUnavailable
        If nothing answers on [api] host/port.
    AgentError
        With the daemon's own error message for a refused request.
    """
    from agent.api.security import read_token

    host = config.api.host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.api.port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    # the per-install secret: only whoever can read [api] token_file (the agent's user, root)
    # can drive the daemon; a web page never can (issue 13)
    headers = {"Content-Type": "application/json",
               "Authorization": f"Bearer {read_token(config.api.token_file)}"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("error", str(err))
        except ValueError:
            message = str(err)
        raise AgentError(message) from err
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        raise DaemonUnavailable(
            f"the daemon is not answering at {url} (is `modality-agent run` running?)"
        ) from err


# -- commands --------------------------------------------------------------------------------
def cmd_check_config(config: AgentConfig, args: argparse.Namespace) -> int:
    from agent.daemon import preflight

    problems = preflight(config)
    if problems:
        for problem in problems:
            _out(problem)
        return EXIT_FAILURE
    _out(f"{config.path}: OK ({len(config.destinations)} destination(s), "
         f"driver {config.device.driver})")
    return EXIT_OK


def cmd_run(config: AgentConfig, args: argparse.Namespace) -> int:
    from agent.daemon import Daemon, preflight
    from agent.logsetup import setup_logging

    problems = preflight(config)
    if problems:
        for problem in problems:
            _err(problem)
        return EXIT_FAILURE
    setup_logging(config.agent.log_level)
    try:
        Daemon(config).run_forever()
    except OSError as err:
        raise AgentError(f"cannot start: {err}") from err
    return EXIT_OK


def _wait_until_done(config: AgentConfig, queue_ids: list[int], wait_s: float) -> list[Any]:
    deadline = time.monotonic() + wait_s
    query = "&".join(f"queue_id={q}" for q in queue_ids)
    delay = 0.05
    while True:
        objects: list[Any] = api_call(config, "GET", f"/api/objects?{query}")["objects"]
        if all(o["done"] for o in objects) or any(o["state"] == "failed" for o in objects):
            return objects
        if time.monotonic() >= deadline:
            return objects
        time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 1.0)


def read_patient_file(source: str) -> tuple[str, str]:
    """Patient ID and name from a JSON file (`-`: standard input), so that they need not be
    on the command line, where every local user sees them in the process list.

    Raises
    ------
    AgentError
        Unreadable, not JSON, or without the two strings.
    """
    name = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read(65536) if source == "-" else Path(source).read_text("utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise AgentError(f"--patient-file {name}: expected a JSON object such as "
                         f"{{\"patient_id\": \"...\", \"patient_name\": \"Family^Given\"}} "
                         f"({type(err).__name__})") from err
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) and data.get(k) for k in ("patient_id", "patient_name")):
        raise AgentError(f"--patient-file {name}: expected the strings \"patient_id\" and "
                         f"\"patient_name\"")
    return data["patient_id"], data["patient_name"]


def cmd_acquire(config: AgentConfig, args: argparse.Namespace) -> int:
    # the CLI's caller can read the API token, so the command itself is the deliberate
    # action an X-ray exposure needs (the console asks for a second click instead)
    body: dict[str, Any] = {"frames": args.frames, "confirm_exposure": True}
    if args.patient_file and (args.patient_id or args.patient_name):
        raise AgentError("--patient-file replaces --patient-id/--patient-name: give one or "
                         "the other")
    if args.unscheduled:
        patient_id, patient_name = (read_patient_file(args.patient_file) if args.patient_file
                                    else (args.patient_id, args.patient_name))
        if not patient_id or not patient_name:
            raise AgentError("--unscheduled needs --patient-file, or --patient-id and "
                             "--patient-name")
        body.update(unscheduled=True, patient_id=patient_id, patient_name=patient_name)
    elif args.patient_id or args.patient_name or args.patient_file:
        raise AgentError("--patient-id/--patient-name/--patient-file go with --unscheduled; a "
                         "worklist entry brings its own patient")
    elif args.accession:
        body["accession"] = args.accession
    else:
        body["sps_id"] = args.sps_id
    if args.end:
        body["end"] = args.end
        body["reason"] = args.reason or ""
    elif args.reason:
        raise AgentError("--reason goes with --end discontinued")
    # the station checks them before the exposure: a DX of a paired body part needs its side
    if args.body_part:
        body["body_part"] = args.body_part
    if args.laterality:
        body["laterality"] = args.laterality
    if args.performed_as_scheduled:
        body["performed_as_scheduled"] = True
    result = api_call(config, "POST", "/api/acquire", body)
    if result.get("warning"):
        _err(f"warning: {result['warning']}")
    objects = result["objects"]
    if not args.json:
        for o in objects:
            _out(f"queued {o['queue_id']} {o['sop_instance_uid']}")
    if result.get("error"):
        _err(f"acquisition incomplete: {result['error']}")
    code = EXIT_FAILURE if result.get("error") else EXIT_OK
    if args.wait is not None:
        objects = _wait_until_done(config, [o["queue_id"] for o in objects], args.wait)
        if any(o["state"] == "failed" for o in objects):
            code = EXIT_FAILURE
        elif not all(o["done"] for o in objects):
            code = EXIT_TIMEOUT
        if not args.json:
            for o in objects:
                _out(f"{o['queue_id']} {o['sop_instance_uid']} {o['state']}")
            if code == EXIT_TIMEOUT:
                _err(f"not all objects committed within {args.wait:g} s")
    if args.json:
        _out(json.dumps({"objects": [
            {"queue_id": o["queue_id"], "sop_instance_uid": o["sop_instance_uid"],
             "state": o["state"], "destinations": o["destinations"]} for o in objects]}))
    return code


def cmd_worklist(config: AgentConfig, args: argparse.Namespace) -> int:
    if config.worklist is None:
        raise AgentError(f"{config.path.name}: no [worklist] section: the agent works "
                         "unscheduled only")
    try:
        snapshot = api_call(config, "GET", "/api/worklist?refresh=1", timeout_s=60)
    except DaemonUnavailable:
        # the daemon is down: ask the RIS ourselves, falling back to its cache
        from agent.net.tls import peer_tls
        from agent.worklist import WorklistService

        wl = config.worklist
        service = WorklistService(
            wl, ae_title=config.agent.ae_title, modality=config.modality.modality,
            cache_dir=config.agent.spool_dir / "worklist", max_results=wl.max_results,
            days_before=wl.days_before, days_after=wl.days_after,
            fallback_charsets=wl.fallback_charsets, timeout_s=wl.timeout_s,
            tls=peer_tls(config, wl))
        snapshot = service.refresh_now().as_json()
    if args.json:
        _out(json.dumps(snapshot, ensure_ascii=False))
    else:
        age = snapshot.get("age_s")
        source = "RIS" if snapshot["source"] == "ris" else \
            f"CACHE ({'age unknown' if age is None else f'{age:.0f} s old'}; RIS offline)"
        count = len(snapshot["items"])
        more = "more than " if snapshot.get("truncated") else ""
        _out(f"worklist from {source}: {more}{count} item(s)")
        if snapshot.get("error"):
            _out(f"  {snapshot['error']}")
        for item in snapshot["items"]:
            _out(f"{item['accession_number'] or '-':<16} {item['sps_id']:<16} "
                 f"{item['patient_name']:<32} {item['patient_id']:<16} "
                 f"{item['patient_birth_date']:<10} {item['patient_sex']:<1} "
                 f"{item['sps_start']:<16} {item['status']:<10} {item['sps_description']}")
    return EXIT_OK if snapshot["source"] == "ris" else EXIT_FAILURE


def cmd_status(config: AgentConfig, args: argparse.Namespace) -> int:
    try:
        status = api_call(config, "GET", "/api/status", timeout_s=10)
    except DaemonUnavailable:
        from agent.daemon import offline_status

        status = offline_status(config)
    if args.json:
        _out(json.dumps(status))
        return EXIT_OK
    agent = status["agent"]
    _out(f"agent {agent['ae_title']} {'running' if agent['running'] else 'NOT RUNNING'}"
         f" (version {agent['version']})")
    device = status.get("device")
    if device:
        state = "connected" if device["connected"] else f"NOT CONNECTED {device['error']}"
        _out(f"device {device['driver']}: {state}, {device['frames_read']} frames read")
    for dest in status["destinations"]:
        q = dest.get("queue", {})
        line = (f"destination {dest['name']}: " + ", ".join(f"{k} {v}" for k, v in q.items()))
        if dest.get("reachable") is False:
            since = time.strftime("%H:%M:%S", time.localtime(dest["unreachable_since"]))
            line += f" -- WAITING: {dest['last_error']} (since {since})"
        if dest.get("oldest_pending_age_s") is not None:
            line += f"; oldest waiting {dest['oldest_pending_age_s']:.0f} s"
        if dest.get("open_commitment_requests"):
            line += f"; {dest['open_commitment_requests']} commitment request(s) open"
        _out(line)
    for procedure in status.get("procedures") or []:
        images = sum(s["images"] for s in procedure["series"])
        what = f"accession {procedure['accession_number']}" if procedure["scheduled"] \
            else "unscheduled"
        _out(f"procedure {procedure['procedure_id']} in progress: {what}, {images} image(s)"
             f"{', MPPS ' + procedure['mpps_uid'] if procedure['mpps_uid'] else ''}")
    for mpps in status.get("mpps") or []:
        if mpps["pending"] or mpps["failed"]:
            _out(f"MPPS {mpps['pps_id']} {mpps['state']}: "
                 f"{'FAILED ' if mpps['failed'] else ''}waiting for the RIS to acknowledge "
                 f"{mpps['pending']} {mpps['last_error']}")
    spool = status.get("spool")
    if spool:
        blocked = " -- CAPTURE STOPPED: disk space" if spool["capture_blocked"] else ""
        _out(f"spool {spool['path']}: {spool['free_mb']} MB free "
             f"(limit {spool['min_free_mb']:g} MB){blocked}")
    tls = status.get("tls")
    if tls:
        if tls.get("error"):
            _out(f"certificate: ERROR {tls['error']}")
        else:
            _out(f"certificate {tls['subject']}: {tls['days_left']:.0f} day(s) left"
                 + (f" -- {tls['warning'].upper()}" if tls.get("warning") else ""))
    for problem in agent.get("errors") or []:
        _out(f"ERROR {problem}")
    return EXIT_OK


def cmd_echo(config: AgentConfig, args: argparse.Namespace) -> int:
    from functools import partial

    from agent.net.echo import echo
    from agent.net.stow import probe_destination
    from agent.net.tls import peer_tls

    peers = [(d.name, d.host, d.port, d.called_ae, peer_tls(config, d))
             for d in config.destinations if d.kind == "dimse"]
    if config.worklist is not None:
        peers.append(("worklist", config.worklist.host, config.worklist.port,
                      config.worklist.called_ae, peer_tls(config, config.worklist)))
    if config.mpps is not None:
        peers.append(("mpps", config.mpps.host, config.mpps.port, config.mpps.called_ae,
                      peer_tls(config, config.mpps)))
    # a DICOMweb archive has no C-ECHO: a QIDO-RS request with the credentials stands in
    web = [d for d in config.destinations if d.kind == "stow-rs"]
    if args.destination:
        peers = [p for p in peers if p[0] == args.destination]
        web = [d for d in web if d.name == args.destination]
        if not peers and not web:
            raise AgentError(f"no configured peer named {args.destination!r}")
    failures = 0
    results = []
    checks = [(d.name, d.url, partial(probe_destination, config, d)) for d in web]
    checks += [(name, f"{called_ae}@{host}:{port}",
                partial(echo, config.agent.ae_title, host, port, called_ae, tls=tls))
               for name, host, port, called_ae, tls in peers]
    for name, where, check in checks:
        ok, detail, elapsed_s = check()
        failures += not ok
        results.append({"name": name, "ok": ok, "detail": detail,
                        "ms": round(elapsed_s * 1000, 1)})
        if not args.json:
            _out(f"{name} ({where}): "
                 f"{'OK' if ok else 'FAILED'} {detail} {elapsed_s * 1000:.1f} ms")
    if args.json:
        _out(json.dumps({"peers": results}))
    return EXIT_FAILURE if failures else EXIT_OK


def cmd_queue(config: AgentConfig, args: argparse.Namespace) -> int:
    from agent.queue import QueueStore
    from agent.records import DeliveryState

    if args.queue_command == "retry":
        # the daemon holds the spool lock; a retry goes through the queue database directly
        # only when it is down
        store = QueueStore(config.agent.spool_dir, [d.name for d in config.destinations])
        store.open()
        try:
            n = store.retry([int(q) for q in args.ids])
        finally:
            store.close()
        _out(f"{n} delivery row(s) back to pending")
        return EXIT_OK
    from agent.queue.store import connect

    db = Path(config.agent.spool_dir) / "queue.db"
    if not db.exists():
        raise AgentError(f"no queue at {db}")
    conn = connect(db, read_only=True)
    try:
        sql = ("SELECT d.queue_id, d.destination, d.state, d.attempts, d.last_error, "
               "o.sop_instance_uid FROM deliveries d JOIN objects o USING (queue_id)")
        params: tuple[Any, ...] = ()
        if args.state:
            DeliveryState(args.state)
            sql += " WHERE d.state=?"
            params = (args.state,)
        rows = [dict(r) for r in conn.execute(sql + " ORDER BY d.delivery_id", params)]
    finally:
        conn.close()
    if args.json:
        _out(json.dumps({"items": rows}))
    else:
        for r in rows:
            _out(f"{r['queue_id']:>6} {r['destination']:<12} {r['state']:<17} "
                 f"{r['sop_instance_uid']} {r['last_error']}")
    return EXIT_OK


def cmd_import(config: AgentConfig, args: argparse.Namespace) -> int:
    paths = [str(Path(p).resolve()) for p in args.paths]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise AgentError(f"no such file or folder: {missing[0]}")
    files = api_call(config, "POST", "/api/import", {"paths": paths})["files"]
    if args.json:
        _out(json.dumps({"files": files}))
    else:
        for f in files:
            if "error" in f:
                _out(f"refused {f['error']}")
            else:
                _out(f"queued {f['queue_id']} {f['sop_instance_uid']} {f['path']}")
    refused = sum("error" in f for f in files)
    if refused:
        _err(f"{refused} of {len(files)} file(s) refused")
    return EXIT_FAILURE if refused or not files else EXIT_OK


def _store_test_object(config: AgentConfig, wait_s: float) -> Any:
    """Through the running daemon: the marked test object, followed to committed (or
    stored, where a destination has no commitment)."""
    from agent.selftest import Check

    started = time.monotonic()
    try:
        queued = api_call(config, "POST", "/api/selftest/test-object", {})["object"]
    except DaemonUnavailable as err:
        return Check("test object", False, f"{err}: it is stored through the daemon")
    [done] = _wait_until_done(config, [queued["queue_id"]], wait_s)
    detail = (f"queue item {done['queue_id']} {done['sop_instance_uid']}: {done['state']} "
              f"at {', '.join(f'{d} {s}' for d, s in done['destinations'].items())}")
    if done["errors"]:
        detail += f" ({'; '.join(done['errors'])})"
    return Check("test object", bool(done["done"]), detail,
                 (time.monotonic() - started) * 1000)


def cmd_selftest(config: AgentConfig, args: argparse.Namespace) -> int:
    from agent.selftest import run_selftest

    checks = run_selftest(config)
    if args.store_test_object:
        checks.append(_store_test_object(config, args.wait))
    failed = [c for c in checks if not c.ok]
    if args.json:
        _out(json.dumps({"ok": not failed, "checks": [c.as_json() for c in checks]}))
    else:
        for check in checks:
            _out(check.line())
    if failed:
        _err(f"selftest failed: {', '.join(c.name for c in failed)}")
        return EXIT_FAILURE
    return EXIT_OK


def cmd_reject(config: AgentConfig, args: argparse.Namespace) -> int:
    """Withdraw images (IHE IOCM): never sent if not sent yet, else a rejection note to every
    destination that has them."""
    result = api_call(config, "POST", "/api/reject",
                      {"sop_instance_uids": args.uids, "reason": args.reason})
    if args.json:
        _out(json.dumps(result))
        return EXIT_OK
    for uid in result["rejected"]:
        _out(f"rejected {uid} ({result['reason']})")
    for row in result["cancelled"]:
        _out(f"never sent: queue item {row['queue_id']} to {row['destination']}")
    for note in result["notes"]:
        _out(f"rejection note {note['sop_instance_uid']} (queue item {note['queue_id']}) "
             f"for {', '.join(note['destinations'])}, sent once they have committed the images")
    return EXIT_OK


def cmd_conformance(config: AgentConfig, args: argparse.Namespace) -> int:
    """The DICOM Conformance Statement (PS3.2) for this configuration, offline."""
    from agent.conformance import render_conformance

    sys.stdout.write(render_conformance(config, args.format))
    return EXIT_OK


def cmd_spool(config: AgentConfig, args: argparse.Namespace) -> int:
    """`spool backup PATH` (online, consistent) and `spool verify` (read-only): no daemon
    needed, the agent's user's rights are (the spool is 0700)."""
    from dataclasses import asdict

    from agent.queue import backup_spool, verify_spool

    spool = Path(config.agent.spool_dir)
    report: Any
    if args.spool_command == "backup":
        report = backup_spool(spool, Path(args.path))
    else:
        report = verify_spool(spool)
    if args.json:
        _out(json.dumps({**asdict(report), "ok": report.ok}, default=str))
    else:
        _out(report.summary())
        for note in getattr(report, "notes", []):
            _out(f"note: {note}")
        for problem in report.problems:
            _err(problem)
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_simulate(args: argparse.Namespace) -> int:
    from firmware_stubs.serial_device import main as serial_device_main

    return serial_device_main(args.link)


def cmd_demo(config: AgentConfig | None, args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(keep=args.keep, as_json=args.json, frames=args.frames)


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modality-agent",
        description="DICOM agent of an imaging device: worklist, images, store and commit.",
    )
    parser.add_argument("--config", type=Path, default=None,
                        help="config file (default: $MODALITY_AGENT_CONFIG or "
                             "/etc/modality-agent/agent.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the daemon (foreground)")
    sub.add_parser("check-config", help="validate the config and print every problem")
    p = sub.add_parser("acquire", help="capture frames for a procedure")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--accession")
    who.add_argument("--sps-id")
    who.add_argument("--unscheduled", action="store_true")
    p.add_argument("--patient-id", help="visible to every local user in the process list: "
                                        "prefer --patient-file")
    p.add_argument("--patient-name", help="as --patient-id")
    p.add_argument("--patient-file", metavar="FILE",
                   help="JSON {\"patient_id\": ..., \"patient_name\": \"Family^Given\"}; "
                        "'-' reads standard input")
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="exit 0 only once every object is committed (or stored)")
    p.add_argument("--end", choices=("completed", "discontinued"),
                   help="end the procedure after this acquisition (MPPS COMPLETED or "
                        "DISCONTINUED); without it the procedure stays in progress")
    p.add_argument("--reason", metavar="CODE",
                   help="discontinuation reason, a DICOM CID 9300 code (e.g. 110513 "
                        "'Discontinued for unspecified reason')")
    p.add_argument("--body-part", metavar="TERM",
                   help="the body part imaged, a Body Part Examined term (CHEST, HAND, KNEE, "
                        "...), when the order does not name it")
    p.add_argument("--laterality", choices=("R", "L", "B", "U"),
                   help="the side imaged (U: an unpaired body part), when the order does not "
                        "say; a DX of a paired body part is refused without it")
    p.add_argument("--performed-as-scheduled", action="store_true",
                   help="the scheduled protocol was performed as scheduled: the MPPS lists it "
                        "as the performed protocol (otherwise none is claimed)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("worklist", help="the current worklist (RIS, or its cache when down)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", help="device, destinations, queue counts")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("echo", help="C-ECHO to the configured peers")
    p.add_argument("destination", nargs="?")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("queue", help="inspect and retry queue items")
    qsub = p.add_subparsers(dest="queue_command", required=True)
    q = qsub.add_parser("list")
    q.add_argument("--state")
    q.add_argument("--json", action="store_true")
    q = qsub.add_parser("retry")
    q.add_argument("ids", nargs="+")
    p = sub.add_parser("import", help="queue existing DICOM files (folders: every file in them)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("reject", help="withdraw images (IOCM rejection note)")
    p.add_argument("uids", nargs="+", metavar="SOP_INSTANCE_UID")
    p.add_argument("--reason", required=True,
                   choices=("quality", "patient-safety", "incorrect-modality-worklist"))
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("conformance", help="the DICOM Conformance Statement (PS3.2) for this "
                                           "configuration")
    p.add_argument("--format", choices=("md", "html"), default="md")
    p = sub.add_parser("selftest", help="site acceptance test against the configured peers")
    p.add_argument("--store-test-object", action="store_true",
                   help="also store one marked test object through the running daemon and "
                        "wait for its commitment")
    p.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for the test object's commitment (default 120)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("spool", help="back up or verify the spool (works while the daemon runs)")
    ssub = p.add_subparsers(dest="spool_command", required=True)
    q = ssub.add_parser("backup", help="a consistent copy of the queue database and its files "
                                       "into a new folder")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--json", action="store_true")
    q = ssub.add_parser("verify", help="every row has its file, every file its row, SHA-256 "
                                       "checked (read-only)")
    q.add_argument("--json", action="store_true")
    p = sub.add_parser("simulate", help="run a device's firmware stub for the real driver")
    simulate = p.add_subparsers(dest="device", required=True)
    s = simulate.add_parser("serial", help="the serial X-ray device on a new pseudo-terminal; "
                                           "prints the path for [device.options] port")
    s.add_argument("--link", help="also make this path a symlink to the pseudo-terminal")
    p = sub.add_parser("demo", help="a complete local system: archive, device, acquisitions")
    p.add_argument("--keep", action="store_true", help="leave it running until Ctrl-C")
    p.add_argument("--json", action="store_true")
    p.add_argument("--frames", type=int, default=3)
    return parser


COMMANDS = {
    "run": cmd_run, "check-config": cmd_check_config, "acquire": cmd_acquire,
    "status": cmd_status, "worklist": cmd_worklist, "echo": cmd_echo, "queue": cmd_queue,
    "import": cmd_import, "spool": cmd_spool, "selftest": cmd_selftest,
    "conformance": cmd_conformance, "reject": cmd_reject,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return cmd_demo(None, args)
        if args.command == "simulate":
            # needs no config: it is the device, not the agent
            return cmd_simulate(args)
        config = load_config(args.config or default_config_path())
        return COMMANDS[args.command](config, args)
    except ConfigError as err:
        for problem in err.problems:
            _err(problem)
        return EXIT_FAILURE
    except AgentError as err:
        _err(str(err))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
