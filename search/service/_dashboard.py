"""optuna-dashboard inside ``hpsearch serve``, behind the API's authentication.

optuna-dashboard (a WSGI app, run through ``a2wsgi``) serves its page at ``/dashboard`` and fetches
``/api/...``, ``/static/...`` and ``/csv/...`` from the root, paths the API does not use. This ASGI
middleware hands those paths to it after the same token check as every endpoint: a bearer token,
or the ``hpsearch_token`` cookie that ``/dashboard?token=TOKEN`` sets for a browser (then redirects
to ``/dashboard``, so the token leaves the address bar). The dashboard can write (rename, delete,
tell); only an admin's token may, everyone else reads.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import anyio

from ._auth import authenticate
from ._errors import Forbidden, ServiceError

__all__ = ["COOKIE", "DASHBOARD_PATHS", "DashboardMiddleware"]

COOKIE = "hpsearch_token"
DASHBOARD_PATHS = ("/dashboard", "/api/", "/static/", "/csv/", "/favicon.ico")
"""The paths optuna-dashboard serves (the API itself uses ``/studies`` and ``/openapi.json``)."""

_READ = ("GET", "HEAD")


def _is_dashboard(path: str) -> bool:
    return path == "/dashboard" or path.startswith("/dashboard/") or path.startswith(DASHBOARD_PATHS[1:])


class DashboardMiddleware:
    """Serves optuna-dashboard on ``storage`` at :data:`DASHBOARD_PATHS` in front of ``app``.

    Parameters
    ----------
    app:
        The API (every other path).
    storage:
        The Optuna storage the dashboard shows.
    engine:
        The storage's SQLAlchemy engine, where tokens are checked.
    require_token:
        As for the API: without a token, refuse (401) rather than serve an anonymous user.
    """

    def __init__(self, app: Any, *, storage: Any, engine: Any, require_token: bool) -> None:
        self.app = app
        self.storage = storage
        self.engine = engine
        self.require_token = require_token
        self._wsgi: Any = None

    def _dashboard(self) -> Any:
        if self._wsgi is None:  # optuna-dashboard is imported on the first request for it
            import optuna_dashboard
            from a2wsgi import WSGIMiddleware

            self._wsgi = WSGIMiddleware(optuna_dashboard.wsgi(self.storage))
        return self._wsgi

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _is_dashboard(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        login = query.get("token", [None])[0] if scope["path"] == "/dashboard" else None
        token, malformed = self._token(headers, login)
        try:
            user = await anyio.to_thread.run_sync(
                lambda: authenticate(self.engine, token, require_token=self.require_token, malformed=malformed))
            if scope["method"] not in _READ and not user.admin:
                raise Forbidden(f"the dashboard is read-only for {user.name or 'a user without token'}: "
                                f"{scope['method']} {scope['path']} needs an admin token")
        except ServiceError as e:
            await _send_json(send, e.status, {"detail": str(e)},
                             [(b"www-authenticate", b"Bearer")] if e.status == 401 else [])
            return
        if login is not None:  # a browser's login: keep the token in a cookie, out of the address bar
            cookie = f"{COOKIE}={login}; Path=/; HttpOnly; SameSite=Strict"
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", b"/dashboard"), (b"set-cookie", cookie.encode("latin-1")),
                                    (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self._dashboard()(scope, receive, send)

    @staticmethod
    def _token(headers: dict[str, str], login: str | None) -> tuple[str | None, bool]:
        if login is not None:
            return login, False
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return None, True
            return value.strip(), False
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:
            return None, False
        morsel = jar.get(COOKIE)
        return (morsel.value if morsel is not None and morsel.value else None), False


async def _send_json(send: Any, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": data})
