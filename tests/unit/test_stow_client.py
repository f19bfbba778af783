"""STOW-RS client (agent.net.stow): the answer mapped per instance and per HTTP status, the
multipart body (each part the spooled file's bytes), streaming, credentials and their files."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import http.server
import json
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset

from agent.config import DestinationSection
from agent.errors import DicomWebCredentialsError
from agent.net.status import StoreVerdict
from agent.net.stow import (
    DicomWebClient,
    RequestProblem,
    StowPart,
    authorization,
    body_length,
    classify_stow_response,
    failure_reason,
    multipart_body,
    parse_body,
    read_secret_file,
)

UIDS = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
CLASS = "1.2.840.10008.5.1.4.1.1.7"


def answer(referenced: dict[str, int | None] | None = None,
           failed: dict[str, int | None] | None = None) -> Dataset:
    """A STOW-RS answer as DICOM JSON parses it: UID -> Warning Reason / Failure Reason."""
    body: dict[str, Any] = {"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}
    if referenced is not None:
        items = []
        for uid, warning in referenced.items():
            item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [CLASS]},
                                    "00081155": {"vr": "UI", "Value": [uid]}}
            if warning is not None:
                item["00081196"] = {"vr": "US", "Value": [warning]}
            items.append(item)
        body["00081199"] = {"vr": "SQ", **({"Value": items} if items else {})}
    if failed is not None:
        items = []
        for uid, reason in failed.items():
            item = {"00081150": {"vr": "UI", "Value": [CLASS]},
                    "00081155": {"vr": "UI", "Value": [uid]}}
            if reason is not None:
                item["00081197"] = {"vr": "US", "Value": [reason]}
            items.append(item)
        body["00081198"] = {"vr": "SQ", **({"Value": items} if items else {})}
    parsed = parse_body(json.dumps(body).encode(), "application/dicom+json")
    assert parsed is not None
    return parsed


# -- the answer, per instance ----------------------------------------------------------------

def test_200_with_every_instance_referenced_is_stored() -> None:
    outcome = classify_stow_response(200, answer(dict.fromkeys(UIDS), {}), UIDS)
    assert outcome.problem is RequestProblem.NONE
    assert {r.verdict for r in outcome.instances.values()} == {StoreVerdict.STORED}


def test_warning_reason_is_kept_as_a_note() -> None:
    outcome = classify_stow_response(200, answer({UIDS[0]: 0xB000}), UIDS[:1])
    result = outcome.instances[UIDS[0]]
    assert result.verdict is StoreVerdict.STORED
    assert "warning 0xB000" in result.text


def test_200_without_a_body_means_all_stored() -> None:
    outcome = classify_stow_response(200, None, UIDS)
    assert {r.verdict for r in outcome.instances.values()} == {StoreVerdict.STORED}


def test_202_partial_each_instance_by_its_sequence() -> None:
    outcome = classify_stow_response(
        202, answer({UIDS[0]: None}, {UIDS[1]: 0xA700}), UIDS)
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.STORED
    assert outcome.instances[UIDS[1]].verdict is StoreVerdict.RETRY
    # in neither sequence: the archive may or may not hold it
    assert outcome.instances[UIDS[2]].verdict is StoreVerdict.UNKNOWN
    assert outcome.problem is RequestProblem.UNKNOWN


@pytest.mark.parametrize(("reason", "verdict"), [
    (0xA700, StoreVerdict.RETRY),          # out of resources
    (0xA7FF, StoreVerdict.RETRY),
    (0x0213, StoreVerdict.RETRY),          # resource limitation
    (0xA900, StoreVerdict.FAILED),         # data set does not match SOP class
    (0xC000, StoreVerdict.FAILED),         # cannot understand
    (0xC122, StoreVerdict.FAILED),
    (0x0110, StoreVerdict.FAILED),         # processing failure (Orthanc: wrong study)
    (0x0122, StoreVerdict.FAILED),         # SOP class not supported
    (0xB007, StoreVerdict.STORED),         # a warning given as a failure reason
])
def test_failure_reason(reason: int, verdict: StoreVerdict) -> None:
    result = failure_reason(reason)
    assert result.verdict is verdict
    assert f"0x{reason:04X}" in result.text


def test_409_conflict_is_parsed_per_instance() -> None:
    # what Orthanc answers when an instance is posted to another study's URL
    outcome = classify_stow_response(409, answer({}, {UIDS[0]: 0x0110}), UIDS[:1])
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.FAILED
    assert "0x0110" in outcome.instances[UIDS[0]].text
    assert outcome.problem is RequestProblem.NONE


def test_failed_item_without_reason_is_a_processing_failure() -> None:
    outcome = classify_stow_response(409, answer({}, {UIDS[0]: None}), UIDS[:1])
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.FAILED
    assert "0x0110" in outcome.instances[UIDS[0]].text


def test_400_with_a_partial_answer_refuses_the_unlisted_with_the_request() -> None:
    # Orthanc: a request with one unreadable part answers 400 listing only the good one
    outcome = classify_stow_response(400, answer({UIDS[0]: None}, {}), UIDS[:2])
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.STORED
    refused = outcome.instances[UIDS[1]]
    assert refused.verdict is StoreVerdict.FAILED and refused.status is None
    assert outcome.problem is RequestProblem.REFUSED


@pytest.mark.parametrize(("status", "verdict", "problem"), [
    (401, StoreVerdict.RETRY, RequestProblem.AUTH),
    (403, StoreVerdict.RETRY, RequestProblem.AUTH),
    (404, StoreVerdict.RETRY, RequestProblem.CONFIG),
    (405, StoreVerdict.RETRY, RequestProblem.CONFIG),
    (415, StoreVerdict.RETRY, RequestProblem.CONFIG),
    (301, StoreVerdict.RETRY, RequestProblem.CONFIG),
    (408, StoreVerdict.RETRY, RequestProblem.BUSY),
    (429, StoreVerdict.RETRY, RequestProblem.BUSY),
    (503, StoreVerdict.RETRY, RequestProblem.BUSY),
    (400, StoreVerdict.FAILED, RequestProblem.REFUSED),
    (409, StoreVerdict.FAILED, RequestProblem.REFUSED),
    (413, StoreVerdict.FAILED, RequestProblem.REFUSED),
    (422, StoreVerdict.FAILED, RequestProblem.REFUSED),
    (500, StoreVerdict.UNKNOWN, RequestProblem.UNKNOWN),
    (502, StoreVerdict.UNKNOWN, RequestProblem.UNKNOWN),
    (504, StoreVerdict.UNKNOWN, RequestProblem.UNKNOWN),
    (202, StoreVerdict.UNKNOWN, RequestProblem.UNKNOWN),
])
def test_http_status_without_per_instance_answer(status: int, verdict: StoreVerdict,
                                                 problem: RequestProblem) -> None:
    outcome = classify_stow_response(status, None, UIDS)
    assert outcome.problem is problem
    assert {r.verdict for r in outcome.instances.values()} == {verdict}
    assert str(status) in outcome.summary


def test_auth_never_fails_even_with_a_failed_sequence() -> None:
    outcome = classify_stow_response(401, answer({}, {UIDS[0]: 0xC000}), UIDS[:1])
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.RETRY


def test_5xx_with_an_answer_keeps_what_it_says() -> None:
    outcome = classify_stow_response(500, answer({UIDS[0]: None}, {}), UIDS[:2])
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.STORED
    assert outcome.instances[UIDS[1]].verdict is StoreVerdict.UNKNOWN


@pytest.mark.parametrize(("data", "media"), [
    (b"", "application/dicom+json"), (b"<xml/>", "application/dicom+xml"),
    (b"{not json", "application/dicom+json"), (b"42", "application/json")])
def test_unusable_bodies_are_no_answer(data: bytes, media: str) -> None:
    assert parse_body(data, media) is None


# -- the body ----------------------------------------------------------------------------------

def spool_files(tmp_path: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"{index}.dcm"
        # bytes that look like a delimiter and CRLFs must pass unchanged
        pattern = b"\r\n--x\r\n" + os.urandom(64)
        path.write_bytes((pattern * (size // len(pattern) + 1))[:size])
        paths.append(path)
    return paths


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related body, by the stdlib's email parser (not ours)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    parts = list(message.iter_parts())
    assert {p.get_content_type() for p in parts} == {"application/dicom"}
    return [p.get_payload(decode=True) for p in parts]


class Recorder:
    """An httpx transport that keeps the request and answers `status` with `body`."""

    def __init__(self, status: int = 200, body: dict[str, Any] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.status = status
        self.body = body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body,
                              headers={"Content-Type": "application/dicom+json"})


def destination(**options: Any) -> DestinationSection:
    return DestinationSection(name="web", kind="stow-rs", url="http://archive.test/dicom-web",
                              storage_commitment=False, **options)


def test_each_part_is_the_spooled_file_byte_for_byte(tmp_path: Path) -> None:
    paths = spool_files(tmp_path, [1000, 5, 3 * 2**20 + 17])
    recorder = Recorder(200, None)
    with DicomWebClient(destination(), transport=httpx.MockTransport(recorder)) as client:
        outcome, unreadable = client.store(
            [StowPart(uid, path) for uid, path in zip(UIDS, paths, strict=True)])
    assert not unreadable
    assert {r.verdict for r in outcome.instances.values()} == {StoreVerdict.STORED}
    request = recorder.requests[0]
    assert request.method == "POST"
    assert str(request.url) == "http://archive.test/dicom-web/studies"
    assert request.headers["accept"] == "application/dicom+json"
    assert int(request.headers["content-length"]) == len(recorder.bodies[0])
    assert "transfer-encoding" not in request.headers
    parts = parse_multipart(request.headers["content-type"], recorder.bodies[0])
    assert parts == [path.read_bytes() for path in paths]


def test_body_length_matches_the_stream(tmp_path: Path) -> None:
    paths = spool_files(tmp_path, [0, 1, 4096])
    handles = [path.open("rb") for path in paths]
    try:
        streamed = b"".join(multipart_body(handles, "b0", chunk_bytes=7))
    finally:
        for handle in handles:
            handle.close()
    assert len(streamed) == body_length([0, 1, 4096], "b0")


def test_an_unreadable_spool_file_is_not_sent_the_others_are(tmp_path: Path) -> None:
    paths = spool_files(tmp_path, [100, 100])
    recorder = Recorder(200, None)
    with DicomWebClient(destination(), transport=httpx.MockTransport(recorder)) as client:
        outcome, unreadable = client.store([StowPart(UIDS[0], paths[0]),
                                            StowPart(UIDS[1], tmp_path / "gone.dcm")])
    assert [u.sop_instance_uid for u in unreadable] == [UIDS[1]]
    assert "unreadable" in unreadable[0].reason
    assert list(outcome.instances) == [UIDS[0]]
    assert parse_multipart(recorder.requests[0].headers["content-type"],
                           recorder.bodies[0]) == [paths[0].read_bytes()]


class _Sink(http.server.BaseHTTPRequestHandler):
    """Reads the request body in 1 MiB pieces, discards it and answers 200."""

    received = 0

    def do_POST(self) -> None:
        remaining = int(self.headers["Content-Length"])
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
        type(self).received = int(self.headers["Content-Length"])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_64_mb_request_is_streamed_not_held_in_memory(
        tmp_path: Path, sink: http.server.ThreadingHTTPServer) -> None:
    size = 64 * 2**20
    path = tmp_path / "big.dcm"
    with path.open("wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(2**20))
    dest = DestinationSection(name="web", kind="stow-rs",
                              url=f"http://127.0.0.1:{sink.server_address[1]}/dicom-web",
                              storage_commitment=False)
    tracemalloc.start()
    try:
        with DicomWebClient(dest) as client:
            outcome, _ = client.store([StowPart(UIDS[0], path)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.STORED
    assert _Sink.received > size
    # measured: 3.7 MiB peak (a chunk or two in flight); a body held in memory would be > 64 MiB
    assert peak < 8 * 2**20, f"peak Python allocation {peak / 2**20:.1f} MiB"


def test_connection_refused_is_unreachable_and_nothing_is_lost(tmp_path: Path) -> None:
    paths = spool_files(tmp_path, [10])
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink) as closed:
        port = closed.server_address[1]          # bound then closed: nobody listens
    dest = DestinationSection(name="web", kind="stow-rs", url=f"http://127.0.0.1:{port}",
                              storage_commitment=False)
    with DicomWebClient(dest) as client:
        outcome, _ = client.store([StowPart(UIDS[0], paths[0])])
    assert outcome.problem is RequestProblem.UNREACHABLE
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.RETRY


def test_a_reset_after_the_request_is_outcome_unknown(tmp_path: Path) -> None:
    paths = spool_files(tmp_path, [10])

    def reset(request: httpx.Request) -> httpx.Response:
        request.read()
        raise httpx.RemoteProtocolError("peer closed connection without sending a response")

    with DicomWebClient(destination(), transport=httpx.MockTransport(reset)) as client:
        outcome, _ = client.store([StowPart(UIDS[0], paths[0])])
    assert outcome.problem is RequestProblem.UNKNOWN
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.UNKNOWN


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    paths = spool_files(tmp_path, [10])

    def moved(request: httpx.Request) -> httpx.Response:
        return httpx.Response(301, headers={"Location": "https://elsewhere/dicom-web/studies"})

    with DicomWebClient(destination(), transport=httpx.MockTransport(moved)) as client:
        outcome, _ = client.store([StowPart(UIDS[0], paths[0])])
    assert outcome.problem is RequestProblem.CONFIG
    assert "https://elsewhere" in outcome.summary


# -- credentials -----------------------------------------------------------------------------

def secret(tmp_path: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_bearer_token_header(tmp_path: Path) -> None:
    token = secret(tmp_path, "token", "abc.DEF-123_xyz\n")
    recorder = Recorder(200, None)
    paths = spool_files(tmp_path, [10])
    with DicomWebClient(destination(token_file=token),
                        transport=httpx.MockTransport(recorder)) as client:
        client.store([StowPart(UIDS[0], paths[0])])
    assert recorder.requests[0].headers["authorization"] == "Bearer abc.DEF-123_xyz"


def test_basic_credentials_header(tmp_path: Path) -> None:
    creds = secret(tmp_path, "creds", "agent:s3cr:et\n")
    assert authorization(destination(credentials_file=creds)) == \
        "Basic " + base64.b64encode(b"agent:s3cr:et").decode()


def test_no_credentials_no_header() -> None:
    assert authorization(destination()) is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_a_secret_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    token = secret(tmp_path, "token", "abc\n", mode)
    with pytest.raises(DicomWebCredentialsError, match="chmod 600") as raised:
        authorization(destination(token_file=token))
    assert "abc" not in str(raised.value).replace(str(token), "")


def test_a_symlinked_secret_file_is_refused(tmp_path: Path) -> None:
    target = secret(tmp_path, "real", "abc\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(DicomWebCredentialsError, match="symlink"):
        read_secret_file(link, "token_file")


@pytest.mark.parametrize(("text", "key"), [
    ("", "token_file"), ("twoQx7\nlinesQy8\n", "token_file"), ("Zq9x W8kq\n", "token_file"),
    ("noColonQx7\n", "credentials_file"), (":Pw9zQk\n", "credentials_file")])
def test_garbled_secret_files_are_refused_without_echoing_them(
        tmp_path: Path, text: str, key: str) -> None:
    path = secret(tmp_path, "secret", text)
    with pytest.raises(DicomWebCredentialsError) as raised:
        authorization(destination(**{key: path}))
    message = str(raised.value).replace(str(path), "")
    for word in text.split():
        assert word.strip(":") not in message


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DicomWebCredentialsError, match=r"token_file .*missing"):
        authorization(destination(token_file=tmp_path / "missing"))


def test_a_request_that_outlasts_request_timeout_s_is_outcome_unknown(tmp_path: Path) -> None:
    # each MiB read "takes" 50 s: the third crosses request_timeout_s = 120 mid-body
    paths = spool_files(tmp_path, [5 * 2**20])
    now = [0.0]

    def clock() -> float:
        now[0] += 50.0
        return now[0]

    with DicomWebClient(destination(request_timeout_s=120),
                        transport=httpx.MockTransport(Recorder(200, None)),
                        clock=clock) as client:
        outcome, _ = client.store([StowPart(UIDS[0], paths[0])])
    assert outcome.problem is RequestProblem.UNKNOWN
    assert outcome.instances[UIDS[0]].verdict is StoreVerdict.UNKNOWN
    assert "longer than request_timeout_s = 120 s" in outcome.summary
