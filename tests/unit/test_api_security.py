"""The API's security layer (issue 13): the token file's rules, and SecurityMiddleware around a
tiny Starlette app through starlette's TestClient, on a loopback and a network policy."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from agent.api.security import (
    CONTENT_SECURITY_POLICY,
    SecurityMiddleware,
    SecurityPolicy,
    load_or_create_token,
    read_token,
)
from agent.errors import AgentError, ApiTokenError

TOKEN = "T" * 20 + "-_abcdefghijklmnopqrstuvw"  # 45 URL-safe characters
PORT = 8765
LOOPBACK = SecurityPolicy(token=TOKEN, api_host="127.0.0.1", api_port=PORT)
NETWORK = SecurityPolicy(token=TOKEN, api_host="0.0.0.0", api_port=PORT,
                         allowed_hosts=frozenset({"modality1.example", "10.1.2.3"}))
BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
EXPECTED_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
COOKIE = f"modality_agent_session={TOKEN}; HttpOnly; SameSite=Strict; Path=/"


# -- the tiny app --------------------------------------------------------------------------------
async def page(request: Request) -> Response:
    return HTMLResponse("<!DOCTYPE html><title>console</title>")


async def ping(request: Request) -> Response:
    return JSONResponse({"pong": True}, headers={"Access-Control-Allow-Origin": "*",
                                                 "Access-Control-Allow-Credentials": "true"})


async def echo(request: Request) -> Response:
    return JSONResponse({"got": (await request.body()).decode()})


def tiny_app() -> Starlette:
    return Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/api/ping", ping, methods=["GET"]),
        Route("/api/echo", echo, methods=["POST", "PUT", "PATCH", "DELETE"]),
    ])


class Refusals:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, reason: str, client: str) -> None:
        self.calls.append((reason, client))


def client_for(policy: SecurityPolicy, refusals: Refusals | None = None,
               host: str = "127.0.0.1") -> TestClient:
    app = SecurityMiddleware(tiny_app(), policy, on_refused=refusals)
    return TestClient(app, base_url=f"http://{host}:{policy.api_port}")


@pytest.fixture(params=[LOOPBACK, NETWORK], ids=["loopback", "network"])
def policy(request: pytest.FixtureRequest) -> SecurityPolicy:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def refusals() -> Refusals:
    return Refusals()


@pytest.fixture
def client(policy: SecurityPolicy, refusals: Refusals) -> Iterator[TestClient]:
    with client_for(policy, refusals) as c:
        yield c


def assert_secured(response: Any) -> None:
    """`response`: an httpx response from the TestClient."""
    headers = response.headers
    for name, value in EXPECTED_HEADERS.items():
        assert headers.get_list(name) == [value], name
    assert not [k for k in headers if k.lower().startswith("access-control-")]


# -- the token file ------------------------------------------------------------------------------
def test_token_file_is_created_0600_in_a_0700_folder_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "api-token"
    token = load_or_create_token(path)
    assert len(token) >= 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == token + "\n"
    assert load_or_create_token(path) == token  # the second start keeps it
    assert read_token(path) == token
    assert sorted(p.name for p in path.parent.iterdir()) == ["api-token"]  # no temp file left


def test_token_file_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_token(tmp_path / "api-token")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "api-token").stat().st_mode) == 0o600


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.write_text(TOKEN + "\n")
    real.chmod(0o600)
    link = tmp_path / "api-token"
    link.symlink_to(real)
    for load in (load_or_create_token, read_token):
        with pytest.raises(ApiTokenError, match=r"api-token: is a symlink"):
            load(link)


def test_a_dangling_symlink_is_not_followed_to_create_a_file(tmp_path: Path) -> None:
    target = tmp_path / "planted"
    link = tmp_path / "api-token"
    link.symlink_to(target)
    with pytest.raises(ApiTokenError, match="symlink"):
        load_or_create_token(link)
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o640, 0o620, 0o604, 0o602, 0o666])
def test_a_token_file_shared_with_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    with pytest.raises(ApiTokenError, match=rf"api-token: readable or writable .* {mode:04o}"):
        load_or_create_token(path)


def test_a_token_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "api-token").mkdir(mode=0o700)
    with pytest.raises(ApiTokenError, match="expected a regular file"):
        load_or_create_token(tmp_path / "api-token")


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty"), (b"\n", "empty"), (b"short\n", "URL-safe"),
    (b"not a token with spaces and more than thirty-two characters\n", "URL-safe"),
    (b"\xff" * 50, "URL-safe"), (b"A" * 5000, "URL-safe"),
])
def test_an_empty_or_garbled_token_file_is_refused(tmp_path: Path, content: bytes,
                                                    message: str) -> None:
    path = tmp_path / "api-token"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ApiTokenError, match=message):
        load_or_create_token(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_token_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(ApiTokenError, match="owned by uid 65534"):
        load_or_create_token(path)


def test_read_token_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ApiTokenError, match=r"nothere: no API token file") as caught:
        read_token(tmp_path / "nothere")
    assert isinstance(caught.value, AgentError) and isinstance(caught.value, PermissionError)


def test_read_token_tells_to_run_as_the_agents_user(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)

    def denied(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    # root reads any file: the refusal a non-root CLI gets is simulated at the system call
    monkeypatch.setattr("agent.api.security.os.open", denied)
    with pytest.raises(ApiTokenError, match=r"api-token: cannot read .* agent's user or root"):
        read_token(path)


# -- the policy ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
    ("modality1.example", False),
])
def test_policy_knows_loopback(host: str, loopback: bool) -> None:
    assert SecurityPolicy(TOKEN, host, PORT).loopback is loopback


# -- Host ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", f"localhost:{PORT}",
                                  f"127.0.0.1:{PORT}", f"[::1]:{PORT}", f"LOCALHOST:{PORT}"])
def test_own_host_names_are_accepted(client: TestClient, host: str) -> None:
    response = client.get("/api/ping", headers={**BEARER, "Host": host})
    assert response.status_code == 200, response.text
    assert_secured(response)


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{PORT}", "127.0.0.1:8080",
                                  f"localhost.:{PORT}", "localhost:", "0.0.0.0", f"[::1]x:{PORT}",
                                  f"127.0.0.1:{PORT}:{PORT}", "modality1.example:1"])
def test_foreign_host_names_get_421(client: TestClient, refusals: Refusals, host: str) -> None:
    response = client.get("/api/ping", headers={**BEARER, "Host": host})
    assert response.status_code == 421
    assert "Host" in response.json()["error"]
    assert_secured(response)
    assert refusals.calls == [("bad Host", "testclient:50000")]


def test_configured_names_are_accepted_on_the_network_only() -> None:
    for host in ("modality1.example", f"modality1.example:{PORT}", "10.1.2.3"):
        with client_for(NETWORK) as network, client_for(LOOPBACK) as loopback:
            headers = {**BEARER, "Host": host}
            assert network.get("/api/ping", headers=headers).status_code == 200
            assert loopback.get("/api/ping", headers=headers).status_code == 421


def test_the_console_page_is_refused_for_a_rebound_name(client: TestClient) -> None:
    response = client.get("/", headers={"Host": f"attacker.example:{PORT}"})
    assert response.status_code == 421
    assert "set-cookie" not in response.headers


# -- Origin, Sec-Fetch-Site, preflight -----------------------------------------------------------
@pytest.mark.parametrize("origin", [f"http://127.0.0.1:{PORT}", f"http://localhost:{PORT}",
                                    f"http://[::1]:{PORT}"])
def test_own_origins_are_accepted(client: TestClient, origin: str) -> None:
    response = client.post("/api/echo", headers={**BEARER, **JSON, "Origin": origin},
                           content=b"{}")
    assert response.status_code == 200


@pytest.mark.parametrize("origin", ["null", "http://evil.example", f"http://evil.example:{PORT}",
                                    f"https://127.0.0.1:{PORT}", "http://127.0.0.1:1",
                                    "http://127.0.0.1", ""])
def test_foreign_origins_get_403(client: TestClient, refusals: Refusals, origin: str) -> None:
    response = client.post("/api/echo", headers={**BEARER, **JSON, "Origin": origin},
                           content=b"{}")
    assert response.status_code == 403
    assert_secured(response)
    assert refusals.calls == [("foreign Origin", "testclient:50000")]


def test_port_80_origins_may_omit_the_port() -> None:
    policy = SecurityPolicy(TOKEN, "127.0.0.1", 80)
    with client_for(policy) as client:
        for origin in ("http://127.0.0.1", "http://127.0.0.1:80"):
            response = client.get("/api/ping", headers={**BEARER, "Origin": origin})
            assert response.status_code == 200, origin


@pytest.mark.parametrize(("site", "status"), [("same-origin", 200), ("none", 200),
                                              ("same-site", 403), ("cross-site", 403)])
def test_sec_fetch_site(client: TestClient, site: str, status: int) -> None:
    response = client.get("/api/ping", headers={**BEARER, "Sec-Fetch-Site": site})
    assert response.status_code == status


def test_preflights_get_403_without_cors_headers(client: TestClient, refusals: Refusals) -> None:
    response = client.options("/api/echo", headers={
        "Origin": f"http://127.0.0.1:{PORT}", "Access-Control-Request-Method": "POST"})
    assert response.status_code == 403
    assert_secured(response)
    assert refusals.calls == [("preflight", "testclient:50000")]


def test_access_control_headers_of_the_app_are_removed(client: TestClient) -> None:
    response = client.get("/api/ping", headers=BEARER)
    assert response.status_code == 200
    assert_secured(response)
    assert response.headers["cache-control"] == "no-store"


# -- authentication ------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Cookie": "modality_agent_session=wrong"}, {"Cookie": f"other={TOKEN}"},
    {"Authorization": "Bearer \u00e9t\u00e9".encode("latin-1")},
])
def test_api_without_the_token_gets_401(client: TestClient, refusals: Refusals,
                                        headers: Any) -> None:
    for response in (client.get("/api/ping", headers=headers),
                     client.post("/api/echo", headers={**headers, **JSON}, content=b"{}")):
        assert response.status_code == 401
        assert "error" in response.json()
        assert_secured(response)
    assert refusals.calls == [("no valid token", "testclient:50000")] * 2


@pytest.mark.parametrize("headers", [
    BEARER, {"Authorization": f"bearer  {TOKEN}"},
    {"Cookie": f"modality_agent_session={TOKEN}"},
    {"Cookie": f"theme=dark; modality_agent_session={TOKEN}; x=1"},
])
def test_api_with_the_token_is_served(client: TestClient, headers: dict[str, str]) -> None:
    assert client.get("/api/ping", headers=headers).json() == {"pong": True}


def test_an_unknown_api_path_asks_for_the_token_first(client: TestClient) -> None:
    assert client.get("/api/nothing").status_code == 401
    assert client.get("/api/nothing", headers=BEARER).status_code == 404


def test_loopback_hands_the_cookie_out_with_the_console_page(refusals: Refusals) -> None:
    with client_for(LOOPBACK, refusals) as client:
        page_response = client.get("/", headers={"Sec-Fetch-Site": "none"})
        assert page_response.status_code == 200
        assert page_response.headers.get_list("set-cookie") == [COOKIE]
        assert_secured(page_response)
        # the browser sends it back on the console's calls
        cookie = {"Cookie": f"modality_agent_session={TOKEN}"}
        assert client.get("/api/ping", headers=cookie).status_code == 200
        # no other response carries it
        assert "set-cookie" not in client.get("/api/ping", headers=BEARER).headers
        assert "set-cookie" not in client.get("/nothing").headers
    assert refusals.calls == []


def test_the_cookie_is_not_handed_out_to_a_cross_site_request() -> None:
    with client_for(LOOPBACK) as client:
        response = client.get("/", headers={"Sec-Fetch-Site": "cross-site"})
        assert response.status_code == 403
        assert "set-cookie" not in response.headers


def test_network_console_page_comes_without_the_cookie_and_session_sets_it() -> None:
    with client_for(NETWORK, host="modality1.example") as client:
        page_response = client.get("/")
        assert page_response.status_code == 200
        assert "set-cookie" not in page_response.headers
        assert client.get("/api/ping").status_code == 401
        response = client.post("/api/session", json={"token": TOKEN},
                               headers={"Origin": f"http://modality1.example:{PORT}"})
        assert response.status_code == 204
        assert response.headers.get_list("set-cookie") == [COOKIE]
        assert_secured(response)


@pytest.mark.parametrize("body", [b'{"token": "wrong"}', b'{"token": 3}', b"[]", b"not json",
                                  b'{"token": "' + b"A" * 5000 + b'"}', b""])
def test_session_refuses_a_wrong_token(body: bytes, refusals: Refusals) -> None:
    with client_for(NETWORK, refusals) as client:
        response = client.post("/api/session", content=body, headers=JSON)
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
    assert refusals.calls == [("wrong session token", "testclient:50000")]


def test_session_wants_json_post(client: TestClient) -> None:
    response = client.post("/api/session", content=f"token={TOKEN}",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert "set-cookie" not in response.headers
    assert client.get("/api/session").status_code == 405


# -- JSON for writes -----------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx",
                                          "application/json; boundary=x"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_writes_without_json_get_415(client: TestClient, method: str,
                                     content_type: str | None) -> None:
    headers = dict(BEARER)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.request(method, "/api/echo", headers=headers, content=b"{}")
    assert response.status_code == 415
    assert_secured(response)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
def test_writes_with_json_are_served(client: TestClient, content_type: str) -> None:
    response = client.post("/api/echo", headers={**BEARER, "Content-Type": content_type},
                           content=b'{"a": 1}')
    assert response.json() == {"got": '{"a": 1}'}


# -- the log -------------------------------------------------------------------------------------
def test_a_refusal_logs_one_warning_without_query_body_or_token(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.api.security")
    with client_for(LOOPBACK) as client:
        response = client.post("/api/echo?patient=SECRETQUERY", content=b'{"n": "SECRETBODY"}',
                               headers={**JSON, "Authorization": "Bearer SECRETTOKEN",
                                        "Cookie": "x=SECRETCOOKIE"})
    assert response.status_code == 401
    records = [r for r in caplog.records if r.name == "agent.api.security"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert "POST /api/echo" in line and "no valid token" in line and "testclient:50000" in line
    assert f"Host 127.0.0.1:{PORT}" in line
    for secret in ("SECRETQUERY", "SECRETBODY", "SECRETTOKEN", "SECRETCOOKIE"):
        assert secret not in line


def test_the_logged_host_is_escaped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.api.security")
    with client_for(LOOPBACK) as client:
        response = client.get("/", headers={b"Host": "evil\u00e9.example\tx".encode("latin-1")})
    assert response.status_code == 421
    line = caplog.records[-1].getMessage()
    assert line.isascii() and line.isprintable()
    assert ".example\\x09x)" in line
