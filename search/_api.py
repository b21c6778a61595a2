"""The Python API behind every CLI command: ``run``, ``resume`` and the read-only views.

>>> from search import run_study
>>> result = run_study("examples/digits.yaml", storage="sqlite:///hpsearch.db")  # doctest: +SKIP
>>> result.best.params  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna

import storage as st
from trials import load_dataset

from . import __version__
from ._backend import Backend, WorkerFn, stack_fn_for, train_job
from ._errors import UsageError
from ._orchestrator import Callbacks, Interrupted, Orchestrator, count_done
from ._spec import SpecError, StudySpec, load_spec, parse_spec
from ._strategies import make_pruner, make_sampler

__all__ = [
    "StudyResult",
    "UsageError",
    "make_backend",
    "resume_study",
    "run_study",
    "spec_diff",
]

T = TypeVar("T")
_log = logging.getLogger(__name__)
SPEC_ATTR = "hpsearch_spec"
DATA_ATTR = "hpsearch_data_fingerprint"
LEASE_STALE_ENV = "HPSEARCH_LEASE_STALE_S"
"""Seconds without heartbeat after which another run may take a study's lease over (default 30)."""
DB_RETRY_ENV = "HPSEARCH_DB_RETRY_ATTEMPTS"
"""Attempts of a database call that fails transiently before the run stops (default 8, about 60 s)."""
# keys that may change between invocations of one study: how much and where, not what
_MUTABLE_PREFIXES = ("n_trials", "resources.")



@dataclass(frozen=True)
class BestTrial:
    number: int
    value: float
    params: dict[str, Any]
    fold_scores: list[float]
    value_std: float | None
    test_score: float | None


@dataclass(frozen=True)
class StudyResult:
    """What a run or resume ended with."""

    study: str
    storage: str
    done: int
    budget: int
    best: BestTrial | None
    test_result: dict[str, Any] | None = None
    messages: list[str] = field(default_factory=list)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def spec_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Readable lines ``key: old -> new`` for every leaf that differs."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            lines.append(f"{k}: {json.dumps(a.get(k, '<absent>'))} -> {json.dumps(b.get(k, '<absent>'))}")
    return lines


def make_backend(spec: StudySpec, address: str | None = None) -> Backend:
    """The Ray backend configured from ``spec.resources`` and ``spec.retries``."""
    from ._ray import RayBackend

    r = spec.resources
    return RayBackend(
        address,
        cpus_per_trial=r.cpus_per_trial,
        gpus_per_trial=r.gpus_per_trial,
        max_concurrent=r.max_concurrent,
        worker_crash_retries=spec.retries.worker_crash_retries,
        parallel_folds=r.parallel_folds,
        n_folds=spec.cv.folds,
    )


def _check_cluster_storage(url: str, address: str | None, allow_sqlite: bool) -> None:
    address = address or os.environ.get("RAY_ADDRESS")
    if address and url.startswith("sqlite") and not allow_sqlite:
        raise UsageError(
            f"storage {st.redact(url)} is a SQLite file but trials run on the Ray cluster {address!r}: "
            "use PostgreSQL (--storage postgresql://user@host:5432/db) so the dashboard, reports and a "
            "resume from another machine see the study, or pass --allow-sqlite if this machine stays the "
            "only one that reads it (only the orchestrator writes the database; workers never do)"
        )


