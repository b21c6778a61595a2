"""``hpsearch dashboard``: optuna-dashboard on the study storage, bound to 127.0.0.1 by default.

optuna-dashboard can edit and delete studies and has no authentication: any other host prints a
warning.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
from typing import Any

import storage as st

from .._errors import UsageError

__all__ = ["LOCAL_HOSTS", "DashboardServer", "serve_dashboard", "start_dashboard"]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Hosts the dashboard binds without a warning (only this machine can reach them)."""


def _no_auth_warning(host: str, port: int, url: str) -> str:
    return (
        f"hpsearch: warning: the dashboard on {host}:{port} has no authentication: anyone who can "
        f"reach it can view, modify and delete the studies in {st.redact(url)}; bind 127.0.0.1 "
        "(the default) and use an SSH tunnel to reach it from elsewhere"
    )


def _server_classes(host: str) -> tuple[type, type]:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class _QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    return _Server, _QuietHandler


class DashboardServer:
    """optuna-dashboard on a threaded WSGI server, bound and ready, not yet serving.

    Create it with :func:`start_dashboard` (serves in a background thread) or use it through
    :func:`serve_dashboard` (blocks). It is a context manager that stops the server on exit.

    Attributes
    ----------
    host : str
        The address it is bound to.
    port : int
        The port it is bound to (the real one when ``0`` was asked for).
    storage_url : str
        The resolved storage URL (may contain a password; print :attr:`redacted_url`).
    """

    def __init__(self, storage_url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                 log_requests: bool = False, artifacts: str | None = None) -> None:
        from wsgiref.simple_server import WSGIRequestHandler

        url = st.resolve_url(storage_url)
        server_cls, quiet_handler = _server_classes(host)
        # Bind first: a port in use is reported before anything else happens.
        try:
            self._httpd = server_cls((host, port), WSGIRequestHandler if log_requests else quiet_handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is in use; pick another with --port") from None
            if e.errno == errno.EACCES:
                raise UsageError(
                    f"no permission to bind port {port} on {host}; pick a port above 1023 with --port"
                ) from None
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}; check --host") from None
        try:
            import optuna_dashboard

            self._rdb = st.create_storage(url, create=False)
            self._httpd.set_app(optuna_dashboard.wsgi(self._rdb, artifact_store=_artifact_store(url, artifacts)))
        except BaseException:
            self._httpd.server_close()
            raise
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self.storage_url = url
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """Base URL of the dashboard, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def redacted_url(self) -> str:
        """The storage URL with any password replaced, safe to print."""
        return st.redact(self.storage_url)

    def serve_forever(self) -> None:
        """Serve requests in this thread until :meth:`stop` is called from another thread."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._close()

    def start(self) -> DashboardServer:
        """Serve in a daemon thread and return at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                            name="hpsearch-dashboard", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and the storage's connections (idempotent)."""
        if self._closed:
            return
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._httpd.server_close()
        self._rdb.engine.dispose()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _artifact_store(url: str, artifacts: str | None) -> Any:
    """The run's artifact store as an Optuna artifact store (the dashboard lists and serves the saved
    models: :class:`trials.ArtifactLocation`), or None when there is none to show."""
    from trials import is_object_store, open_location

    from .._artifacts import resolve_artifacts

    path = resolve_artifacts(url, artifacts)
    if path is None or not (is_object_store(path) or os.path.isdir(path)):
        return None
    return open_location(path)


def start_dashboard(storage_url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                    log_requests: bool = False, artifacts: str | None = None) -> DashboardServer:
    """Start optuna-dashboard in a background thread; returns at once.

    Parameters
    ----------
    storage_url : str, optional
        Storage URL; else ``$HPSEARCH_STORAGE``; else ``sqlite:///hpsearch.db``. The storage is
        opened with :func:`storage.create_storage` (SQLite: WAL and a busy timeout, so reading a
        live study never makes its writer fail with ``database is locked``).
    host : str, default "127.0.0.1"
        Address to bind. Any host but ``127.0.0.1``/``localhost``/``::1`` prints a warning on
        stderr: the dashboard has no authentication and can modify and delete studies.
    port : int, default 8080
        Port to bind; ``0`` picks a free one (see :attr:`DashboardServer.port`).
    log_requests : bool, default False
        Log every HTTP request on stderr.
    artifacts : str, optional
        The artifact directory of the saved models (else ``$HPSEARCH_ARTIFACTS``, else beside the
        SQLite file); the dashboard lists a best trial's model under its artifacts.

    Returns
    -------
    DashboardServer
        Serving; call :meth:`~DashboardServer.stop` (or use it as a context manager) to end it.

    Raises
    ------
    UsageError
        The port is in use (``port 8080 on 127.0.0.1 is in use; pick another with --port``) or
        cannot be bound.
    StorageError
        The storage cannot be opened or holds no studies.
    """
    server = DashboardServer(storage_url, host=host, port=port, log_requests=log_requests, artifacts=artifacts)
    if host not in LOCAL_HOSTS:
        print(_no_auth_warning(host, server.port, server.storage_url), file=sys.stderr, flush=True)
    return server.start()


def serve_dashboard(storage_url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                    log_requests: bool = False, artifacts: str | None = None) -> None:
    """Serve optuna-dashboard on the storage until Ctrl-C (blocking).

    Parameters
    ----------
    storage_url, host, port, log_requests, artifacts
        As for :func:`start_dashboard`.

    Raises
    ------
    UsageError
        The port is in use or cannot be bound.
    StorageError
        The storage cannot be opened or holds no studies.
    """
    server = DashboardServer(storage_url, host=host, port=port, log_requests=log_requests, artifacts=artifacts)
    if host not in LOCAL_HOSTS:
        print(_no_auth_warning(host, server.port, server.storage_url), file=sys.stderr, flush=True)
    print(f"optuna-dashboard for {server.redacted_url} at {server.url}/dashboard (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
