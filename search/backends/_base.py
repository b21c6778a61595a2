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

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

from trials import Dataset, TrialSettings

from ._events import Event, TrialJob
from ._worker import WorkerFn, train_job

__all__ = ["Backend"]


class Backend(ABC):
    """Runs jobs somewhere. Subclasses: :class:`~search.LocalBackend`, :class:`~search.RayBackend`,
    :class:`~search.SimulatedBackend`."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start what does not need the data (processes, connections); called before the data is loaded.

        Lets slow start-up overlap with the driver's own preparation. :meth:`open` must work
        whether or not this was called.
        """

    def check_resources(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~search.ResourceError` if the cluster can never run one job (checked at a
        service's submit, with the cluster already connected); nothing to check by default."""

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

    def now(self) -> float:
        """The backend's clock, in seconds; a simulated backend's is virtual.

        Defaults to :func:`time.monotonic`. Only differences between two readings mean anything,
        so timeouts measured on it work on every backend.
        """
        return time.monotonic()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`open` took (processes, object-store entries)."""

    def describe(self) -> str:
        """One line for logs: where jobs run."""
        return type(self).__name__
