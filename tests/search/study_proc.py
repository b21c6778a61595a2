"""The ``hpsearch`` command line in a subprocess, with a worker slowed down so a test can hit a
trial while it runs.

    python -m tests.search.study_proc run FILE --storage URL -q      # same arguments as hpsearch

This is ``search.cli.main`` itself (same code path as the installed ``hpsearch`` script); only the
default worker function of ``run_study`` / ``resume_study`` is replaced by :func:`slow_train_job`:
the real training (:func:`search.train_job`; a stack: :func:`search.train_stack`) with a pause
before each epoch report. Ray workers
inherit the environment of this process (it starts the local Ray), so these variables reach them:

``STUDY_PROC_EPOCH_S``
    seconds to sleep before each epoch report (default 0: as fast as ``hpsearch``).
``STUDY_PROC_PID_DIR``
    if set, each trial attempt touches ``DIR/<number>.<attempt>.<pid>`` when it starts on a worker,
    so a test can find and kill the worker process running a given trial.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from search import TrialJob, train_job, train_stack
from trials import Dataset, EpochReport, TestResult, TrialResult, TrialSettings


def slow_train_job(
    data: Dataset, settings: TrialSettings, job: TrialJob, report: Callable[[EpochReport], bool]
) -> TrialResult | TestResult:
    delay = float(os.environ.get("STUDY_PROC_EPOCH_S", "0") or 0)
    pid_dir = os.environ.get("STUDY_PROC_PID_DIR")
    if pid_dir and job.kind == "trial":
        Path(pid_dir, f"{job.number}.{job.attempt}.{os.getpid()}").touch()

    def slow_report(r: EpochReport) -> bool:
        if delay:
            time.sleep(delay)
        return report(r)

    return train_job(data, settings, job, slow_report)


def slow_train_stack(
    data: Dataset, settings: TrialSettings, jobs: Sequence[TrialJob], report: Callable[[str, EpochReport], bool]
) -> list[TrialResult]:
    """:func:`search.train_stack` (``resources.stack_trials``) with the same pause before each epoch's reports."""
    delay = float(os.environ.get("STUDY_PROC_EPOCH_S", "0") or 0)
    last = [0]

    def slow_report(key: str, r: EpochReport) -> bool:
        if delay and r.epoch != last[0]:  # once per epoch of the stack, not per member
            last[0] = r.epoch
            time.sleep(delay)
        return report(key, r)

    return train_stack(data, settings, jobs, slow_report)


slow_train_job.stack = slow_train_stack  # type: ignore[attr-defined]


def main() -> None:
    from search import _api
    from search.cli import main as cli

    for fn in (_api.run_study, _api.resume_study):
        fn.__kwdefaults__["worker_fn"] = slow_train_job
    cli(prog_name="hpsearch")


if __name__ == "__main__":
    main()
