"""The local HTTP API (JSON) that the CLI and the technologist's console use, and the console's
static page. Loopback by default. Starlette app, served by uvicorn on a daemon thread.

No patient data in URLs: paths and queries hold procedure ids and queue ids only; a worklist entry
or a patient is chosen by POSTing it in the body. Bodies are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.api.console.thumbnail import DEFAULT_MAX_SIDE, thumbnail_png
from agent.errors import AcquisitionError, AgentError, UnknownQueueItemError
from agent.mpps import DISCONTINUATION_REASONS
from agent.procedures import EndStatus, ProcedureError
from agent.records import Order

if TYPE_CHECKING:
    from agent.daemon import Daemon

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_FRAMES = 10_000
MAX_RECENT = 500
CONSOLE_DIR = Path(__file__).resolve().parent / "console"
#: the console's static files: URL path -> (file, media type)
STATIC_FILES = {
    "/": ("index.html", "text/html"),
    "/console.css": ("console.css", "text/css"),
    "/console.js": ("console.js", "text/javascript"),
}
_PN_FORBIDDEN = re.compile(r"[\x00-\x1f\\]")
_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class BadRequest(AgentError, ValueError):
    pass


@dataclass(frozen=True)
class AcquireRequest:
    frames: int
    order: Order | None = None           # unscheduled
    accession: str | None = None         # or a worklist entry, by one of these
    sps_id: str | None = None
    procedure_id: str | None = None      # or a procedure in progress (the console)
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
    order = parse_order_choice(body, extra=("procedure_id",))
    return AcquireRequest(frames, order.order, order.accession, order.sps_id, order.procedure_id,
                          end=end, reason=reason)


@dataclass(frozen=True)
class OrderChoice:
    order: Order | None = None
    accession: str | None = None
    sps_id: str | None = None
    procedure_id: str | None = None


def parse_order_choice(body: dict[str, Any], extra: tuple[str, ...] = ()) -> OrderChoice:
    """Who to acquire for: `"unscheduled": true` with patient_id and patient_name, or
    `accession`, or `sps_id` (or one of `extra`: `procedure_id`).

    Raises
    ------
    BadRequest
        Naming the field and what was expected.
    """
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object")
    keys = ("unscheduled", "accession", "sps_id", *extra)
    chosen = [k for k in keys if body.get(k) not in (None, False)]
    if len(chosen) != 1:
        if extra:
            raise BadRequest("expected exactly one of \"unscheduled\": true, \"accession\", "
                             "\"sps_id\" or \"procedure_id\"")
        raise BadRequest("expected exactly one of \"unscheduled\": true, \"accession\" or "
                         "\"sps_id\"")
    if "procedure_id" in chosen:
        value = body["procedure_id"]
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise BadRequest("procedure_id: expected an id from POST /api/procedures")
        return OrderChoice(procedure_id=value)
    for key in ("accession", "sps_id"):
        if key in chosen:
            value = body[key]
            if not isinstance(value, str) or not 1 <= len(value.strip()) <= 64 \
                    or _PN_FORBIDDEN.search(value):
                raise BadRequest(f"{key}: expected 1..64 characters without control characters")
            return OrderChoice(**{key: value.strip()})  # type: ignore[arg-type]
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
    return OrderChoice(Order(patient_name=patient_name.strip(), patient_id=patient_id.strip()))


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




# -- responses -----------------------------------------------------------------------------------
def _json(status: int, payload: Any) -> Response:
    # json.dumps with its default separators: the bytes the stdlib server sent before
    return Response(json.dumps(payload).encode(), status_code=status,
                    media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


async def _body(request: Request) -> Any:
    """The request's JSON (an empty body is `{}`).

    Raises
    ------
    BadRequest
        Not JSON.
    _TooLarge
        More than MAX_BODY_BYTES.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _TooLarge()
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise _TooLarge()
    try:
        return json.loads(data or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(str(err)) from err


class _TooLarge(Exception):
    pass


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """400 for a bad request, 413 for a large one, 503 when acquisition fails."""
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except _TooLarge:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large")
        except (BadRequest, ProcedureError) as err:
            return _error(HTTPStatus.BAD_REQUEST, str(err))
        except AcquisitionError as err:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
    return guarded


def _daemon(request: Request) -> Daemon:
    daemon: Daemon = request.app.state.daemon
    return daemon


# -- the CLI's endpoints -----------------------------------------------------------------------
async def get_status(request: Request) -> Response:
    return _json(200, await run_in_threadpool(_daemon(request).status))


async def get_procedures(request: Request) -> Response:
    return _json(200, {"procedures": [p.as_json() for p in _daemon(request).procedures.all()]})


async def get_worklist(request: Request) -> Response:
    """The worklist as `worklist --json` has it; `?refresh=1` asks the RIS now."""
    worklist = _daemon(request).worklist
    if worklist is None:
        return _error(HTTPStatus.NOT_FOUND, "no [worklist] configured")
    refresh = request.query_params.getlist("refresh") == ["1"]
    snapshot = await run_in_threadpool(worklist.refresh_now if refresh else worklist.snapshot)
    return _json(200, snapshot.as_json())


async def get_objects(request: Request) -> Response:
    try:
        ids = [int(v) for v in request.query_params.getlist("queue_id")]
    except ValueError:
        return _error(HTTPStatus.BAD_REQUEST, "queue_id: expected integers")
    return _json(200, {"objects": await run_in_threadpool(_daemon(request).objects, ids)})


@_guarded
async def post_end(request: Request) -> Response:
    procedure_id = request.path_params["procedure_id"]
    end, reason = _parse_end(await _body(request))
    if end is None:
        raise BadRequest("end: expected \"completed\" or \"discontinued\"")
    procedure = await run_in_threadpool(_daemon(request).procedures.end, procedure_id, end,
                                        reason)
    return _json(200, {"procedure": procedure.as_json()})


@_guarded
async def post_import(request: Request) -> Response:
    paths = parse_import_request(await _body(request))
    return _json(200, {"files": await run_in_threadpool(_daemon(request).import_files, paths)})


def _acquire(daemon: Daemon, request: AcquireRequest) -> dict[str, Any]:
    if request.procedure_id is not None:
        try:
            procedure = daemon.procedures.get(request.procedure_id)
        except ProcedureError as err:
            raise AcquisitionError(str(err)) from err
        result = daemon.acquire(procedure.order, request.frames,
                                procedure_id=request.procedure_id, end=request.end,
                                end_reason=request.reason)
        order = procedure.order
        if (order.scheduled and order.study_instance_uid and daemon.worklist is not None
                and result["objects"]):
            # the duplicate guard: this step has now been acquired on this device
            daemon.worklist.mark_acquired(order.study_instance_uid, order.sps_id)
        return result
    if request.order is not None:
        return daemon.acquire(request.order, request.frames, end=request.end,
                              end_reason=request.reason)
    item = daemon.worklist_item(accession=request.accession, sps_id=request.sps_id)
    return daemon.acquire(item.to_order(), request.frames, item, end=request.end,
                          end_reason=request.reason)


@_guarded
async def post_acquire(request: Request) -> Response:
    parsed = parse_acquire_request(await _body(request))
    return _json(200, await run_in_threadpool(_acquire, _daemon(request), parsed))


# -- what the console adds ---------------------------------------------------------------------
def _worklist_view(daemon: Daemon, refresh: bool) -> dict[str, Any] | None:
    if daemon.worklist is None:
        return None
    snapshot = daemon.worklist.refresh_now() if refresh else daemon.worklist.snapshot()
    view = snapshot.as_json()
    for item, shown in zip(snapshot.items, view["items"], strict=True):
        shown["duplicate_reason"] = item.duplicate_reason
    view["summary"] = snapshot.summary
    return view


@_guarded
async def post_console_worklist(request: Request) -> Response:
    """The worklist for the console: each item with its `duplicate_reason` ("" when none),
    and a `summary`. POST with `{"refresh": true}` asks the RIS now."""
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("refresh", False), bool):
        raise BadRequest("refresh: expected true or false")
    view = await run_in_threadpool(_worklist_view, _daemon(request), body.get("refresh", False))
    if view is None:
        return _error(HTTPStatus.NOT_FOUND, "no [worklist] configured")
    return _json(200, view)


