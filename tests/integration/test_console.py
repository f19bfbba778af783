"""The technologist's console against the real daemon, a real RIS (DCMTK wlmscpfs) and a real
archive (Orthanc with Storage Commitment): the page and its files, then the HTTP calls the page
makes, in the order a technologist's taps make them."""

from __future__ import annotations

import http.cookiejar
import json
import re
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from support.agent_process import AGENT_AE, AgentProcess, Destination, make_agent
from support.peers import LOCALHOST, free_port, wait_until
from support.worklist_data import numbered, running_wlmscpfs, write_wl

from agent.demo.orthanc import OrthancServer, RegisteredModality

pytestmark = pytest.mark.integration

TODAY = date.today().strftime("%Y%m%d")
FRAME_SIZE = 64
SCHEDULED_NAME = "Ωmega^<b>Élise</b>"          # markup in a name: the page must not render it
SCHEDULED_ID = "PID-CONSOLE-41"
UNSCHEDULED_NAME = "WALKIN^PATIENT"
UNSCHEDULED_ID = "PID-WALKIN-93"


_OPENERS: dict[int, urllib.request.OpenerDirector] = {}


def _browser(agent: AgentProcess) -> urllib.request.OpenerDirector:
    """A cookie jar that loaded the console page first: the page's session cookie (HttpOnly,
    SameSite=Strict) is how the console authenticates, never a token in the script."""
    opener = _OPENERS.get(agent.api_port)
    if opener is None:
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(f"http://{LOCALHOST}:{agent.api_port}/", timeout=60) as page:
            assert "HttpOnly" in page.headers["Set-Cookie"]
        _OPENERS[agent.api_port] = opener
    return opener


