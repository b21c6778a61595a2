"""``hpsearch serve``: a shared search service (queue in the database, scheduler, HTTP API, auth).

:class:`Server` is the Python API (submit, cancel, the scheduler); :func:`create_app` its FastAPI
application; :class:`Client` the HTTP client behind ``hpsearch submit``, ``ls --server``, ``cancel``
and ``watch``. Imported on first use, so ``import search`` never imports FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "._app": ("create_app",),
    "._client": ("Client", "Refused", "Unreachable"),
    "._errors": ("Conflict", "Forbidden", "NotFound", "ServiceError", "Unauthorized"),
    "._net": ("is_loopback",),
    "._serve": ("serve",),
    "._server": ("BackendFactory", "Server", "User"),
    "._shares": ("Demand", "SharedBackend", "fair_shares"),
})

__all__ = [
    "BackendFactory",
    "Client",
    "Conflict",
    "Demand",
    "Forbidden",
    "NotFound",
    "Refused",
    "Server",
    "ServiceError",
    "SharedBackend",
    "Unauthorized",
    "Unreachable",
    "User",
    "create_app",
    "fair_shares",
    "is_loopback",
    "serve",
]

if TYPE_CHECKING:
    from ._app import create_app
    from ._client import Client, Refused, Unreachable
    from ._errors import Conflict, Forbidden, NotFound, ServiceError, Unauthorized
    from ._net import is_loopback
    from ._serve import serve
    from ._server import BackendFactory, Server, User
    from ._shares import Demand, SharedBackend, fair_shares
