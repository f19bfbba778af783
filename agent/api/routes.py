"""The API's endpoints: each parses its request into a typed request of `agent.station` and
calls the `StationService` protocol; the security middleware (`agent.api.security`) has already
checked Host, Origin, content type and the token by then.

No patient data in URLs: paths and queries hold procedure ids and queue ids only; a worklist entry
or a patient is chosen by POSTing it in the body. Bodies are never logged. Everything that blocks
(the worklist, the device, the disk) runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from agent.api.console.thumbnail import DEFAULT_MAX_SIDE, thumbnail_png
from agent.api.security import SecurityMiddleware, SecurityPolicy
from agent.audit import AuditUnavailable
from agent.errors import AcquisitionError, AgentError, UnknownQueueItemError
from agent.iod.anatomy import REGIONS, AnatomyChoice
from agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from agent.mpps import DISCONTINUATION_REASONS
from agent.procedures import EndStatus, ProcedureError
from agent.records import Order
from agent.station import (
    MAX_RECENT,
    AcquireRequest,
    EndRequest,
    ExposureNotConfirmed,
    ImportRequest,
    NotFound,
    OrderChoice,
    RejectRequest,
    RequestRefused,
    StationService,
    check_text,
)

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
#: deeper JSON than this is refused: no request of ours nests more than 2 levels, and a deep
#: one costs recursion (10,000 levels gave HTTP 500)
MAX_JSON_DEPTH = 8
#: a hard ceiling for any request; the configured [api] max_frames is checked by the station
MAX_FRAMES = 10_000
MAX_IMPORT_PATHS = 1000
CONSOLE_DIR = Path(__file__).resolve().parent / "console"
#: the console's static files: URL path -> (file, media type)
STATIC_FILES = {
    "/": ("index.html", "text/html"),
    "/console.css": ("console.css", "text/css"),
    "/console.js": ("console.js", "text/javascript"),
}
_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class BadRequest(RequestRefused):
    """The request's JSON is not what the endpoint takes (HTTP 400)."""


def _parse_end(body: Any) -> tuple[EndStatus | None, str]:
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object")
    end = body.get("end")
    if end not in (None, "completed", "discontinued"):
        raise BadRequest(f"end: expected \"completed\" or \"discontinued\", got {end!r}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 16:
        raise BadRequest("reason: expected a code value such as \"110513\"")
    return end, reason


LATERALITIES = ("R", "L", "B", "U")
_BODY_PART = re.compile(r"[A-Za-z]{1,16}")


def parse_anatomy(body: dict[str, Any]) -> AnatomyChoice:
    """`body_part` (a Body Part Examined term such as "HAND") and `laterality` (R, L, B or U),
    each optional: the station checks them against the order and the IOD.

    Raises
    ------
    BadRequest
        Naming the field and what was expected.
    """
    body_part = body.get("body_part")
    if body_part is not None and (not isinstance(body_part, str)
                                  or not _BODY_PART.fullmatch(body_part)):
        raise BadRequest("body_part: expected a Body Part Examined term such as \"HAND\"")
    laterality = body.get("laterality")
    if laterality is not None and laterality not in LATERALITIES:
        raise BadRequest("laterality: expected one of \"R\", \"L\", \"B\", \"U\"")
    return AnatomyChoice(body_part.upper() if body_part else None, laterality)


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key}: expected true or false")
    return value


