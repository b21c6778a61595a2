"""What a worker runs: the worker function of a job (or a stack of jobs), wrapped so that every
backend reports a trial's failure the same way (:func:`execute`)."""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from trials import Dataset, EpochReport, TestResult, TrialResult, TrialSettings

from ._events import Failed, Finished, TrialJob

__all__ = ["Outcome", "StackFn", "WorkerFn", "execute", "stack_fn_for", "train_job", "train_stack"]


class WorkerFn(Protocol):
    """The function a worker runs for a job; ``report`` returns True when the trial must stop."""

    def __call__(
        self,
        data: Dataset,
        settings: TrialSettings,
        job: TrialJob,
        report: Callable[[EpochReport], bool],
    ) -> TrialResult | TestResult: ...


def train_job(
    data: Dataset,
    settings: TrialSettings,
    job: TrialJob,
    report: Callable[[EpochReport], bool],
) -> TrialResult | TestResult:
    """The default worker function: :func:`trials.run_trial` or :func:`trials.refit_and_test`."""
    from trials import refit_and_test, run_trial

    if job.kind == "refit":
        return refit_and_test(data, job.params, settings, seed=job.seed, epochs=job.epochs)
    return run_trial(
        data,
        job.params,
        settings,
        seed=job.seed,
        report=report,
        gpu_fraction=job.gpu_fraction,
        folds=job.folds,
        checkpoint=job.checkpoint,
    )


class StackFn(Protocol):
    """Trains several trial jobs as one stack; ``report(key, r)`` returns True when that trial must stop."""

    def __call__(
        self,
        data: Dataset,
        settings: TrialSettings,
        jobs: Sequence[TrialJob],
        report: Callable[[str, EpochReport], bool],
    ) -> list[TrialResult]: ...


def train_stack(
    data: Dataset,
    settings: TrialSettings,
    jobs: Sequence[TrialJob],
    report: Callable[[str, EpochReport], bool],
) -> list[TrialResult]:
    """The default stack function: :func:`trials.run_trials` (k folds x m configurations).

    The jobs of one stack carry one checkpoint plan (the orchestrator gives them the same): the
    checkpoint holds the whole stack, and its re-run goes on from it as the same stack again.
    """
    from trials import run_trials

    plans = {j.checkpoint for j in jobs}
    if len(plans) > 1:
        raise ValueError(f"the jobs of one stack must share one checkpoint plan, got {len(plans)}: "
                         f"{', '.join(sorted(str(p.artifact_id) if p else 'None' for p in plans))}")
    return run_trials(
        data,
        [j.params for j in jobs],
        settings,
        seeds=[j.seed for j in jobs],
        report=lambda i, r: report(jobs[i].key, r),
        gpu_fraction=jobs[0].gpu_fraction,
        folds=jobs[0].folds,
        checkpoint=jobs[0].checkpoint,
    )


train_job.stack = train_stack  # type: ignore[attr-defined]


def stack_fn_for(fn: WorkerFn) -> StackFn | None:
    """How jobs of worker function ``fn`` train as a stack: its ``.stack`` function (``train_stack``
    for :func:`train_job`), or None: its trials run one per job."""
    return getattr(fn, "stack", None)


@dataclass
class Outcome:
    """What :func:`execute` sends back from a worker (picklable, no exceptions crossing processes)."""

    key: str
    result: TrialResult | TestResult | None = None
    failure: Failed | None = None
    node: str = field(default_factory=socket.gethostname)
    node_id: str = ""
    started_at: float = 0.0
    finished_at: float = field(default_factory=time.time)

    def event(self) -> Finished | Failed:
        if self.failure is not None:
            return self.failure
        assert self.result is not None
        return Finished(self.key, self.result, self.node, self.node_id, self.started_at, self.finished_at)


def _failure(key: str, exc: Exception) -> Failed:
    from trials import CheckpointWriteError, TrialOutOfMemory  # here: the driver need not import torch

    if isinstance(exc, TrialOutOfMemory):
        return Failed(key, str(exc), "oom")
    if isinstance(exc, CheckpointWriteError):  # the artifact store, not the trial: the study stops, resumable
        return Failed(key, str(exc), "store")
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    return Failed(key, reason, "error", traceback.format_exc(limit=20))


def execute(
    fn: WorkerFn,
    data: Dataset,
    settings: TrialSettings,
    jobs: Sequence[TrialJob],
    report: Callable[[str, EpochReport], bool],
    node_id: str = "",
) -> list[Outcome]:
    """Run ``fn`` for one job, or its stack function for several (one stack), catching what it
    raises, so every backend reports failures alike. One outcome per job, in order; when a
    stack fails, every job in it gets the failure."""
    started = time.time()
    try:
        if len(jobs) == 1:
            job = jobs[0]
            results: list[TrialResult | TestResult] = [fn(data, settings, job, lambda r: report(job.key, r))]
        else:
            stack = stack_fn_for(fn)
            if stack is None:
                raise TypeError(f"worker function {fn!r} cannot train trials as one stack (it has no .stack)")
            results = list(stack(data, settings, jobs, report))
            if len(results) != len(jobs):
                raise RuntimeError(f"the stack function returned {len(results)} results for {len(jobs)} trials")
    except Exception as e:  # a trial's own failure must never take the study down
        return [Outcome(j.key, failure=_failure(j.key, e), node_id=node_id) for j in jobs]
    return [Outcome(j.key, result=r, node_id=node_id, started_at=started) for j, r in zip(jobs, results)]

