"""The Python API behind every CLI command: ``run``, ``resume`` and the read-only views.

>>> from search import run_study
>>> result = run_study("examples/digits.yaml", storage="sqlite:///hpsearch.db")  # doctest: +SKIP
>>> result.best.params  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna

import storage as st
from storage import StudyAttr, TrialAttr
from trials import Dataset, check_metric, load_dataset
from trials import check_data as check_data_source
from trials._config import factory_name

from ._artifacts import ModelStore, check_writable, checkpoint_needs_dir, not_saved_hint, resolve_artifacts
from ._errors import NoTrialCompleted, UsageError
from ._notify import Notifier
from ._open import check_data, check_scaling, drop_if_empty, nothing_to_do, open_study, spec_diff
from ._orchestrator import Callbacks, Interrupted, Orchestrator, count_done, sweep_checkpoints
from ._session import Session, leased
from ._settings import db_retry_attempts, lease_stale_after, notify_backoff_s
from ._spec import NotifySpec, SpecError, StudySpec, load_spec, parse_spec
from ._stop import StopToken, stop_on_signals
from .backends import Backend, WorkerFn, stack_fn_for, train_job

__all__ = [
    "StudyResult",
    "UsageError",
    "make_backend",
    "resume_study",
    "run_study",
    "spec_diff",
    "stored_spec",
]

T = TypeVar("T")


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
    refit_error: str | None = None
    """Why the final refit of the best trial failed (then there is no test score), else None."""


def make_backend(spec: StudySpec, address: str | None = None) -> Backend:
    """The Ray backend configured from ``spec.resources`` and ``spec.retries``."""
    from .backends import RayBackend

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


def _finished(result: StudyResult) -> StudyResult:
    """``result``, unless no trial completed: then :class:`NoTrialCompleted` (the CLI exits 4)."""
    if result.best is None:
        raise NoTrialCompleted(
            f"no trial of study {result.study!r} completed; `hpsearch show {shlex.quote(result.study)}` lists why "
            f"({result.done}/{result.budget} trials done: each one failed or was pruned)",
            study=result.study, result=result)
    return result


def _summarize(study: optuna.Study, spec: StudySpec, url: str, messages: list[str]) -> StudyResult:

    trials = study.get_trials(deepcopy=False)
    test = study.user_attrs.get(StudyAttr.TEST_RESULT)
    best = None
    try:
        bt = study.best_trial
    except ValueError:
        bt = None
    if bt is not None:
        best = BestTrial(
            number=bt.number, value=float(bt.value), params=dict(bt.params),  # type: ignore[arg-type]
            fold_scores=list(bt.user_attrs.get(TrialAttr.FOLD_SCORES, [])),
            value_std=bt.user_attrs.get(TrialAttr.VALUE_STD),
            test_score=test.get("test_score") if test and test.get("trial") == bt.number else None,
        )
    failed = study.user_attrs.get(StudyAttr.REFIT_ERROR)
    refit_error = failed.get("reason") if failed and bt is not None and failed.get("trial") == bt.number else None
    return StudyResult(spec.name, st.redact(url), count_done(trials), spec.budget, best, test, messages,
                       refit_error)


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
    stop: StopToken | None,
    artifacts: str | None = None,
) -> StudyResult:
    url = st.resolve_url(storage)
    if backend is None:
        _check_cluster_storage(url, address, allow_sqlite)
    # the model's directory is checked before anything runs: a refit that cannot save it is hours lost;
    # so are checkpoints a trial cannot write
    ckpt = spec.checkpoint.enabled
    art_dir = resolve_artifacts(url, artifacts) if refit or ckpt else None
    if ckpt and art_dir is None:
        raise UsageError(f"checkpoint: {checkpoint_needs_dir(url)}")
    if art_dir is not None:
        check_writable(art_dir, "checkpoints and the best model are" if ckpt and refit
                       else "checkpoints are" if ckpt else "the best model is")
    leftovers = None if art_dir is not None else _leftover_dir(url, artifacts)
    attempts = db_retry_attempts()
    lease_stale_after()  # a malformed setting fails before anything is written
    if spec.notify is not None:
        notify_backoff_s()  # a malformed setting fails before anything runs, not in the posting thread
    rdb = st.create_storage(url)
    hint = shlex.quote(spec.name)  # pasted into a shell in the "run `hpsearch resume NAME`" hint
    token = stop if stop is not None else StopToken()
    session = Session(url, hint, token, attempts)
    notifier = Notifier(spec.notify, spec.name, rdb.engine) if spec.notify is not None else None
    if notifier is not None:
        callbacks = notifier.callbacks(callbacks)
    try:
        with stop_on_signals(token):
            result = _execute_leased(spec, rdb, session, address=address, backend=backend, callbacks=callbacks,
                                     worker_fn=worker_fn, must_exist=must_exist, refit=refit, art_dir=art_dir,
                                     leftovers=leftovers)
    except KeyboardInterrupt as e:  # outside the trial loop: start-up, the final refit, or a forced stop
        what = token.reason or (e.args[0] if e.args and isinstance(e.args[0], str) else "Ctrl-C")
        raise Interrupted(f"interrupted ({what}); finished trials are saved. "
                          f"Continue with `hpsearch resume {hint}`") from None
    except Interrupted:  # a stop asked for: nothing to notify
        raise
    except Exception as e:
        if notifier is not None:  # NoTrialCompleted included: the budget is used up, with no result
            notifier.failed(st.scrub(str(e) or type(e).__name__, url))
        raise
    else:
        if notifier is not None:
            notifier.finished(f"{result.done}/{result.budget} trials done")
        return result
    finally:
        if notifier is not None:
            notifier.close()


def _sweep_finished(study: optuna.Study, store: str | None, call: Any, messages: list[str]) -> None:
    """A finished study's leftover checkpoints (a run killed after its last trial was recorded, before
    its file was deleted): :func:`~search._orchestrator.sweep_checkpoints`, as a run does at its start."""
    if store is None:
        return
    trials = call(lambda: study.get_trials(deepcopy=False))
    kept = (call(lambda: study.user_attrs).get(StudyAttr.KEPT_CHECKPOINT) or {}).get("checkpoint")
    swept = sweep_checkpoints(trials, store, kept)
    if swept:
        messages.append(swept)


def _leftover_dir(url: str, artifacts: str | None) -> str | None:
    """The artifact directory of a run that writes none (no checkpoints, no refit), where checkpoints of
    an earlier run may be left; None when there is none, or it is not a directory hpsearch can use."""
    try:
        return resolve_artifacts(url, artifacts)
    except UsageError:
        return None


def _check_model(spec: StudySpec, data: Dataset, callbacks: Callbacks | None = None) -> None:
    """Try a ``model.factory`` (:func:`trials.check_model`) or a ``trainable`` (one epoch on a few rows:
    :func:`trials.check_trainable`) on the driver before any trial runs: code that cannot serve the
    study then fails it at once, and leaves no study behind, rather than failing (and retrying)
    every trial on the workers. A model that ``torch.func.vmap`` cannot stack is said once
    (``callbacks.on_message``): its trials train one fold at a time."""
    if spec.trainable is not None:
        from trials import check_trainable

        for params in spec.probe_params():
            check_trainable(spec.settings, params, data)
        return
    if spec.model.factory is None:
        return
    from trials import check_model

    reasons = {check_model(spec.settings, params, data.sample_shape, int(data.n_classes))
               for params in spec.probe_params()}
    reasons.discard(None)
    if reasons:
        (callbacks or Callbacks()).on_message(
            f"model.factory {factory_name(spec.model.factory)}: its folds train one member at a time, not stacked "
            f"through torch.func.vmap, which cannot run the model ({sorted(reasons)[0]})")


def _check_stream(spec: StudySpec, data: Dataset, callbacks: Callbacks | None) -> None:
    """A streamed Dataset (too large to preload): say so, and refuse checkpoints, which it does not support."""
    if data.stream is None:
        return
    from trials._stream import refuse_checkpoint

    if spec.checkpoint.enabled:
        raise refuse_checkpoint(data.stream)
    (callbacks or Callbacks()).on_message(
        f"{data.stream.describe()}: it streams. The driver read its labels once; each worker calls the factory and "
        "reads its rows in batches through a DataLoader, and the folds train one member at a time in lockstep, not "
        "stacked (a stack gathers every fold's rows from one tensor in memory)")


def _execute_leased(
    spec: StudySpec,
    rdb: optuna.storages.RDBStorage,
    session: Session,
    *,
    address: str | None,
    backend: Backend | None,
    callbacks: Callbacks | None,
    worker_fn: WorkerFn,
    must_exist: bool,
    refit: bool,
    art_dir: str | None = None,
    leftovers: str | None = None,
) -> StudyResult:
    """``leftovers``: the artifact directory where an earlier run's checkpoints may be (checkpoints
    now off, no refit: ``art_dir`` is None); the orchestrator deletes those of finished trials."""
    call, token, url = session.call, session.stop, session.url
    # The lease comes first: a run refused because another one is live must not write the study.
    with leased(rdb.engine, spec.name, session):
        study, messages, created = call(lambda: open_study(rdb, spec, must_exist=must_exist))
        token.check()
        if call(lambda: nothing_to_do(study, spec, refit)):  # a finished study: no Ray, no data
            _sweep_finished(study, art_dir or leftovers, call, messages)
            return _finished(call(lambda: _summarize(study, spec, url, messages)))
        try:
            # a missing file or column, or labels that do not fit the task, are said before Ray starts (seconds)
            check_data_source(spec.data, spec.task, spec.metric, spec.cv, spec.seed)
            backend = backend or make_backend(spec, address)
            try:
                # Ray starts first: its workers then import torch while the driver loads the data.
                backend.start()
                token.check()  # a stop during start-up takes effect between its steps
                data = load_dataset(spec.data, spec.cv, spec.seed, spec.task)
                if spec.task == "classification":
                    check_metric(data.n_classes, spec.metric, data.name)
                token.check()
                scaling = call(lambda: check_scaling(study, data.scaling))
                if scaling != data.scaling:
                    data = dataclasses.replace(data, scaling=scaling)
                call(lambda: check_data(study, spec, data.fingerprint(), data.classes))
                _check_stream(spec, data, callbacks)
                _check_model(spec, data, callbacks)
            except BaseException:
                backend.close()
                raise
        except Exception:
            if created:  # bad data or resources: leave no empty study behind (a stop keeps it, to resume)
                drop_if_empty(rdb, spec.name)
            raise
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
            models = None if art_dir is None or not refit else ModelStore(art_dir, _model_info(data))
            orch = Orchestrator(study, spec, backend, callbacks=callbacks, db=call, stack_trials=stack, stop=token,
                                models=models, checkpoints=art_dir or leftovers)
            orch.run()
            if refit:
                test = orch.refit_best()
                if art_dir is None and test is not None and not test.get("model_artifact"):
                    messages.append(not_saved_hint(url))
        finally:
            backend.close()
    result = call(lambda: _summarize(study, spec, url, messages))
    token.check()  # a Ctrl-C during that last read is not lost either (a script looping over studies stops)
    return _finished(result)


def _model_info(data: Dataset) -> dict[str, Any]:
    """What a saved model records about its data: the shape of one sample, how its features are
    scaled (``feature_mean`` / ``feature_scale`` hold one value per feature either way) and the class labels."""
    # the label of output i: the data's own labels (plain Python values); none for a regression; 0 .. K-1
    # for a Dataset built without them
    classes = list(data.classes) if data.classes is not None else [] if data.n_classes == 1 else list(
        range(data.n_classes))
    return {
        "n_features": int(data.n_features),
        "n_classes": int(data.n_classes),
        "classes": classes,
        "input_shape": [int(s) for s in data.sample_shape],
        "scaling": data.scaling,
    }


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
    stop: StopToken | None = None,
    artifacts: str | None = None,
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
    stop:
        A :class:`~search.StopToken` whose ``set`` stops the run as Ctrl-C does (in-flight trials are
        recorded and re-run by a resume); for runs outside the main thread, where signals never arrive.
    artifacts:
        Directory the final refit's model is saved to (an Optuna artifact store); else
        ``HPSEARCH_ARTIFACTS``; else ``<sqlite file>.artifacts`` beside a SQLite database. Without one
        (PostgreSQL) the model is not saved and ``messages`` says what to pass. Checked writable
        before anything runs (:class:`UsageError` otherwise).
    """
    overrides: dict[str, Any] = {"name": study_name, "strategy": strategy, "n_trials": n_trials}
    if isinstance(spec, StudySpec):
        if any(overrides.values()):
            # model_dump keeps a callable model.factory (to_dict names it only, as the study stores it);
            # neither keeps notify (it is never stored): pass it on
            notify = spec.notify.model_dump(mode="json") if spec.notify is not None else None
            spec = parse_spec(spec.model_dump(), notify=notify, **overrides)
    elif isinstance(spec, dict):
        spec = parse_spec(spec, **overrides)
    else:
        spec = load_spec(spec, **overrides)
    return _execute(spec, storage=storage, address=address, backend=backend, callbacks=callbacks,
                    worker_fn=worker_fn, must_exist=False, allow_sqlite=allow_sqlite, refit=refit, stop=stop,
                    artifacts=artifacts)


