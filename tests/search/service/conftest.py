"""Fixtures of the service tests: a storage URL on SQLite and PostgreSQL, servers on in-process backends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from search import LocalBackend, StudySpec
from search.service import Server
from tests.search.fakes import quadratic


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


class Recording(LocalBackend):
    """A :class:`LocalBackend` that records, at every submit, how many trials of its study were in
    flight and the study's share of the server's slots at that moment."""

    def __init__(self, name: str, server: Callable[[], Server], max_concurrent: int, log: list[Any]) -> None:
        super().__init__(max_concurrent)
        self.name, self._server, self._log = name, server, log
        self._inflight = 0
        self._mu = threading.Lock()

    def submit_stack(self, jobs: Any) -> None:
        with self._mu:
            self._inflight += len(jobs)
            self._log.append((self.name, self._inflight, self._server().shares().get(self.name)))
        super().submit_stack(jobs)

    def poll(self, timeout: float) -> list[Any]:
        events = super().poll(timeout)
        with self._mu:
            self._inflight -= sum(1 for e in events if type(e).__name__ in ("Finished", "Failed"))
        return events

    def cancel_all(self) -> list[str]:
        keys = super().cancel_all()
        with self._mu:
            self._inflight -= len(keys)
        return keys


@pytest.fixture
def make_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Server]]:
    """``make_server(url, slots)``: a :class:`Server` (opened, not started) whose studies run on
    :class:`Recording` backends with the ``quadratic`` worker (``FAKE_EPOCH_S`` 0.05 s per epoch);
    ``server.log`` holds the backends' records. Closed at the end."""
    monkeypatch.setenv("FAKE_EPOCH_S", "0.05")
    monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "3")
    made: list[Server] = []

    def make(url: str, slots: int = 2, **kw: Any) -> Server:
        log: list[Any] = []
        holder: list[Server] = []

        def factory(spec: StudySpec) -> Recording:
            return Recording(spec.name, lambda: holder[0], slots, log)

        server = Server(url, slots=slots, backend_factory=factory, worker_fn=quadratic, poll_s=0.05, **kw)
        server.log = log  # type: ignore[attr-defined]
        holder.append(server)
        made.append(server.open())
        return server

    yield make
    for s in made:
        s.close()


def study_text(spec: dict[str, Any]) -> str:
    return json.dumps(spec)


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")





def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve_api() -> Iterator[Callable[..., str]]:
    """``serve_api(server, require_token=False, **create_app_kw)``: the server's API on real uvicorn, 127.0.0.1 and a
    free port, in a thread of this process; returns its base URL. The server is started too."""
    import uvicorn

    from search.service import create_app

    running: list[tuple[Any, threading.Thread]] = []

    def serve(server: Server, *, require_token: bool = False, **kw: Any) -> str:
        port = free_port()
        app = create_app(server, require_token=require_token, **kw)
        userver = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=userver.run, daemon=True)
        thread.start()
        running.append((userver, thread))
        wait_until(lambda: userver.started, 30, "uvicorn to start")
        server.start()
        return f"http://127.0.0.1:{port}"

    yield serve
    for userver, thread in running:
        userver.should_exit = True
        thread.join(30)
