"""The local HTTP API (JSON) that the CLI and, later, the console use. Loopback by default.

Standard library only for now: a few JSON endpoints do not need a framework.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from agent.errors import AcquisitionError, AgentError
from agent.procedures import EndStatus, ProcedureError
from agent.records import Order

if TYPE_CHECKING:
    from agent.daemon import Daemon

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_FRAMES = 10_000
_PN_FORBIDDEN = re.compile(r"[\x00-\x1f\\]")


class BadRequest(AgentError, ValueError):
    pass


@dataclass(frozen=True)
class AcquireRequest:
    frames: int
    order: Order | None = None           # unscheduled
    accession: str | None = None         # or a worklist entry, by one of these
    sps_id: str | None = None
    end: EndStatus | None = None         # end the procedure afterwards
    reason: str = ""                     # discontinuation reason (DICOM CID 9300 code)


def _parse_end(body: dict[str, Any]) -> tuple[EndStatus | None, str]:
    end = body.get("end")
    if end not in (None, "completed", "discontinued"):
        raise BadRequest(f"end: expected \"completed\" or \"discontinued\", got {end!r}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 16:
        raise BadRequest("reason: expected a code value such as \"110513\"")
    return end, reason


def parse_acquire_request(body: dict[str, Any]) -> AcquireRequest:
    """Validate the JSON of POST /api/acquire: `frames` and one of `"unscheduled": true` (with
    patient_id, patient_name), `accession` or `sps_id`.

    Raises
    ------
    BadRequest
        Naming the field and what was expected.
    """
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object")
    frames = body.get("frames", 1)
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise BadRequest(f"frames: expected an integer 1..{MAX_FRAMES}, got {frames!r}")
    end, reason = _parse_end(body)
    chosen = [k for k in ("unscheduled", "accession", "sps_id") if body.get(k) not in (None, False)]
    if len(chosen) != 1:
        raise BadRequest("expected exactly one of \"unscheduled\": true, \"accession\" or "
                         "\"sps_id\"")
    for key in ("accession", "sps_id"):
        if key in chosen:
            value = body[key]
            if not isinstance(value, str) or not 1 <= len(value.strip()) <= 64 \
                    or _PN_FORBIDDEN.search(value):
                raise BadRequest(f"{key}: expected 1..64 characters without control characters")
            return AcquireRequest(frames, end=end, reason=reason,  # type: ignore[arg-type]
                                  **{key: value.strip()})
    if body.get("unscheduled") is not True:
        raise BadRequest("unscheduled: expected true")
    patient_id = body.get("patient_id")
    patient_name = body.get("patient_name")
    if not isinstance(patient_id, str) or not 1 <= len(patient_id.strip()) <= 64 \
            or _PN_FORBIDDEN.search(patient_id):
        raise BadRequest("patient_id: expected 1..64 characters without control characters "
                         "or backslash")
    if not isinstance(patient_name, str) or not 1 <= len(patient_name.strip()) <= 320 \
            or _PN_FORBIDDEN.search(patient_name):
        raise BadRequest("patient_name: expected 'Family^Given' (1..320 characters, no control "
                         "characters or backslash)")
    return AcquireRequest(frames, Order(patient_name=patient_name.strip(),
                                        patient_id=patient_id.strip()), end=end, reason=reason)


def parse_import_request(body: dict[str, Any]) -> list[Path]:
    """Validate the JSON of POST /api/import: absolute paths on this computer."""
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise BadRequest("paths: expected a non-empty list of absolute paths")
    result = [Path(p) for p in paths]
    relative = [str(p) for p in result if not p.is_absolute()]
    if relative:
        raise BadRequest(f"paths: expected absolute paths, got {relative[:3]}")
    return result


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # paths hold no patient data; bodies are never logged
        logger.debug("api: %s", format % args)

    def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        daemon = self.server.daemon
        if url.path == "/api/status":
            self._reply(HTTPStatus.OK, daemon.status())
        elif url.path == "/api/procedures":
            self._reply(HTTPStatus.OK, {"procedures": [
                p.as_json() for p in daemon.procedures.all()]})
        elif url.path == "/api/worklist":
            if daemon.worklist is None:
                self._reply(HTTPStatus.NOT_FOUND, {"error": "no [worklist] configured"})
                return
            refresh = parse_qs(url.query).get("refresh") == ["1"]
            snapshot = daemon.worklist.refresh_now() if refresh else daemon.worklist.snapshot()
            self._reply(HTTPStatus.OK, snapshot.as_json())
        elif url.path == "/api/objects":
            try:
                ids = [int(v) for v in parse_qs(url.query).get("queue_id", [])]
            except ValueError:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "queue_id: expected integers"})
                return
            self._reply(HTTPStatus.OK, {"objects": daemon.objects(ids)})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {url.path}"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/api/procedures/") and url.path.endswith("/end"):
            procedure_id = url.path.removeprefix("/api/procedures/").removesuffix("/end")
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(min(length, MAX_BODY_BYTES)) or b"{}")
                end, reason = _parse_end(body)
                if end is None:
                    raise BadRequest("end: expected \"completed\" or \"discontinued\"")
                procedure = self.server.daemon.procedures.end(procedure_id, end, reason)
            except (BadRequest, ProcedureError, json.JSONDecodeError) as err:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})
                return
            self._reply(HTTPStatus.OK, {"procedure": procedure.as_json()})
            return
        if url.path not in ("/api/acquire", "/api/import"):
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {url.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request too large"})
            return
        if url.path == "/api/import":
            try:
                paths = parse_import_request(json.loads(self.rfile.read(length) or b"{}"))
            except (BadRequest, json.JSONDecodeError) as err:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})
                return
            self._reply(HTTPStatus.OK, {"files": self.server.daemon.import_files(paths)})
            return
        try:
            request = parse_acquire_request(json.loads(self.rfile.read(length) or b"{}"))
            daemon = self.server.daemon
            if request.order is not None:
                result = daemon.acquire(request.order, request.frames, end=request.end,
                                        end_reason=request.reason)
            else:
                item = daemon.worklist_item(accession=request.accession, sps_id=request.sps_id)
                result = daemon.acquire(item.to_order(), request.frames, item, end=request.end,
                                        end_reason=request.reason)
        except (BadRequest, json.JSONDecodeError) as err:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        except AcquisitionError as err:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(err)})
            return
        self._reply(HTTPStatus.OK, result)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], daemon: Daemon) -> None:
        self.daemon = daemon
        super().__init__(address, _Handler)


class ApiServer:
    def __init__(self, host: str, port: int, daemon: Daemon) -> None:
        self.host = host
        self.port = port
        self._daemon = daemon
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = _Server((self.host, self.port), self._daemon)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="api",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