def _start_procedure(daemon: Daemon, choice: OrderChoice) -> dict[str, Any]:
    if choice.order is not None:
        return {"procedure": daemon.start_procedure(choice.order), "warning": ""}
    item = daemon.worklist_item(accession=choice.accession, sps_id=choice.sps_id)
    warning = (f"worklist entry {item.describe()}: {item.duplicate_reason}"
               if item.is_duplicate else "")
    return {"procedure": daemon.start_procedure(item.to_order()), "warning": warning}


@_guarded
async def post_procedures(request: Request) -> Response:
    """Start (or find) the procedure in progress for a worklist entry or an unscheduled
    patient: `{"accession"}`, `{"sps_id"}` or `{"unscheduled": true, "patient_id",
    "patient_name"}`."""
    choice = parse_order_choice(await _body(request))
    return _json(200, await run_in_threadpool(_start_procedure, _daemon(request), choice))


async def get_procedure(request: Request) -> Response:
    try:
        procedure = _daemon(request).procedures.get(request.path_params["procedure_id"])
    except ProcedureError as err:
        return _error(HTTPStatus.NOT_FOUND, str(err))
    return _json(200, {"procedure": procedure.as_json()})


async def get_reasons(request: Request) -> Response:
    """The discontinuation reasons (DICOM CID 9300) the console offers."""
    return _json(200, {"reasons": [
        {"code": c.value, "scheme": c.scheme, "meaning": c.meaning}
        for c in DISCONTINUATION_REASONS.values()]})


