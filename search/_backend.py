"""Where trials run. The orchestrator (what to run) sees only :class:`Backend` and its events.

A backend receives :class:`TrialJob` objects, runs each with a worker function on some worker, and
returns what happened as events from :meth:`Backend.poll`: per-epoch :class:`Report` events while a
trial trains, then one :class:`Finished` or :class:`Failed` event. :meth:`Backend.stop` asks a running
trial to stop at an epoch boundary (the next one, or the one after on Ray); it then finishes normally with
``stopped_by_report=True``.
"""

from __future__ import annotations

import socket
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from trials import Dataset, EpochReport, TestResult, TrialOutOfMemory, TrialResult, TrialSettings

__all__ = [
    "Backend",
    "Event",
    "Failed",
    "Finished",
    "Report",
    "TrialJob",
    "WorkerFn",
    "execute",
    "train_job",
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


def execute(
    fn: WorkerFn,
    data: Dataset,
    settings: TrialSettings,
    job: TrialJob,
    report: Callable[[EpochReport], bool],
    node_id: str = "",
) -> Outcome:
    """Run ``fn`` for ``job`` and catch what it raises, so every backend reports failures alike."""
    started = time.time()
    try:
        result = fn(data, settings, job, report)
    except TrialOutOfMemory as e:
        return Outcome(job.key, failure=Failed(job.key, str(e), "oom"), node_id=node_id)
    except Exception as e:  # a trial's own failure must never take the study down
        detail = traceback.format_exc(limit=20)
        reason = f"{type(e).__name__}: {e}"[:2000]
        return Outcome(job.key, failure=Failed(job.key, reason, "error", detail), node_id=node_id)
    return Outcome(job.key, result=result, node_id=node_id, started_at=started)


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
