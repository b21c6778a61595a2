"""``hpsearch serve``: the server, its API on uvicorn, until SIGINT or SIGTERM."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import storage as st

from .._errors import UsageError
from .._stop import StopToken, stop_on_signals
from ._net import is_loopback
from ._runner import RunnerDied, start_runner
from ._server import Server

__all__ = ["freeze_startup_heap", "serve"]


def freeze_startup_heap() -> None:
    """Take what start-up allocated (Ray, Optuna, FastAPI, SQLAlchemy: long-lived objects) out of
    the garbage collector's full collections (:func:`gc.freeze`).

    Without it every full collection walked them all, and each one paused every request in flight
    (up to hundreds of milliseconds on a loaded 2-core machine: the tail of the API's latency).
    Called once, after start-up: garbage made later is collected as before.
    """
    gc.collect()
    gc.freeze()


def serve(
    server: Server,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] | None = None,
    split: bool = True,
) -> None:
    """Open ``server``, serve its API on ``host:port`` until SIGINT/SIGTERM, then close it.

    Beyond loopback every request needs a token, and the server refuses to start while none exists
    (:class:`~search.UsageError`). ``on_ready`` gets the base URL once the scheduler runs.

    ``split`` (the default, where ``os.fork`` exists): the studies (scheduler, orchestrators, Ray)
    run in a process of their own (:mod:`search.service._runner`), and this one serves only the
    API, so that requests never wait for the orchestrators' Python. ``server`` must not be opened
    yet. ``split=False``: everything in this process, as a notebook's ``Server`` runs.

    Raises
    ------
    RunnerDied
        The studies' process ended while the API served (the API stops too).
    """
    import uvicorn

    from ._app import create_app

    require = not is_loopback(host)
    if require:  # checked before Ray starts
        engine = st.create_engine(server.url)
        try:
            st.ensure_token_table(engine)
            if not st.any_token(engine):
                raise UsageError(f"--host {host} is reachable from other machines, and every request then needs a "
                                 "token, but none exists: create one first with `hpsearch token create NAME "
                                 "--admin` (same --storage), or serve on 127.0.0.1")
        finally:
            engine.dispose()
    runner = None
    if split and hasattr(os, "fork"):
        # the API's cache is told of the runner's changes; it exists once create_app ran below
        runner = start_runner(server, on_change=server._changed)
        server.open(connect=False)
        server.attach_runner(runner)
    else:
        server.open()
    try:
        app = create_app(server, require_token=require)
        freeze_startup_heap()
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        userver = uvicorn.Server(config)
        if runner is None:
            server.start()
        else:
            runner.on_death = lambda: setattr(userver, "should_exit", True)
        if on_ready is not None:
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"http://{shown}:{port}")
        # uvicorn handles SIGINT/SIGTERM while it serves, then raises the signal again once it stopped:
        # it lands here as a stop request (no exception), and the studies are stopped cleanly below
        with stop_on_signals(StopToken()):
            userver.run()
        if runner is not None and runner.died:
            raise RunnerDied(runner.exit_code)
    finally:
        if runner is not None:
            runner.close()
        server.close()
