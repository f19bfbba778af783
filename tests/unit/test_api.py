"""The API's validation and replies, through starlette's TestClient on a fake station (it
implements agent.station.StationService), and the real uvicorn server's start/stop; the
console's thumbnail encoder."""

from __future__ import annotations

import json
import socket
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from agent.api.console.thumbnail import downscale, encode_png, thumbnail_png, to_8bit
from agent.api.routes import (
    MAX_BODY_BYTES,
    create_app,
    parse_acquire_request,
)
from agent.api.security import SecurityPolicy
from agent.api.server import ApiServer
from agent.errors import AcquisitionError, UnknownQueueItemError
from agent.procedures import ProcedureError
from agent.records import Order
from agent.station import (
    AcquireRequest,
    AcquireResult,
    EndRequest,
    ImportedFile,
    ImportRequest,
    LastFrame,
    NotFound,
    ObjectView,
    OrderChoice,
    RejectRequest,
    RequestRefused,
    StartResult,
    StationLimits,
)

ORDER = Order(patient_name="Doe^Jane", patient_id="P1")
TOKEN = "unit-test-token"
API_PORT = 8470
POLICY = SecurityPolicy(token=TOKEN, api_host="127.0.0.1", api_port=API_PORT,
                        allowed_hosts=frozenset())


def view(queue_id: int) -> ObjectView:
    return ObjectView(queue_id, f"1.2.{queue_id}", "pending", False, {}, None, None, ())


class FakeStation:
    """A station for the routes: implements `agent.station.StationService` (mypy checks it at
    `create_app`), records what it was asked."""

    def __init__(self) -> None:
        self.has_worklist = True
        self.refreshed = 0
        self.calls: list[tuple[str, Any]] = []
        self.fail_acquire = False
        self.frame: LastFrame | None = None
        self.by_id: dict[str, dict[str, Any]] = {}
        self.items = [{"accession_number": "A1", "sps_id": "S1", "duplicate_reason": ""},
                      {"accession_number": "A2", "sps_id": "S2",
                       "duplicate_reason": "already acquired here"}]

    @property
    def limits(self) -> StationLimits:
        return StationLimits(max_frames=100)

    @property
    def emits_radiation(self) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {"queue": {"pending": 0}}

    def worklist(self, *, refresh: bool, for_console: bool = False) -> dict[str, Any] | None:
        if not self.has_worklist:
            return None
        self.refreshed += refresh
        items = [dict(i) if for_console else
                 {k: v for k, v in i.items() if k != "duplicate_reason"} for i in self.items]
        result: dict[str, Any] = {"source": "ris" if refresh else "cache", "age_s": 12.0,
                                  "items": items, "error": "RIS down"}
        if for_console:
            result["summary"] = "2 worklist item(s) from the cache"
        return result

    def procedures(self) -> list[dict[str, Any]]:
        return list(self.by_id.values())

    def procedure(self, procedure_id: str) -> dict[str, Any]:
        if procedure_id not in self.by_id:
            raise NotFound(f"no procedure {procedure_id!r}")
        return self.by_id[procedure_id]

    def _find(self, choice: OrderChoice) -> dict[str, Any]:
        for item in self.items:
            if choice.accession in (None, item["accession_number"]) and \
                    choice.sps_id in (None, item["sps_id"]):
                return item
        raise AcquisitionError("no worklist item")

    def start_procedure(self, choice: OrderChoice,
                        performed_as_scheduled: bool = False) -> StartResult:
        self.calls.append(("start", choice))
        warning = ""
        patient_id = choice.order.patient_id if choice.order else "P2"
        if choice.order is None:
            warning = self._find(choice)["duplicate_reason"]
        pid = f"proc{len(self.by_id) + 1}"
        self.by_id[pid] = {"procedure_id": pid, "state": "in_progress",
                           "patient_id": patient_id, "series": []}
        return StartResult(self.by_id[pid], warning)

    def acquire(self, request: AcquireRequest) -> AcquireResult:
        self.calls.append(("acquire", request))
        if self.fail_acquire:
            raise AcquisitionError("device not connected")
        if request.choice.procedure_id and request.choice.procedure_id not in self.by_id:
            raise AcquisitionError(f"no procedure {request.choice.procedure_id!r}")
        if request.choice.order is None and request.choice.procedure_id is None:
            self._find(request.choice)
        return AcquireResult("", {}, "1.2", "1.2.1",
                             tuple(view(q) for q in range(1, request.frames + 1)), None, 0)

    def end_procedure(self, request: EndRequest) -> dict[str, Any]:
        procedure = self.procedure(request.procedure_id)
        if procedure["state"] != "in_progress":
            raise ProcedureError(f"procedure {request.procedure_id} is {procedure['state']}")
        if request.end == "discontinued" and request.reason != "110513":
            raise ProcedureError(f"reason: unknown code {request.reason!r}")
        procedure["state"] = request.end
        return procedure

    def objects(self, queue_ids: Sequence[int]) -> list[ObjectView]:
        return [view(q) for q in queue_ids]

    def recent_objects(self, limit: int) -> list[ObjectView]:
        self.calls.append(("recent", limit))
        return self.objects([3, 2, 1])

    def retry(self, queue_ids: Sequence[int]) -> int:
        if 999 in queue_ids:
            raise UnknownQueueItemError("no queue item 999")
        return len(queue_ids)

    def import_files(self, request: ImportRequest) -> list[ImportedFile]:
        return [ImportedFile(str(p), 1, "1.2.3") for p in request.paths]

    def last_frame(self) -> LastFrame | None:
        return self.frame

    def reject(self, request: RejectRequest) -> dict[str, Any]:
        self.calls.append(("reject", request))
        return {"reason": request.reason, "rejected": list(request.sop_instance_uids),
                "cancelled": [], "notes": []}

    def metrics(self) -> bytes:
        return b"# HELP modality_agent_up 1\n"

    def store_test_object(self) -> ObjectView:
        self.calls.append(("test-object", None))
        return view(42)


