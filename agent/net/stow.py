"""DICOMweb to a `kind = "stow-rs"` destination: STOW-RS (PS3.18 10.5) of spooled Part 10
files, QIDO-RS lookups (PS3.18 10.6) to confirm them, and a probe for `echo`/`selftest`.

The files go as they are, byte for byte, as the parts of one multipart/related request
(`type="application/dicom"`), streamed from the spool: a 64 MB request never sits in memory.
The answer (DICOM JSON, PS3.18 F.2) is mapped per instance onto the C-STORE verdicts of
`agent.net.status` by `classify_stow_response`, the one place where HTTP statuses and Failure
Reasons are named. No retries here: the caller (agent.stow_forwarder) keeps the queue.

Secrets: a bearer token (`token_file`) or basic credentials (`credentials_file`,
"user:password") are read at each request, so a fixed file takes effect without a restart;
the file must be a regular file only its owner may read, and its content is never logged.
HTTPS is verified against `[tls] ca_file` when the config has `[tls]` (our certificate is
presented too), else against the system's store; never unverified.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import ssl
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydicom import Dataset

from agent import __version__
from agent.config import AgentConfig, DestinationSection
from agent.errors import AgentError, DicomWebCredentialsError, DicomWebError
from agent.net.status import (
    PROCESSING_FAILURE,
    StoreResult,
    StoreVerdict,
    classify_store_status,
)
from agent.net.tls import PeerTls, client_context, tls_identity

if TYPE_CHECKING:
    # imported where a client is made or its errors are caught: the daemon imports this
    # module for its config checks, and httpx (~3.4 MB, 50 modules) is for DICOMweb
    # destinations only (issue 18 item 4a)
    import httpx

logger = logging.getLogger(__name__)

MEDIA_DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: read from the spool and handed to the socket this much at a time
CHUNK_BYTES = 1 << 20
#: an answer larger than this is not read (a STOW answer lists UIDs: a few hundred bytes
#: per instance)
MAX_RESPONSE_BYTES = 16 << 20
#: UIDs looked up per QIDO-RS request (UID list matching): ~65 bytes each keeps the URL
#: within the 4 KB many servers accept
LIST_LOOKUP = 50
_SECRET_MAX_BYTES = 4096
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO

# DICOM JSON keywords of the STOW-RS response (PS3.18 Table 10.5.3-1)
_REFERENCED = "ReferencedSOPSequence"          # (0008,1199)
_FAILED = "FailedSOPSequence"                  # (0008,1198)


# -- secrets -------------------------------------------------------------------------------------

def read_secret_file(path: Path, what: str) -> str:
    """The one line of a token or credentials file, checked like the API token file: a
    regular file (no symlink), owned by this user, not readable or writable by group or
    others, not empty.

    Raises
    ------
    DicomWebCredentialsError
        Naming the file and the fix; never its content.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DicomWebCredentialsError(
                f"{what} {path}: is a symlink; expected the file itself") from err
        raise DicomWebCredentialsError(
            f"{what} {path}: cannot be read ({err.strerror})") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DicomWebCredentialsError(f"{what} {path}: expected a regular file")
        if info.st_uid != os.geteuid():
            raise DicomWebCredentialsError(
                f"{what} {path}: owned by uid {info.st_uid}, expected the agent's user "
                f"(uid {os.geteuid()})")
        if info.st_mode & _SHARED_BITS:
            raise DicomWebCredentialsError(
                f"{what} {path}: readable or writable by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); expected 0600: run 'chmod 600 {path}'")
        data = os.read(fd, _SECRET_MAX_BYTES + 1)
    finally:
        os.close(fd)
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    if len(data) > _SECRET_MAX_BYTES or len(lines) != 1 or not lines[0].strip():
        raise DicomWebCredentialsError(f"{what} {path}: expected one non-empty line")
    return lines[0].strip()


