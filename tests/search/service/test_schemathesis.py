"""schemathesis against ``/openapi.json`` on real uvicorn: no request gets a 5xx, and every 4xx says
why in ``detail``. A bounded number of examples per operation keeps it a few seconds."""

from __future__ import annotations

import json

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

import storage as st
from tests.search.resume_checks import fake_spec


def test_no_5xx_and_every_4xx_carries_a_detail(sqlite_url: str, make_server, serve_api) -> None:
    server = make_server(sqlite_url)
    server.submit(json.dumps(fake_spec("grid", "known")))  # so that one name exists
    server.cancel("known")  # cancelled: its event stream ends at once
    token = st.create_token(server.engine, "fuzz")
    auth = {"Authorization": f"Bearer {token}"}
    base = serve_api(server, require_token=True)
    schema = schemathesis.openapi.from_url(base + "/openapi.json", headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    seen: dict[str, set[int]] = {}

    for operation in operations:  # valid requests, then ones that break the schema
        for mode in GenerationMode:
            _property(operation, mode, auth, seen)()
    assert len(seen) == 6, seen
    codes = set().union(*seen.values())
    assert 200 in codes and 422 in codes, seen  # requests got through, and malformed ones were refused


def _property(operation, mode: GenerationMode, auth: dict[str, str],  # type: ignore[no-untyped-def]
              seen: dict[str, set[int]]):
    """The check of one operation over at most 30 generated requests."""
    key = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy(mode))
    # derandomize: the same requests on every run, so a failure reproduces and CI does not draw lots
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(headers=auth, timeout=30)
        where = f"{case.method} {case.formatted_path}"
        seen.setdefault(key, set()).add(response.status_code)
        assert response.status_code < 500, (where, response.status_code, response.text[:500])
        if response.status_code >= 400 and not _is_json(response):
            # uvicorn refuses a request that is not valid HTTP (a control character in a header, say)
            # before it reaches the app, with a plain-text 400 that says so
            assert response.status_code == 400 and "Invalid HTTP request" in response.text, (where, response.text)
        elif response.status_code >= 400:
            body = response.json()
            assert isinstance(body.get("detail"), str) and body["detail"].strip(), (where, response.text[:500])

    return check


def _is_json(response) -> bool:  # type: ignore[no-untyped-def]
    value = response.headers.get("content-type") or [""]  # schemathesis keeps each header as a list
    return str(value[0]).split(";")[0].strip() == "application/json"
