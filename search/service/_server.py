"""The service's core: a queue in the database and a scheduler that runs several studies at once.

:class:`Server` runs each study's orchestrator (the ordinary :func:`~search.resume_study`, under
the study's own lease) in a thread of this process, on backends that share one Ray connection and
the server's slots (:func:`~search.service.fair_shares`). The queue is table ``hpsearch_queue``
(:mod:`storage._queue`); the server holds nothing a restart would lose: after a ``kill -9``, a new
server finds ``queued`` rows still queued and ``running`` rows without a live run, and resumes
those through the resume path (their dead lease is taken over on the same host at once; trials
that were in flight run again once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import storage as st
from storage import StudyAttr

from .._errors import NoTrialCompleted
from .._open import open_study
from .._orchestrator import Callbacks, Interrupted
from .._session import Session, leased
from .._settings import db_retry_attempts, lease_stale_after
from .._spec import NotifySpec, StudySpec, load_spec_text, parse_spec
from .._stop import StopToken
from ..backends import Backend, WorkerFn, train_job
from ._errors import Conflict, Forbidden, NotFound
from ._shares import Demand, SharedBackend, fair_shares

__all__ = ["BackendFactory", "Server", "User"]

_log = logging.getLogger(__name__)

BackendFactory = Callable[[StudySpec], Backend]
"""Makes the backend of one study from its spec (the default: a :class:`~search.RayBackend`)."""

_SHUTDOWN = "the server shut down"


@dataclass(frozen=True)
class User:
    """Who asks: a token's name (None without a token, on loopback) and whether it is an admin's."""

    name: str | None = None
    admin: bool = False


class _Changes(Callbacks):
    """Tells the server's listeners that a study's trials changed (a trial started or was told)."""

    def __init__(self, name: str, changed: Callable[[str], None]) -> None:
        self.name, self.changed = name, changed

    def on_start(self, study: Any, done: int, budget: int, where: str) -> None:
        self.changed(self.name)

    def on_trial_start(self, number: int, params: dict[str, Any]) -> None:
        self.changed(self.name)

    def on_trial_end(self, trial: Any, done: int, budget: int) -> None:
        self.changed(self.name)

    def on_refit_start(self, number: int) -> None:
        self.changed(self.name)


@dataclass
class _Run:
    name: str
    priority: int
    cap: int
    stop: StopToken = field(default_factory=StopToken)
    thread: threading.Thread | None = None


class Server:
    """Runs the studies submitted to it, several at once, from a queue in the database.

    Parameters
    ----------
    storage:
        Database URL (else ``HPSEARCH_STORAGE``, else ``sqlite:///hpsearch.db``).
    address:
        Ray cluster address (else ``RAY_ADDRESS``, else a local Ray started by :meth:`start`);
        unused with ``backend_factory``.
    slots:
        Trials at once, shared by all running studies; default: the Ray cluster's CPUs (at least 1).
        At most this many studies run at once; the others wait, queued.
    backend_factory:
        The backend of each study; default a :class:`~search.RayBackend` on the server's Ray
        connection (``search.make_backend``), which never disconnects it.
    worker_fn:
        The worker function of every trial (tests pass cheap ones).
    poll_s:
        How often the scheduler looks at the queue.
    artifacts:
        Where every study's best model is saved (as ``run_study``'s ``artifacts``: else
        ``HPSEARCH_ARTIFACTS``, else beside a SQLite file); checked writable by :meth:`open`.

    Examples
    --------
    >>> server = Server("sqlite:///hpsearch.db").start()  # doctest: +SKIP
    >>> server.submit(open("study.yaml").read())  # doctest: +SKIP
    >>> server.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        storage: str | None = None,
        *,
        address: str | None = None,
        slots: int | None = None,
        backend_factory: BackendFactory | None = None,
        worker_fn: WorkerFn = train_job,
        poll_s: float = 0.2,
        artifacts: str | None = None,
    ) -> None:
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.url = st.resolve_url(storage)
        self.address = address
        self.slots = slots or 0
        self._factory = backend_factory
        self.worker_fn = worker_fn
        self.poll_s = poll_s
        self.artifacts = artifacts
        self._runs: dict[str, _Run] = {}
        self._retry_at: dict[str, float] = {}  # study -> monotonic time before which it is not restarted
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._owns_ray = False
        self._listeners: list[Callable[[str], None]] = []
        self._runner: Any = None  # a RunnerLink: the studies run in another process (see attach_runner)
        self.engine: Any = None

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` after this server changed study ``name`` in the database (a submit,
        a cancel, its run starting or ending, a trial started or told); the API drops its cached body."""
        self._listeners.append(listener)

    def _changed(self, name: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(name)
            except Exception as e:  # a listener's bug must not stop a study
                _log.warning("change listener failed for study %r: %s", name, e)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Server:
        """:meth:`open` (if not done yet), then start scheduling the queue."""
        if self.engine is None:
            self.open()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hpsearch-scheduler", daemon=True)
            self._thread.start()
        return self

    def open(self, *, connect: bool = True) -> Server:
        """Open the database (creating the queue and token tables) and connect Ray; nothing runs yet:
        studies submitted now wait for :meth:`start`. ``connect=False``: no Ray (the API's side of
        :func:`~search.service.serve`, whose studies run in another process)."""
        from .._artifacts import check_writable, resolve_artifacts

        art_dir = resolve_artifacts(self.url, self.artifacts)  # a directory no study could save to: refused now
        if art_dir is not None:
            check_writable(art_dir)
        self._rdb = st.create_storage(self.url)  # Optuna's tables, so a first submit finds them
        self.engine = self._rdb.engine
        st.ensure_queue_table(self.engine)
        st.ensure_token_table(self.engine)
        st.ensure_lease_table(self.engine)
        st.ensure_notify_table(self.engine)
        if connect:
            if self._factory is None:
                self._connect_ray()
            if not self.slots:
                self.slots = self._cluster_cpus()
        return self

    def attach_runner(self, runner: Any) -> None:
        """Run nothing here: ``runner`` (a :class:`~search.service._runner.RunnerLink`, opened) runs the
        studies in another process. Submits and cancels still write the queue here; the runner is
        woken by them, checks a submitted study's resources on its Ray, and reports its changes."""
        self._runner = runner
        self.slots = runner.slots

    def _connect_ray(self) -> None:
        import logging as _logging
        import os

        import ray

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=_logging.ERROR, log_to_driver=False)
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        from ..backends._ray import _without_rays_sigterm_handler

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        with _without_rays_sigterm_handler():  # SIGTERM stops the server cleanly, not sys.exit(15)
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(address="local", object_store_memory=256 * 1024 * 1024, **kwargs)
        self._owns_ray = True

    def _cluster_cpus(self) -> int:
        if self._factory is not None:
            return 1
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def close(self, timeout: float = 60.0) -> None:
        """Stop the running studies (their in-flight trials are recorded and re-run when the server
        starts again: their rows stay ``running``) and the scheduler; disconnect Ray if it was ours."""
        self._closing.set()
        self._wake.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.stop.set(_SHUTDOWN)
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False
        if self.engine is not None:
            self.engine.dispose()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------------
    def submit(self, text: str, *, priority: int = 1, user: User | None = None,
               source: str = "the submitted study file") -> st.QueueRow:
        """Validate a study file's text as ``hpsearch run`` does, create its study, queue it.

        Raises :class:`~search.SpecError`, :class:`~search.UsageError`, ``trials.DataError`` or
        :class:`~search.ResourceError` with ``hpsearch run``'s messages; :class:`Conflict` if the study
        is queued or running already; :class:`storage.LeaseHeld` if another process runs it.
        A cancelled or finished study submitted again resumes from what the database holds.
        """
        from trials import check_data

        if priority < 1:
            raise ValueError(f"priority {priority}: must be an integer >= 1 (a study's weight in the share of slots)")
        spec = load_spec_text(text, source=source)
        row = st.queue_row(self.engine, spec.name)
        if row is not None and row.state in st.ACTIVE_STATES:
            raise Conflict(f"study {spec.name!r} is {row.state} already; cancel it first "
                           f"(`hpsearch cancel {spec.name}`) or wait for it to finish")
        check_data(spec.data, spec.task, spec.metric, spec.cv, spec.seed)
        self._check_resources(spec)
        self._create(spec)
        # the notify section is never stored with the study (a webhook URL is often a secret): the
        # server keeps it in its own table, so that a restarted server still notifies
        st.set_notify_config(self.engine, spec.name,
                             spec.notify.model_dump(mode="json") if spec.notify is not None else None)
        row = st.queue_submit(self.engine, spec.name, priority=priority, owner=(user or User()).name)
        if row is None:
            raise Conflict(f"study {spec.name!r} was submitted at the same time by another request; it is queued")
        self._changed(spec.name)
        self._poke()
        return row

    def _check_resources(self, spec: StudySpec) -> None:
        if self._runner is not None:  # the studies run in another process: asked on its Ray
            self._runner.check_resources(spec)
            return
        backend = self._backend_for(spec)
        backend.check_resources()

    def _backend_for(self, spec: StudySpec) -> Backend:
        if self._factory is not None:
            return self._factory(spec)
        from .._api import make_backend

        return make_backend(spec, self.address)

    def _create(self, spec: StudySpec) -> None:
        """Create (or check against the stored spec) the Optuna study, under its lease as a run does."""
        session = Session(self.url, spec.name, StopToken(), db_retry_attempts())
        with leased(self.engine, spec.name, session):
            session.call(lambda: open_study(self._rdb, spec, must_exist=False))

    def cancel(self, name: str, user: User | None = None) -> st.QueueRow:
        """Cancel study ``name``: a queued one never starts; a running one stops as on Ctrl-C (in-flight
        trials are recorded, the study stays resumable: submit it again). Only its owner or an admin may."""
        user = user or User()
        row = st.queue_row(self.engine, name)
        if row is None:
            raise NotFound(f"no study named {name!r} was submitted to this server", name=name)
        if not user.admin and row.owner != user.name:
            raise Forbidden(f"study {name!r} belongs to {row.owner or 'a user without token'}; only its owner "
                            "or an admin token may cancel it")
        who = user.name or "a user without token"
        if not st.queue_transition(self.engine, name, "cancelled", only_from=st.ACTIVE_STATES,
                                   message=f"cancelled by {who}"):
            raise Conflict(f"study {name!r} is {row.state}, not queued or running: nothing to cancel")
        self._changed(name)
        with self._lock:
            run = self._runs.get(name)
        if run is not None:
            run.stop.set(f"cancelled by {who}")
        self._poke()  # a run in another process (or another server) stops at its next tick
        return st.queue_row(self.engine, name)  # type: ignore[return-value]

    @property
    def storage(self) -> Any:
        """The Optuna storage (opened by :meth:`open`)."""
        return self._rdb

    def row(self, name: str) -> st.QueueRow | None:
        """Study ``name``'s queue row (None: never submitted here)."""
        return st.queue_row(self.engine, name)

    def shares(self) -> dict[str, int]:
        """The current slots of each running study."""
        with self._lock:
            return fair_shares([Demand(r.name, r.priority, r.cap) for r in self._runs.values()], self.slots)

    def running(self) -> list[str]:
        """Studies with a live run in this server."""
        with self._lock:
            return list(self._runs)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no study is queued or running (tests, scripts); True if that happened in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not st.queue_rows(self.engine, st.ACTIVE_STATES) and not self.running():
                return True
            time.sleep(0.05)
        return False

    # -- scheduling ------------------------------------------------------------------------------
    def _poke(self) -> None:
        """Look at the queue now (here, and in the runner process when there is one)."""
        self._wake.set()
        if self._runner is not None:
            self._runner.wake()

    def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                self._tick()
            except Exception as e:  # the database away for a while: the next tick tries again
                _log.warning("scheduler: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _tick(self) -> None:
        rows = st.queue_rows(self.engine, st.ACTIVE_STATES)
        now = time.monotonic()
        with self._lock:
            # a run whose row is no longer running was cancelled elsewhere (the API's process, another
            # server): it stops as on Ctrl-C, as a cancel in this process stops it
            live = {r.study_name for r in rows if r.state == "running"}
            for name, run in self._runs.items():
                if name not in live and not run.stop.is_set:
                    row = st.queue_row(self.engine, name)
                    if row is not None and row.state == "cancelled":
                        run.stop.set(row.message or "cancelled")
            # rows 'running' with no run here: a server that died ran them; they resume first
            orphans = [r for r in rows if r.state == "running" and r.study_name not in self._runs]
            queued = [r for r in rows if r.state == "queued"]
            for r in orphans + queued:
                if self._closing.is_set() or len(self._runs) >= self.slots:
                    break
                if self._retry_at.get(r.study_name, 0.0) > now:
                    continue
                if r.state == "queued" and not st.queue_transition(self.engine, r.study_name, "running",
                                                                    only_from=("queued",)):
                    continue  # cancelled meanwhile
                self._changed(r.study_name)
                self._launch(r)

    def _launch(self, row: st.QueueRow) -> None:
        spec = self._stored_spec(row.study_name)
        cap = (spec.resources.max_concurrent if spec is not None else None) or self.slots
        run = _Run(row.study_name, row.priority, cap)
        run.thread = threading.Thread(target=self._run, args=(run,), name=f"hpsearch-study-{row.study_name}",
                                      daemon=True)
        self._runs[run.name] = run
        run.thread.start()

    def _stored_spec(self, name: str) -> StudySpec | None:
        raw = st.study_attrs(self.engine, name).get(StudyAttr.SPEC)
        return parse_spec(raw, stored=True) if raw is not None else None

    def _share_of(self, name: str) -> Callable[[], int]:
        return lambda: self.shares().get(name, 1)

    def _run(self, run: _Run) -> None:
        from .._api import resume_study

        outcome: tuple[str, str] | None = None  # (state, message)
        try:
            spec = self._stored_spec(run.name)
            if spec is None:
                raise NotFound(f"study {run.name!r} has no stored spec; submit its study file again", name=run.name)
            config = st.notify_config(self.engine, run.name)
            notify = NotifySpec.model_validate(config) if config is not None else None
            backend = SharedBackend(self._backend_for(spec), self._share_of(run.name))
            result = resume_study(run.name, storage=self.url, backend=backend, worker_fn=self.worker_fn,
                                  stop=run.stop, artifacts=self.artifacts, notify=notify,
                                  callbacks=_Changes(run.name, self._changed))
            outcome = ("done", f"{result.done}/{result.budget} trials done")
        except NoTrialCompleted as e:
            outcome = ("done", str(e))
        except Interrupted as e:
            if run.stop.reason != _SHUTDOWN:
                outcome = ("cancelled", str(e))  # the row says so already (cancel wrote it first)
        except st.LeaseHeld as e:  # another process runs it: try again once its lease may have gone stale
            _log.warning("%s", str(e).splitlines()[0])
            with self._lock:
                self._retry_at[run.name] = time.monotonic() + lease_stale_after()
        except Exception as e:
            _log.warning("study %r failed: %s", run.name, str(e).splitlines()[0] if str(e) else type(e).__name__)
            outcome = ("failed", f"{type(e).__name__}: {e}")
        finally:
            # the row first, then the run: a tick in between must not take a finished run's row for an orphan
            if outcome is not None and outcome[0] != "cancelled":
                try:
                    st.queue_transition(self.engine, run.name, outcome[0], only_from=("running",),
                                        message=st.scrub(outcome[1], self.url))
                except Exception as e:  # database away: the row stays running, and is resumed (nothing to do)
                    _log.warning("could not record the end of study %r: %s", run.name, e)
            with self._lock:
                self._runs.pop(run.name, None)
            self._changed(run.name)
            self._wake.set()
