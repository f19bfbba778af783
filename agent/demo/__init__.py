"""`modality-agent demo`: a complete local system in a temporary folder.

A real archive (Orthanc, as Storage SCP and Storage Commitment SCP, with this agent registered),
the daemon on the simulated device, a few unscheduled acquisitions, then a table of what was
committed and how long it took.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.api.security import read_token
from agent.demo.orthanc import OrthancNotInstalled, RegisteredModality, start_orthanc
from agent.errors import AgentError, ApiTokenError

DEMO_AE = "DEMO_MODALITY"
ARCHIVE_AE = "ORTHANC"
COMMIT_TIMEOUT_S = 60.0


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def demo_config(workdir: Path, *, listener_port: int, api_port: int, archive_port: int) -> str:
    return f"""# written by `modality-agent demo`
[agent]
ae_title = "{DEMO_AE}"
spool_dir = "spool"
log_level = "INFO"

[listener]
host = "127.0.0.1"
port = {listener_port}

[api]
host = "127.0.0.1"
port = {api_port}

[device]
driver = "simulated"
[device.options]
width = 512
height = 512
bits_stored = 12
frame_rate = 10.0

[modality]
modality = "OT"
iod = "secondary-capture"
manufacturer = "Example Medical"
model_name = "Demo-1"
device_serial_number = "DEMO-0001"
station_name = "DEMO"

[[destinations]]
name = "orthanc"
host = "127.0.0.1"
port = {archive_port}
called_ae = "{ARCHIVE_AE}"
storage_commitment = true
commitment_timeout_s = 60

[queue]
retry_initial_s = 1
retry_max_s = 10
retention_s = 86400
min_free_mb = 64
"""


@dataclass(frozen=True)
class _Api:
    """The demo agent's API, called as the CLI does: with the token the agent writes into its
    spool at its first start."""

    port: int
    token_file: Path

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {read_token(self.token_file)}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())


def _wait_for_api(api: _Api, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise AgentError(f"the agent exited at start (code {daemon.returncode}); "
                             f"see {log}: {_tail(log)}")
        try:
            api("GET", "/api/status")
            return
        except (urllib.error.URLError, ConnectionError, ApiTokenError):
            # ApiTokenError: the token is written when the agent has locked its spool
            time.sleep(0.1)
    raise AgentError(f"the agent's API did not answer within 30 s; see {log}")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def run_demo(*, keep: bool = False, as_json: bool = False, frames: int = 3) -> int:
    """Returns the exit code: 0 when every object was committed in the archive."""
    try:
        workdir = Path(tempfile.mkdtemp(prefix="modality-agent-demo-"))
    except OSError as err:
        raise AgentError(f"cannot create a temporary folder: {err}") from err
    ports = {k: free_tcp_port() for k in ("listener", "api", "dicom", "http")}
    quiet = as_json
    _say(f"demo folder {workdir}", quiet)
    try:
        archive = start_orthanc(
            workdir / "orthanc", ae_title=ARCHIVE_AE, dicom_port=ports["dicom"],
            http_port=ports["http"],
            modalities=[RegisteredModality("agent", DEMO_AE, "127.0.0.1", ports["listener"])],
        )
    except OrthancNotInstalled:
        shutil.rmtree(workdir, ignore_errors=True)
        raise AgentError("Orthanc is not installed: run `sudo apt-get install orthanc` "
                         "(or ./install.sh --demo)") from None
    daemon: subprocess.Popen[bytes] | None = None
    ok = False
    try:
        _say(f"archive: Orthanc pid {archive.pid}, DICOM {ARCHIVE_AE}@127.0.0.1:"
             f"{ports['dicom']}, REST {archive.rest_url}", quiet)
        config_path = workdir / "agent.toml"
        config_path.write_text(demo_config(workdir, listener_port=ports["listener"],
                                           api_port=ports["api"], archive_port=ports["dicom"]))
        log_path = workdir / "agent.log"
        with log_path.open("ab") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "agent", "--config", str(config_path), "run"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        api = _Api(ports["api"], workdir / "spool" / "api-token")
        _wait_for_api(api, daemon, log_path)
        _say(f"agent: pid {daemon.pid}, AE {DEMO_AE}, listener 127.0.0.1:{ports['listener']}",
             quiet)
        rows = _acquire_and_wait(api, frames, quiet)
        in_archive = {r["sop_instance_uid"]: archive.find_instance(r["sop_instance_uid"])
                      is not None for r in rows}
        ok = all(r["state"] == "committed" for r in rows) and all(in_archive.values())
        api_url = f"http://127.0.0.1:{ports['api']}/api/status"
        console_url = f"http://127.0.0.1:{ports['api']}/"
        if as_json:
            sys.stdout.write(json.dumps({
                "ok": ok, "api_url": api_url, "console_url": console_url,
                "archive_rest_url": archive.rest_url,
                "objects": [{**r, "in_archive": in_archive[r["sop_instance_uid"]]}
                            for r in rows]}) + "\n")
        else:
            _say("", quiet)
            _say(f"{'SOP Instance UID':<66} {'state':<17} {'in archive':<10} "
                 f"{'s to commit':>11}", quiet)
            for r in rows:
                seconds = "-" if r["seconds_to_commit"] is None else \
                    f"{r['seconds_to_commit']:.3f}"
                _say(f"{r['sop_instance_uid']:<66} {r['state']:<17} "
                     f"{'yes' if in_archive[r['sop_instance_uid']] else 'NO':<10} "
                     f"{seconds:>11}", quiet)
            _say("", quiet)
            _say(f"{'OK' if ok else 'FAILED'}: {sum(r['state'] == 'committed' for r in rows)}"
                 f" of {len(rows)} objects committed by the archive", quiet)
            _say(f"console: {console_url}   API: {api_url}", quiet)
        if keep:
            _say("running; press Ctrl-C to stop", quiet)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        archive.stop()
        if ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"kept {workdir} for inspection (agent.log, orthanc/)", quiet)
    return 0 if ok else 1


def _acquire_and_wait(api: _Api, frames: int, quiet: bool) -> list[dict[str, Any]]:
    started = time.monotonic()
    result = api("POST", "/api/acquire", {
        "unscheduled": True, "patient_id": "DEMO-0001", "patient_name": "Demo^Patient",
        "frames": frames,
    })
    queued_at = time.monotonic()
    ids = [o["queue_id"] for o in result["objects"]]
    _say(f"acquired {len(ids)} object(s) in {queued_at - started:.2f} s; waiting for "
         f"the archive to commit them", quiet)
    latest: dict[int, dict[str, Any]] = {}
    deadline = queued_at + COMMIT_TIMEOUT_S
    query = "&".join(f"queue_id={q}" for q in ids)
    while time.monotonic() < deadline:
        for o in api("GET", f"/api/objects?{query}")["objects"]:
            latest[o["queue_id"]] = o
        if all(o["done"] for o in latest.values()) or any(
                o["state"] == "failed" for o in latest.values()):
            break
        time.sleep(0.02)
    return [
        {"queue_id": q, "sop_instance_uid": latest[q]["sop_instance_uid"],
         "state": latest[q]["state"],
         # capture (durably queued) → committed, from the queue's own timestamps
         "seconds_to_commit": None if latest[q]["done_at"] is None
         else latest[q]["done_at"] - latest[q]["queued_at"],
         "errors": latest[q].get("errors", [])}
        for q in ids
    ]
