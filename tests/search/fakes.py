"""Cheap worker functions with the shape of ``search.train_job``, for fast orchestrator tests."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

from search import Callbacks, TrialJob
from trials import Dataset, EpochReport, FoldResult, MemberReport, TestResult, TrialResult, TrialSettings


def score_of(params: dict) -> float:
    """Accuracy-like score, best at lr=0.01; bad configs are clearly bad from the first epoch."""
    lr = float(params.get("lr", 0.01))
    return max(0.05, 1.0 - (math.log10(lr) + 2.0) ** 2 / 4.0)


def quadratic(
    data: Dataset, settings: TrialSettings, job: TrialJob, report: Callable[[EpochReport], bool]
) -> TrialResult | TestResult:
    """Epoch e reports score * e / E for every fold; sleeps ``FAKE_EPOCH_S`` per epoch."""
    epochs = settings.training.max_epochs
    k = settings.cv.folds
    delay = float(os.environ.get("FAKE_EPOCH_S", "0"))
    s = score_of(job.params)
    if job.kind == "refit":
        return TestResult(test_accuracy=s, test_loss=1 - s, best_epoch=epochs, epochs_run=epochs, duration_s=0.0)
    t0 = time.monotonic()
    stopped = False
    epoch = 0
    for epoch in range(1, epochs + 1):
        acc = s * epoch / epochs
        members = tuple(MemberReport(i, 1 - acc, 1 - acc, acc, False) for i in range(k))
        if delay:
            time.sleep(delay)
        if report(EpochReport(epoch, members)):
            stopped = True
            break
    acc = s * epoch / epochs
    folds = tuple(FoldResult(i, epoch, epoch, 1 - acc, acc) for i in range(k))
    curves = {m: [[s * e / epochs for e in range(1, epoch + 1)]] * k for m in ("val_accuracy",)}
    return TrialResult(folds=folds, curves=curves, epochs_run=epoch, duration_s=time.monotonic() - t0,
                       device="cpu", train_path="fake", stopped_by_report=stopped)


def flaky(data, settings, job, report):  # type: ignore[no-untyped-def]
    """Raises on the first attempt of every trial, works on the retry."""
    if job.attempt == 0 and job.kind == "trial":
        raise RuntimeError(f"flaky failure of trial {job.number}")
    return quadratic(data, settings, job, report)


def fails_first_rerun(data, settings, job, report):  # type: ignore[no-untyped-def]
    """Raises on attempt 1 (a trial's first re-run), works on every other attempt."""
    if job.attempt == 1 and job.kind == "trial":
        raise RuntimeError(f"trial {job.number} fails on its first re-run")
    return quadratic(data, settings, job, report)


def oom_at_512(data, settings, job, report):  # type: ignore[no-untyped-def]
    """Runs out of memory (as ``trials`` reports it) when ``batch_size`` is 512, else ``quadratic``."""
    from trials import TrialOutOfMemory

    if job.kind == "trial" and job.params.get("batch_size") == 512:
        raise TrialOutOfMemory("out of memory at batch_size=512 on cuda:0: OutOfMemoryError: CUDA out of memory")
    return quadratic(data, settings, job, report)


def diverges(data, settings, job, report):  # type: ignore[no-untyped-def]
    """``quadratic``, except that fold 0's validation loss is nan (training diverged) when lr > 0.1."""
    res = quadratic(data, settings, job, report)
    if job.kind == "refit" or float(job.params.get("lr", 0.01)) <= 0.1:
        return res
    folds = (dataclasses.replace(res.folds[0], val_loss=math.nan), *res.folds[1:])
    return dataclasses.replace(res, folds=folds)


def broken(data, settings, job, report):  # type: ignore[no-untyped-def]
    """Always raises: a deterministic failure."""
    raise ValueError("this configuration always fails")


def stackable(data, settings, job, report):  # type: ignore[no-untyped-def]
    """``quadratic``, with a ``.stack`` so the orchestrator may stack its trials; a trial run alone
    is tagged ``stack-<number>`` too."""
    res = quadratic(data, settings, job, report)
    return res if job.kind == "refit" else dataclasses.replace(res, train_path=f"stack-{job.number}")


def _quadratic_stack(data, settings, jobs, report):  # type: ignore[no-untyped-def]
    """Each job of the stack like ``quadratic``; ``train_path`` names the stack (``stack-<first number>``)."""
    tag = f"stack-{jobs[0].number}"
    out = []
    for job in jobs:
        res = quadratic(data, settings, job, lambda r, key=job.key: report(key, r))
        out.append(dataclasses.replace(res, train_path=tag, stack_size=len(jobs)))
    return out


stackable.stack = _quadratic_stack  # type: ignore[attr-defined]


def stack_breaks(data, settings, job, report):  # type: ignore[no-untyped-def]
    """Works for one job; training several as a stack raises (a stack-only failure, e.g. memory)."""
    return quadratic(data, settings, job, report)


def _raise_stack(data, settings, jobs, report):  # type: ignore[no-untyped-def]
    raise RuntimeError(f"stack of {len(jobs)} trials failed")


stack_breaks.stack = _raise_stack  # type: ignore[attr-defined]


def second_fails_alone(data, settings, job, report):  # type: ignore[no-untyped-def]
    """Stacks always fail; alone, a trial fails on its first re-run (attempt 1) and works after."""
    if job.attempt == 1:
        raise RuntimeError(f"trial {job.number} fails alone once")
    return stackable(data, settings, job, report)


second_fails_alone.stack = _raise_stack  # type: ignore[attr-defined]


def stack_short(data, settings, job, report):  # type: ignore[no-untyped-def]
    """A buggy ``.stack`` that returns one result too few."""
    return stackable(data, settings, job, report)


stack_short.stack = lambda data, settings, jobs, report: _quadratic_stack(data, settings, jobs, report)[:-1]  # type: ignore[attr-defined]


def refit_fails(data, settings, job, report):  # type: ignore[no-untyped-def]
    """``quadratic`` for trials; the final refit raises."""
    if job.kind == "refit":
        raise RuntimeError("the refit ran out of disk")
    return quadratic(data, settings, job, report)


class MessageLog(Callbacks):
    """Callbacks that keep what a run says (``on_message``) in :attr:`messages`."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_message(self, text: str) -> None:
        self.messages.append(text)
