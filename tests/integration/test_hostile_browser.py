"""Issue 13, the attacker's view: a real headless Chromium opens a hostile web page on the
acquisition computer, and a DNS-rebinding client talks to the agent's local API under a foreign
host name. Neither may expose the patient, start or end a procedure, queue anything or read the
worklist, the status or the last frame. The serial device stub counts exposures in this process,
so "nothing happened" is measured at the X-ray tube, not read off a status code.

Positive controls prove the harness can see what it claims is absent: the CLI still exposes
exactly once, and the console page loaded from the API's own address still reads its status.
"""

from __future__ import annotations

import html
import http.client
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from support.agent_process import AgentProcess, Destination, make_agent
from support.browser import chromium_path, dump_dom
from support.peers import LOCALHOST, free_port

from firmware_stubs.pty_host import serve
from firmware_stubs.serial_device import SerialFirmware

pytestmark = pytest.mark.integration

needs_chromium = pytest.mark.skipif(
    chromium_path() is None,
    reason="no Chromium installed (Debian: apt-get install chromium; ./install.sh --dev does)")

DATA = Path(__file__).resolve().parent.parent / "data"
HOSTILE_PAGE = "hostile_page.html"
#: the rebinding attacker's name for 127.0.0.1 (Chromium is told so by --host-resolver-rules)
FOREIGN_HOST = "evil.example"
#: the API's data a rebinding read must never return
READ_PATHS = ("/api/status", "/api/worklist", "/api/last-frame.png", "/api/procedures",
              "/api/queue")
PNG_MAGIC = b"\x89PNG"
#: the one attack the browser asks about first (OPTIONS) and sends only if the server agrees
PREFLIGHTED = "fetch cors application/json"


@dataclass(frozen=True)
class Rig:
    agent: AgentProcess
    firmware: SerialFirmware
    import_file: Path

    @property
    def exposures(self) -> int:
        return self.firmware.counters["exposures"]

    @property
    def api_origin(self) -> str:
        return f"http://{LOCALHOST}:{self.agent.api_port}"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """The serial device stub (in this process: its counters are the tube's) and the daemon on
    it; the archive is a closed port, so whatever is queued stays in the queue to be counted."""
    firmware = SerialFirmware(rows=64, columns=64)
    with serve(firmware) as tty_path:
        agent = make_agent(
            tmp_path, [Destination("pacs", free_port(), "NOBODY")],
            device_toml=f'[device]\ndriver = "serial"\n[device.options]\nport = "{tty_path}"\n'
                        "kvp = 81.0\nmas = 4.0\n")
        agent.start()
        try:
            yield Rig(agent, firmware, dicom_file(tmp_path / "import-me.dcm"))
        finally:
            agent.stop()


