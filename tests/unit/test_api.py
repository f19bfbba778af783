"""The API's validation and replies, through starlette's TestClient on a fake daemon, and the
real uvicorn server's start/stop; the console's thumbnail encoder."""

from __future__ import annotations

import json
import socket
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from agent.api.routes import (
    MAX_BODY_BYTES,
    ApiServer,
    BadRequest,
    create_app,
    parse_acquire_request,
)
from agent.api.console.thumbnail import downscale, encode_png, thumbnail_png, to_8bit
from agent.errors import AcquisitionError, UnknownQueueItemError
from agent.procedures import ProcedureError
from agent.records import Order

ORDER = Order(patient_name="Doe^Jane", patient_id="P1")


@dataclass
class FakeProcedure:
    procedure_id: str
    order: Order
    state: str = "in_progress"

    def as_json(self) -> dict[str, Any]:
        return {"procedure_id": self.procedure_id, "state": self.state,
                "patient_id": self.order.patient_id, "series": []}


@dataclass
class FakeItem:
    accession_number: str
    sps_id: str
    duplicate_reason: str = ""

    @property
    def is_duplicate(self) -> bool:
        return bool(self.duplicate_reason)

    def describe(self) -> str:
        return f"SPS {self.sps_id!r}"

    def as_json(self) -> dict[str, str]:
        return {"accession_number": self.accession_number, "sps_id": self.sps_id}

    def to_order(self) -> Order:
        return Order(patient_name="Sched^Uled", patient_id="P2", study_instance_uid="1.2.3",
                     accession_number=self.accession_number, sps_id=self.sps_id,
                     scheduled=True)


@dataclass
class FakeSnapshot:
    items: tuple[FakeItem, ...]
    source: str = "cache"
    summary: str = "2 worklist item(s) from the cache"

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "age_s": 12.0,
                "items": [i.as_json() for i in self.items], "error": "RIS down"}


class FakeWorklist:
    def __init__(self) -> None:
        self.items = (FakeItem("A1", "S1"), FakeItem("A2", "S2", "already acquired here"))
        self.refreshed = 0
        self.marked: list[tuple[str, str]] = []

    def snapshot(self) -> FakeSnapshot:
        return FakeSnapshot(self.items)

    def refresh_now(self) -> FakeSnapshot:
        self.refreshed += 1
        return FakeSnapshot(self.items, source="ris")

    def mark_acquired(self, study_uid: str, sps_id: str) -> None:
        self.marked.append((study_uid, sps_id))


class FakeProcedures:
    def __init__(self) -> None:
        self.by_id: dict[str, FakeProcedure] = {}

    def get(self, procedure_id: str) -> FakeProcedure:
        if procedure_id not in self.by_id:
            raise ProcedureError(f"no procedure {procedure_id!r}")
        return self.by_id[procedure_id]

    def all(self) -> list[FakeProcedure]:
        return list(self.by_id.values())

    def end(self, procedure_id: str, status: str, reason: str = "") -> FakeProcedure:
        procedure = self.get(procedure_id)
        if procedure.state != "in_progress":
            raise ProcedureError(f"procedure {procedure_id} is {procedure.state}")
        if status == "discontinued" and reason != "110513":
            raise ProcedureError(f"reason: unknown code {reason!r}")
        procedure.state = status
        return procedure