def parse_acquire_request(body: Any) -> AcquireRequest:
    """Validate the JSON of POST /api/acquire: `frames`, one of `"unscheduled": true` (with
    patient_id, patient_name), `accession`, `sps_id` or `procedure_id`, and for an X-ray device
    `"confirm_exposure": true`.

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
    confirmed = body.get("confirm_exposure", False)
    if not isinstance(confirmed, bool):
        raise BadRequest("confirm_exposure: expected true or false")
    end, reason = _parse_end(body)
    choice = parse_order_choice(body, extra=("procedure_id",))
    return AcquireRequest(frames, choice, end=end, reason=reason, exposure_confirmed=confirmed,
                          anatomy=parse_anatomy(body),
                          performed_as_scheduled=_flag(body, "performed_as_scheduled"))


def parse_order_choice(body: Any, extra: tuple[str, ...] = ()) -> OrderChoice:
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
            return OrderChoice(**{key: check_text(key, body[key], 64)})  # type: ignore[arg-type]
    if body.get("unscheduled") is not True:
        raise BadRequest("unscheduled: expected true")
    patient_id = check_text("patient_id", body.get("patient_id"), 64)
    patient_name = check_text("patient_name", body.get("patient_name"), 320)
    return OrderChoice(Order(patient_name=patient_name, patient_id=patient_id))


def parse_import_request(body: Any) -> ImportRequest:
    """Validate the JSON of POST /api/import: absolute paths on this computer (the station
    takes only those inside `[api] import_folders`)."""
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not 1 <= len(paths) <= MAX_IMPORT_PATHS or not all(
            isinstance(p, str) and 0 < len(p) <= 4096 and "\x00" not in p for p in paths):
        raise BadRequest(f"paths: expected a list of 1..{MAX_IMPORT_PATHS} absolute paths")
    result = tuple(Path(p) for p in paths)
    relative = [str(p) for p in result if not p.is_absolute()]
    if relative:
        raise BadRequest(f"paths: expected absolute paths, got {len(relative)} relative")
    return ImportRequest(result)


# -- responses -----------------------------------------------------------------------------------
def _json(status: int, payload: Any) -> Response:
    # json.dumps with its default separators: the bytes the stdlib server sent before
    # Cache-Control: no-store comes from the security middleware, for every /api/ response
    return Response(json.dumps(payload).encode(), status_code=status,
                    media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


def _depth(value: Any, limit: int) -> int:
    """How deeply `value` nests, counting no further than `limit` + 1."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


