"""Simulated backend: the real worker functions on a virtual clock, in the calling thread.

No threads, no sleeps, no wall clock: a job's events are computed when it is submitted and
released by :meth:`SimulatedBackend.poll` as the virtual clock passes their time. What the
orchestrator does then depends on nothing but the study, so a test on this backend sees the same
sequence of events (and storage calls) on every run, however loaded the machine is.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trials import Dataset, EpochReport, TrialSettings

from ._base import Backend
from ._events import Event, Failed, Finished, Report, TrialJob
from ._worker import WorkerFn, execute, train_job

__all__ = ["SimulatedBackend"]

_NODE = "simulated"


@dataclass(frozen=True)
class _Timed:
    """An event and the virtual time it is due at."""

    at: float
    event: Event


@dataclass
class _Task:
    """One submitted job or stack: its worker's events, computed ahead, and how many were delivered."""

    seq: int  # submission order: breaks ties between tasks' events due at the same time
    jobs: list[TrialJob]
    start: float
    epoch_s: dict[str, float]
    stops: dict[str, float] = field(default_factory=dict)  # key -> virtual time stop(key) was called
    events: list[_Timed] = field(default_factory=list)  # sorted by time; reports before outcomes
    delivered: int = 0  # events[:delivered] were returned by poll

    @property
    def keys(self) -> list[str]:
        return [j.key for j in self.jobs]

    @property
    def pending(self) -> list[_Timed]:
        return self.events[self.delivered:]


