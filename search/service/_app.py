"""The HTTP API of ``hpsearch serve`` (FastAPI; the spec at ``/openapi.json``).

Every endpoint is a thin layer over :class:`~search.service.Server` and the views; errors are
answered with their status and ``{"detail": message}``, the message the CLI would print.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import storage as st

from .. import __version__
from ._auth import user_dependency
from ._cache import DEFAULT_TTL_S, DetailCache
from ._dashboard import DashboardMiddleware
from ._errors import NotFound, ServiceError
from ._models import ErrorOut, StudyDetailOut, StudyListOut, StudyOut, SubmitIn, TrialsOut
from ._server import Server, User
from ._views import study_detail, study_entries, study_trials

__all__ = ["create_app"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422, 503)
}


def _status_of(e: Exception) -> int | None:
    """The HTTP status of a library error (as the CLI's exit code: user errors 4xx, storage 409/503)."""
    import sys

    if isinstance(e, ServiceError):
        return e.status
    if isinstance(e, st.StudyNotFound):
        return 404
    if isinstance(e, st.LeaseHeld):
        return 409
    if isinstance(e, st.StorageError):
        return 503
    user: tuple[type[BaseException], ...] = (ValueError,)  # SpecError and trials.DataError are ValueErrors too
    for module, name in (("search._errors", "UsageError"), ("search.backends._ray", "ResourceError"),
                         ("trials", "DataError")):
        mod = sys.modules.get(module)
        if mod is not None:
            user += (getattr(mod, name),)
    return 400 if isinstance(e, user) else None


@dataclass(frozen=True)
class _Detail:
    """A study's ``GET /studies/{name}`` body, and its JSON as the endpoint sends it."""

    body: dict[str, Any]
    json: bytes


def create_app(server: Server, *, require_token: bool = False, cache_s: float = DEFAULT_TTL_S) -> FastAPI:
    """The FastAPI application serving ``server`` (opened already).

    Parameters
    ----------
    server:
        The server whose queue and studies the API shows.
    require_token:
        Refuse requests without a token (401); ``hpsearch serve`` sets it when it binds beyond loopback.
    cache_s:
        How long a study's ``GET /studies/{name}`` body is reused (:class:`DetailCache`; 0: never);
        the server's own changes to a study drop it at once.
    """
    # the spec is served below, behind the same authentication as every other endpoint
    app = FastAPI(title="hpsearch", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  description="Hyperparameter search service: submit studies, watch them, cancel them.")
    engine = server.engine
    current_user = user_dependency(engine, require_token=require_token)
    # optuna-dashboard at /dashboard (and the /api, /static paths its page fetches), same tokens
    app.add_middleware(DashboardMiddleware, storage=server.storage, engine=engine, require_token=require_token)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(user: User = Depends(current_user)) -> dict[str, Any]:
        return app.openapi()

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"detail": st.scrub(message, server.url)}, status_code=status, headers=headers or None)

    @app.exception_handler(Exception)
    async def on_error(request: Request, e: Exception) -> JSONResponse:
        status = _status_of(e)
        if status is None:
            return error(500, f"unexpected {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
        return error(status, str(e), **({"WWW-Authenticate": "Bearer"} if status == 401 else {}))

    # the errors a request can cause, answered without a traceback in the log (Exception is the 500 handler)
    from trials import DataError

    from .._errors import UsageError
    from ..backends._ray import ResourceError

    for cls in (ServiceError, st.StorageError, UsageError, ResourceError, DataError, ValueError):
        app.add_exception_handler(cls, on_error)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail) if e.detail else "error")

    def read_detail(name: str) -> _Detail | None:
        out = study_detail(engine, name)
        return None if out is None else _Detail(out, StudyDetailOut.model_validate(out).model_dump_json().encode())

    cache: DetailCache[_Detail] = DetailCache(read_detail, cache_s)
    server.on_change(cache.invalidate)

    def detail_of(name: str) -> dict[str, Any]:
        """Read now (after a submit or cancel: the caller's own change)."""
        out = study_detail(engine, name)
        if out is None:
            raise NotFound(f"no study named {name!r}", name=name)
        return out

    @app.post("/studies", status_code=201, response_model=StudyDetailOut, responses=_ERRORS, tags=["studies"])
    def submit(body: SubmitIn, user: User = Depends(current_user)) -> dict[str, Any]:
        """Validate a study file as `hpsearch run` does, create its study and queue it (a cancelled or
        finished study submitted again resumes)."""
        row = server.submit(body.study_file, priority=body.priority, user=user,
                            source=body.filename or "the submitted study file")
        return detail_of(row.study_name)

    @app.get("/studies", response_model=StudyListOut, responses=_ERRORS, tags=["studies"])
    def studies(user: User = Depends(current_user)) -> dict[str, Any]:
        """Every study in the storage, queued, running or finished (`ls -o json`)."""
        return {"studies": study_entries(engine)}

    @app.get("/studies/{name}", response_model=StudyDetailOut, responses=_ERRORS, tags=["studies"])
    async def study(name: str, user: User = Depends(current_user)) -> Response:
        """State, progress and best trial of one study (at most a fraction of a second old)."""
        # async: a cached body is answered on the event loop; only a database read takes a thread.
        # The body was validated against StudyDetailOut and serialised once, when it was read.
        out = cache.fresh(name)
        if out is None:
            out = await run_in_threadpool(cache.get, name)
        if out is None:
            raise NotFound(f"no study named {name!r}", name=name)
        return Response(out.json, media_type="application/json")

    @app.get("/studies/{name}/trials", response_model=TrialsOut, responses=_ERRORS, tags=["studies"])
    def trials(name: str, limit: int | None = Query(None, ge=1), sort: str = Query("number", pattern="^(number|best)$"),
               user: User = Depends(current_user)) -> dict[str, Any]:
        """The trials of a study (`show NAME -o json`)."""
        detail_of(name)
        return study_trials(engine, name, limit=limit, order=sort)

    @app.post("/studies/{name}/cancel", response_model=StudyOut, responses=_ERRORS, tags=["studies"])
    def cancel(name: str, user: User = Depends(current_user)) -> dict[str, Any]:
        """Cancel a queued or running study (owner or admin): in-flight trials are recorded; submit it
        again to resume."""
        server.cancel(name, user)
        return detail_of(name)

    @app.get("/studies/{name}/events", responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS},
             tags=["studies"])
    def events(name: str, interval: float = Query(0.5, ge=0.05, le=60),
               user: User = Depends(current_user)) -> StreamingResponse:
        """Server-sent events: a `progress` event (the study's `GET /studies/{name}` body) whenever it
        changes, and `end` once the study is neither queued nor running."""
        first = detail_of(name)
        return StreamingResponse(_stream(name, first, interval), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _stream(name: str, first: dict[str, Any], interval: float) -> AsyncIterator[str]:
        # async: a stream waits on the event loop, and only its database reads take a worker thread
        # (a sync generator held one of the thread pool's 40 threads per open stream, sleeping)
        last: str | None = None
        out: dict[str, Any] | None = first
        while out is not None:
            text = json.dumps(out, default=str, allow_nan=False)
            if text != last:
                yield f"event: progress\ndata: {text}\n\n"
                last = text
            if out.get("state") not in st.ACTIVE_STATES:
                break
            await asyncio.sleep(interval)
            hit = cache.fresh(name)
            if hit is None:
                hit = await run_in_threadpool(cache.get, name)
            out = hit.body if hit is not None else None
        yield f"event: end\ndata: {last or '{}'}\n\n"

    return app