def call(agent: AgentProcess, method: str, path: str,
         body: dict[str, Any] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a request, as the page's fetch() would send and see
    it: same origin, the session cookie, JSON."""
    data = json.dumps(body).encode() if body is not None else None
    origin = f"http://{LOCALHOST}:{agent.api_port}"
    request = urllib.request.Request(f"{origin}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Origin": origin,
                                              "Sec-Fetch-Site": "same-origin"})
    try:
        with _browser(agent).open(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def ok(agent: AgentProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    status, _, payload = call(agent, method, path, body)
    assert status == 200, (path, status, payload)
    return json.loads(payload)


def png_size(png: bytes) -> tuple[int, int, int]:
    """(width, height, colour type) of a PNG, after checking its chunks and pixel data."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + data) & 0xFFFFFFFF == crc, kind
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    channels = 1 if colour == 0 else 3
    assert depth == 8
    assert len(zlib.decompress(idat)) == height * (1 + width * channels)
    return width, height, colour


@pytest.fixture
def agent(tmp_path: Path, orthanc: OrthancServer) -> Iterator[AgentProcess]:
    with running_wlmscpfs(tmp_path / "ris", "-csk") as ris:
        called_ae, folder = ris.new_called_ae()
        write_wl(folder, numbered(1, patient_name=SCHEDULED_NAME, patient_id=SCHEDULED_ID,
                                  start_date=TODAY), "item0")
        listener_port = free_port()
        orthanc.register_modality(RegisteredModality("agent", AGENT_AE, LOCALHOST,
                                                     listener_port))
        process = make_agent(
            tmp_path, [Destination("pacs", orthanc.dicom_port, orthanc.ae_title)],
            listener_port=listener_port, frame_size=FRAME_SIZE,
            extra_toml=f'[worklist]\nhost = "{LOCALHOST}"\nport = {ris.port}\n'
                       f'called_ae = "{called_ae}"\nrefresh_s = 3600\n',
        )
        process.start()
        try:
            yield process
        finally:
            process.stop()


def wait_committed(agent: AgentProcess, queue_ids: list[int]) -> None:
    def committed() -> bool:
        shown = {o["queue_id"]: o for o in ok(agent, "GET", "/api/queue?limit=50")["objects"]}
        return all(shown.get(q, {}).get("done") for q in queue_ids)
    wait_until(committed, 60, "objects committed in the console's queue view")
    for o in ok(agent, "GET", "/api/queue?limit=50")["objects"]:
        if o["queue_id"] in queue_ids:
            assert o["state"] == "committed" and o["errors"] == [], o


def test_the_page_and_its_files_need_nothing_from_outside(agent: AgentProcess) -> None:
    status, kind, page = call(agent, "GET", "/")
    assert status == 200 and kind.startswith("text/html")
    html = page.decode()
    assert 'href="/console.css"' in html and 'src="/console.js"' in html
    for path, expected in (("/console.css", "text/css"), ("/console.js", "text/javascript")):
        status, kind, content = call(agent, "GET", path)
        assert status == 200 and kind.startswith(expected), (path, kind)
        # no CDN, no fonts from elsewhere: the console works on an isolated network
        assert not re.search(rb"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", content), path
    js = call(agent, "GET", "/console.js")[2].decode()
    # data goes into the DOM as text only
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", js)
    assert not re.search(r"https?://", html)


def test_worklist_to_committed_then_completed(agent: AgentProcess) -> None:
    view = ok(agent, "POST", "/api/console/worklist", {"refresh": True})
    assert view["source"] == "ris" and view["error"] is None
    [item] = view["items"]
    assert item["patient_name"] == SCHEDULED_NAME and item["duplicate_reason"] == ""

    started = ok(agent, "POST", "/api/procedures", {"accession": item["accession_number"]})
    procedure = started["procedure"]
    assert procedure["state"] == "in_progress" and started["warning"] == ""
    assert procedure["patient_id"] == SCHEDULED_ID
    # starting again finds the same procedure in progress
    again = ok(agent, "POST", "/api/procedures", {"sps_id": item["sps_id"]})["procedure"]
    assert again["procedure_id"] == procedure["procedure_id"]

    result = ok(agent, "POST", "/api/acquire",
                {"procedure_id": procedure["procedure_id"], "frames": 2})
    assert result["error"] in (None, "") and len(result["objects"]) == 2
    # "until stopped": the page's one-frame steps go into the same procedure and study
    for _ in range(2):
        step = ok(agent, "POST", "/api/acquire",
                  {"procedure_id": procedure["procedure_id"], "frames": 1})
        assert step["study_instance_uid"] == result["study_instance_uid"]
        result["objects"] += step["objects"]
    queue_ids = [o["queue_id"] for o in result["objects"]]
    wait_committed(agent, queue_ids)

    status = ok(agent, "GET", "/api/status")
    assert status["device"]["connected"] and status["device"]["last_frame_at"]
    assert [p["procedure_id"] for p in status["procedures"]] == [procedure["procedure_id"]]

    status_code, kind, png = call(agent, "GET", "/api/last-frame.png")
    assert status_code == 200 and kind == "image/png"
    assert png_size(png) == (FRAME_SIZE, FRAME_SIZE, 0)
    assert png_size(call(agent, "GET", "/api/last-frame.png?max=16")[2])[:2] == (16, 16)

    # acquired here: the worklist now warns of a duplicate exam
    [item] = ok(agent, "POST", "/api/console/worklist", {})["items"]
    assert item["duplicate_reason"]

    shown = ok(agent, "GET", f"/api/procedures/{procedure['procedure_id']}")["procedure"]
    assert sum(s["images"] for s in shown["series"]) == 4
    ended = ok(agent, "POST", f"/api/procedures/{procedure['procedure_id']}/end",
               {"end": "completed"})["procedure"]
    assert ended["state"] == "completed"
    status_code, _, body = call(agent, "POST", "/api/acquire",
                                {"procedure_id": procedure["procedure_id"], "frames": 1})
    assert status_code == 503 and b"completed" in body

    # retry: nothing failed, so nothing to do; an unknown id is refused
    assert ok(agent, "POST", "/api/retry", {"queue_ids": queue_ids}) == {"retried": 0}
    status_code, _, body = call(agent, "POST", "/api/retry", {"queue_ids": [999_999]})
    assert status_code == 404 and json.loads(body)["error"]

    log = agent.log()
    for phi in (SCHEDULED_NAME, SCHEDULED_ID, "Élise", "Ωmega"):
        assert phi not in log


def test_unscheduled_patient_discontinued_with_a_reason(agent: AgentProcess) -> None:
    reasons = ok(agent, "GET", "/api/reasons")["reasons"]
    assert {"code", "scheme", "meaning"} <= set(reasons[0])
    started = ok(agent, "POST", "/api/procedures", {
        "unscheduled": True, "patient_id": UNSCHEDULED_ID, "patient_name": UNSCHEDULED_NAME})
    procedure = started["procedure"]
    assert procedure["scheduled"] is False and procedure["patient_name"] == UNSCHEDULED_NAME
    result = ok(agent, "POST", "/api/acquire",
                {"procedure_id": procedure["procedure_id"], "frames": 1})
    wait_committed(agent, [o["queue_id"] for o in result["objects"]])

    status_code, _, body = call(agent, "POST",
                                f"/api/procedures/{procedure['procedure_id']}/end",
                                {"end": "discontinued", "reason": "no-such-code"})
    assert status_code == 400 and json.loads(body)["error"]
    ended = ok(agent, "POST", f"/api/procedures/{procedure['procedure_id']}/end",
               {"end": "discontinued", "reason": reasons[0]["code"]})["procedure"]
    assert ended["state"] == "discontinued"
    assert ok(agent, "GET", "/api/status")["procedures"] == []
    for phi in (UNSCHEDULED_NAME, UNSCHEDULED_ID):
        assert phi not in agent.log()
