"""Where trials run. The orchestrator (what to run) sees only :class:`Backend` and its events.

A backend receives :class:`TrialJob` objects, runs each with a worker function on some worker, and
returns what happened as events from :meth:`Backend.poll`: per-epoch :class:`Report` events while a
trial trains, then one :class:`Finished` or :class:`Failed` event. :meth:`Backend.stop` asks a running
trial to stop at an epoch boundary (the next one, or the one after on Ray); it then finishes normally with
``stopped_by_report=True``.

Several trials whose configurations can share one network (:func:`trials.stack_key`) may run as
one job stack (:meth:`Backend.submit_stack`): one worker trains them together, and their events
are still per trial.
"""

from __future__ import annotations

import socket
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from trials import Dataset, EpochReport, TestResult, TrialOutOfMemory, TrialResult, TrialSettings

__all__ = [
    "Backend",
    "Event",
    "Failed",
    "Finished",
    "Report",
    "StackFn",
    "TrialJob",
    "WorkerFn",
    "execute",
    "stack_fn_for",
    "train_job",
    "train_stack",
]


@dataclass(frozen=True)
class TrialJob:
    """One unit of work: a trial (CV score) or the final refit (test score) of a configuration."""

    key: str
    number: int
    params: dict[str, Any]
    seed: int
    kind: Literal["trial", "refit"] = "trial"
    attempt: int = 0
    folds: tuple[int, ...] | None = None
    gpu_fraction: float | None = None


@dataclass(frozen=True)
class Report:
    key: str
    report: EpochReport


@dataclass(frozen=True)
class Finished:
    key: str
    result: TrialResult | TestResult
    node: str = ""
    node_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0


@dataclass(frozen=True)
class Failed:
    """A job that did not produce a result. ``kind`` tells the orchestrator how to treat it."""

    key: str
    reason: str
    kind: Literal["error", "oom", "crash", "cancelled"] = "error"
    detail: str = ""


Event = Report | Finished | Failed


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
        return refit_and_test(data, job.params, settings, seed=job.seed)
    return run_trial(
        data,
        job.params,
        settings,
        seed=job.seed,
        report=report,
        gpu_fraction=job.gpu_fraction,
        folds=job.folds,
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
    """The default stack function: :func:`trials.run_trials` (k folds x m configurations)."""
    from trials import run_trials

    return run_trials(
        data,
        [j.params for j in jobs],
        settings,
        seeds=[j.seed for j in jobs],
        report=lambda i, r: report(jobs[i].key, r),
        gpu_fraction=jobs[0].gpu_fraction,
        folds=jobs[0].folds,
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
    if isinstance(exc, TrialOutOfMemory):
        return Failed(key, str(exc), "oom")
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


class Backend(ABC):
    """Runs jobs somewhere. Subclasses: :class:`~search.LocalBackend`, :class:`~search.RayBackend`."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start what does not need the data (processes, connections); called before the data is loaded.

        Lets slow start-up overlap with the driver's own preparation. :meth:`open` must work
        whether or not this was called.
        """

    @abstractmethod
    def open(self, data: Dataset, settings: TrialSettings, fn: WorkerFn = train_job) -> None:
        """Make ``data`` available to workers (once) and prepare to run ``fn``."""

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many jobs may run at once."""

    @abstractmethod
    def submit(self, job: TrialJob) -> None:
        """Start ``job``; its events come from :meth:`poll`."""

    can_stack: bool = False
    """Whether :meth:`submit_stack` takes more than one job (the orchestrator stacks only then)."""

    def submit_stack(self, jobs: Sequence[TrialJob]) -> None:
        """Start ``jobs`` (trials with equal :func:`trials.stack_key`) as one stack on one worker.

        Their events are per job, as for :meth:`submit`. Backends that cannot stack
        (``can_stack`` False) run a single job only.
        """
        if len(jobs) != 1:
            raise NotImplementedError(f"{type(self).__name__} cannot stack trials; set resources.stack_trials: 1")
        self.submit(jobs[0])

    @abstractmethod
    def poll(self, timeout: float) -> list[Event]:
        """Events since the last call, waiting up to ``timeout`` seconds for the first one."""

    @abstractmethod
    def stop(self, key: str) -> None:
        """Ask job ``key`` to stop at an epoch boundary soon (pruning; Ray: one epoch after the next)."""

    @abstractmethod
    def cancel_all(self) -> list[str]:
        """Cancel every running job at once; returns their keys. No events follow for them."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`open` took (processes, object-store entries)."""

    def describe(self) -> str:
        """One line for logs: where jobs run."""
        return type(self).__name__
