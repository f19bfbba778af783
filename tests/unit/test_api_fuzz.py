"""Hypothesis over the API's request parsing: any JSON (or bytes) a client sends to any endpoint
gets a clear 4xx or a 2xx, never a 500 or an exception out of the app; the parsers raise only
the station's RequestRefused (issue 13: JSON nested 10,000 deep gave HTTP 500)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from test_api import API_PORT, POLICY, TOKEN, FakeStation

from agent.api.routes import (
    create_app,
    parse_acquire_request,
    parse_import_request,
    parse_order_choice,
)
from agent.station import RequestRefused

POST_PATHS = ["/api/acquire", "/api/procedures", "/api/procedures/proc1/end", "/api/import",
              "/api/reject",
              "/api/retry", "/api/console/worklist", "/api/session"]
GET_PATHS = ["/api/objects", "/api/queue", "/api/last-frame.png", "/api/worklist",
             "/api/procedures/x", "/api/status"]
OK_STATUSES = {200, 204, 400, 401, 404, 409, 413, 415, 503}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)
keys = st.sampled_from(["frames", "unscheduled", "patient_id", "patient_name", "accession",
                        "sps_id", "procedure_id", "end", "reason", "confirm_exposure", "paths",
                        "queue_ids", "refresh", "token"])
request_bodies = st.dictionaries(keys, json_values, max_size=6) | json_values


@pytest.fixture(scope="module")
def client() -> Any:
    with TestClient(create_app(FakeStation(), POLICY), base_url=f"http://127.0.0.1:{API_PORT}",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    raise_server_exceptions=True) as test_client:
        yield test_client


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(POST_PATHS), body=request_bodies)
def test_any_json_body_gets_a_clear_answer(client: TestClient, path: str, body: Any) -> None:
    response = client.post(path, content=json.dumps(body),
                           headers={"Content-Type": "application/json"})
    assert response.status_code in OK_STATUSES, (path, body, response.text)
    if response.status_code >= 400:
        assert response.json()["error"]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(POST_PATHS), raw=st.binary(max_size=200),
       content_type=st.sampled_from(["application/json", "text/plain",
                                     "application/json; charset=utf-8",
                                     "application/x-www-form-urlencoded"]))
def test_any_bytes_get_a_clear_answer(client: TestClient, path: str, raw: bytes,
                                      content_type: str) -> None:
    response = client.post(path, content=raw, headers={"Content-Type": content_type})
    assert response.status_code in OK_STATUSES, (path, raw, response.text)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(GET_PATHS),
       query=st.lists(st.tuples(st.sampled_from(["queue_id", "limit", "max", "refresh", "x"]),
                                st.text(max_size=25)), max_size=5))
def test_any_query_gets_a_clear_answer(client: TestClient, path: str,
                                       query: list[tuple[str, str]]) -> None:
    response = client.get(path, params=query)
    assert response.status_code in OK_STATUSES, (path, query, response.text)


@pytest.mark.parametrize("depth", [9, 100, 10_000])
def test_deep_nesting_is_a_400(client: TestClient, depth: int) -> None:
    body = "[" * depth + "]" * depth
    for path in POST_PATHS[:-1]:
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, response.text)


@settings(max_examples=300, deadline=None)
@given(body=request_bodies)
def test_parsers_raise_only_the_stations_refusal(body: Any) -> None:
    for parse in (parse_acquire_request, parse_order_choice, parse_import_request):
        try:
            parse(body)
        except RequestRefused as err:
            assert str(err)