@dataclass
class FakeDaemon:
    worklist: FakeWorklist | None = field(default_factory=FakeWorklist)
    procedures: FakeProcedures = field(default_factory=FakeProcedures)
    acquisition: Any = field(default_factory=lambda: SimpleNamespace(last_frame=None))
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail_acquire: bool = False

    def status(self) -> dict[str, Any]:
        return {"queue": {"pending": 0}}

    def objects(self, ids: list[int]) -> list[dict[str, Any]]:
        return [{"queue_id": q, "state": "pending"} for q in ids]

    def recent_objects(self, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("recent", limit))
        return self.objects([3, 2, 1])

    def worklist_item(self, *, accession: str | None = None,
                      sps_id: str | None = None) -> FakeItem:
        assert self.worklist is not None
        for item in self.worklist.items:
            if accession in (None, item.accession_number) and sps_id in (None, item.sps_id):
                return item
        raise AcquisitionError("no worklist item")

    def start_procedure(self, order: Order) -> dict[str, Any]:
        procedure = FakeProcedure(f"proc{len(self.procedures.by_id) + 1}", order)
        self.procedures.by_id[procedure.procedure_id] = procedure
        return procedure.as_json()

    def acquire(self, order: Order, frames: int, item: Any = None, *,
                procedure_id: str | None = None, end: str | None = None,
                end_reason: str = "") -> dict[str, Any]:
        self.calls.append(("acquire", (order, frames, item, procedure_id, end, end_reason)))
        if self.fail_acquire:
            raise AcquisitionError("device not connected")
        if procedure_id and self.procedures.get(procedure_id).state != "in_progress":
            raise AcquisitionError(f"procedure {procedure_id} is ended")
        return {"warning": "", "objects": self.objects(list(range(1, frames + 1))),
                "error": None}

    def retry(self, ids: list[int]) -> int:
        if 999 in ids:
            raise UnknownQueueItemError("no queue item 999")
        return len(ids)

    def import_files(self, paths: list[Path]) -> list[dict[str, Any]]:
        return [{"path": str(p), "queue_id": 1} for p in paths]


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def client(daemon: FakeDaemon) -> Iterator[TestClient]:
    with TestClient(create_app(daemon)) as test_client:   # type: ignore[arg-type]
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
    assert error_of(client.post("/api/status"), 404) == "no such endpoint /api/status"


def test_objects_takes_integer_queue_ids(client: TestClient) -> None:
    assert client.get("/api/objects?queue_id=4&queue_id=7").json() == {
        "objects": [{"queue_id": 4, "state": "pending"}, {"queue_id": 7, "state": "pending"}]}
    assert client.get("/api/objects").json() == {"objects": []}
    assert error_of(client.get("/api/objects?queue_id=x"), 400) == "queue_id: expected integers"


def test_worklist_snapshot_or_refresh(client: TestClient, daemon: FakeDaemon) -> None:
    assert client.get("/api/worklist").json()["source"] == "cache"
    assert daemon.worklist is not None and daemon.worklist.refreshed == 0
    assert client.get("/api/worklist?refresh=1").json()["source"] == "ris"
    assert daemon.worklist.refreshed == 1
    assert "duplicate_reason" not in client.get("/api/worklist").json()["items"][0]


def test_worklist_not_configured_is_404(daemon: FakeDaemon, client: TestClient) -> None:
    daemon.worklist = None
    assert error_of(client.get("/api/worklist"), 404) == "no [worklist] configured"
    assert error_of(client.post("/api/console/worklist", json={}), 404)