def authorization(destination: DestinationSection) -> str | None:
    """The Authorization header value for this destination, read from its file now; None
    without token_file and credentials_file.

    Raises
    ------
    DicomWebCredentialsError
        The file is missing, unsafe or garbled.
    """
    if destination.token_file is not None:
        token = read_secret_file(destination.token_file, "token_file")
        if not token.isascii() or not token.isprintable() or " " in token:
            raise DicomWebCredentialsError(
                f"token_file {destination.token_file}: expected one line of printable ASCII "
                "without spaces (the bearer token)")
        return f"Bearer {token}"
    if destination.credentials_file is not None:
        line = read_secret_file(destination.credentials_file, "credentials_file")
        user, colon, password = line.partition(":")
        if not colon or not user:
            raise DicomWebCredentialsError(
                f"credentials_file {destination.credentials_file}: expected one line "
                "\"user:password\"")
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return None


def credential_hint(destination: DestinationSection) -> str:
    """What to check after a 401/403, naming the file (not its content)."""
    if destination.token_file is not None:
        return f"check token_file {destination.token_file}"
    if destination.credentials_file is not None:
        return f"check credentials_file {destination.credentials_file}"
    return "the archive wants credentials: set token_file or credentials_file"


def check_secret_files(config: AgentConfig) -> list[str]:
    """check-config: every stow-rs destination's token/credentials file readable and safe."""
    problems = []
    for d in config.destinations:
        if d.kind != "stow-rs":
            continue
        try:
            authorization(d)
        except DicomWebCredentialsError as err:
            key = "token_file" if d.token_file is not None else "credentials_file"
            problems.append(f"{config.path.name}: [[destinations]] {d.name} {key}: {err}")
    return problems


def ssl_context(config: AgentConfig) -> ssl.SSLContext:
    """How HTTPS to a DICOMweb archive is verified: against `[tls] ca_file` (our certificate
    presented, BCP 195 profile of [tls]) when the config has `[tls]`, else the system's CA
    store. The host name is always checked.

    Raises
    ------
    TlsConfigError
        If the [tls] files cannot be loaded.
    """
    identity = tls_identity(config)
    if identity is None:
        return ssl.create_default_context()
    return client_context(PeerTls(identity, verify_hostname=True))


# -- the request body ----------------------------------------------------------------------------

