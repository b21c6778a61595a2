"""In-process backend: threads in this process, no Ray. For notebooks, tests and debugging."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from trials import Dataset, EpochReport, TrialSettings

from ._base import Backend
from ._events import Event, Report, TrialJob
from ._worker import WorkerFn, execute, train_job

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """Runs jobs on a thread pool of ``max_concurrent`` threads in the calling process.

    The same worker function and events as :class:`~search.RayBackend`, without processes, so an
    orchestrator test with a cheap worker function runs in milliseconds.
    """

    can_stack = True

    def __init__(self, max_concurrent: int = 1) -> None:
        self.max_concurrent = max_concurrent

    def open(self, data: Dataset, settings: TrialSettings, fn: WorkerFn = train_job) -> None:
        self._data, self._settings, self._fn = data, settings, fn
        self._events: queue.Queue[Event] = queue.Queue()
        self._stop: set[str] = set()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._running: set[str] = set()  # keys submitted and not yet reported back
        self._pool = ThreadPoolExecutor(self.max_concurrent, thread_name_prefix="hpsearch-trial")

    @property
    def capacity(self) -> int:
        return self.max_concurrent

    def submit(self, job: TrialJob) -> None:
        self.submit_stack([job])

    def submit_stack(self, jobs: Sequence[TrialJob]) -> None:
        self._running.update(j.key for j in jobs)
        self._pool.submit(self._run, list(jobs))

    def _run(self, jobs: list[TrialJob]) -> None:
        def report(key: str, r: EpochReport) -> bool:
            self._events.put(Report(key, r))
            with self._lock:
                return key in self._stop

        outcomes = execute(self._fn, self._data, self._settings, jobs, report)
        for outcome in outcomes:
            with self._lock:
                self._stop.discard(outcome.key)
                if outcome.key in self._cancelled:
                    self._cancelled.discard(outcome.key)
                    continue
            self._events.put(outcome.event())

    def poll(self, timeout: float) -> list[Event]:
        out: list[Event] = []
        try:
            out.append(self._events.get(timeout=timeout))
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        for ev in out:
            if not isinstance(ev, Report):
                self._running.discard(ev.key)
        return out

    def stop(self, key: str) -> None:
        with self._lock:
            self._stop.add(key)

    def cancel_all(self) -> list[str]:
        keys = list(self._running)
        with self._lock:
            self._stop.update(keys)
            self._cancelled.update(keys)
            self._running.clear()
        return keys

    def close(self) -> None:
        if not hasattr(self, "_pool"):  # never opened
            return
        self.cancel_all()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        return f"in-process threads (max {self.max_concurrent} at once)"

