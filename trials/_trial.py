"""Public entry points: one trial (all CV folds as one stack) and the final refit + test."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from ._checkpoint import Checkpointer, CheckpointPlan, CheckpointUnusable
from ._config import TrialSettings, resolve_hyperparams
from ._data import Dataset, holdout_split
from ._engine import FitOutcome, MemberSplit, fit_stack, score_test
from ._export import member_state_dict, state_dict_bytes
from ._models import build_factory_stack
from ._refit import FixedFit, fit_fixed_epochs
from ._results import EpochReport, TestResult, TrialResult
from ._seeding import ROLE_REFIT, member_seeds
from ._stream import refuse_checkpoint

if TYPE_CHECKING:
    from ._stream_fit import StreamedFit

__all__ = ["TrialOutOfMemory", "check_model", "check_trainable", "refit_and_test", "resolve_device", "run_trial",
           "run_trials"]

_T = TypeVar("_T")


class TrialOutOfMemory(RuntimeError):
    """The trial ran out of (GPU) memory; the message names the batch size and stack size."""


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` -> the current CUDA device.

    Raises
    ------
    ValueError
        If CUDA is asked for but not available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch.cuda.is_available() is False")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def check_model(
    settings: TrialSettings, params: Mapping[str, Any], input_shape: Sequence[int] | int, n_classes: int
) -> str | None:
    """Try the study's model on the CPU before any trial runs: build it for ``params`` and run one
    training-mode forward and backward pass on a batch of 2 samples of ``input_shape`` (an int:
    flat samples of that many features), as every trial does first.

    Only a ``model.factory`` is tried (the built-in MLP is checked by :func:`resolve_hyperparams`).
    A driver calls this once per configuration worth trying, so that a factory that does not
    import, raises, or returns the wrong shape fails the study at once instead of every trial.

    Returns
    -------
    str or None
        Why the factory's modules cannot be stacked through ``torch.func.vmap`` (its trials then
        train one member at a time); ``None`` when they can, and for the built-in MLP.

    Raises
    ------
    ModelError
        Naming the factory, the configuration and what went wrong (a wrong output size or input
        shape: the input batch's shape and the output's).
    HyperparameterError
        For params the model cannot take.
    """
    hp = resolve_hyperparams(settings, params)
    if hp.factory is None:
        return None
    try:
        stack = build_factory_stack(hp.factory, hp.params, input_shape, n_classes, [0], torch.device("cpu"))
    except torch.OutOfMemoryError:
        return None  # the driver's memory says nothing about a worker's device
    return stack.fallback_reason


def _run_trainable(
    data: Dataset,
    params: Mapping[str, Any],
    settings: TrialSettings,
    *,
    seed: int,
    device: str | None,
    gpu_fraction: float | None,
    folds: Sequence[int] | None,
    report: Callable[[EpochReport], bool] | None,
    checkpoint: CheckpointPlan | None = None,
) -> TrialResult:
    """:func:`run_trial` with ``settings.trainable``: your function, once per fold, in lockstep."""
    from ._trainable import run_trainable

    fold_ids = list(range(len(data.folds))) if folds is None else [int(f) for f in folds]
    if not fold_ids or any(not 0 <= f < len(data.folds) for f in fold_ids) or len(set(fold_ids)) != len(fold_ids):
        raise ValueError(f"folds must be distinct indices into the data set's {len(data.folds)} folds, got {folds}")
    dev = resolve_device(device or settings.training.device)
    _apply_thread_env()
    plan = None if checkpoint is None else checkpoint.for_folds(folds)
    return _guarded(dev, gpu_fraction, f"the trainable's {len(fold_ids)} fold(s)",
                    lambda: run_trainable(data, params, settings, seed=seed, device=dev, report=report, folds=fold_ids,
                                          checkpoint=plan))


def check_trainable(settings: TrialSettings, params: Mapping[str, Any], data: Dataset) -> None:
    """Try ``settings.trainable`` on the driver before any trial runs (see :func:`trials._trainable.check_trainable`).

    Raises
    ------
    TrainableError
        Naming the function, what went wrong and, for an exception of its own, its traceback's tail.
    """
    from ._trainable import check_trainable as check

    check(settings, params, data)


def _apply_thread_env() -> None:
    """Use ``OMP_NUM_THREADS`` intra-op threads when set (Ray sets it per worker)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    try:
        n = int(value)
    except ValueError:
        return
    if n >= 1 and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _release(dev: torch.device) -> None:
    if dev.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _guarded(dev: torch.device, gpu_fraction: float | None, what: str, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` with the process's GPU memory capped at ``gpu_fraction``; turn an out-of-memory
    error into :class:`TrialOutOfMemory`, and give cached GPU memory back afterwards."""
    if gpu_fraction is not None and not 0.0 < gpu_fraction <= 1.0:
        raise ValueError(f"gpu_fraction must be in (0, 1], got {gpu_fraction}")
    if dev.type == "cuda" and gpu_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(float(gpu_fraction), dev)
    try:
        return fn()
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not _is_oom(exc):
            raise
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        _release(dev)
    # Raised after the except block: the failed frames and the tensors they held are gone, so
    # their memory is released before the caller sees the error.
    _release(dev)
    raise TrialOutOfMemory(f"out of memory at {what} on {dev}: {reason}")


def run_trial(
    data: Dataset,
    params: Mapping[str, Any],
    settings: TrialSettings,
    *,
    seed: int,
    report: Callable[[EpochReport], bool] | None = None,
    device: str | None = None,
    gpu_fraction: float | None = None,
    folds: Sequence[int] | None = None,
    checkpoint: CheckpointPlan | None = None,
) -> TrialResult:
    """Train one configuration on the CV folds, all folds as one stack, and score it.

    Parameters
    ----------
    data
        The data set with its folds (:func:`load_dataset`).
    params
        Tuned hyperparameters (see :data:`TUNABLE_PARAMS`).
    settings
        Model, training and CV settings.
    seed
        Trial seed (:func:`trial_seed`); member ``fold`` is seeded from ``(seed, fold)`` only.
    report
        Called after every epoch with every member's metrics; returning True stops training at
        once (the result has ``stopped_by_report=True``).
    device
        ``cpu``, ``cuda``, ``cuda:1``, ``auto``; ``None`` uses ``settings.training.device``.
    gpu_fraction
        On CUDA, cap this process at this fraction of the GPU's memory.
    folds
        Train only these folds (indices into ``data.folds``); default all.
    checkpoint
        Save the trial's whole state to this checkpoint as it trains, and go on from the one
        already there if it was made for this very trial (see :mod:`trials._checkpoint`); with
        ``folds``, the checkpoint of those folds (:meth:`CheckpointPlan.for_folds`).

    Returns
    -------
    TrialResult

    Raises
    ------
    ValueError
        Unknown or invalid hyperparameters, a bad fold index, a bad model factory.
    TrialOutOfMemory
        On a CUDA (or host) out-of-memory error.
    """
    each = None if report is None else (lambda _i, r: report(r))
    return run_trials(
        data, [params], settings, seeds=[seed], report=each, device=device, gpu_fraction=gpu_fraction, folds=folds,
        checkpoint=checkpoint,
    )[0]


def run_trials(
    data: Dataset,
    params: Sequence[Mapping[str, Any]],
    settings: TrialSettings,
    *,
    seeds: Sequence[int],
    report: Callable[[int, EpochReport], bool] | None = None,
    device: str | None = None,
    gpu_fraction: float | None = None,
    folds: Sequence[int] | None = None,
    checkpoint: CheckpointPlan | None = None,
) -> list[TrialResult]:
    """Train several configurations as one stack: k folds x m configurations members.

    The configurations must have equal :func:`stack_key` (they may differ in ``lr``,
    ``momentum``, ``weight_decay`` and ``dropout``) and use the built-in MLP. Every member is seeded from its own
    configuration's seed and fold, so each configuration's result is what :func:`run_trial`
    gives it alone (up to floating-point summation order).

    Parameters
    ----------
    params, seeds
        One entry per configuration.
    report
        Called after every epoch as ``report(i, EpochReport)`` for each configuration ``i`` still
        training; returning True stops that configuration's members at once.
    data, settings, device, gpu_fraction, folds
        As for :func:`run_trial`.
    checkpoint
        As for :func:`run_trial`; the checkpoint then holds the state of the whole stack.

    Returns
    -------
    list of TrialResult
        One per configuration, in order (``stack_size`` is ``len(params)``).

    Raises
    ------
    ValueError
        Invalid hyperparameters, configurations that cannot share a stack, a bad fold index.
    TrialOutOfMemory
        On a CUDA (or host) out-of-memory error.
    """
    t0 = time.perf_counter()
    if not params or len(params) != len(seeds):
        raise ValueError(f"need one seed per configuration, got {len(params)} configurations and {len(seeds)} seeds")
    if checkpoint is not None and data.stream is not None:
        raise refuse_checkpoint(data.stream)
    if settings.trainable is not None:
        if len(params) > 1:
            raise ValueError("configurations of a trainable train one at a time; call run_trial for each")
        return [_run_trainable(data, params[0], settings, seed=seeds[0], device=device, gpu_fraction=gpu_fraction,
                               folds=folds, report=None if report is None else (lambda r: report(0, r)),
                               checkpoint=checkpoint)]
    hps = [resolve_hyperparams(settings, p) for p in params]
    if len(hps) > 1 and hps[0].factory is not None:
        raise ValueError("configurations of a model.factory train one per stack; call run_trial for each")
    fold_ids = list(range(len(data.folds))) if folds is None else [int(f) for f in folds]
    if not fold_ids or any(not 0 <= f < len(data.folds) for f in fold_ids) or len(set(fold_ids)) != len(fold_ids):
        raise ValueError(f"folds must be distinct indices into the data set's {len(data.folds)} folds, got {folds}")
    dev = resolve_device(device or settings.training.device)
    _apply_thread_env()
    splits, member_hps, groups = [], [], []
    for i, (hp, seed) in enumerate(zip(hps, seeds)):
        for f in fold_ids:
            splits.append(MemberSplit(f, data.folds[f][0], data.folds[f][1], member_seeds(seed, f)))
            member_hps.append(hp)
            groups.append(i)

    # on a GPU, saves are written in the background while training goes on (on the CPU: no core to spare)
    saver = None if checkpoint is None else Checkpointer(checkpoint.for_folds(folds), background=dev.type == "cuda")

    def fit() -> FitOutcome | StreamedFit:
        if data.stream is not None:  # a Dataset too large to preload: read in batches, one member at a time
            from ._stream_fit import fit_streamed

            return fit_streamed(data, splits, member_hps, n_classes=data.n_classes, device=dev, seed=seeds[0],
                                groups=groups, report=report)
        try:
            return fit_stack(data.X, data.y, splits, member_hps, n_classes=data.n_classes, device=dev,
                             seed=seeds[0], groups=groups, report=report, checkpoint=saver,
                             scaling=data.scaling)
        except CheckpointUnusable as e:  # found only while restoring it: train from epoch 1, saving as asked
            assert saver is not None
            saver.reset(f"{e}; the trial starts from epoch 1")
            return fit_stack(data.X, data.y, splits, member_hps, n_classes=data.n_classes, device=dev,
                             seed=seeds[0], groups=groups, report=report, checkpoint=saver,
                             scaling=data.scaling)

    def train() -> list[TrialResult]:
        out = fit()
        results = []
        for i in range(len(hps)):
            mine = [m for m, g in enumerate(groups) if g == i]
            results.append(TrialResult(
                folds=tuple(out.folds[m] for m in mine),
                curves={k: [v[m] for m in mine] for k, v in out.curves.items()},
                epochs_run=max(out.epochs_run[m] for m in mine),
                duration_s=0.0,
                device=str(dev),
                train_path=out.train_path,
                stopped_by_report=i in out.stopped_by_report,
                stack_size=len(hps),
                resumed_from_epoch=out.resumed_from_epoch,
                messages=() if saver is None else tuple(saver.messages),
            ))
        return results

    what = f"batch_size={hps[0].batch_size} with {len(splits)} stacked member(s)"
    if len(hps) > 1:
        what += f" ({len(hps)} configurations x {len(fold_ids)} folds)"
    results = _guarded(dev, gpu_fraction, what, train)
    elapsed = time.perf_counter() - t0
    return [dataclasses.replace(r, duration_s=elapsed) for r in results]


def refit_and_test(
    data: Dataset,
    params: Mapping[str, Any],
    settings: TrialSettings,
    *,
    seed: int,
    device: str | None = None,
    epochs: int | None = None,
) -> TestResult:
    """Refit a configuration on all non-test data and evaluate it once on the test split.

    With ``epochs`` (the default of a study: the median of the CV folds' best epochs), the network
    trains on every non-test row for exactly that many epochs, with no inner split, and keeps its
    last weights: it is trained as the folds were, on more rows. With ``epochs=None`` an inner
    stratified split of ``settings.cv.val_fraction`` of the non-test rows serves early stopping and
    the best epoch's weights are restored (``refit.epochs: early_stopping``). Either way the test
    split is standardized with the refit training rows' statistics.

    Returns
    -------
    TestResult
        With the trained network's ``state_dict`` bytes and its feature scaling.
    """
    t0 = time.perf_counter()
    if settings.trainable is not None:
        from ._trainable import refit_trainable

        dev = resolve_device(device or settings.training.device)
        _apply_thread_env()
        return _guarded(dev, None, "the refit of the trainable",
                        lambda: refit_trainable(data, params, settings, seed=seed, device=dev, epochs=epochs))
    hp = resolve_hyperparams(settings, params)
    dev = resolve_device(device or settings.training.device)
    _apply_thread_env()
    if epochs is None:
        train_rows, val_rows = holdout_split(data.y, settings.cv.val_fraction, seed,
                                             stratify=settings.task == "classification", groups=data.groups)
    else:
        train_rows, val_rows = np.arange(len(data.y)), np.arange(0)
    split = MemberSplit(0, train_rows, val_rows, member_seeds(seed, 0, ROLE_REFIT))

    def train() -> TestResult:
        fitted: FitOutcome | FixedFit
        if data.stream is not None:  # streamed: trained and tested in batches (trials._stream_fit)
            from ._stream_fit import fit_streamed

            out = fit_streamed(data, [split], [hp], n_classes=data.n_classes, device=dev, seed=seed, epochs=epochs)
            member = out.members[0]
            model, mean, scale, target = member.model, member.mean[None], member.scale[None], member.target
            best_epoch = out.folds[0].best_epoch if epochs is None else out.epochs_run[0]
            epochs_run = out.epochs_run[0]
            metrics = out.score_test(data)
        else:
            if epochs is None:
                fitted = fit_stack(data.X, data.y, [split], hp, n_classes=data.n_classes, device=dev, seed=seed,
                                   scaling=data.scaling)
                best_epoch, epochs_run = fitted.folds[0].best_epoch, fitted.folds[0].epochs_run
            else:
                fitted = fit_fixed_epochs(data.X, data.y, split, hp, epochs=epochs, n_classes=data.n_classes,
                                          device=dev, seed=seed, scaling=data.scaling)
                best_epoch = epochs_run = fitted.epochs_run
            metrics = score_test(fitted, data, hp, dev)
            model, mean, scale = fitted.model, fitted.mean, fitted.scale
            target = fitted.source.target_stats()  # regression: the network predicts the standardized target
        return TestResult(
            test_accuracy=metrics.get("val_accuracy", math.nan),
            test_loss=metrics["val_loss"],
            best_epoch=best_epoch,
            epochs_run=epochs_run,
            duration_s=0.0,
            metrics=metrics,
            train_rows=len(train_rows),
            val_rows=len(val_rows),
            state_dict=state_dict_bytes(member_state_dict(model)),
            feature_mean=tuple(float(v) for v in mean[0].cpu().tolist()),
            feature_scale=tuple(float(v) for v in scale[0].cpu().tolist()),
            target_mean=None if target is None else float(target[0].reshape(-1)[0]),
            target_scale=None if target is None else float(target[1].reshape(-1)[0]),
        )

    result = _guarded(dev, None, f"batch_size={hp.batch_size} (refit)", train)
    return dataclasses.replace(result, duration_s=time.perf_counter() - t0)