def stored_spec(name: str, storage: str | None = None) -> StudySpec:
    """The spec stored with study ``name``."""
    url = st.resolve_url(storage)
    attrs = st.study_attrs(st.create_engine(url, create=False), name)  # never create a file to read
    raw = attrs.get(StudyAttr.SPEC)
    if raw is None:
        raise UsageError(f"study {name!r} has no stored hpsearch spec: it was not created by hpsearch, or its first "
                         "run was killed right after creating it; in that case run its study file again "
                         "(`hpsearch run FILE`), which adopts it")
    try:
        return parse_spec(raw, source=f"stored spec of study {name!r}", stored=True)
    except SpecError as e:
        raise UsageError(f"study {name!r} cannot be resumed from its stored spec: " + "; ".join(e.errors)) from None


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
    stop: StopToken | None = None,
    artifacts: str | None = None,
    notify: NotifySpec | None = None,
) -> StudyResult:
    """Continue study ``name`` from what the database holds (its stored spec); ``n_trials`` raises the budget.

    ``artifacts`` as for :func:`run_study`. ``notify``: where to post when it finishes, fails or stalls;
    a stored spec never holds its study file's ``notify`` section (a webhook URL is often a secret),
    so a resume notifies only when given one.
    """
    spec = stored_spec(name, storage)
    if n_trials is not None and spec.strategy == "grid" and n_trials != spec.grid_size:
        raise UsageError(f"--n-trials {n_trials}: study {name!r} is a grid of {spec.grid_size} points, and grid runs "
                         "every point exactly once; resume it without --n-trials")
    if n_trials is not None:
        spec = parse_spec(spec.to_dict(), n_trials=n_trials, stored=True)
    if notify is not None:
        spec = spec.model_copy(update={"notify": notify})
    return _execute(spec, storage=storage, address=address, backend=backend, callbacks=callbacks,
                    worker_fn=worker_fn, must_exist=True, allow_sqlite=allow_sqlite, refit=refit, stop=stop,
                    artifacts=artifacts)
