"""Who is asking: the bearer token of a request, checked against the hashes in ``hpsearch_tokens``.

A request that carries a token must carry a valid one (else 401, on every endpoint). A request
without one is served as an anonymous user only where the server allows it (bound to loopback);
otherwise it is refused with 401 too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

import storage as st

from ._errors import Unauthorized
from ._server import User

__all__ = ["authenticate", "user_dependency"]

bearer = HTTPBearer(auto_error=False, description="A token from `hpsearch token create NAME`.")


def authenticate(engine: Any, token: str | None, *, require_token: bool, malformed: bool = False) -> User:
    """The :class:`User` of ``token`` (None: the request carries none); :class:`Unauthorized` for a
    missing one where ``require_token``, an invalid one, or a ``malformed`` Authorization header."""
    if malformed:
        raise Unauthorized("invalid Authorization header: give `Authorization: Bearer TOKEN`")
    if token is None:
        if require_token:
            raise Unauthorized("this server needs a token: pass `Authorization: Bearer TOKEN` (hpsearch: "
                               "--token or $HPSEARCH_TOKEN; create one with `hpsearch token create NAME`)")
        return User()
    user = st.token_user(engine, token)
    if user is None:
        raise Unauthorized("invalid token; create one with `hpsearch token create NAME`")
    return User(user.name, user.admin)


def user_dependency(engine: Any, *, require_token: bool) -> Callable[..., User]:
    """A FastAPI dependency giving the request's :class:`User` (401 for a missing or invalid token)."""

    async def current_user(request: Request,
                           credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> User:
        # async: a request without a token is answered without a worker thread (a sync dependency
        # takes one of the thread pool's for every request); only a token's lookup reads the database
        malformed = credentials is None and request.headers.get("authorization") is not None
        token = credentials.credentials if credentials is not None else None
        if token is None:
            return authenticate(engine, None, require_token=require_token, malformed=malformed)
        return await run_in_threadpool(authenticate, engine, token, require_token=require_token)

    return current_user