@pytest.mark.parametrize(("body", "message"), [
    ({"frames": 0, "accession": "A1"}, "frames: expected an integer 1..10000"),
    ({"frames": True, "accession": "A1"}, "frames"),
    ({"frames": "2", "accession": "A1"}, "frames"),
    ({"frames": 1}, "expected exactly one of"),
    ({"accession": "A1", "sps_id": "S1"}, "expected exactly one of"),
    ({"accession": "A\x01"}, "accession: expected 1..64 characters"),
    ({"sps_id": " "}, "sps_id: expected 1..64"),
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
    with pytest.raises(BadRequest):
        parse_acquire_request(body)


def test_acquire_refuses_bad_json_and_large_bodies(client: TestClient) -> None:
    assert error_of(client.post("/api/acquire", content=b"{nope"), 400)
    big = json.dumps({"paths": ["/" + "x" * MAX_BODY_BYTES]}).encode()
    assert error_of(client.post("/api/acquire", content=big), 413) == "request too large"
    assert error_of(client.post("/api/import", content=big), 413) == "request too large"


def test_acquire_each_way(client: TestClient, daemon: FakeDaemon) -> None:
    body = {"unscheduled": True, "patient_id": " P9 ", "patient_name": "X^Y", "frames": 2}
    assert len(client.post("/api/acquire", json=body).json()["objects"]) == 2
    order, frames, item, procedure_id, _, _ = daemon.calls[-1][1]
    assert (order.patient_id, frames, item, procedure_id) == ("P9", 2, None, None)

    client.post("/api/acquire", json={"sps_id": "S2", "end": "completed"})
    _, _, item, _, end, _ = daemon.calls[-1][1]
    assert item.sps_id == "S2" and end == "completed"

    assert "no worklist item" in error_of(client.post("/api/acquire",
                                                      json={"accession": "NOPE"}), 503)
    daemon.fail_acquire = True
    assert error_of(client.post("/api/acquire", json={"accession": "A1"}), 503) == \
        "device not connected"


def test_acquire_into_a_procedure_marks_the_step_acquired(client: TestClient,
                                                          daemon: FakeDaemon) -> None:
    procedure = client.post("/api/procedures", json={"accession": "A1"}).json()["procedure"]
    result = client.post("/api/acquire", json={"procedure_id": procedure["procedure_id"]})
    assert result.status_code == 200
    _, frames, _, procedure_id, _, _ = daemon.calls[-1][1]
    assert (frames, procedure_id) == (1, procedure["procedure_id"])
    assert daemon.worklist is not None and daemon.worklist.marked == [("1.2.3", "S1")]
    assert "no procedure" in error_of(client.post("/api/acquire",
                                                  json={"procedure_id": "other"}), 503)


def test_end_procedure(client: TestClient, daemon: FakeDaemon) -> None:
    pid = client.post("/api/procedures", json={"sps_id": "S1"}).json()["procedure"][
        "procedure_id"]
    assert "end: expected" in error_of(client.post(f"/api/procedures/{pid}/end", json={}), 400)
    assert error_of(client.post(f"/api/procedures/{pid}/end", content=b"["), 400)
    assert "reason" in error_of(client.post(f"/api/procedures/{pid}/end",
                                            json={"end": "discontinued", "reason": "1"}), 400)
    ended = client.post(f"/api/procedures/{pid}/end",
                        json={"end": "discontinued", "reason": "110513"})
    assert ended.json() == {"procedure": {"procedure_id": pid, "state": "discontinued",
                                          "patient_id": "P2", "series": []}}
    assert "is discontinued" in error_of(client.post(f"/api/procedures/{pid}/end",
                                                     json={"end": "completed"}), 400)
    assert "no procedure" in error_of(client.post("/api/procedures/zz/end",
                                                  json={"end": "completed"}), 400)


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
        "files": [{"path": "/a.dcm", "queue_id": 1}]}
    assert "absolute" in error_of(client.post("/api/import", json={"paths": ["a.dcm"]}), 400)
    assert "paths" in error_of(client.post("/api/import", json={"paths": []}), 400)
    assert error_of(client.post("/api/import", content=b"x"), 400)


# -- what the console adds ---------------------------------------------------------------------
def test_console_worklist_marks_duplicates(client: TestClient, daemon: FakeDaemon) -> None:
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


def test_queue_view(client: TestClient, daemon: FakeDaemon) -> None:
    assert [o["queue_id"] for o in client.get("/api/queue").json()["objects"]] == [3, 2, 1]
    assert daemon.calls[-1] == ("recent", 50)
    client.get("/api/queue?limit=5")
    assert daemon.calls[-1] == ("recent", 5)
    for bad in ("0", "x", "501", "-1"):
        assert "limit" in error_of(client.get(f"/api/queue?limit={bad}"), 400)


def test_retry(client: TestClient) -> None:
    assert client.post("/api/retry", json={"queue_ids": [1, 2]}).json() == {"retried": 2}
    assert error_of(client.post("/api/retry", json={"queue_ids": [999]}), 404) == \
        "no queue item 999"
    for bad in ({}, {"queue_ids": []}, {"queue_ids": ["1"]}, {"queue_ids": [True]},
                {"queue_ids": list(range(501))}):
        assert "queue_ids" in error_of(client.post("/api/retry", json=bad), 400)


def test_last_frame_thumbnail(client: TestClient, daemon: FakeDaemon) -> None:
    assert error_of(client.get("/api/last-frame.png"), 404) == "no frame acquired yet"
    pixels = np.full((600, 300), 4095, dtype=np.uint16)
    daemon.acquisition.last_frame = SimpleNamespace(pixels=pixels, bits_stored=12)
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
def test_server_binds_port_zero_and_stops(daemon: FakeDaemon) -> None:
    server = ApiServer("127.0.0.1", 0, daemon)   # type: ignore[arg-type]
    server.start()
    try:
        assert server.port != 0
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/api/status", timeout=5) as response:
            assert response.read() == b'{"queue": {"pending": 0}}'
        request = urllib.request.Request(f"{url}/api/acquire", data=b'{"frames": 0}',
                                         method="POST")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=5)
        assert raised.value.code == 400 and b"frames" in raised.value.read()
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_server_refuses_a_port_in_use(daemon: FakeDaemon) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = ApiServer("127.0.0.1", busy.getsockname()[1], daemon)  # type: ignore[arg-type]
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