def _env_number(name: str, default: float, *, integer: bool = False, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or value <= minimum:
        kind = "an integer" if integer else "a number"
        raise UsageError(f"environment variable {name}={raw!r} must be {kind} > {minimum:g}")
    return value


def lease_stale_after() -> float:
    """Seconds without heartbeat after which a study's lease is taken over (``HPSEARCH_LEASE_STALE_S``)."""
    return _env_number(LEASE_STALE_ENV, st.DEFAULT_STALE_AFTER_S)


def db_retry_attempts() -> int:
    """Attempts of a transiently failing database call (``HPSEARCH_DB_RETRY_ATTEMPTS``)."""
    return int(_env_number(DB_RETRY_ENV, 8, integer=True))


@contextmanager
def _leased(engine: Any, name: str, retry: Callable[[Callable[[], Any]], Any]) -> Iterator[st.Lease]:
    stale_after = lease_stale_after()
    lease = retry(lambda: st.Lease(engine, name, stale_after=stale_after))
    retry(lease.acquire)
    lease.start_heartbeat()
    try:
        yield lease
    except BaseException:
        _release(lease, name, stale_after)  # an interrupt in there: the one propagating says it all
        raise
    if _release(lease, name, stale_after):
        raise KeyboardInterrupt  # Ctrl-C while the lease was released after a finished run


def _release(lease: st.Lease, name: str, stale_after: float) -> bool:
    """Release ``lease``; True if a Ctrl-C landed in the release (it is completed first).

    A Ctrl-C reaches every process of the terminal's group, and a user may press it twice: one landing
    in here must not leave the row behind (a resume would wait for it to go stale).
    """
    interrupted = False
    for _ in range(3):
        try:
            lease.release()
            break
        except KeyboardInterrupt:
            interrupted = True
        except Exception as e:  # database gone: the row goes stale and the next run takes it over
            lease.stop_heartbeat()
            _log.warning("could not release the lease of study %r (%s); it expires after %g s without "
                         "heartbeat", name, str(e).splitlines()[0] if str(e) else type(e).__name__, stale_after)
            break
    return interrupted


class _StopSignals:
    """SIGTERM stops a run like Ctrl-C (a KeyboardInterrupt) from its first line, also during start-up
    (the orchestrator defers both while it records a trial). Main thread only; the previous
    handlers are restored on exit; records which signal it was, for the message."""

    def __init__(self) -> None:
        self.name = "Ctrl-C"
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._pending = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self._deferring:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Writes that belong together (create a study, then store its spec): a stop signal during
        them takes effect once they are done."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main interpreter
                return
            self._previous.setdefault(sig, previous)

    def __enter__(self) -> _StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _open_study(
    storage: optuna.storages.BaseStorage, spec: StudySpec, *, must_exist: bool
) -> tuple[optuna.Study, list[str], bool]:
    """Create the study, or load it and check its stored spec against ``spec``; True if created."""
    messages: list[str] = []
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        study_id = None
    if study_id is None:
        if must_exist:
            raise UsageError(f"no study named {spec.name!r}")
        study = optuna.create_study(
            storage=storage, study_name=spec.name, direction=spec.study_direction,
            sampler=make_sampler(spec), pruner=make_pruner(spec),
        )
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        study.set_user_attr("hpsearch_version", __version__)
        return study, messages, True
    n_existing = len(storage.get_all_trials(study_id, deepcopy=False))
    study = optuna.load_study(
        study_name=spec.name, storage=storage,
        sampler=make_sampler(spec, n_existing_trials=n_existing), pruner=make_pruner(spec),
    )
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None and not must_exist and n_existing == 0 and not study.user_attrs \
            and study.direction.name.lower() == spec.study_direction:
        # created by a run that was killed before it stored the spec (two writes, not one): adopt it
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        study.set_user_attr("hpsearch_version", __version__)
        return study, messages, False
    if stored is None:
        raise UsageError(
            f"study {spec.name!r} exists but was not created by hpsearch (no stored spec); "
            "choose another name with --study NAME"
        )
    diff = spec_diff(stored, spec.to_dict())
    fixed = [d for d in diff if not d.startswith(_MUTABLE_PREFIXES)]
    if fixed and n_existing == 0 and not must_exist:
        # no trial yet (a first run stopped before its first trial, e.g. on a typo'd data path):
        # nothing to mix, so the corrected spec replaces it (its direction may differ: a new study)
        optuna.delete_study(study_name=spec.name, storage=storage)
        study, _, _ = _open_study(storage, spec, must_exist=False)
        return study, [f"study {spec.name!r} had no trials yet; its spec was replaced ({', '.join(fixed)})"], True
    if fixed:
        raise UsageError(
            f"study {spec.name!r} already exists with a different spec; refusing to mix results. Changed:\n  "
            + "\n  ".join(fixed)
            + "\nRun it under a new name (--study NEW_NAME), or undo the change to resume it."
        )
    if diff:
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        messages.append("updated " + ", ".join(diff))
    return study, messages, False


def _nothing_to_do(study: optuna.Study, spec: StudySpec, refit: bool) -> bool:
    """The budget is used, no trial is left to recover or run, and the final refit (if asked) is stored."""
    trials = study.get_trials(deepcopy=False)
    if any(not t.state.is_finished() for t in trials) or count_done(trials) < spec.budget:
        return False
    if not refit or not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        return True
    stored = study.user_attrs.get("test_result")
    return bool(stored) and stored.get("trial") == study.best_trial.number


def _drop_if_empty(storage: optuna.storages.BaseStorage, name: str) -> None:
    """Delete study ``name`` if it has no trial (best effort: the error being raised matters more)."""
    try:
        if not storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False):
            optuna.delete_study(study_name=name, storage=storage)
    except Exception as e:
        _log.debug("could not drop the empty study %r: %s", name, e)