@pytest.fixture
def station() -> FakeStation:
    return FakeStation()


@pytest.fixture
def client(station: FakeStation) -> Iterator[TestClient]:
    """The CLI's way in: bearer token, Host 127.0.0.1:8470."""
    with TestClient(create_app(station, POLICY), base_url=f"http://127.0.0.1:{API_PORT}",
                    headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message: str = response.json()["error"]
    return message


# -- the CLI's endpoints, unchanged ------------------------------------------------------------
def test_replies_are_the_bytes_the_stdlib_server_sent(client: TestClient) -> None:
    response = client.get("/api/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"queue": {"pending": 0}}'   # json.dumps' separators


def test_unknown_paths_and_methods_are_404(client: TestClient) -> None:
    assert error_of(client.get("/api/nothing"), 404) == "no such endpoint /api/nothing"
    assert error_of(client.get("/api/acquire"), 404) == "no such endpoint /api/acquire"
    assert error_of(client.post("/api/status", json={}), 404) == \
        "no such endpoint /api/status"


def test_objects_takes_integer_queue_ids(client: TestClient) -> None:
    assert client.get("/api/objects?queue_id=4&queue_id=7").json() == {
        "objects": [view(4).as_json(), view(7).as_json()]}
    assert client.get("/api/objects").json() == {"objects": []}
    for bad in ("x", "-1", "1" * 30):
        assert "queue_id: expected" in error_of(client.get(f"/api/objects?queue_id={bad}"),
                                                400)


def test_worklist_snapshot_or_refresh(client: TestClient, station: FakeStation) -> None:
    assert client.get("/api/worklist").json()["source"] == "cache"
    assert station.refreshed == 0
    assert client.get("/api/worklist?refresh=1").json()["source"] == "ris"
    assert station.refreshed == 1
    assert "duplicate_reason" not in client.get("/api/worklist").json()["items"][0]


def test_worklist_not_configured_is_404(station: FakeStation, client: TestClient) -> None:
    station.has_worklist = False
    assert error_of(client.get("/api/worklist"), 404) == "no [worklist] configured"
    assert error_of(client.post("/api/console/worklist", json={}), 404)


@pytest.mark.parametrize(("body", "message"), [
    ({"frames": 0, "accession": "A1"}, "frames: expected an integer 1..10000"),
    ({"frames": True, "accession": "A1"}, "frames"),
    ({"frames": "2", "accession": "A1"}, "frames"),
    ({"frames": 1}, "expected exactly one of"),
    ({"accession": "A1", "sps_id": "S1"}, "expected exactly one of"),
    ({"accession": "A\x01"}, "accession: character U+0001 at position 2 is not allowed"),
    ({"sps_id": " "}, "sps_id: expected 1..64"),
    ({"unscheduled": True, "patient_id": "P", "patient_name": "Smith\u202eJohn"},
     "patient_name: character U+202E"),
    ({"unscheduled": True, "patient_id": "P\u0085", "patient_name": "A^B"},
     "patient_id: character U+0085"),
    ({"unscheduled": True, "patient_id": "P", "patient_name": "A^B\u2066"}, "U+2066"),
    ({"accession": "A1", "confirm_exposure": "yes"}, "confirm_exposure: expected true"),
    ({"unscheduled": "yes"}, "unscheduled: expected true"),
    ({"unscheduled": True, "patient_name": "A^B"}, "patient_id"),
    ({"unscheduled": True, "patient_id": "P", "patient_name": "A\\B"}, "patient_name"),
    ({"procedure_id": "../x"}, "procedure_id: expected an id"),
    ({"accession": "A1", "end": "later"}, "end: expected"),
    ({"accession": "A1", "reason": 110513}, "reason: expected a code value"),
    ([1, 2], "expected a JSON object"),
])
def test_acquire_validation(client: TestClient, body: Any, message: str) -> None:
    assert message in error_of(client.post("/api/acquire", json=body), 400)
    with pytest.raises(RequestRefused):      # BadRequest, or the station's text check
        parse_acquire_request(body)


def test_acquire_refuses_bad_json_and_large_bodies(client: TestClient) -> None:
    assert error_of(client.post("/api/acquire", content=b"{nope",
                                headers={"Content-Type": "application/json"}), 400)
    deep = b"[" * 10_000 + b"]" * 10_000
    for path in ("/api/acquire", "/api/import", "/api/retry", "/api/procedures"):
        assert "nested deeper" in error_of(client.post(
            path, content=deep, headers={"Content-Type": "application/json"}), 400)
    nested: Any = {"frames": 1, "accession": "A1"}
    for _ in range(20):
        nested = {"x": nested}
    assert "nested deeper" in error_of(client.post("/api/acquire", json=nested), 400)
    big = json.dumps({"paths": ["/" + "x" * MAX_BODY_BYTES]}).encode()
    json_type = {"Content-Type": "application/json"}
    assert error_of(client.post("/api/acquire", content=big, headers=json_type), 413) == \
        "request too large"
    assert error_of(client.post("/api/import", content=big, headers=json_type), 413) == \
        "request too large"


def test_acquire_each_way(client: TestClient, station: FakeStation) -> None:
    body = {"unscheduled": True, "patient_id": " P9 ", "patient_name": "X^Y", "frames": 2,
            "confirm_exposure": True}
    assert len(client.post("/api/acquire", json=body).json()["objects"]) == 2
    request = station.calls[-1][1]
    assert request.choice.order.patient_id == "P9" and request.frames == 2
    assert request.choice.procedure_id is None and request.exposure_confirmed

    client.post("/api/acquire", json={"sps_id": "S2", "end": "completed"})
    request = station.calls[-1][1]
    assert request.choice.sps_id == "S2" and request.end == "completed"
    assert not request.exposure_confirmed

    assert "no worklist item" in error_of(client.post("/api/acquire",
                                                      json={"accession": "NOPE"}), 503)
    station.fail_acquire = True
    assert error_of(client.post("/api/acquire", json={"accession": "A1"}), 503) == \
        "device not connected"


def test_acquire_into_a_procedure(client: TestClient, station: FakeStation) -> None:
    procedure = client.post("/api/procedures", json={"accession": "A1"}).json()["procedure"]
    result = client.post("/api/acquire", json={"procedure_id": procedure["procedure_id"]})
    assert result.status_code == 200
    request = station.calls[-1][1]
    assert (request.frames, request.choice.procedure_id) == (1, procedure["procedure_id"])
    assert "no procedure" in error_of(client.post("/api/acquire",
                                                  json={"procedure_id": "other"}), 503)


def test_end_procedure(client: TestClient) -> None:
    pid = client.post("/api/procedures", json={"sps_id": "S1"}).json()["procedure"][
        "procedure_id"]
    assert "end: expected" in error_of(client.post(f"/api/procedures/{pid}/end", json={}), 400)
    assert error_of(client.post(f"/api/procedures/{pid}/end", content=b"[",
                                headers={"Content-Type": "application/json"}), 400)
    assert "reason" in error_of(client.post(f"/api/procedures/{pid}/end",
                                            json={"end": "discontinued", "reason": "1"}), 400)
    ended = client.post(f"/api/procedures/{pid}/end",
                        json={"end": "discontinued", "reason": "110513"})
    assert ended.json() == {"procedure": {"procedure_id": pid, "state": "discontinued",
                                          "patient_id": "P2", "series": []}}
    assert "is discontinued" in error_of(client.post(f"/api/procedures/{pid}/end",
                                                     json={"end": "completed"}), 400)
    assert "no procedure" in error_of(client.post("/api/procedures/zz/end",
                                                  json={"end": "completed"}), 404)


def test_procedures_list_and_one(client: TestClient) -> None:
    assert client.get("/api/procedures").json() == {"procedures": []}
    started = client.post("/api/procedures", json={
        "unscheduled": True, "patient_id": "P5", "patient_name": "W^X"}).json()
    pid = started["procedure"]["procedure_id"]
    assert started["warning"] == ""
    assert client.get(f"/api/procedures/{pid}").json()["procedure"]["patient_id"] == "P5"
    assert [p["procedure_id"] for p in client.get("/api/procedures").json()["procedures"]] \
        == [pid]
    assert error_of(client.get("/api/procedures/unknown"), 404)


def test_start_procedure_warns_of_a_duplicate(client: TestClient) -> None:
    started = client.post("/api/procedures", json={"accession": "A2"}).json()
    assert "already acquired here" in started["warning"]
    assert "expected exactly one" in error_of(client.post("/api/procedures", json={}), 400)
    assert "expected exactly one" in error_of(
        client.post("/api/procedures", json={"procedure_id": "proc1"}), 400)
    assert error_of(client.post("/api/procedures", json={"accession": "NOPE"}), 503)


def test_import_validation(client: TestClient) -> None:
    assert client.post("/api/import", json={"paths": ["/a.dcm"]}).json() == {
        "files": [{"path": "/a.dcm", "queue_id": 1, "sop_instance_uid": "1.2.3"}]}
    assert "absolute" in error_of(client.post("/api/import", json={"paths": ["a.dcm"]}), 400)
    assert "paths" in error_of(client.post("/api/import", json={"paths": []}), 400)
    assert error_of(client.post("/api/import", content=b"x",
                                headers={"Content-Type": "application/json"}), 400)
    assert "paths" in error_of(client.post("/api/import", json={"paths": ["/a\x00b"]}), 400)


def test_reject_validation(client: TestClient, station: FakeStation) -> None:
    ok = client.post("/api/reject", json={"sop_instance_uids": ["1.2.3"], "reason": "quality"})
    assert ok.json()["rejected"] == ["1.2.3"]
    for bad in ({}, {"sop_instance_uids": [], "reason": "quality"},
                {"sop_instance_uids": ["../x"], "reason": "quality"},
                {"sop_instance_uids": ["1." * 40 + "1"], "reason": "quality"},
                {"sop_instance_uids": ["1.2"], "reason": "blurred"}):
        assert error_of(client.post("/api/reject", json=bad), 400)
    assert [c for c in station.calls if c[0] == "reject"][-1][1].reason == "quality"


# -- what the console adds ---------------------------------------------------------------------
def test_console_worklist_marks_duplicates(client: TestClient) -> None:
    view = client.post("/api/console/worklist", json={}).json()
    assert [i["duplicate_reason"] for i in view["items"]] == ["", "already acquired here"]
    assert view["summary"] and view["source"] == "cache"
    assert client.post("/api/console/worklist", json={"refresh": True}).json()["source"] == "ris"
    assert "refresh" in error_of(client.post("/api/console/worklist",
                                             json={"refresh": "1"}), 400)


def test_reasons(client: TestClient) -> None:
    reasons = client.get("/api/reasons").json()["reasons"]
    assert {"code": "110513", "scheme": "DCM", "meaning": reasons[[
        r["code"] for r in reasons].index("110513")]["meaning"]} in reasons


def test_queue_view(client: TestClient, station: FakeStation) -> None:
    assert [o["queue_id"] for o in client.get("/api/queue").json()["objects"]] == [3, 2, 1]
    assert station.calls[-1] == ("recent", 50)
    client.get("/api/queue?limit=5")
    assert station.calls[-1] == ("recent", 5)
    for bad in ("0", "x", "501", "-1"):
        assert "limit" in error_of(client.get(f"/api/queue?limit={bad}"), 400)


def test_retry(client: TestClient) -> None:
    assert client.post("/api/retry", json={"queue_ids": [1, 2]}).json() == {"retried": 2}
    assert error_of(client.post("/api/retry", json={"queue_ids": [999]}), 404) == \
        "no queue item 999"
    for bad in ({}, {"queue_ids": []}, {"queue_ids": ["1"]}, {"queue_ids": [True]},
                {"queue_ids": list(range(501))}):
        assert "queue_ids" in error_of(client.post("/api/retry", json=bad), 400)


def test_last_frame_thumbnail(client: TestClient, station: FakeStation) -> None:
    assert error_of(client.get("/api/last-frame.png"), 404) == "no frame acquired yet"
    pixels = np.full((600, 300), 4095, dtype=np.uint16)
    station.frame = LastFrame(pixels=pixels, bits_stored=12)
    response = client.get("/api/last-frame.png")
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store"
    assert png_header(response.content)[:2] == (128, 256)
    assert png_header(client.get("/api/last-frame.png?max=100").content)[:2] == (50, 100)
    for bad in ("8", "2000", "x"):
        assert "max" in error_of(client.get(f"/api/last-frame.png?max={bad}"), 400)


def test_console_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/console.css").headers["content-type"].startswith("text/css")
    assert client.get("/console.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/index.html").status_code == 404


# -- the real server -------------------------------------------------------------------------
def test_server_binds_port_zero_and_stops(station: FakeStation) -> None:
    policy = SecurityPolicy(token=TOKEN, api_host="127.0.0.1", api_port=0,
                            allowed_hosts=frozenset())
    server = ApiServer("127.0.0.1", 0, create_app(station, policy))
    server.start()
    try:
        assert server.port != 0
        # the Host check compares with the configured port; port 0 is for tests only, so
        # talk to it with a Host header without a port
        url = f"http://127.0.0.1:{server.port}"
        auth = {"Authorization": f"Bearer {TOKEN}", "Host": "127.0.0.1"}
        request = urllib.request.Request(f"{url}/api/status", headers=auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.read() == b'{"queue": {"pending": 0}}'
        request = urllib.request.Request(f"{url}/api/acquire", data=b'{"frames": 0}',
                                         method="POST",
                                         headers={**auth, "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=5)
        assert raised.value.code == 400 and b"frames" in raised.value.read()
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_server_refuses_a_port_in_use(station: FakeStation) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = ApiServer("127.0.0.1", busy.getsockname()[1], create_app(station, POLICY))
        with pytest.raises(OSError):
            server.start()
        server.stop()


# -- thumbnails --------------------------------------------------------------------------------
def png_header(png: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, colour type, raw scanlines) of a PNG made by encode_png."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])[0] == \
            zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks[kind] = data
        pos += 12 + length
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8
    return width, height, colour, zlib.decompress(chunks[b"IDAT"])


def test_png_grey_and_rgb_round_trip() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    width, height, colour, raw = png_header(encode_png(grey))
    assert (width, height, colour) == (4, 3, 0)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(3, 5)
    assert (rows[:, 0] == 0).all() and (rows[:, 1:] == grey).all()
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    width, height, colour, raw = png_header(encode_png(rgb))
    assert (width, height, colour) == (3, 2, 2) and len(raw) == 2 * (1 + 9)
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2), dtype=np.uint16))


def test_window_to_bits_stored_and_downscale() -> None:
    twelve = np.array([[0, 2048, 4095, 65535]], dtype=np.uint16)
    assert to_8bit(twelve, 12).tolist() == [[0, 127, 255, 255]]
    eight = np.array([[0, 255]], dtype=np.uint8)
    assert to_8bit(eight, 8) is eight
    assert downscale(np.zeros((1000, 500)), 256).shape == (256, 128)
    assert downscale(np.zeros((600, 300, 3)), 256).shape == (256, 128, 3)
    ramp = np.arange(10)[None, :].repeat(4, axis=0)
    assert downscale(ramp, 5).tolist() == [[0, 2, 4, 6, 8]] * 2
    assert downscale(np.zeros((100, 50)), 256).shape == (100, 50)
    assert png_header(thumbnail_png(np.zeros((512, 512, 3), dtype=np.uint8), 8))[:3] == \
        (256, 256, 2)