async def get_queue(request: Request) -> Response:
    """The newest objects, for the live queue view: `?limit=N` (1..MAX_RECENT, default 50)."""
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RECENT:
        return _error(HTTPStatus.BAD_REQUEST, f"limit: expected an integer 1..{MAX_RECENT}")
    objects = await run_in_threadpool(_daemon(request).recent_objects, int(raw))
    return _json(200, {"objects": objects})


@_guarded
async def post_retry(request: Request) -> Response:
    """Failed rows of these objects back to pending: `{"queue_ids": [1, 2]}`."""
    body = await _body(request)
    ids = body.get("queue_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or len(ids) > MAX_RECENT or not all(
            isinstance(q, int) and not isinstance(q, bool) for q in ids):
        raise BadRequest(f"queue_ids: expected a list of 1..{MAX_RECENT} integers")
    try:
        count = await run_in_threadpool(_daemon(request).retry, ids)
    except UnknownQueueItemError as err:
        return _error(HTTPStatus.NOT_FOUND, str(err.args[0] if err.args else err))
    return _json(200, {"retried": count})


async def get_last_frame(request: Request) -> Response:
    """The last frame read from the device as a PNG thumbnail (`?max=N` pixels on the longest
    side, 16..1024, default 256); 404 before the first frame."""
    raw = request.query_params.get("max", str(DEFAULT_MAX_SIDE))
    if not raw.isdigit() or not 16 <= int(raw) <= 1024:
        return _error(HTTPStatus.BAD_REQUEST, "max: expected an integer 16..1024")
    frame = _daemon(request).acquisition.last_frame
    if frame is None:
        return _error(HTTPStatus.NOT_FOUND, "no frame acquired yet")
    png = await run_in_threadpool(thumbnail_png, frame.pixels, frame.bits_stored, int(raw))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def _static(path: str) -> Handler:
    name, media_type = STATIC_FILES[path]

    async def serve(request: Request) -> Response:
        content = (CONSOLE_DIR / name).read_bytes()
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})
    return serve


async def _not_found(request: Request, exc: Exception) -> Response:
    # unknown path, or a known path with the wrong method: 404 as the stdlib server did
    return _error(HTTPStatus.NOT_FOUND, f"no such endpoint {request.url.path}")


def create_app(daemon: Daemon) -> Starlette:
    """The API and the console, for `daemon`."""
    routes = [
        Route("/api/status", get_status, methods=["GET"]),
        Route("/api/procedures", get_procedures, methods=["GET"]),
        Route("/api/procedures", post_procedures, methods=["POST"]),
        Route("/api/procedures/{procedure_id}", get_procedure, methods=["GET"]),
        Route("/api/procedures/{procedure_id}/end", post_end, methods=["POST"]),
        Route("/api/worklist", get_worklist, methods=["GET"]),
        Route("/api/objects", get_objects, methods=["GET"]),
        Route("/api/acquire", post_acquire, methods=["POST"]),
        Route("/api/import", post_import, methods=["POST"]),
        Route("/api/console/worklist", post_console_worklist, methods=["POST"]),
        Route("/api/reasons", get_reasons, methods=["GET"]),
        Route("/api/queue", get_queue, methods=["GET"]),
        Route("/api/retry", post_retry, methods=["POST"]),
        Route("/api/last-frame.png", get_last_frame, methods=["GET"]),
        *(Route(path, _static(path), methods=["GET"]) for path in STATIC_FILES),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found})
    app.state.daemon = daemon
    return app


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        # the daemon owns SIGTERM/SIGINT; uvicorn runs on a thread (older uvicorn API)
        pass


class ApiServer:
    """uvicorn on a daemon thread: `start()` binds (port 0: the real port is in `.port`) and
    returns when the server accepts connections; `stop()` shuts it down."""

    def __init__(self, host: str, port: int, daemon: Daemon) -> None:
        self.host = host
        self.port = port
        self._daemon = daemon
        self._server: _Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(self._daemon), lifespan="off", access_log=False,
                                log_level="warning", log_config=None, timeout_graceful_shutdown=2)
        self._server = server = _Server(config)
        self._thread = threading.Thread(target=self._serve, args=(server, sock), name="api",
                                        daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(500):
            if server.started or not self._thread.is_alive():
                break
            deadline.wait(0.01)
        if not server.started:
            self.stop()
            raise OSError(f"API server did not start on {self.host}:{self.port}")

    @staticmethod
    def _serve(server: _Server, sock: socket.socket) -> None:
        asyncio.run(server.serve(sockets=[sock]))

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