def _check_data(study: optuna.Study, spec: StudySpec, fingerprint: str) -> None:
    """Refuse to continue a study on data other than what its trials were scored on.

    The first run stores the data's fingerprint (:meth:`trials.Dataset.fingerprint`); a study
    created before fingerprints existed adopts the data of its next run.
    """
    stored = study.user_attrs.get(DATA_ATTR)
    if stored is None:
        study.set_user_attr(DATA_ATTR, fingerprint)
        return
    if stored != fingerprint:
        d = spec.data
        what = f"data.path {d.path!r}" if d.path else f"data.source {d.source!r}"
        raise UsageError(
            f"the data of study {spec.name!r} changed since its trials were scored ({what}: fingerprint "
            f"{fingerprint[:12]} now, {stored[:12]} when the study started); continuing would mix scores of "
            "two data sets. Restore the original data to resume, or run the new data as a new study "
            "(--study NEW_NAME)"
        )


def _summarize(study: optuna.Study, spec: StudySpec, url: str, messages: list[str]) -> StudyResult:
    from ._orchestrator import count_done

    trials = study.get_trials(deepcopy=False)
    test = study.user_attrs.get("test_result")
    best = None
    try:
        bt = study.best_trial
    except ValueError:
        bt = None
    if bt is not None:
        best = BestTrial(
            number=bt.number, value=float(bt.value), params=dict(bt.params),  # type: ignore[arg-type]
            fold_scores=list(bt.user_attrs.get("fold_scores", [])),
            value_std=bt.user_attrs.get("value_std"),
            test_score=test.get("test_score") if test and test.get("trial") == bt.number else None,
        )
    return StudyResult(spec.name, st.redact(url), count_done(trials), spec.budget, best, test, messages)


_DISK_FULL = ("database or disk is full", "no space left on device", "disk full", "could not extend file")


