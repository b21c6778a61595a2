"""optuna-dashboard served by ``hpsearch serve`` at /dashboard, behind the API's tokens (real uvicorn)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import storage as st
from tests.search.resume_checks import fake_spec


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def _get(url: str, *, token: str | None = None, cookie: str | None = None, method: str = "GET",
         follow: bool = True) -> tuple[int, dict[str, str], bytes]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = cookie
    req = urllib.request.Request(url, headers=headers, method=method, data=b"{}" if method == "POST" else None)
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_dashboard_needs_a_token_beyond_loopback_and_answers_with_one(sqlite_url: str, make_server,
                                                                          serve_api) -> None:
    server = make_server(sqlite_url)
    ann = st.create_token(server.engine, "ann")
    root = st.create_token(server.engine, "root", admin=True)
    server.submit(json.dumps(fake_spec("grid", "dash")))
    base = serve_api(server, require_token=True)
    for path in ("/dashboard", "/api/studies", "/static/bundle.js"):
        for token in (None, "hps_wrong"):
            status, headers, body = _get(base + path, token=token)
            assert status == 401 and "token" in json.loads(body)["detail"], (path, token)
            assert headers.get("www-authenticate") == "Bearer"
        status, _, body = _get(base + path, token=ann)
        assert status == 200, (path, body[:200])
    status, _, body = _get(base + "/dashboard", token=ann)
    assert b"<title>Optuna Dashboard</title>" in body
    studies = json.loads(_get(base + "/api/studies", token=ann)[2])["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dash"]
    # a browser logs in once: the token goes into a cookie and out of the address bar
    status, headers, _ = _get(base + f"/dashboard?token={ann}", follow=False)
    assert status == 303 and headers["location"] == "/dashboard"
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and _get(base + "/api/studies", cookie=cookie)[0] == 200
    assert _get(base + "/dashboard?token=hps_wrong", follow=False)[0] == 401
    # it can write (rename, delete, tell): an admin's token only
    status, _, body = _get(base + "/api/studies", token=ann, method="POST")
    assert status == 403 and json.loads(body)["detail"].startswith("the dashboard is read-only for ann")
    assert _get(base + "/api/studies", token=root, method="POST")[0] != 403
    assert _get(base + "/studies/dash", token=ann)[0] == 200  # the API beside it is unchanged


@pytest.mark.parametrize("token", [None, "hps_wrong"])
def test_on_loopback_the_dashboard_needs_no_token_but_refuses_a_wrong_one(sqlite_url: str, make_server,
                                                                           serve_api, token: str | None) -> None:
    server = make_server(sqlite_url)
    server.submit(json.dumps(fake_spec("grid", "dash")))
    base = serve_api(server)
    status, _, _ = _get(base + "/api/studies", token=token)
    assert status == (200 if token is None else 401)