class SimulatedBackend(Backend):
    """Runs jobs with the same worker functions as the other backends, on a virtual clock.

    At :meth:`submit` the worker function runs at once, in the calling thread, through
    :func:`~search.backends.execute` (so a raised error, an out-of-memory trial or a stack that
    fails turn into the same events as on :class:`~search.LocalBackend`). Each report is stamped with
    its virtual time (the job's start + epoch x ``epoch_s``), the outcome with the time of the job's
    end (its last epoch; a stack's outcomes all come at the end of the stack, as from one worker);
    during this first run ``report`` always returns False. :meth:`poll` then moves the clock to the
    next event due and returns what is due, in time order.

    :meth:`stop` at virtual time T *replays* the job (the whole stack, for a stack) with ``report``
    returning True for that trial from its first epoch stamped after T: the trial stops at the next
    epoch boundary, as on :class:`~search.LocalBackend` (that epoch is its last), and the job's
    pending events are replaced by the replay's. **The worker function must therefore be
    deterministic**: the same job must report the same values up to the stop (seed its randomness
    from ``job.seed``). A replay whose events before the stop differ from the first run's raises
    :class:`RuntimeError`.

    Parameters
    ----------
    max_concurrent:
        Jobs (stacks) at once. Submitting more raises :class:`RuntimeError`: the orchestrator never
        does, so a test that sees it has found an orchestrator bug.
    epoch_s:
        Virtual seconds per epoch of a job: a number, or a function of the :class:`TrialJob`
        (slow and fast configurations side by side). Must be finite and > 0.
    crash:
        ``crash(job)`` -> epoch E or None: the job's worker dies while training epoch E (reports
        1..E-1 arrive, then :class:`Failed` with ``kind="crash"`` at the time epoch E would have been
        reported), unless the job ended before. A crash in a stack fails every trial of the stack.
    can_stack:
        Whether :meth:`submit_stack` takes several jobs (False: a backend that cannot stack).

    Notes
    -----
    Every :meth:`open` starts the clock at 0 with no job. The events' worker times
    (:attr:`Finished.started_at`, :attr:`Finished.finished_at`) and the results' ``duration_s`` are
    virtual seconds; :attr:`Finished.node` is ``"simulated"``.

    Examples
    --------
    >>> from search import SimulatedBackend, run_study
    >>> run_study("study.yaml", storage="sqlite:///t.db", backend=SimulatedBackend(2),
    ...           worker_fn=my_cheap_worker)  # doctest: +SKIP
    """

    def __init__(
        self,
        max_concurrent: int = 1,
        *,
        epoch_s: float | Callable[[TrialJob], float] = 1.0,
        crash: Callable[[TrialJob], int | None] | None = None,
        can_stack: bool = True,
    ) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"SimulatedBackend: max_concurrent must be an integer >= 1, got {max_concurrent!r}")
        if not callable(epoch_s):
            _check_epoch_s(epoch_s, "epoch_s")
        self.max_concurrent = max_concurrent
        self.epoch_s = epoch_s
        self.crash = crash
        self.can_stack = can_stack

    # -- lifecycle ---------------------------------------------------------------------------------
    def open(self, data: Dataset, settings: TrialSettings, fn: WorkerFn = train_job) -> None:
        self._data, self._settings, self._fn = data, settings, fn
        self._now = 0.0
        self._seq = 0
        self._tasks: list[_Task] = []  # running: some events not yet delivered

    def close(self) -> None:
        if hasattr(self, "_tasks"):
            self._tasks.clear()

    @property
    def capacity(self) -> int:
        return self.max_concurrent

    def now(self) -> float:
        """The virtual clock, in seconds since :meth:`open` (0 before)."""
        return getattr(self, "_now", 0.0)

    def describe(self) -> str:
        return f"simulated (virtual clock, max {self.max_concurrent} at once)"

    # -- jobs --------------------------------------------------------------------------------------
    def submit(self, job: TrialJob) -> None:
        self.submit_stack([job])

    def submit_stack(self, jobs: Sequence[TrialJob]) -> None:
        tasks = self._opened()
        jobs = list(jobs)
        if not jobs:
            raise ValueError("SimulatedBackend.submit_stack: got no jobs; pass at least one TrialJob")
        if len(jobs) > 1 and not self.can_stack:
            raise NotImplementedError(f"{type(self).__name__}(can_stack=False) cannot stack trials; "
                                      "set resources.stack_trials: 1")
        if len(tasks) >= self.max_concurrent:
            raise RuntimeError(
                f"SimulatedBackend(max_concurrent={self.max_concurrent}) already runs {len(tasks)} jobs "
                f"({', '.join(k for t in tasks for k in t.keys)}); submit {jobs[0].key} after one of them ends "
                "(its outcome was polled)")
        running = {k for t in tasks for k in t.keys}
        keys = [j.key for j in jobs]
        dup = sorted({k for k in keys if k in running or keys.count(k) > 1})
        if dup:
            raise ValueError(f"SimulatedBackend: job key(s) {', '.join(dup)} already running or repeated; "
                             "every running job needs its own key")
        epoch_s = {j.key: self._epoch_s(j) for j in jobs}
        self._seq += 1
        task = _Task(self._seq, jobs, self._now, epoch_s)
        task.events = self._run(task)
        tasks.append(task)

    def poll(self, timeout: float) -> list[Event]:
        """Advance the clock to the next event due (or by ``timeout`` if none is due within it) and
        return every event due by then, in time order (ties: the earlier submitted job first)."""
        tasks = self._opened()
        timeout = max(0.0, timeout)
        due_next = min((t.pending[0].at for t in tasks if t.pending), default=math.inf)
        if due_next > self._now + timeout:
            self._now += timeout
            return []
        self._now = max(self._now, due_next)
        due: list[tuple[float, int, int, Event]] = []
        for task in tasks:
            for i, timed in enumerate(task.pending):
                if timed.at > self._now:
                    break
                due.append((timed.at, task.seq, task.delivered + i, timed.event))
        due.sort(key=lambda d: d[:3])
        for task in tasks:
            task.delivered += sum(1 for d in due if d[1] == task.seq)
        self._tasks = [t for t in tasks if t.pending]
        return [d[3] for d in due]

    def stop(self, key: str) -> None:
        """Stop trial ``key`` at its next epoch boundary: replay its job with ``report`` returning True
        from the first epoch stamped after now. A job that has ended, or was stopped already, is left as is."""
        task = next((t for t in self._opened() if key in t.keys), None)
        if task is None or key in task.stops:
            return
        task.stops[key] = self._now
        replay = self._run(task)
        old = task.events[:task.delivered]
        new = replay[:task.delivered]
        for i, (a, b) in enumerate(zip(old, new)):
            if not _same(a, b):
                raise RuntimeError(
                    f"SimulatedBackend: replaying job {', '.join(task.keys)} to stop {key} at t={self._now:g} gave "
                    f"{_show(b)} as its event {i + 1}, where its first run gave {_show(a)}. A stop replays the "
                    "job, so its worker function must be deterministic (seed it from job.seed); or run the test "
                    "on LocalBackend")
        if len(new) < len(old):
            raise RuntimeError(
                f"SimulatedBackend: replaying job {', '.join(task.keys)} to stop {key} at t={self._now:g} gave "
                f"{len(new)} events before the stop, where its first run gave {len(old)}. A stop replays the job, "
                "so its worker function must be deterministic (seed it from job.seed); or run the test on LocalBackend")
        task.events = replay

    def cancel_all(self) -> list[str]:
        tasks = self._opened() if hasattr(self, "_tasks") else []
        keys = [k for t in tasks for k in t.keys]
        tasks.clear()
        return keys

    # -- internals ---------------------------------------------------------------------------------
    def _opened(self) -> list[_Task]:
        if not hasattr(self, "_tasks"):
            raise RuntimeError("SimulatedBackend: call open(data, settings, fn) before submitting or polling jobs")
        return self._tasks

    def _epoch_s(self, job: TrialJob) -> float:
        if not callable(self.epoch_s):
            return float(self.epoch_s)
        return _check_epoch_s(self.epoch_s(job), f"epoch_s({job.key})")

    def _run(self, task: _Task) -> list[_Timed]:
        """Run the task's worker once, with its stops so far; its events, stamped and sorted."""
        order = {k: i for i, k in enumerate(task.keys)}
        reports: list[tuple[float, int, int, Report]] = []

        def report(key: str, r: EpochReport) -> bool:
            at = task.start + r.epoch * task.epoch_s[key]
            reports.append((at, order[key], len(reports), Report(key, r)))
            stop_at = task.stops.get(key)
            return stop_at is not None and at > stop_at

        outcomes = execute(self._fn, self._data, self._settings, task.jobs, report)
        end = max([task.start, *(at for at, *_ in reports)])
        for job, outcome in zip(task.jobs, outcomes):
            epochs = getattr(outcome.result, "epochs_run", 0) or 0
            end = max(end, task.start + epochs * task.epoch_s[job.key])
        crash_at, crashed = self._crash_time(task, end)
        if crashed is not None:
            reports = [r for r in reports if r[0] < crash_at]
            end = crash_at
        reports.sort(key=lambda r: r[:3])
        events = [_Timed(at, ev) for at, _, _, ev in reports]
        for job, outcome in zip(task.jobs, outcomes):
            if crashed is not None:
                ev: Event = Failed(job.key, f"the worker died (simulated crash in epoch {crashed[1]} of job "
                                   f"{crashed[0]})", "crash")
            elif outcome.result is not None:
                result = outcome.result
                if dataclasses.is_dataclass(result) and any(f.name == "duration_s" for f in dataclasses.fields(result)):
                    result = dataclasses.replace(result, duration_s=end - task.start)
                ev = Finished(job.key, result, _NODE, "", task.start, end)
            else:
                ev = outcome.event()
            events.append(_Timed(end, ev))
        return events

    def _crash_time(self, task: _Task, end: float) -> tuple[float, tuple[str, int] | None]:
        """When the task's worker dies (the earliest crash of its jobs, if not after its end) and
        (job key, epoch) of that crash; (end, None) if it does not."""
        if self.crash is None:
            return end, None
        first: tuple[float, tuple[str, int]] | None = None
        for job in task.jobs:
            epoch = self.crash(job)
            if epoch is None:
                continue
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise ValueError(f"SimulatedBackend: crash({job.key}) returned {epoch!r}; return the epoch (an "
                                 "integer >= 1) the worker dies in, or None for no crash")
            at = task.start + epoch * task.epoch_s[job.key]
            if first is None or at < first[0]:
                first = (at, (job.key, epoch))
        if first is None or first[0] > end:
            return end, None
        return first


def _check_epoch_s(value: Any, what: str) -> float:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    seconds = float(value) if number else math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"SimulatedBackend: {what} must be a finite number of virtual seconds > 0, got {value!r}")
    return seconds


def _same(a: _Timed, b: _Timed) -> bool:
    """Equal events at equal times; ``repr`` for values that differ from themselves (nan)."""
    return a.at == b.at and (a.event == b.event or repr(a.event) == repr(b.event))


def _show(t: _Timed) -> str:
    text = repr(t.event)
    return f"{text[:300]}... at t={t.at:g}" if len(text) > 300 else f"{text} at t={t.at:g}"