def _disk_full(exc: BaseException) -> str | None:
    """The driver's words if ``exc`` (or what caused it) says the disk is full, else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc.__cause__  # the driver's error, not the retry summary
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        for text in (str(getattr(cur, "orig", "") or ""), str(cur)):
            low = text.lower()
            if any(m in low for m in _DISK_FULL):
                line = next(ln.strip() for ln in text.splitlines() if any(m in ln.lower() for m in _DISK_FULL))
                return line.split(") ", 1)[-1] if line.startswith("(") else line
        cur = cur.__cause__ or cur.__context__
    return None


def _execute(
    spec: StudySpec,
    *,
    storage: str | None,
    address: str | None,
    backend: Backend | None,
    callbacks: Callbacks | None,
    worker_fn: WorkerFn,
    must_exist: bool,
    allow_sqlite: bool,
    refit: bool,
) -> StudyResult:
    url = st.resolve_url(storage)
    if backend is None:
        _check_cluster_storage(url, address, allow_sqlite)
    attempts = db_retry_attempts()
    lease_stale_after()  # a malformed setting fails before anything is written
    rdb = st.create_storage(url)
    hint = shlex.quote(spec.name)  # pasted into a shell in the "run `hpsearch resume NAME`" hint

    def retry(fn: Callable[[], T]) -> T:
        try:
            return st.retrying(fn, url=url, study_name=hint, attempts=attempts)
        except st.StorageUnavailable as e:
            full = _disk_full(e)
            if full is None:
                raise
            raise st.StorageError(
                f"the disk holding the database {st.redact(url)} is full ({full}). Finished trials are "
                f"saved; free some space, then run `hpsearch resume {hint}` to continue."
            ) from e

    stops = _StopSignals()
    try:
        with stops:
            return _execute_leased(spec, rdb, url, retry, stops, address=address, backend=backend,
                                   callbacks=callbacks, worker_fn=worker_fn, must_exist=must_exist, refit=refit)
    except KeyboardInterrupt as e:  # outside the trial loop: start-up, the final refit, or a second Ctrl-C
        what = e.args[0] if e.args and isinstance(e.args[0], str) else stops.name  # "SIGTERM" from ray.init
        raise Interrupted(f"interrupted ({what}); finished trials are saved. "
                          f"Continue with `hpsearch resume {hint}`") from None


def _execute_leased(
    spec: StudySpec,
    rdb: optuna.storages.RDBStorage,
    url: str,
    retry: Callable[[Callable[[], Any]], Any],
    stops: _StopSignals,
    *,
    address: str | None,
    backend: Backend | None,
    callbacks: Callbacks | None,
    worker_fn: WorkerFn,
    must_exist: bool,
    refit: bool,
) -> StudyResult:
    # The lease comes first: a run refused because another one is live must not write the study.
    with _leased(rdb.engine, spec.name, retry) as lease:
        with stops.deferred():  # never a study without its spec (Optuna creates it, then hpsearch stores it)
            study, messages, created = retry(lambda: _open_study(rdb, spec, must_exist=must_exist))
        if retry(lambda: _nothing_to_do(study, spec, refit)):  # a finished study: no Ray, no data
            return retry(lambda: _summarize(study, spec, url, messages))
        try:
            backend = backend or make_backend(spec, address)
            try:
                # Ray starts first: its workers then import torch while the driver loads the data.
                backend.start()
                data = load_dataset(spec.data, spec.cv, spec.seed)
                retry(lambda: _check_data(study, spec, data.fingerprint()))
            except BaseException:
                backend.close()
                raise
        except Exception:
            if created:  # bad data or resources: leave no empty study behind (Ctrl-C keeps it, to resume)
                _drop_if_empty(rdb, spec.name)
            raise

        def db(fn: Callable[[], T]) -> T:
            lease.check()  # never write a study another orchestrator has taken over
            return retry(fn)

        try:
            backend.open(data, spec.settings, worker_fn)
            stack = spec.resources.stack_trials
            if stack > 1 and (stack_fn_for(worker_fn) is None or not backend.can_stack):
                name = getattr(worker_fn, "__name__", repr(worker_fn))
                why = (f"worker function {name} cannot train several trials as one stack (give it a .stack function)"
                       if backend.can_stack else f"{type(backend).__name__} cannot run stacks")
                (callbacks or Callbacks()).on_message(
                    f"resources.stack_trials: {stack} ignored: {why}; trials run one per task")
                stack = 1
            orch = Orchestrator(study, spec, backend, callbacks=callbacks, db=db, stack_trials=stack)
            orch.run()
            if refit:
                orch.refit_best()
        finally:
            backend.close()
    return retry(lambda: _summarize(study, spec, url, messages))


def run_study(
    spec: StudySpec | str | Path | dict[str, Any],
    *,
    storage: str | None = None,
    address: str | None = None,
    study_name: str | None = None,
    strategy: str | None = None,
    n_trials: int | None = None,
    backend: Backend | None = None,
    callbacks: Callbacks | None = None,
    worker_fn: WorkerFn = train_job,
    allow_sqlite: bool = False,
    refit: bool = True,
) -> StudyResult:
    """Run a study to its budget; an existing study of the same name and spec is resumed.

    Parameters
    ----------
    spec:
        A :class:`StudySpec`, a path to a YAML study file, or a mapping of its keys.
    storage:
        Database URL; else ``HPSEARCH_STORAGE``; else ``sqlite:///hpsearch.db``.
    address:
        Ray cluster address; else ``RAY_ADDRESS``; else a local Ray started for this run.
    study_name, strategy, n_trials:
        Override the file's ``name``, ``strategy`` and ``n_trials``.
    backend:
        Where trials run; default :class:`~search.RayBackend` from ``spec.resources``.
    """
    overrides = {"name": study_name, "strategy": strategy, "n_trials": n_trials}
    if isinstance(spec, StudySpec):
        spec = parse_spec(spec.to_dict(), **overrides) if any(overrides.values()) else spec
    elif isinstance(spec, dict):
        spec = parse_spec(spec, **overrides)
    else:
        spec = load_spec(spec, **overrides)
    return _execute(spec, storage=storage, address=address, backend=backend, callbacks=callbacks,
                    worker_fn=worker_fn, must_exist=False, allow_sqlite=allow_sqlite, refit=refit)


def stored_spec(name: str, storage: str | None = None) -> StudySpec:
    """The spec stored with study ``name``."""
    url = st.resolve_url(storage)
    attrs = st.study_attrs(st.create_engine(url, create=False), name)  # never create a file to read
    raw = attrs.get(SPEC_ATTR)
    if raw is None:
        raise UsageError(f"study {name!r} has no stored hpsearch spec: it was not created by hpsearch, or its first "
                         "run was killed right after creating it; in that case run its study file again "
                         "(`hpsearch run FILE`), which adopts it")
    try:
        return parse_spec(raw, source=f"stored spec of study {name!r}", stored=True)
    except SpecError as e:
        raise UsageError(str(e)) from None


def resume_study(
    name: str,
    *,
    storage: str | None = None,
    address: str | None = None,
    n_trials: int | None = None,
    backend: Backend | None = None,
    callbacks: Callbacks | None = None,
    worker_fn: WorkerFn = train_job,
    allow_sqlite: bool = False,
    refit: bool = True,
) -> StudyResult:
    """Continue study ``name`` from what the database holds (its stored spec); ``n_trials`` raises the budget."""
    spec = stored_spec(name, storage)
    if n_trials is not None:
        spec = parse_spec(spec.to_dict(), n_trials=n_trials, stored=True)
    return _execute(spec, storage=storage, address=address, backend=backend, callbacks=callbacks,
                    worker_fn=worker_fn, must_exist=True, allow_sqlite=allow_sqlite, refit=refit)