async def _body(request: Request) -> Any:
    """The request's JSON (an empty body is `{}`).

    Raises
    ------
    BadRequest
        Not JSON, or nested deeper than MAX_JSON_DEPTH.
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
        value = json.loads(data or b"{}")
    except RecursionError as err:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"not JSON: {err}") from err
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


class _TooLarge(Exception):
    pass


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """Each refusal of the station as its HTTP status: 400 bad request, 404 unknown id, 409
    exposure not confirmed, 413 too large, 503 the device, an order or the audit trail cannot
    be used now."""
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except _TooLarge:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large")
        except NotFound as err:
            return _error(HTTPStatus.NOT_FOUND, str(err))
        except UnknownQueueItemError as err:
            return _error(HTTPStatus.NOT_FOUND, str(err.args[0] if err.args else err))
        except ExposureNotConfirmed as err:
            return _error(HTTPStatus.CONFLICT, str(err))
        except (RequestRefused, ProcedureError) as err:
            return _error(HTTPStatus.BAD_REQUEST, str(err))
        except AcquisitionError as err:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
        except AuditUnavailable as err:
            # an event that cannot be audited does not happen (issue 15)
            return _error(HTTPStatus.SERVICE_UNAVAILABLE,
                          f"refused: the audit trail cannot record it ({err})")
        except AgentError as err:
            logger.error("%s %s failed: %s", request.method, request.url.path,
                         type(err).__name__)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, str(err))
    return guarded


def _station(request: Request) -> StationService:
    station: StationService = request.app.state.station
    return station


# -- the CLI's endpoints -----------------------------------------------------------------------
@_guarded
async def get_status(request: Request) -> Response:
    return _json(200, await run_in_threadpool(_station(request).status))


@_guarded
async def get_procedures(request: Request) -> Response:
    return _json(200, {"procedures": await run_in_threadpool(_station(request).procedures)})


@_guarded
async def get_worklist(request: Request) -> Response:
    """The worklist as `worklist --json` has it; `?refresh=1` asks the RIS now."""
    refresh = request.query_params.getlist("refresh") == ["1"]
    view = await run_in_threadpool(lambda: _station(request).worklist(refresh=refresh))
    if view is None:
        return _error(HTTPStatus.NOT_FOUND, "no [worklist] configured")
    return _json(200, view)


@_guarded
async def get_objects(request: Request) -> Response:
    raw = request.query_params.getlist("queue_id")
    if len(raw) > MAX_RECENT or not all(v.isdigit() and len(v) <= 18 for v in raw):
        raise BadRequest(f"queue_id: expected up to {MAX_RECENT} integers")
    objects = await run_in_threadpool(_station(request).objects, [int(v) for v in raw])
    return _json(200, {"objects": [o.as_json() for o in objects]})


@_guarded
async def post_end(request: Request) -> Response:
    procedure_id = request.path_params["procedure_id"]
    if not _ID.fullmatch(procedure_id):
        raise NotFound(f"no procedure {procedure_id[:40]!r}")
    end, reason = _parse_end(await _body(request))
    if end is None:
        raise BadRequest("end: expected \"completed\" or \"discontinued\"")
    procedure = await run_in_threadpool(_station(request).end_procedure,
                                        EndRequest(procedure_id, end, reason))
    return _json(200, {"procedure": procedure})


@_guarded
async def post_import(request: Request) -> Response:
    parsed = parse_import_request(await _body(request))
    files = await run_in_threadpool(_station(request).import_files, parsed)
    return _json(200, {"files": [f.as_json() for f in files]})


@_guarded
async def post_acquire(request: Request) -> Response:
    parsed = parse_acquire_request(await _body(request))
    result = await run_in_threadpool(_station(request).acquire, parsed)
    return _json(200, result.as_json())


REJECT_REASONS = ("quality", "patient-safety", "incorrect-modality-worklist")


def parse_reject_request(body: Any) -> RejectRequest:
    """`{"sop_instance_uids": [...], "reason": "quality|patient-safety|incorrect-modality-
    worklist"}`.

    Raises
    ------
    BadRequest
        Naming the field and what was expected.
    """
    uids = body.get("sop_instance_uids") if isinstance(body, dict) else None
    if not isinstance(uids, list) or not 1 <= len(uids) <= MAX_RECENT or not all(
            isinstance(u, str) and len(u) <= 64 and _UID.fullmatch(u) for u in uids):
        raise BadRequest(f"sop_instance_uids: expected 1..{MAX_RECENT} SOP Instance UIDs")
    reason = body.get("reason")
    if reason not in REJECT_REASONS:
        raise BadRequest(f"reason: expected one of {', '.join(REJECT_REASONS)}")
    return RejectRequest(tuple(uids), reason)


@_guarded
async def post_reject(request: Request) -> Response:
    parsed = parse_reject_request(await _body(request))
    return _json(200, await run_in_threadpool(_station(request).reject, parsed))


@_guarded
async def post_selftest_object(request: Request) -> Response:
    """`selftest --store-test-object`: queue the marked test object; its queue id comes back
    and `GET /api/objects` follows it to committed."""
    await _body(request)
    view = await run_in_threadpool(_station(request).store_test_object)
    return _json(200, {"object": view.as_json()})


# -- what the console adds ---------------------------------------------------------------------
@_guarded
async def post_console_worklist(request: Request) -> Response:
    """The worklist for the console: each item with its `duplicate_reason` ("" when none),
    and a `summary`. POST with `{"refresh": true}` asks the RIS now."""
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("refresh", False), bool):
        raise BadRequest("refresh: expected true or false")
    refresh: bool = body.get("refresh", False)
    view = await run_in_threadpool(
        lambda: _station(request).worklist(refresh=refresh, for_console=True))
    if view is None:
        return _error(HTTPStatus.NOT_FOUND, "no [worklist] configured")
    return _json(200, view)


@_guarded
async def post_procedures(request: Request) -> Response:
    """Start (or find) the procedure in progress for a worklist entry or an unscheduled
    patient: `{"accession"}`, `{"sps_id"}` or `{"unscheduled": true, "patient_id",
    "patient_name"}`, and `"performed_as_scheduled": true` when the technologist confirms the
    scheduled protocol. The answer's `procedure.anatomy` says what the console must still ask
    (body part, side)."""
    body = await _body(request)
    choice = parse_order_choice(body)
    performed = _flag(body, "performed_as_scheduled")
    result = await run_in_threadpool(_station(request).start_procedure, choice, performed)
    return _json(200, result.as_json())


@_guarded
async def get_procedure(request: Request) -> Response:
    procedure_id = request.path_params["procedure_id"]
    if not _ID.fullmatch(procedure_id):
        raise NotFound(f"no procedure {procedure_id[:40]!r}")
    procedure = await run_in_threadpool(_station(request).procedure, procedure_id)
    return _json(200, {"procedure": procedure})


@_guarded
async def get_metrics(request: Request) -> Response:
    """Prometheus text format; under /api/ so the token and Host checks apply (Prometheus
    scrapes with `authorization: credentials_file`, see docs/monitoring.md)."""
    body = await run_in_threadpool(_station(request).metrics)
    return Response(body, media_type=METRICS_CONTENT_TYPE)


async def get_reasons(request: Request) -> Response:
    """The discontinuation reasons (DICOM CID 9300) the console offers."""
    return _json(200, {"reasons": [
        {"code": c.value, "scheme": c.scheme, "meaning": c.meaning}
        for c in DISCONTINUATION_REASONS.values()]})


async def get_body_parts(request: Request) -> Response:
    """The body parts the console offers (Body Part Examined terms, PS3.16 Annex L), and
    whether each is paired (a DX of a paired one needs R, L or B)."""
    return _json(200, {"body_parts": [
        {"body_part": r.body_part, "meaning": r.code.meaning, "paired": r.paired}
        for r in REGIONS]})


@_guarded
async def get_queue(request: Request) -> Response:
    """The newest objects, for the live queue view: `?limit=N` (1..MAX_RECENT, default 50)."""
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or len(raw) > 4 or not 1 <= int(raw) <= MAX_RECENT:
        return _error(HTTPStatus.BAD_REQUEST, f"limit: expected an integer 1..{MAX_RECENT}")
    objects = await run_in_threadpool(_station(request).recent_objects, int(raw))
    return _json(200, {"objects": [o.as_json() for o in objects]})


@_guarded
async def post_retry(request: Request) -> Response:
    """Failed rows of these objects back to pending: `{"queue_ids": [1, 2]}`."""
    body = await _body(request)
    ids = body.get("queue_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or len(ids) > MAX_RECENT or not all(
            isinstance(q, int) and not isinstance(q, bool) and 0 < q < 2**63 for q in ids):
        raise BadRequest(f"queue_ids: expected a list of 1..{MAX_RECENT} integers")
    count = await run_in_threadpool(_station(request).retry, ids)
    return _json(200, {"retried": count})


@_guarded
async def get_last_frame(request: Request) -> Response:
    """The last frame read from the device as a PNG thumbnail (`?max=N` pixels on the longest
    side, 16..1024, default 256); 404 before the first frame."""
    raw = request.query_params.get("max", str(DEFAULT_MAX_SIDE))
    if not raw.isdigit() or len(raw) > 4 or not 16 <= int(raw) <= 1024:
        return _error(HTTPStatus.BAD_REQUEST, "max: expected an integer 16..1024")
    frame = _station(request).last_frame()
    if frame is None:
        return _error(HTTPStatus.NOT_FOUND, "no frame acquired yet")
    png = await run_in_threadpool(thumbnail_png, frame.pixels, frame.bits_stored, int(raw))
    return Response(png, media_type="image/png")


def _static(path: str) -> Handler:
    name, media_type = STATIC_FILES[path]

    async def serve(request: Request) -> Response:
        content = (CONSOLE_DIR / name).read_bytes()
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})
    return serve


async def _not_found(request: Request, exc: Exception) -> Response:
    # unknown path, or a known path with the wrong method: 404 as the stdlib server did
    return _error(HTTPStatus.NOT_FOUND, f"no such endpoint {request.url.path[:200]}")


def create_app(station: StationService, policy: SecurityPolicy,
               on_refused: Callable[[str, str], None] | None = None) -> ASGIApp:
    """The API and the console for `station`, behind the security middleware."""
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
        Route("/api/selftest/test-object", post_selftest_object, methods=["POST"]),
        Route("/api/reject", post_reject, methods=["POST"]),
        Route("/api/console/worklist", post_console_worklist, methods=["POST"]),
        Route("/api/reasons", get_reasons, methods=["GET"]),
        Route("/api/body-parts", get_body_parts, methods=["GET"]),
        Route("/api/metrics", get_metrics, methods=["GET"]),
        Route("/api/queue", get_queue, methods=["GET"]),
        Route("/api/retry", post_retry, methods=["POST"]),
        Route("/api/last-frame.png", get_last_frame, methods=["GET"]),
        *(Route(path, _static(path), methods=["GET"]) for path in STATIC_FILES),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found})
    app.state.station = station
    return SecurityMiddleware(app, policy, on_refused=on_refused)