def part_header(boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {MEDIA_DICOM}\r\n\r\n".encode("ascii")


def closing_delimiter(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def content_type(boundary: str) -> str:
    return f'multipart/related; type="{MEDIA_DICOM}"; boundary={boundary}'


def body_length(sizes: Sequence[int], boundary: str) -> int:
    """The exact length of `multipart_body` over files of these sizes (Content-Length: the
    request is not chunked, which some servers refuse)."""
    return (sum(len(part_header(boundary)) + size + 2 for size in sizes)
            + len(closing_delimiter(boundary)))


def multipart_body(files: Sequence[IO[bytes]], boundary: str, *,
                   chunk_bytes: int = CHUNK_BYTES,
                   on_chunk: Callable[[], None] = lambda: None) -> Iterator[bytes]:
    """The multipart/related body (RFC 2387, PS3.18 8.6.1.2) of these open files, each part
    the file's bytes unchanged, read `chunk_bytes` at a time. `on_chunk` runs after each
    chunk is taken (progress for the watchdog)."""
    for handle in files:
        yield part_header(boundary)
        while chunk := handle.read(chunk_bytes):
            yield chunk
            on_chunk()
        yield b"\r\n"
    yield closing_delimiter(boundary)


def new_boundary() -> str:
    # 128 random bits: the odds that a file holds the delimiter line are nil, so the files
    # are not scanned for it
    return f"stow-{uuid.uuid4().hex}"


# -- the answer ----------------------------------------------------------------------------------

class RequestProblem(StrEnum):
    """What went wrong with the request as a whole (beside per-instance results)."""

    NONE = "none"
    AUTH = "auth"                # 401/403: credentials; every instance kept pending
    CONFIG = "config"            # 3xx/404/405/406/415/501: the url or archive setup; kept
    BUSY = "busy"                # 408/429/503 with nothing stored: try later
    REFUSED = "refused"          # 400/409/413/... without a per-instance answer for some
    UNREACHABLE = "unreachable"  # no connection: nothing was sent
    UNKNOWN = "unknown"          # 5xx, timeout, reset mid-request: outcome unknown


@dataclass(frozen=True)
class StowOutcome:
    """One request's answer: a result for every SOP Instance UID sent (no patient data)."""

    http_status: int | None
    summary: str
    problem: RequestProblem
    instances: Mapping[str, StoreResult] = field(default_factory=dict)
    tls_failure: bool = False    # the TLS handshake failed (a Security Alert)


_AUTH = frozenset({401, 403})
_CONFIG = frozenset({404, 405, 406, 414, 415, 501, 505})
_BUSY = frozenset({408, 429, 503})


def status_label(code: int, reason: str = "") -> str:
    if not reason:
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = ""
    return f"HTTP {code} {reason}".rstrip()


def _sequences(body: Dataset | None) -> tuple[dict[str, str], dict[str, int]] | None:
    """(referenced UID -> warning text, failed UID -> Failure Reason), or None when the body
    has neither sequence (no per-instance answer)."""
    if body is None or (_REFERENCED not in body and _FAILED not in body):
        return None
    referenced: dict[str, str] = {}
    for item in body.get(_REFERENCED) or []:
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
        warning = item.get("WarningReason")
        referenced[uid] = "" if warning is None else f"warning 0x{int(warning):04X}"
    failed: dict[str, int] = {}
    for item in body.get(_FAILED) or []:
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
        reason = item.get("FailureReason")
        # absent: processing failure
        failed[uid] = PROCESSING_FAILURE if reason is None else int(reason)
    return referenced, failed


def failure_reason(reason: int) -> StoreResult:
    """A Failed SOP Sequence item's Failure Reason (0008,1197), which takes C-STORE status
    values (PS3.18 10.5.3.2, PS3.4 B.2.3): 0xA7xx out of resources → retry; 0xA9xx, 0xCxxx,
    0x0110... → failed with the reason; B000/B006/B007 are warnings (stored)."""
    status = Dataset()
    status.Status = reason
    result = classify_store_status(status)
    return StoreResult(result.verdict, result.status, f"Failure Reason {result.text}")


def classify_stow_response(http_status: int, body: Dataset | None, sent: Sequence[str],
                           reason_phrase: str = "") -> StowOutcome:
    """Map a STOW-RS answer to a verdict per instance sent.

    - Referenced SOP Sequence: stored (Warning Reason kept as a note).
    - Failed SOP Sequence: by its Failure Reason (`failure_reason`).
    - Neither, with a 2xx: outcome unknown (resend, same bytes); with a 4xx: refused
      (`REFUSED`: the caller sends it alone to learn whether it is refused by itself);
      with a 5xx: unknown.
    - No per-instance answer: 200 all stored; other 2xx and 5xx unknown; 401/403 auth and
      3xx/404/405/406/415/501 config (kept pending, never failed); 408/429/503 busy (retry);
      400/409/413 and other 4xx refused.
    """
    label = status_label(http_status, reason_phrase)
    answer = _sequences(body)
    instances: dict[str, StoreResult] = {}
    if http_status in _AUTH:
        return StowOutcome(http_status, label, RequestProblem.AUTH,
                           {u: StoreResult(StoreVerdict.RETRY, None, label) for u in sent})
    if answer is None:
        if http_status == 200:
            verdict, problem = StoreVerdict.STORED, RequestProblem.NONE
        elif http_status in _BUSY:
            verdict, problem = StoreVerdict.RETRY, RequestProblem.BUSY
        elif http_status in _CONFIG or 300 <= http_status < 400:
            verdict, problem = StoreVerdict.RETRY, RequestProblem.CONFIG
        elif 200 <= http_status < 300 or http_status >= 500:
            verdict, problem = StoreVerdict.UNKNOWN, RequestProblem.UNKNOWN
        else:
            verdict, problem = StoreVerdict.FAILED, RequestProblem.REFUSED
        return StowOutcome(http_status, label, problem,
                           {u: StoreResult(verdict, None, label) for u in sent})
    referenced, failed = answer
    problem = RequestProblem.NONE
    for uid in sent:
        if uid in referenced:
            note = referenced[uid]
            instances[uid] = StoreResult(StoreVerdict.STORED, 0,
                                         f"{label}, {note}" if note else label)
        elif uid in failed:
            result = failure_reason(failed[uid])
            instances[uid] = StoreResult(result.verdict, result.status,
                                         f"{label}: {result.text}")
        elif 400 <= http_status < 500:
            instances[uid] = StoreResult(StoreVerdict.FAILED, None,
                                         f"{label}: the archive refused the request and did "
                                         "not list this instance")
            problem = RequestProblem.REFUSED
        else:
            instances[uid] = StoreResult(StoreVerdict.UNKNOWN, None,
                                         f"{label}: this instance is not in the answer "
                                         "(outcome unknown)")
            problem = RequestProblem.UNKNOWN
    return StowOutcome(http_status, label, problem, instances)


def parse_body(data: bytes, media_type: str) -> Dataset | None:
    """A DICOM JSON answer as a Dataset; None if it is none (empty, XML, garbled)."""
    if not data.strip() or "json" not in media_type:
        return None
    try:
        parsed: Any = json.loads(data)
        if isinstance(parsed, list):
            parsed = parsed[0] if parsed else None
        if not isinstance(parsed, dict):
            return None
        return Dataset.from_json(parsed)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return None


# -- the client ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StowPart:
    """One spooled object to send."""

    sop_instance_uid: str
    path: Path


@dataclass(frozen=True)
class Unreadable:
    sop_instance_uid: str
    reason: str


class DicomWebClient:
    """STOW-RS and QIDO-RS to one destination over one httpx client (connections kept alive).
    Not thread-safe: one per worker thread."""

    def __init__(self, destination: DestinationSection, *, tls: ssl.SSLContext | None = None,
                 transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import httpx

        self.destination = destination
        self._clock = clock
        self.url = destination.url.rstrip("/")
        timeout = destination.request_timeout_s
        self._client = httpx.Client(
            verify=tls if tls is not None else True,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            # a redirect is a configuration problem (the url), said so, never followed with
            # the credentials; proxies and .netrc from the environment are not used
            follow_redirects=False, trust_env=False, transport=transport,
            headers={"User-Agent": f"modality-agent/{__version__}"})

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        auth = authorization(self.destination)
        if auth is not None:
            headers["Authorization"] = auth
        return headers

    # -- STOW-RS -----------------------------------------------------------------------------
    def store(self, parts: Sequence[StowPart], *,
              on_progress: Callable[[], None] = lambda: None
              ) -> tuple[StowOutcome, list[Unreadable]]:
        """POST the parts to <url>/studies as one request; the outcome of each readable part,
        and the parts whose spool file could not be opened (not sent).

        Raises
        ------
        DicomWebCredentialsError
            The token or credentials file is unusable (nothing was sent).
        """
        headers = self._headers(DICOM_JSON)
        unreadable: list[Unreadable] = []
        with ExitStack() as files:
            handles: list[IO[bytes]] = []
            sizes: list[int] = []
            sent: list[str] = []
            for part in parts:
                try:
                    handle = files.enter_context(open(part.path, "rb"))
                    sizes.append(os.fstat(handle.fileno()).st_size)
                except OSError as err:
                    unreadable.append(Unreadable(part.sop_instance_uid,
                                                 f"spool file unreadable: {err.strerror}"))
                    continue
                handles.append(handle)
                sent.append(part.sop_instance_uid)
            if not sent:
                return StowOutcome(None, "nothing to send", RequestProblem.NONE), unreadable
            boundary = new_boundary()
            headers["Content-Type"] = content_type(boundary)
            headers["Content-Length"] = str(body_length(sizes, boundary))
            deadline = self._clock() + self.destination.request_timeout_s

            def on_chunk() -> None:
                on_progress()
                # httpx's timeouts are per read or write: a body that trickles out must
                # still end within request_timeout_s of the start (then: outcome unknown)
                if self._clock() > deadline:
                    raise _UploadTooSlow(
                        f"the request took longer than request_timeout_s = "
                        f"{self.destination.request_timeout_s:g} s")

            outcome = self._post(sent, multipart_body(handles, boundary, on_chunk=on_chunk),
                                 headers)
        return outcome, unreadable

    def _post(self, sent: Sequence[str], body: Iterator[bytes],
              headers: dict[str, str]) -> StowOutcome:
        import httpx

        try:
            with self._client.stream("POST", f"{self.url}/studies", content=body,
                                     headers=headers) as response:
                data = _read_capped(response)
                media = response.headers.get("content-type", "")
                if 300 <= response.status_code < 400:
                    where = response.headers.get("location", "")
                    outcome = classify_stow_response(response.status_code, None, sent,
                                                     response.reason_phrase)
                    return StowOutcome(outcome.http_status,
                                       f"{outcome.summary}: redirected to {where}; set url to "
                                       "the archive's DICOMweb root", outcome.problem,
                                       outcome.instances)
                return classify_stow_response(response.status_code, parse_body(data, media),
                                              sent, response.reason_phrase)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            # no connection: nothing reached the archive
            tls_failure = _caused_by_ssl(err)
            text = (f"{'TLS handshake with' if tls_failure else 'cannot connect to'} "
                    f"{self.url}{' failed' if tls_failure else ''}: {_why(err)}")
            return StowOutcome(None, text, RequestProblem.UNREACHABLE,
                               {u: StoreResult(StoreVerdict.RETRY, None, text) for u in sent},
                               tls_failure=tls_failure)
        except (httpx.TransportError, OSError) as err:
            # timeout, reset, closed mid-request: the archive may hold any of them
            text = f"no answer from {self.url} ({type(err).__name__}: {_why(err)}): " \
                   "outcome unknown"
            return StowOutcome(None, text, RequestProblem.UNKNOWN,
                               {u: StoreResult(StoreVerdict.UNKNOWN, None, text) for u in sent})

    # -- QIDO-RS -----------------------------------------------------------------------------
    def find_instances(self, uids: Sequence[str], *,
                       on_progress: Callable[[], None] = lambda: None) -> dict[str, str]:
        """SOP Instance UID -> the SOP Class UID the archive lists for it, for those of `uids`
        it lists (QIDO-RS). Up to LIST_LOOKUP UIDs go in one request by UID list matching
        (PS3.18 8.3.4.1, `SOPInstanceUID=a,b,c`); a UID that request does not return (or an
        archive that refuses list matching) is looked up alone before it counts as missing.

        Raises
        ------
        DicomWebError
            No answer, or an HTTP error (the message says which).
        DicomWebCredentialsError
            The token or credentials file is unusable.
        """
        found: dict[str, str] = {}
        for start in range(0, len(uids), LIST_LOOKUP):
            chunk = list(uids[start:start + LIST_LOOKUP])
            if len(chunk) > 1:
                try:
                    found.update(self._qido(",".join(chunk), set(chunk)))
                except _ListRefused:
                    pass                     # no list matching there: one at a time below
                on_progress()
            for uid in chunk:
                if uid not in found:
                    found.update(self._qido(uid, {uid}))
                    on_progress()
        return found

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """The SOP Class UID the archive lists for this instance, or None (`find_instances`).

        Raises
        ------
        DicomWebError
            As `find_instances`.
        """
        return self._qido(sop_instance_uid, {sop_instance_uid}).get(sop_instance_uid)

    def _qido(self, value: str, wanted: set[str]) -> dict[str, str]:
        import httpx

        headers = self._headers(DICOM_JSON)
        try:
            response = self._client.get(
                f"{self.url}/instances",
                params={"SOPInstanceUID": value, "includefield": "00080016"},
                headers=headers)
        except httpx.HTTPError as err:
            raise DicomWebError(f"QIDO-RS to {self.url}: {_why(err)}") from err
        if response.status_code == 204:
            return {}
        if response.status_code != 200:
            label = status_label(response.status_code, response.reason_phrase)
            if response.status_code in _AUTH:
                label += f": {credential_hint(self.destination)}"
            elif len(wanted) > 1 and response.status_code in _LIST_REFUSED:
                raise _ListRefused(label)
            raise DicomWebError(f"QIDO-RS to {self.url}: {label}")
        try:
            matches = json.loads(response.content or b"[]")
        except ValueError as err:
            raise DicomWebError(f"QIDO-RS to {self.url}: not DICOM JSON") from err
        if not isinstance(matches, list):
            raise DicomWebError(f"QIDO-RS to {self.url}: expected a JSON array")
        found: dict[str, str] = {}
        for match in matches:
            try:
                listed = Dataset.from_json(match)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            uid = str(listed.get("SOPInstanceUID", ""))
            if uid in wanted:
                found[uid] = str(listed.get("SOPClassUID", "") or "")
        return found

    def probe(self) -> tuple[bool, str, float]:
        """`echo`/`selftest`: GET <url>/studies?limit=1 with the credentials; (ok, detail,
        seconds). Never raises for a network or credentials problem: it is the answer."""
        import httpx

        started = time.monotonic()
        try:
            response = self._client.get(f"{self.url}/studies", params={"limit": "1"},
                                        headers=self._headers(DICOM_JSON))
        except DicomWebCredentialsError as err:
            return False, str(err), time.monotonic() - started
        except httpx.HTTPError as err:
            return False, f"cannot reach {self.url}: {_why(err)}", time.monotonic() - started
        elapsed = time.monotonic() - started
        label = status_label(response.status_code, response.reason_phrase)
        if response.status_code in _AUTH:
            return False, f"{label}: {credential_hint(self.destination)}", elapsed
        return response.status_code in (200, 204), f"QIDO-RS {label}", elapsed


class _UploadTooSlow(TimeoutError):
    """The body was still being sent when request_timeout_s ran out."""


class _ListRefused(DicomWebError):
    """The archive refused a UID list query (no list matching): look up one at a time."""


#: statuses with which an archive may refuse a UID list it does not support
_LIST_REFUSED = frozenset({400, 404, 413, 414, 422, 501})


def _read_capped(response: httpx.Response) -> bytes:
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > MAX_RESPONSE_BYTES:
            break
    return bytes(data)


def _caused_by_ssl(err: BaseException) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _why(err: BaseException) -> str:
    """A short reason: the innermost cause's words (e.g. the TLS verification failure)."""
    cause: BaseException = err
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = str(cause) or str(err) or type(err).__name__
    return text[:200]


def probe_destination(config: AgentConfig, destination: DestinationSection
                      ) -> tuple[bool, str, float]:
    """`echo`/`selftest` for a stow-rs destination."""
    try:
        tls = ssl_context(config) if destination.url.startswith("https:") else None
    except AgentError as err:          # the [tls] files
        return False, str(err), 0.0
    with DicomWebClient(destination, tls=tls) as client:
        return client.probe()


__all__ = ["DICOM_JSON", "DicomWebClient", "RequestProblem", "StowOutcome", "StowPart",
           "Unreadable", "authorization", "body_length", "check_secret_files",
           "classify_stow_response", "content_type", "credential_hint", "failure_reason",
           "multipart_body", "parse_body", "probe_destination", "read_secret_file",
           "ssl_context", "status_label"]