@pytest.fixture
def hostile_site() -> Iterator[int]:
    """tests/data over HTTP on 127.0.0.1 (also reached as localhost): the hostile page's port."""
    handler = partial(_QuietHandler, directory=str(DATA))
    server = ThreadingHTTPServer((LOCALHOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="hostile-site", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    content_type: str
    body: bytes


class _RecordingHandler(BaseHTTPRequestHandler):
    """Answers 200 to everything, like the API before issue 13, and records each request."""

    server: _RecordingServer

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append(Recorded(self.command, self.path,
                                             self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def do_OPTIONS(self) -> None:
        self._record()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _RecordingServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__((LOCALHOST, 0), _RecordingHandler)
        self.requests: list[Recorded] = []


@pytest.fixture
def recorder() -> Iterator[_RecordingServer]:
    """A stand-in for an API that takes anything: what the hostile page sends, it records."""
    server = _RecordingServer()
    thread = threading.Thread(target=server.serve_forever, name="recorder", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def dicom_file(path: Path) -> Path:
    """A small valid Secondary Capture: what the import attack asks the agent to queue."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.PatientName, ds.PatientID, ds.Modality = "Evil^Import", "EVIL-IMPORT", "OT"
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((8, 8), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def page_report(dom: str) -> dict[str, Any]:
    """The JSON the hostile page wrote into <pre id="report">."""
    match = re.search(r'<pre id="report">(.*?)</pre>', dom, re.DOTALL)
    assert match, f"the hostile page left no report: {dom[:500]}"
    text = html.unescape(match.group(1))
    assert text.startswith("{"), f"the hostile page did not finish: {text[:200]}"
    report: dict[str, Any] = json.loads(text)
    return report


def recorder_origin(server: _RecordingServer) -> str:
    return f"http://{LOCALHOST}:{server.server_address[1]}"


def attack_query(api_origin: str, rig: Rig) -> str:
    return urllib.parse.urlencode({"api": api_origin, "import": str(rig.import_file)})


def missing_attacks(report: dict[str, Any], received: list[Recorded]) -> list[str]:
    """Per target, the POSTs (and the preflight) the page made that the recorder never got."""
    missing = []
    for path in sorted({a["path"] for a in report["attacks"]}):
        made = [a for a in report["attacks"] if a["path"] == path]
        posts = [a for a in made if a["method"] != PREFLIGHTED]
        got = [r for r in received if r.path == path]
        got_posts = sum(r.method == "POST" for r in got)
        if got_posts < len(posts):
            missing.append(f"{path}: {got_posts} of {len(posts)} POSTs arrived")
        if len(made) > len(posts) and not any(r.method == "OPTIONS" for r in got):
            missing.append(f"{path}: no preflight for {PREFLIGHTED}")
    return missing


def daemon_status(agent: AgentProcess) -> dict[str, Any]:
    result = agent.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    assert status["agent"]["running"], "status came from the spool: the daemon is not answering"
    return status


def acquire_by_cli(agent: AgentProcess) -> None:
    result = agent.cli("acquire", "--unscheduled", "--patient-id", "CTRL-1", "--patient-name",
                       "Control^Case", "--frames", "1", "--json")
    assert result.returncode == 0, result.stderr + agent.log()[-2000:]


def effects(rig: Rig) -> list[str]:
    """Every trace an attack could leave: an exposure, a queued object, a procedure."""
    found = []
    if rig.exposures:
        found.append(f"{rig.exposures} exposure(s) reached the X-ray device")
    rows = rig.agent.queue_rows()
    if rows:
        found.append(f"{len(rows)} object(s) queued: {[r['queue_id'] for r in rows]}")
    procedures = daemon_status(rig.agent)["procedures"]
    if procedures:
        found.append(f"{len(procedures)} procedure(s) in progress, patients "
                     f"{sorted({p['patient_id'] for p in procedures})}")
    return found


def console_device_pill(dom: str) -> str:
    """The console's device pill ("Device serial: connected" once it read /api/status)."""
    match = re.search(r'id="device"[^>]*>([^<]*)<', dom)
    return html.unescape(match.group(1)) if match else ""


# -- the hostile page ----------------------------------------------------------------------------
@needs_chromium
def test_hostile_page_cannot_expose_queue_start_or_read(rig: Rig, hostile_site: int,
                                                        recorder: _RecordingServer) -> None:
    """From 127.0.0.1:<other port> (same site as the API: a SameSite cookie goes along) and
    from localhost:<other port> (cross-site), every way a page can send a POST: fetch with a
    safelisted content type in cors and no-cors mode, fetch with application/json (preflight),
    HTML forms in all three encodings (text/plain crafted into valid JSON) and sendBeacon."""
    # the control: aimed at a server that takes anything, the page's requests leave the browser
    # (a refused request looks the same from inside the page as one never sent)
    page = f"http://{{host}}:{hostile_site}/{HOSTILE_PAGE}?{{query}}"
    control = page_report(dump_dom(page.format(host=LOCALHOST, query=attack_query(
        recorder_origin(recorder), rig)), budget_ms=8000))
    assert control["done"], f"the hostile page stopped: {control}"
    missing = missing_attacks(control, recorder.requests)
    assert not missing, "the hostile page did not send:\n" + "\n".join(missing)

    reports = []
    for host in (LOCALHOST, "localhost"):
        dom = dump_dom(page.format(host=host, query=attack_query(rig.api_origin, rig)),
                       budget_ms=8000)
        reports.append(page_report(dom))
        assert reports[-1]["done"], f"the hostile page at {host} stopped: {reports[-1]}"

    harm = effects(rig)
    for report in reports:
        harm += [f"{report['page']} read {r['path']}: cors {r['cors']}, no-cors {r['no_cors']}"
                 for r in report["reads"]
                 if r["cors"] != "refused" or r["no_cors"] not in ("opaque", "refused")]
    assert not harm, "the hostile page got through:\n" + "\n".join(harm)

    # positive control: the same rig sees an exposure and a queued object when one happens
    acquire_by_cli(rig.agent)
    assert rig.exposures == 1
    assert len(rig.agent.queue_rows()) == 1


# -- DNS rebinding -------------------------------------------------------------------------------
def request(port: int, method: str, path: str, *, host: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to 127.0.0.1:`port` with the Host header `host` (what a browser sends
    after a rebinding DNS server pointed the attacker's name at 127.0.0.1)."""
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_rebinding_host_is_refused(rig: Rig) -> None:
    """The attacker's page at http://evil.example:<api port>/, its name rebound to 127.0.0.1:
    same origin as far as the browser knows, so only the Host header tells it apart. Every
    other header is what that browser would send, and the JSON content type is right."""
    acquire_by_cli(rig.agent)              # a frame for last-frame.png, a row for the queue
    assert rig.exposures == 1
    port = rig.agent.api_port
    foreign = f"{FOREIGN_HOST}:{port}"
    same_origin = {"Origin": f"http://{foreign}", "Sec-Fetch-Site": "same-origin",
                   "Sec-Fetch-Mode": "cors"}
    problems = []

    # the console under the foreign name: it must not be served, nor hand out its cookie
    status, headers, _ = request(port, "GET", "/", host=foreign)
    if not 400 <= status < 500 or "set-cookie" in headers:
        problems.append(f"GET / as {foreign}: {status}, cookie {headers.get('set-cookie')!r}")
    for path in READ_PATHS:
        status, _, body = request(port, "GET", path, host=foreign, headers=same_origin)
        if not 400 <= status < 500 or body.startswith(PNG_MAGIC) or b'"device"' in body:
            problems.append(f"GET {path} as {foreign}: {status} {body[:60]!r}")

    acquire = json.dumps({"unscheduled": True, "patient_id": "EVIL", "patient_name":
                          "Evil^Rebind", "frames": 1}).encode()
    write = {**same_origin, "Content-Type": "application/json"}
    attempts = [write]
    token_file = rig.agent.spool_dir / "api-token"
    if token_file.exists():                # the Host check comes first, even for the CLI's token
        attempts.append({**write, "Authorization": f"Bearer {token_file.read_text().strip()}"})
    for headers in attempts:
        status, _, body = request(port, "POST", "/api/acquire", host=foreign, body=acquire,
                                  headers=headers)
        if not 400 <= status < 500:
            problems.append(f"POST /api/acquire as {foreign} "
                            f"({'with' if 'Authorization' in headers else 'without'} the "
                            f"token): {status} {body[:60]!r}")
    if rig.exposures != 1 or len(rig.agent.queue_rows()) != 1:
        problems.append(f"under {foreign}: {rig.exposures - 1} more exposure(s), "
                        f"{len(rig.agent.queue_rows()) - 1} more queued object(s)")
    assert not problems, "the rebinding client got through:\n" + "\n".join(problems)

    # the CLI, under the API's own address, still acquires: exactly one more exposure
    acquire_by_cli(rig.agent)
    assert rig.exposures == 2


@needs_chromium
def test_console_reads_status_only_under_its_own_address(rig: Rig) -> None:
    """The console in Chromium: from http://127.0.0.1:<api port>/ it shows the device (the
    browser harness works); from http://evil.example:<api port>/ (rebound to 127.0.0.1) the
    same page, standing in for the attacker's script in that origin, must read nothing."""
    own = dump_dom(f"{rig.api_origin}/", budget_ms=3000)
    assert console_device_pill(own).startswith("Device serial"), \
        f"the console did not show the device: {console_device_pill(own)!r}"

    rebound = dump_dom(f"http://{FOREIGN_HOST}:{rig.agent.api_port}/", budget_ms=3000,
                       resolver_rules=f"MAP {FOREIGN_HOST} {LOCALHOST}")
    assert "serial" not in console_device_pill(rebound), \
        f"the console read the status under {FOREIGN_HOST}: {console_device_pill(rebound)!r}"
    assert "Device serial" not in rebound
