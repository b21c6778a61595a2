"""Fair share of the server's trial slots between the studies it runs.

Every running study gets one slot; the rest go one at a time to the study with the fewest slots
per unit of ``priority`` (ties: the one that started first), never beyond what it can use (its
``resources.max_concurrent``). Equal priorities split the slots evenly (round robin); priority 2
gets twice the share of priority 1; no running study ever has none, so none starves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trials import Dataset, TrialSettings

from ..backends import Backend, Event, TrialJob, WorkerFn, train_job

__all__ = ["Demand", "SharedBackend", "fair_shares"]


@dataclass(frozen=True)
class Demand:
    """A running study's claim on slots: its ``priority`` (weight, >= 1) and the most it can use."""

    name: str
    priority: int
    cap: int


def fair_shares(demands: Sequence[Demand], slots: int) -> dict[str, int]:
    """Slots per study (``demands`` in start order): each gets at least 1, the rest by weight.

    The server admits no more studies than ``slots``; if there are more anyway, each still gets 1.
    """
    alloc = {d.name: 1 for d in demands}
    free = slots - len(demands)
    order = {d.name: i for i, d in enumerate(demands)}
    while free > 0:
        open_ = [d for d in demands if alloc[d.name] < d.cap]
        if not open_:
            break
        pick = min(open_, key=lambda d: (alloc[d.name] / max(1, d.priority), order[d.name]))
        alloc[pick.name] += 1
        free -= 1
    return alloc


class SharedBackend(Backend):
    """A study's backend whose capacity is its current fair share (read again at every dispatch).

    The orchestrator starts a trial only while fewer than :attr:`capacity` run, so when another
    study starts, this one's running trials finish and the freed slots go to the newcomer; nothing
    is preempted.

    Parameters
    ----------
    inner:
        The backend that runs the trials.
    share:
        The study's current share of the server's slots.
    """

    def __init__(self, inner: Backend, share: Callable[[], int]) -> None:
        self.inner = inner
        self._share = share

    @property
    def capacity(self) -> int:  # never 0: a loop with no trial running and no capacity would end the study
        return max(1, min(self.inner.capacity, self._share()))

    @property
    def can_stack(self) -> bool:  # type: ignore[override]
        return self.inner.can_stack

    def start(self) -> None:
        self.inner.start()

    def check_resources(self) -> None:
        self.inner.check_resources()

    def open(self, data: Dataset, settings: TrialSettings, fn: WorkerFn = train_job) -> None:
        self.inner.open(data, settings, fn)

    def submit(self, job: TrialJob) -> None:
        self.inner.submit(job)

    def submit_stack(self, jobs: Sequence[TrialJob]) -> None:
        self.inner.submit_stack(jobs)

    def poll(self, timeout: float) -> list[Event]:
        return self.inner.poll(timeout)

    def stop(self, key: str) -> None:
        self.inner.stop(key)

    def cancel_all(self) -> list[str]:
        return self.inner.cancel_all()

    def now(self) -> float:
        return self.inner.now()

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> str:
        return f"{self.inner.describe()} (shared by hpsearch serve)"
