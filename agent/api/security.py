"""The HTTP security layer in front of the API and the console (issue 13): the bearer token and
its file, and an ASGI middleware that refuses DNS rebinding (Host), cross-site requests (Origin,
Sec-Fetch-Site), unauthenticated /api/ calls and non-JSON writes, and adds the security headers.

Threats: a hostile web page in the technologist's browser (CSRF, DNS rebinding), a local stranger
without the token, a careless service engineer opening the API on the network.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import ApiTokenError

logger = logging.getLogger(__name__)

COOKIE_NAME = "modality_agent_session"
SESSION_PATH = "/api/session"
CONSOLE_PATH = "/"
#: the body of POST /api/session is {"token": "..."}: nothing larger is read
MAX_SESSION_BODY_BYTES = 4096
_TOKEN_BYTES = 32
_TOKEN_FILE_MAX_BYTES = 4096
# secrets.token_urlsafe(32) gives 43 characters; shorter ones were not written by us
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,512}")
_SHARED_BITS = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FETCH_SITES_OK = frozenset({b"same-origin", b"none"})

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_SECURITY_HEADER_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)
# API answers hold patient data: keep them out of the browser's disk cache
_NO_STORE = (b"cache-control", b"no-store")


# -- the token file ------------------------------------------------------------------------------
def load_or_create_token(path: Path) -> str:
    """The daemon's API token: created at first start (0600, atomically), else read and checked.

    The file appears complete or not at all: the token is written and fsynced under a temporary
    name, then hard-linked to `path` (link never replaces an existing file). The parent folder is
    created 0700 when missing.

    Raises
    ------
    ApiTokenError
        The file is a symlink, not a regular file, not owned by this user, readable or writable
        by group or others, empty or garbled; or it cannot be created.
    """
    try:
        _ensure_parent(path.parent)
        if not os.path.lexists(path):
            _create_token_file(path, secrets.token_urlsafe(_TOKEN_BYTES))
        return _read_token_file(path, check_owner=True)
    except ApiTokenError:
        raise
    except OSError as err:
        raise ApiTokenError(f"{path}: cannot create the API token file: {err.strerror}") \
            from err


def read_token(path: Path) -> str:
    """The API token for the CLI, read from the daemon's token file.

    Raises
    ------
    ApiTokenError
        The file is missing, unreadable (wrong user), unsafe or garbled; the message names it.
    """
    try:
        return _read_token_file(path, check_owner=False)
    except FileNotFoundError as err:
        raise ApiTokenError(f"{path}: no API token file: the agent creates it when it starts; "
                            "is it running with this configuration?") from err
    except PermissionError as err:
        if isinstance(err, ApiTokenError):
            raise
        raise ApiTokenError(f"{path}: cannot read the API token: run the CLI as the agent's "
                            "user or root") from err
    except ApiTokenError:
        raise
    except OSError as err:
        raise ApiTokenError(f"{path}: cannot read the API token: {err.strerror}") from err


def _ensure_parent(folder: Path) -> None:
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass  # created meanwhile by another start: checked when the file is opened
    if not folder.is_dir():
        raise ApiTokenError(f"{folder}: expected a folder for the API token file")


def _create_token_file(path: Path, token: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may only remove bits; say exactly what we mean
            os.write(fd, f"{token}\n".encode("ascii"))
            os.fsync(fd)  # without it, a power cut may leave an empty token file
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never replaces: a concurrent first start wins
        except FileExistsError:
            pass  # the other start's token stands; read and checked by the caller
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the link is durable only from here
    finally:
        os.close(dir_fd)


def _read_token_file(path: Path, *, check_owner: bool) -> str:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise ApiTokenError(f"{path}: is a symlink; expected the API token file itself "
                                "(remove the link; the agent creates a new token)") from err
        raise
    try:
        info = os.fstat(fd)
        _check_token_file(path, info, check_owner=check_owner)
        data = os.read(fd, _TOKEN_FILE_MAX_BYTES + 1)
    finally:
        os.close(fd)
    return _parse_token(path, data)


def _check_token_file(path: Path, info: os.stat_result, *, check_owner: bool) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ApiTokenError(f"{path}: expected a regular file for the API token")
    if check_owner and info.st_uid != os.geteuid():
        raise ApiTokenError(f"{path}: owned by uid {info.st_uid}, expected the agent's user "
                            f"(uid {os.geteuid()}); remove it and the agent creates a new token")
    if info.st_mode & _SHARED_BITS:
        raise ApiTokenError(f"{path}: readable or writable by group or others (mode "
                            f"{stat.S_IMODE(info.st_mode):04o}); expected 0600: run "
                            f"'chmod 600 {path}' or remove it for a new token")


def _parse_token(path: Path, data: bytes) -> str:
    if not data.strip():
        raise ApiTokenError(f"{path}: the API token file is empty; remove it and the agent "
                            "creates a new token")
    text = data.decode("ascii", errors="replace").strip()
    if len(data) > _TOKEN_FILE_MAX_BYTES or not _TOKEN.fullmatch(text):
        raise ApiTokenError(f"{path}: expected one line of at least 32 URL-safe characters "
                            "(the API token); remove it and the agent creates a new token")
    return text


# -- the policy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecurityPolicy:
    """What the middleware enforces: the token, where the API listens, and the extra host names
    (e.g. the device's DNS name) a browser may use to reach it."""

    token: str
    api_host: str
    api_port: int
    allowed_hosts: frozenset[str] = frozenset()
    cookie_name: str = COOKIE_NAME

    @property
    def loopback(self) -> bool:
        """True when only this computer can connect (127.0.0.0/8, ::1 or localhost)."""
        host = self.api_host.strip("[]")
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def accepted_hosts(self) -> frozenset[str]:
        """Host names (lower case, IPv6 in brackets) a request's Host header may carry."""
        names = {"localhost", "127.0.0.1", "[::1]", self.api_host, *self.allowed_hosts}
        return frozenset(_host_form(n) for n in names if _host_form(n))

    def accepted_origins(self) -> frozenset[bytes]:
        """`Origin` values of the console's own pages: http://<accepted host>:<port>."""
        origins = {f"http://{h}:{self.api_port}" for h in self.accepted_hosts()}
        if self.api_port == 80:
            origins |= {f"http://{h}" for h in self.accepted_hosts()}
        return frozenset(o.encode() for o in origins)


def _host_form(name: str) -> str:
    """`name` as it appears in a Host header; "" for the unspecified address (0.0.0.0, ::),
    which is no name a client should use (browsers map 0.0.0.0 to this computer)."""
    name = name.strip().lower()
    bare = name.strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return name
    if address.is_unspecified:
        return ""
    return f"[{bare}]" if address.version == 6 else bare


# -- the middleware ------------------------------------------------------------------------------
class _Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # short and fixed: for the log and on_refused


class SecurityMiddleware:
    """Pure ASGI middleware in front of the API and the console (issue 13).

    For each HTTP request, in this order: the Host header (421), OPTIONS (403), Origin and
    Sec-Fetch-Site (403), the token for /api/ paths (401), JSON for writes (415). POST
    /api/session with {"token": ...} sets the session cookie; on loopback, GET / sets it too.
    Every response gets the security headers and loses any Access-Control-* header. Each refusal
    calls `on_refused(reason, client_address)` and logs one WARNING line.
    """

    def __init__(self, app: ASGIApp, policy: SecurityPolicy,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self.app = app
        self.policy = policy
        self.on_refused = on_refused
        self._hosts = policy.accepted_hosts()
        self._origins = policy.accepted_origins()
        self._port = str(policy.api_port)
        self._token = policy.token.encode("ascii")
        self._cookie = (f"{policy.cookie_name}={policy.token}; HttpOnly; SameSite=Strict; "
                        "Path=/").encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # the API has none
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _Headers(scope["headers"])
        try:
            self._check(scope, headers)
            if scope["path"] == SESSION_PATH:
                await self._session(scope, headers, receive, send)
                return
        except _Refused as refusal:
            self._log_refusal(scope, headers, refusal)
            await _send_json(send, refusal.status, {"error": refusal.message}, scope["path"])
            return
        await self.app(scope, receive, self._wrap_send(scope, send))

    # -- the checks -----------------------------------------------------------------------------
    def _check(self, scope: Scope, headers: _Headers) -> None:
        self._check_host(headers)
        method = scope["method"]
        if method == "OPTIONS":
            # no CORS here: a preflight means a cross-origin caller
            raise _Refused(HTTPStatus.FORBIDDEN, "cross-origin requests are not allowed",
                           "preflight")
        self._check_origin(headers)
        if _is_api(scope["path"]) and scope["path"] != SESSION_PATH \
                and not self._authenticated(headers):
            raise _Refused(HTTPStatus.UNAUTHORIZED, "authentication required: send "
                           "'Authorization: Bearer <token>' (the token file) or open the "
                           "console and sign in", "no valid token")
        if method in _STATE_CHANGING and not _is_json(headers.one(b"content-type")):
            raise _Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           "expected Content-Type: application/json", "not JSON")

    def _check_host(self, headers: _Headers) -> None:
        # DNS rebinding: a hostile page's name resolved to this computer still says its own
        # name in Host
        values = headers.all(b"host")
        parsed = _split_host(values[0]) if len(values) == 1 else None
        if parsed is None or parsed[0] not in self._hosts or parsed[1] not in ("", self._port):
            raise _Refused(HTTPStatus.MISDIRECTED_REQUEST,
                           "this server answers only to its own host names (Host header)",
                           "bad Host")

    def _check_origin(self, headers: _Headers) -> None:
        origins = headers.all(b"origin")
        if origins and (len(origins) != 1 or origins[0].lower() not in self._origins):
            raise _Refused(HTTPStatus.FORBIDDEN, "cross-origin requests are not allowed",
                           "foreign Origin")
        site = headers.all(b"sec-fetch-site")
        if site and (len(site) != 1 or site[0].lower() not in _FETCH_SITES_OK):
            raise _Refused(HTTPStatus.FORBIDDEN, "cross-site requests are not allowed",
                           "cross-site fetch")

    def _authenticated(self, headers: _Headers) -> bool:
        for value in headers.all(b"authorization"):
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and self._matches(credentials.strip()):
                return True
        name = self.policy.cookie_name.encode("ascii")
        for cookie_header in headers.all(b"cookie"):
            for pair in cookie_header.split(b";"):
                key, sep, value = pair.strip().partition(b"=")
                if sep and key == name and self._matches(value.strip()):
                    return True
        return False

    def _matches(self, candidate: bytes) -> bool:
        return hmac.compare_digest(candidate, self._token)

    # -- the session endpoint -------------------------------------------------------------------
    async def _session(self, scope: Scope, headers: _Headers, receive: Receive,
                       send: Send) -> None:
        """POST /api/session {"token": "..."}: the session cookie for a console that is not on
        loopback (where GET / does not hand it out)."""
        if scope["method"] != "POST":
            raise _Refused(HTTPStatus.METHOD_NOT_ALLOWED, "expected POST", "bad method")
        body = await _read_body(receive, MAX_SESSION_BODY_BYTES)
        try:
            payload = json.loads(body) if body is not None else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        token = payload.get("token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token.isascii() \
                or not self._matches(token.encode("ascii")):
            raise _Refused(HTTPStatus.UNAUTHORIZED, "wrong token", "wrong session token")
        await send({"type": "http.response.start", "status": HTTPStatus.NO_CONTENT,
                     "headers": [*_security_headers(scope["path"]),
                                 (b"set-cookie", self._cookie)]})
        await send({"type": "http.response.body", "body": b""})

    # -- responses ------------------------------------------------------------------------------
    def _wrap_send(self, scope: Scope, send: Send) -> Send:
        path: str = scope["path"]
        hand_out_cookie = (self.policy.loopback and scope["method"] == "GET"
                           and path == CONSOLE_PATH)

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", [])
                        if not _is_removed_header(k.lower())]
                kept += _security_headers(path)
                if hand_out_cookie and message["status"] < 400:
                    # loopback only: the page is reachable from this computer alone
                    kept += [(b"set-cookie", self._cookie), _NO_STORE]
                message = {**message, "headers": kept}
            await send(message)
        return secured_send

    def _log_refusal(self, scope: Scope, headers: _Headers, refusal: _Refused) -> None:
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "unknown"
        host = b", ".join(headers.all(b"host")).decode("latin-1")
        # method, path without the query, reason, client, Host: never the body or other headers
        logger.warning("API refused %s %s: %s (client %s, Host %s)",
                       _printable(scope["method"]), _printable(scope["path"]), refusal.reason,
                       address, _printable(host))
        if self.on_refused is not None:
            self.on_refused(refusal.reason, address)


class _Headers:
    """A request's raw ASGI headers (names already lower case)."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._raw = list(raw)

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self._raw if k == name]

    def one(self, name: bytes) -> bytes | None:
        values = self.all(name)
        return values[0] if len(values) == 1 else None


def _split_host(value: bytes) -> tuple[str, str] | None:
    """(host, port) of a Host header, lower case, port "" when absent; None when malformed."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):  # an IPv6 literal keeps its brackets: "[::1]:8080"
        end = text.find("]")
        host, rest = text[:end + 1], text[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else ""
        return (host, port) if rest != ":" else None
    host, sep, port = text.partition(":")
    if sep and not port:
        return None
    return host, port


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media_type, _, params = content_type.partition(b";")
    if media_type.strip().lower() != b"application/json":
        return False
    # only a charset parameter (browsers and urllib send none or "charset=utf-8")
    return all(p.strip().lower().startswith(b"charset=") for p in params.split(b";")
               if p.strip())


def _is_removed_header(name: bytes) -> bool:
    return name.startswith(b"access-control-") or name in _SECURITY_HEADER_NAMES


def _security_headers(path: str) -> list[tuple[bytes, bytes]]:
    headers = list(SECURITY_HEADERS)
    if _is_api(path):
        headers.append(_NO_STORE)
    return headers


async def _send_json(send: Send, status: HTTPStatus, payload: object, path: str) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": int(status),
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *_security_headers(path)]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it exceeds `limit` bytes (the rest is not read)."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # disconnected
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body


def _printable(text: str, limit: int = 200) -> str:
    """`text` safe for one log line: control and non-ASCII characters escaped, truncated."""
    escaped = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return escaped + ("..." if len(text) > limit else "")
