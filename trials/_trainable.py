"""Your own training loop (``trainable``): hpsearch calls your function once per fold.

The contract, in the style of Optuna's objective::

    def train(ctx: trials.TrainContext) -> torch.nn.Module:
        model = build(ctx.params, ctx.input_shape, ctx.n_outputs).to(ctx.device)
        for epoch in range(1, ctx.max_epochs + 1):
            for x, y in ctx.loader("train", shuffle=True):
                ...  # your step: gradient clipping, label smoothing, AMP, your scheduler
            if ctx.report(epoch, val_loss=..., val_accuracy=...):
                break  # early stopping or pruning, decided by hpsearch
        return model

hpsearch keeps everything around it: the folds, early stopping (``training.monitor``,
``patience``, ``min_delta``) and pruning decided from what is reported, Ray dispatch, retries, the
database, resume, and the refit and test score (it evaluates the model your function returns on
the test split with its own metrics).

The folds of a trial run in lockstep, as the built-in loop's stacked members do: each fold's
function runs in its own thread, but only one runs at a time, and it hands over at each
``report``; after every fold reported epoch ``e``, epoch ``e`` goes to the pruner as the mean over
the folds. Each fold has its own global random state (torch, numpy, ``random``), seeded from
``(trial seed, fold)`` and switched at every hand-over, so a fold computes what it would compute
alone (``resources.parallel_folds`` gives the same fold scores). The folds' models are in memory
at the same time.

``ctx.save_checkpoint(state)`` after a report and ``ctx.load_checkpoint()`` before the first epoch
let a re-run of an interrupted trial go on from its last checkpoint
(:mod:`trials._trainable_checkpoint`).
"""

from __future__ import annotations

import math
import random
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ._checkpoint import Checkpointer, CheckpointPlan, CheckpointUnusable
from ._config import TrialSettings, factory_name
from ._data import Dataset, holdout_split
from ._engine import _MemberRecord, fit_scaling
from ._imports import ImportPathError, import_callable
from ._metrics import METRICS
from ._results import EpochReport, FoldResult, TestResult, TrialResult
from ._scores import make_scores
from ._seeding import ROLE_CV, ROLE_REFIT, member_seeds
from ._trainable_checkpoint import TrainableCheckpoints, encode_state, trainable_fingerprint, unusable_resume

__all__ = ["TrainContext", "TrainableError", "check_trainable", "load_trainable", "refit_trainable",
           "run_trainable"]

_KNOWN = frozenset(("train_loss", *METRICS))
_PROBE_TRAIN_ROWS, _PROBE_VAL_ROWS = 128, 64
_TAIL_FRAMES, _TAIL_CHARS, _MESSAGE_CHARS = 4, 1000, 400


class TrainableError(ValueError):
    """Your ``trainable`` cannot serve the study: it does not import, raised, returned no model,
    never reported, reported a non-finite value, or left out a metric hpsearch needs.

    ``str(err)`` is the message for the user (the function, the fold and epoch, the fix; for an
    exception of your code, the tail of its traceback).

    Attributes
    ----------
    trainable : str
        ``package.module:function`` (a callable: its ``module:qualname``).
    fold : int or None
        The fold it failed in (``None``: the refit, or before it was called).
    epoch : int or None
        The epoch of the report at fault, where one is.
    metric : str or None
        The metric at fault (missing or not finite), where one is.
    """

    def __init__(self, message: str, trainable: str, fold: int | None = None, epoch: int | None = None,
                 metric: str | None = None) -> None:
        super().__init__(message)
        self.trainable, self.fold, self.epoch, self.metric = trainable, fold, epoch, metric

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (Ray returns a worker's exceptions by pickle)
        return (type(self), (self.args[0], self.trainable, self.fold, self.epoch, self.metric))


class _Abandoned(BaseException):
    """Raised in a fold's thread from ``report`` when its trial has failed in another fold."""


def load_trainable(trainable: str | Callable[..., Any]) -> Callable[[TrainContext], Any]:
    """The function an import path ``package.module:function`` names (a callable as given); the
    current directory is importable, as with ``python -m``.

    Raises
    ------
    TrainableError
        The module does not import, or has no such callable.
    """
    try:
        return import_callable(trainable, "trainable")
    except ImportPathError as exc:
        raise TrainableError(str(exc), factory_name(trainable)) from None


def _tail(exc: BaseException) -> str:
    """The last calls of ``exc``'s traceback (where in your code it was raised)."""
    frames = traceback.extract_tb(exc.__traceback__)[-_TAIL_FRAMES:]
    return "".join(traceback.format_list(frames)).rstrip()[-_TAIL_CHARS:]


def _is_oom(exc: BaseException) -> bool:
    msg = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg))


# ------------------------------------------------------------------------------------ context


class TrainContext:
    """What your training function gets for one fold (or the refit).

    Attributes
    ----------
    params : dict
        The trial's hyperparameters, as the search space proposed them.
    train, val : torch.utils.data.TensorDataset or torch.utils.data.Subset
        The fold's training and validation rows: ``(x, y)`` tensors on ``device``, ``x`` of shape
        ``[n, *input_shape]`` standardized with the training rows' statistics, ``y`` class indices
        ``0 .. n_outputs-1`` (int64) or, for regression, the target in its own units (float32).
        ``val`` is ``None`` in the refit (all non-test rows train; ``refit.epochs: early_stopping``
        gives it an inner validation split). For a streamed ``Dataset`` (too large to preload,
        :mod:`trials._stream`) they are ``Subset`` views of it instead: samples ``(x, y)`` read when
        indexed, ``x`` ``[*input_shape]`` scaled the same way and ``y`` as above, on the CPU
        (:meth:`loader` batches them onto ``device``).
    device : torch.device
        Where the data is and the model should be.
    seed : int
        This fold's seed (the global torch, numpy and ``random`` generators are already seeded with it).
    max_epochs : int
        ``training.max_epochs``; in the refit, the epochs the CV chose.
    n_outputs : int
        The classes (logits per sample), or 1 for regression.
    input_shape : tuple of int
        The shape of one sample.
    task : str
        ``classification`` or ``regression``.
    fold : int or None
        The fold (``None``: the refit).
    """

    def __init__(
        self,
        *,
        params: Mapping[str, Any],
        train: TensorDataset,
        val: TensorDataset | None,
        device: torch.device,
        seed: int,
        order_seed: int,
        max_epochs: int,
        n_outputs: int,
        task: str,
        fold: int | None,
        batch_size: int,
        channel: Callable[[int, dict[str, float]], bool],
        input_shape: Sequence[int] | None = None,
    ) -> None:
        self.params = dict(params)
        self.train, self.val = train, val
        self.device, self.seed = device, seed
        self.max_epochs, self.n_outputs, self.task, self.fold = max_epochs, n_outputs, task, fold
        shape = train.tensors[0].shape[1:] if input_shape is None else input_shape
        self.input_shape = tuple(int(s) for s in shape)
        self._order_seed, self._batch_size, self._channel = order_seed, batch_size, channel
        self._loaders = 0
        # checkpoints: set by the lockstep runner (None: save is a no-op, load gives None)
        self._saver: Callable[[Any], None] | None = None
        self._restorer: Callable[[], Any] | None = None

    def loader(self, split: str = "train", batch_size: int | None = None, shuffle: bool | None = None,
               **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` over ``train`` or ``val``, seeded from this fold's seed.

        ``batch_size`` defaults to ``params["batch_size"]``, else ``training.batch_size``;
        ``shuffle`` to True for ``train``, False for ``val``. Other keyword arguments go to
        ``DataLoader`` (the tensors are on ``device``: keep ``num_workers`` at 0). For a streamed
        Dataset the samples are read as the loader goes; with ``num_workers`` 0 (and no
        ``collate_fn`` of yours) each batch is moved to ``device``, else it comes on the CPU.
        """
        if split not in ("train", "val"):
            raise ValueError(f"ctx.loader: split must be 'train' or 'val', got {split!r}")
        data = self.train if split == "train" else self.val
        if data is None:
            raise ValueError("ctx.loader('val'): the refit has no validation rows (ctx.val is None)")
        self._loaders += 1
        gen = torch.Generator().manual_seed(self._order_seed + self._loaders)
        if not isinstance(data, TensorDataset) and "collate_fn" not in kwargs and not kwargs.get("num_workers"):
            kwargs["collate_fn"] = _OnDevice(self.device)  # streamed samples are read on the CPU
        return DataLoader(data, batch_size=int(batch_size or self._batch_size),
                          shuffle=(split == "train") if shuffle is None else shuffle, generator=gen, **kwargs)

    def report(self, epoch: int, **metrics: float) -> bool:
        """Report epoch ``epoch`` (1, 2, ... once each); True: stop training now and return the model.

        The metrics are the task's validation metrics (``val_loss``, ``val_accuracy``, ``val_f1_macro``,
        ``val_auc``; ``val_mse``, ``val_mae``, ``val_r2``) and ``train_loss``; ``training.monitor``
        and the study's ``metric`` are required (except in the refit). Early stopping, pruning and
        ``max_epochs`` decide the answer; in the refit it is True only at ``max_epochs``.
        """
        return self._channel(int(epoch), dict(metrics))

    def save_checkpoint(self, state: Any) -> None:
        """Save this fold's training state, right after ``report(epoch, ...)``, as it is at the end of that epoch.

        ``state`` is a dict (or list, tuple) of tensors, numbers, strings, None and numpy arrays,
        nested as you like: e.g. ``{"model": model.state_dict(), "optimizer": opt.state_dict(),
        "epoch": epoch}``. It is copied at once (go on training). A call is a cheap no-op unless the
        epoch is one the study's ``checkpoint.every_epochs`` / ``every_s`` makes due, after a report
        that answered True, in the refit, or without ``checkpoint`` in the study. hpsearch saves its
        own state of the fold with yours (early stopping, the reports so far, the fold's random
        state): a re-run of the interrupted trial goes on from there and scores what it would have.

        Raises
        ------
        TypeError
            A value of another type (naming where in ``state`` it is).
        """
        if self._saver is not None:
            self._saver(state)

    def load_checkpoint(self) -> Any:
        """This fold's state from its last :meth:`save_checkpoint`, or None when it starts fresh.

        Call it after building your model and optimizer, before the first epoch you train: it also
        puts the fold's random state (torch, numpy, ``random``) and its loaders' seeds back as they
        were at the save. Go on from the saved epoch + 1 (report that epoch next). Tensors saved from
        a GPU come back on ``device``, others on the CPU (``load_state_dict`` copies them where they go).
        """
        return None if self._restorer is None else self._restorer()


# ------------------------------------------------------------------------------------ data


class _OnDevice:
    """``default_collate``, then every tensor of the batch moved to ``device`` (a streamed Dataset's batches)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, samples: list[Any]) -> Any:
        from torch.utils.data import default_collate

        batch = default_collate(samples)
        return tuple(t.to(self.device) for t in batch) if isinstance(batch, (tuple, list)) else batch.to(self.device)


def _split_stats(data: Dataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scaling of the training rows ``rows``, in the sample's shape: :func:`_fit_scaling`, or for a
    streamed Dataset one pass over those samples (:func:`trials._stream_fit.streamed_scaling`)."""
    if data.stream is None:
        return _fit_scaling(data.X, rows, data.scaling)
    from ._stream_fit import split_samples, streamed_scaling

    mean, scale = streamed_scaling(split_samples(data, rows), data.scaling, data.sample_shape)
    return mean.reshape(data.sample_shape), scale.reshape(data.sample_shape)


def _split_rows(data: Dataset, rows: np.ndarray, stats: tuple[np.ndarray, np.ndarray], task: str,
                device: torch.device) -> Any:
    """The rows ``rows`` of the search split as ``ctx.train`` / ``ctx.val`` get them: a ``TensorDataset``
    on ``device`` (:func:`_rows`), or for a streamed Dataset a ``Subset`` of its scaled samples."""
    if data.stream is None:
        return _rows(data.X, data.y, rows, stats, task, device)
    from ._stream_fit import split_samples

    return split_samples(data, rows, stats=stats)


def _fit_scaling(X: np.ndarray, rows: np.ndarray, scaling: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of ``X[rows]`` in the sample's shape, as ``data.scaling`` says
    (:func:`trials._engine.fit_scaling`, the built-in loop's)."""
    flat = X.reshape(len(X), -1)
    mean, scale = fit_scaling(flat, rows, scaling, X.shape[1:])
    return mean.reshape(X.shape[1:]), scale.reshape(X.shape[1:])


def _rows(X: np.ndarray, y: np.ndarray, rows: np.ndarray, stats: tuple[np.ndarray, np.ndarray], task: str,
          device: torch.device) -> TensorDataset:
    mean, scale = stats
    x = torch.from_numpy(np.ascontiguousarray((X[rows] - mean) / scale, dtype=np.float32)).to(device)
    t = torch.from_numpy(np.ascontiguousarray(y[rows], dtype=np.float32 if task == "regression" else np.int64))
    return TensorDataset(x, t.to(device))


# ------------------------------------------------------------------------------------ lockstep


class _Turns:
    """The one right to run, handed between the scheduler (``None``) and the fold threads."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._turn: int | None = None

    def run(self, i: int) -> None:
        """Scheduler: let fold ``i`` run until it hands the turn back."""
        with self._cv:
            self._turn = i
            self._cv.notify_all()
            while self._turn is not None:
                self._cv.wait()

    def hand_back(self, i: int, wait: bool = True) -> None:
        """Fold ``i``: give the turn to the scheduler (and, with ``wait``, wait for the next one)."""
        with self._cv:
            self._turn = None
            self._cv.notify_all()
            while wait and self._turn != i:
                self._cv.wait()

    def wait_for(self, i: int) -> None:
        with self._cv:
            while self._turn != i:
                self._cv.wait()


class _Rng:
    """One fold's global random state (torch, CUDA, numpy, ``random``), switched in and out."""

    def __init__(self, seed: int, cuda: bool) -> None:
        self.seed, self.cuda = seed, cuda
        self.state: tuple[Any, ...] | None = None

    def enter(self) -> None:
        if self.state is None:
            torch.manual_seed(self.seed)
            np.random.seed(self.seed)
            random.seed(self.seed)
            return
        cpu, gpu, npy, py = self.state
        torch.set_rng_state(cpu)
        if gpu is not None:
            torch.cuda.set_rng_state_all(gpu)
        np.random.set_state(npy)
        random.setstate(py)

    def leave(self) -> None:
        gpu = torch.cuda.get_rng_state_all() if self.cuda else None
        self.state = (torch.get_rng_state(), gpu, np.random.get_state(), random.getstate())


class _Fold:
    """One call of the training function: its thread, its reports and its outcome."""

    def __init__(self, i: int, fold: int | None, monitor: str, patience: int, min_delta: float) -> None:
        self.i, self.fold = i, fold
        self.record = _MemberRecord(monitor, patience, min_delta)
        self.curves: dict[str, list[float]] = {}
        self.reported = 0
        self.answer = False  # the reply to its latest report
        self.done = False
        self.model: Any = None
        self.error: BaseException | None = None
        self.pending: dict[str, float] = {}  # the metrics of its latest report
        self.stats: tuple[np.ndarray, np.ndarray] | None = None  # the scaling of its training rows
        self.thread: threading.Thread | None = None
        self.resumed_at: int | None = None  # a re-run: the epoch of the checkpoint it goes on from
        self.loaded = False  # it called ctx.load_checkpoint()


class _Run:
    """Calls ``fn`` once per split, in lockstep by epoch, and collects what each reported."""

    def __init__(self, fn: Callable[[TrainContext], Any], name: str, settings: TrialSettings, *,
                 refit: bool, max_epochs: int, report: Callable[[EpochReport], bool] | None,
                 keep_models: bool = False, checkpoints: TrainableCheckpoints | None = None,
                 check_saves: bool = False) -> None:
        self.fn, self.name, self.refit, self.max_epochs, self.report = fn, name, refit, max_epochs, report
        self.checkpoints = None if refit else checkpoints
        self.check_saves = check_saves  # the driver's check: a state that cannot be saved fails it
        self.ended_by: dict[int, int] = {}  # fold index -> the round it ended in
        self.keep_models = keep_models or refit
        self.folds: list[_Fold] = []
        t = settings.training
        self.required = () if refit else settings.reported_metrics
        self.monitor, self.patience, self.min_delta = t.monitor, t.patience, t.min_delta
        self.turns = _Turns()
        self.abort = False
        self.halted = False

    def _where(self, f: _Fold) -> str:
        return "the refit" if f.fold is None else f"fold {f.fold}"

    def _channel(self, f: _Fold) -> Callable[[int, dict[str, float]], bool]:
        def report(epoch: int, metrics: dict[str, float]) -> bool:
            if self.abort:  # the trial failed in another fold (a report from a `finally` of yours)
                raise _Abandoned()
            if threading.current_thread() is not f.thread:
                raise RuntimeError("ctx.report must be called from the thread hpsearch called your function in")
            if f.answer:  # told to stop already: later reports are not recorded
                return True
            if f.resumed_at is not None and f.reported == f.resumed_at and (not f.loaded or epoch != f.reported + 1):
                raise unusable_resume(self.name, self._where(f), f.resumed_at, epoch, f.loaded)
            self._check(f, epoch, metrics)
            f.pending = {k: float(v) for k, v in metrics.items() if k in _KNOWN}
            self.turns.hand_back(f.i)
            if self.abort:
                raise _Abandoned()
            return f.answer

        return report

    def _saver(self, f: _Fold, ctx: TrainContext) -> Callable[[Any], None]:
        def save(state: Any) -> None:
            if threading.current_thread() is not f.thread:
                raise RuntimeError("ctx.save_checkpoint must be called from the thread hpsearch called your "
                                   "function in")
            try:
                if self.checkpoints is not None and not f.answer:
                    self.checkpoints.offer(f, ctx, state)
                elif self.check_saves:
                    encode_state(state)
            except TypeError as e:  # a value that cannot be saved: the message names where it is
                raise TrainableError(f"trainable {self.name}: {e} (in {self._where(f)}, after epoch {f.reported})",
                                     self.name, f.fold, f.reported) from None

        return save

    def _restorer(self, f: _Fold, ctx: TrainContext) -> Callable[[], Any]:
        def load() -> Any:
            if self.checkpoints is None:
                return None
            first, f.loaded = not f.loaded, True
            return self.checkpoints.load(f, ctx, first)

        return load

    def _check(self, f: _Fold, epoch: int, metrics: dict[str, Any]) -> None:
        where = self._where(f)
        if epoch != f.reported + 1:
            raise TrainableError(
                f"trainable {self.name} reported epoch {epoch} in {where} after "
                f"{'no epoch' if f.reported == 0 else f'epoch {f.reported}'}; call ctx.report once per epoch, "
                f"counting epochs from 1", self.name, f.fold, epoch)
        for key, value in metrics.items():
            if key not in _KNOWN:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TrainableError(f"trainable {self.name} reported {key}={value!r} at epoch {epoch} of {where}, "
                                     "which is not a number; report floats (e.g. loss.item())",
                                     self.name, f.fold, epoch, key) from None
            if not math.isfinite(number):
                raise TrainableError(
                    f"trainable {self.name} reported {key}={number} at epoch {epoch} of {where} (training "
                    "diverged?); report finite values: lower the learning rate range, or clip gradients",
                    self.name, f.fold, epoch, key)
        for key in self.required:
            if key not in metrics:
                why = ("training.monitor, for early stopping" if key == self.monitor
                       else "the study's metric, for pruning and the fold scores")
                raise TrainableError(
                    f"trainable {self.name} reported epoch {epoch} of {where} without {key} ({why}); it reported "
                    f"{sorted(metrics) or 'nothing'}: pass it, e.g. ctx.report(epoch, {key}=...)",
                    self.name, f.fold, epoch, key)

    def _thread(self, f: _Fold, ctx: TrainContext) -> None:
        self.turns.wait_for(f.i)
        try:
            if not self.abort:
                f.model = self.fn(ctx)
        except _Abandoned:
            pass
        except BaseException as e:  # your code's failure: the scheduler raises it in the trial's thread
            f.error = e
        finally:
            f.done = True
            self.turns.hand_back(f.i, wait=False)

    def _step(self, f: _Fold, rng: _Rng) -> None:
        """Let ``f`` run until its next report or its end."""
        rng.enter()
        self.turns.run(f.i)
        rng.leave()
        if f.error is not None:
            self._fail(f)

    def _fail(self, f: _Fold) -> None:
        self._abandon()
        exc = f.error
        assert exc is not None
        if isinstance(exc, (TrainableError, CheckpointUnusable)) or _is_oom(exc) or not isinstance(exc, Exception):
            raise exc
        text = str(exc)[:_MESSAGE_CHARS]
        raise TrainableError(f"trainable {self.name} raised {type(exc).__name__}: {text} in {self._where(f)}; "
                             f"its traceback ends:\n{_tail(exc)}", self.name, f.fold) from exc

    def _abandon(self) -> None:
        """Let every fold thread still waiting in ``report`` end (it raises :class:`_Abandoned`)."""
        self.abort = True
        for f in self.folds:
            if not f.done:
                self.turns.run(f.i)

    def run(self, contexts: Sequence[tuple[_Fold, TrainContext, _Rng]]) -> list[_Fold]:
        """Every split's call to its end; the folds (their records, curves and, if kept, models)."""
        self.folds = [f for f, _, _ in contexts]
        start = self._resume()
        contexts = [c for c in contexts if not c[0].done]
        for f, ctx, _ in contexts:
            f.thread = threading.Thread(target=self._thread, args=(f, ctx), daemon=True,
                                        name=f"hpsearch-trainable-{f.i}")
            f.thread.start()
        try:
            self._schedule(list(contexts), start)
        except BaseException:
            if not self.abort:  # e.g. the report channel failed: no fold thread is left waiting
                self._abandon()
            raise
        for f in self.folds:
            if f.thread is not None:
                f.thread.join(timeout=5.0)
        return self.folds

    def _resume(self) -> int:
        """A re-run: the folds' states from the checkpoint, its reports sent again; the epoch it goes on from."""
        ck = self.checkpoints
        if ck is None:
            return 0
        for r in ck.restore(self.folds):
            if self.report is not None and self.report(r):
                self.halted = True
        for f in self.folds:
            if f.done:  # it had ended by the checkpoint's epoch: it is not called again
                f.record.stopped = True
                self.ended_by[f.i] = ck.epoch
            elif self.halted:  # the pruner stopped the trial at an epoch it had trained: it ends there
                f.done = f.record.stopped = True
            elif ck.epoch:
                f.resumed_at = ck.epoch
        return ck.epoch

    def _schedule(self, live: list[tuple[_Fold, TrainContext, _Rng]], start: int = 0) -> None:
        epoch = start
        ck = self.checkpoints
        while live:
            epoch += 1
            for f, _, rng in list(live):
                self._step(f, rng)
                if f.done:
                    live.remove((f, _, rng))
                    self.ended_by[f.i] = epoch
                    self._ended(f)
                    continue
                f.reported += 1
                metrics = f.pending
                for k, v in metrics.items():
                    f.curves.setdefault(k, [math.nan] * (f.reported - 1)).append(v)
                for k in f.curves:
                    if len(f.curves[k]) < f.reported:
                        f.curves[k].append(math.nan)
                if not self.refit:
                    f.record.update(f.reported, dict(metrics))
            reported = [f for f, _, _ in live]
            if ck is not None and reported:  # every live fold saved the due epoch (epoch - 1), or it is skipped
                ck.write(self.folds, self.ended_by)
            if not reported:
                break
            if (self.report is not None or ck is not None) and not self.refit:
                members = tuple(g.record.report(g.fold or 0) for g in self.folds if g.reported)
                sent = EpochReport(epoch=epoch, members=members)
                if ck is not None:
                    ck.sent.append(0, sent)
                if self.report is not None and self.report(sent):
                    self.halted = True
            for f, _, rng in list(live):
                f.answer = self.halted or f.record.stopped or f.reported >= self.max_epochs
                if f.answer:  # let it return now (reports after a stop are not recorded)
                    while not f.done:
                        self._step(f, rng)
                    live.remove((f, _, rng))
                    self.ended_by[f.i] = epoch
                    self._ended(f)
            if ck is not None and live:
                ck.due(epoch)

    def _ended(self, f: _Fold) -> None:
        f.record.stopped = True  # from now on it reports its best epoch's values
        where = self._where(f)
        if f.reported == 0 and not self.refit:
            self._abandon()
            raise TrainableError(
                f"trainable {self.name} returned in {where} without calling ctx.report; report every epoch, "
                f"e.g. ctx.report(epoch, {', '.join(f'{m}=...' for m in self.required)}): hpsearch stops early, "
                "prunes and scores the folds from those reports", self.name, f.fold)
        if not isinstance(f.model, nn.Module):
            self._abandon()
            raise TrainableError(f"trainable {self.name} returned {type(f.model).__name__} in {where}, not a "
                                 "torch.nn.Module; return the trained model (hpsearch scores it on the test split)",
                                 self.name, f.fold)
        if not self.keep_models:
            f.model = None  # a fold's model is not needed once it has reported


# ------------------------------------------------------------------------------------ entry points


def _device_is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def _contexts(run: _Run, data: Dataset, params: Mapping[str, Any], settings: TrialSettings, seed: int,
              splits: Sequence[tuple[int | None, np.ndarray, np.ndarray | None]], device: torch.device,
              role: int, max_epochs: int) -> list[tuple[_Fold, TrainContext, _Rng]]:
    t = settings.training
    batch_size = int(params.get("batch_size", t.batch_size))
    out = []
    for i, (fold, train_rows, val_rows) in enumerate(splits):
        stats = _split_stats(data, train_rows)
        seeds = member_seeds(seed, 0 if fold is None else fold, role)
        f = _Fold(i, fold, t.monitor, t.patience, t.min_delta)
        user_seed = seeds.init % (2**32)
        ctx = TrainContext(
            params=params, train=_split_rows(data, train_rows, stats, settings.task, device),
            val=None if val_rows is None else _split_rows(data, val_rows, stats, settings.task, device),
            device=device, seed=user_seed, order_seed=seeds.order % (2**62), max_epochs=max_epochs,
            n_outputs=int(data.n_classes), task=settings.task, fold=fold, batch_size=batch_size,
            channel=run._channel(f), input_shape=data.sample_shape,
        )
        ctx._saver, ctx._restorer = run._saver(f, ctx), run._restorer(f, ctx)
        f.stats = stats
        out.append((f, ctx, _Rng(user_seed, _device_is_cuda(device))))
    return out


def _in_own_rng(device: torch.device, body: Callable[[], Any]) -> Any:
    """Run ``body`` and give the caller its global random states back afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            return body()
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def run_trainable(
    data: Dataset,
    params: Mapping[str, Any],
    settings: TrialSettings,
    *,
    seed: int,
    device: torch.device,
    report: Callable[[EpochReport], bool] | None = None,
    folds: Sequence[int] | None = None,
    checkpoint: CheckpointPlan | None = None,
) -> TrialResult:
    """Train and score one configuration with ``settings.trainable``: one call per fold, in lockstep.

    Each fold's score is what it reported at its best epoch by ``training.monitor`` (as the
    built-in loop restores its best epoch). ``report``, ``folds`` as for :func:`trials.run_trial`;
    ``checkpoint`` is the plan of these very folds (already :meth:`CheckpointPlan.for_folds`): the
    folds' ``ctx.save_checkpoint`` go there, and a re-run goes on from it
    (:mod:`trials._trainable_checkpoint`).

    Raises
    ------
    TrainableError
        The function does not import, raised (the message holds the tail of its traceback), never
        reported, reported a non-finite value, left out a required metric or returned no model.
    """
    assert settings.trainable is not None
    t0 = time.perf_counter()
    fn, name = load_trainable(settings.trainable), factory_name(settings.trainable)
    fold_ids = list(range(len(data.folds))) if folds is None else [int(f) for f in folds]
    max_epochs = settings.training.max_epochs
    splits = [(f, data.folds[f][0], data.folds[f][1]) for f in fold_ids]
    # the folds' states are copies already (encode_state); written in the background on a GPU, as fit_stack's
    saver = None if checkpoint is None else Checkpointer(checkpoint, background=_device_is_cuda(device))
    fingerprint = "" if saver is None else trainable_fingerprint(
        name, params, settings, seed=seed, splits=splits, input_shape=data.X.shape[1:], n_outputs=int(data.n_classes))
    run = _Run(fn, name, settings, refit=False, max_epochs=max_epochs, report=report)

    def body() -> list[_Fold]:
        nonlocal run
        ck = None if saver is None else TrainableCheckpoints(saver, fingerprint, _device_is_cuda(device))
        run = _Run(fn, name, settings, refit=False, max_epochs=max_epochs, report=report, checkpoints=ck)
        return run.run(_contexts(run, data, params, settings, seed, splits, device, ROLE_CV, max_epochs))

    def fit() -> list[_Fold]:
        if saver is None:
            return _in_own_rng(device, body)
        try:
            try:
                out = _in_own_rng(device, body)
            except CheckpointUnusable as e:  # found only as the folds went on: train from epoch 1, saving as asked
                saver.reset(f"{e}; the trial starts from epoch 1")
                out = _in_own_rng(device, body)
        finally:
            saver.finish()  # a checkpoint still being written when training ends (or fails)
        saver.check()  # ... that could not be written: the trial stops (the study too, resumable)
        return out

    done = fit()
    curves: dict[str, list[list[float]]] = {}
    for k in sorted({k for f in done for k in f.curves}, key=lambda k: (k != "train_loss", k)):
        curves[k] = [f.curves.get(k, [math.nan] * f.reported) for f in done]
    return TrialResult(
        folds=tuple(FoldResult(f.fold, f.record.best_epoch, f.record.epochs_run,
                               f.record.best.get("val_loss", math.nan), f.record.best.get("val_accuracy", math.nan),
                               metrics={k: v for k, v in f.record.best.items() if k != "train_loss"})
                    for f in done),
        curves=curves,
        epochs_run=max(f.reported for f in done),
        duration_s=time.perf_counter() - t0,
        device=str(device),
        train_path="trainable",
        stopped_by_report=run.halted,
        resumed_from_epoch=None if saver is None else saver.resumed_from_epoch,
        messages=() if saver is None else tuple(saver.messages),
    )


def _score(model: nn.Module, data: Dataset, stats: tuple[np.ndarray, np.ndarray], settings: TrialSettings,
           device: torch.device, name: str, target: tuple[float, float] | None, rows: int | None = None,
           chunk: int = 4096) -> dict[str, float]:
    """hpsearch's metrics of ``model`` on the test split (``rows``: its first rows only), scaled with ``stats``."""
    regression = settings.task == "regression"
    n = len(data.y_test) if rows is None else min(rows, len(data.y_test))
    batches: Any
    if data.stream is not None:  # streamed: the test samples are read in batches
        from ._stream_fit import loader, split_samples

        test = split_samples(data, np.arange(n), test=True, stats=stats)
        batches = ((x.to(device), y.to(device)) for x, y in loader(test, chunk, shuffle=False, seed=0))
    else:
        x_all, y_all = _rows(data.X_test, data.y_test, np.arange(n), stats, settings.task, device).tensors
        batches = ((x_all[start:start + chunk], y_all[start:start + chunk]) for start in range(0, n, chunk))
    n_out = int(data.n_classes)
    scores = make_scores(settings.task, settings.loss, 1, n_out, device)
    tgt = None
    if regression:
        assert target is not None
        tgt = (torch.tensor([[target[0]]], device=device), torch.tensor([[target[1]]], device=device))
    model.eval()
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            want = (len(x), 1) if regression else (len(x), n_out)
            if not isinstance(out, Tensor) or out.reshape(len(x), -1).shape != want or (
                    not regression and out.dim() != 2):
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                wanted = "[batch] or [batch, 1] predictions" if regression else f"[batch, {n_out}] logits"
                raise TrainableError(
                    f"trainable {name}: the model it returned maps a batch of shape {tuple(x.shape)} to {shape}, "
                    f"but hpsearch scores {wanted}; return a model with {want[1]} output"
                    f"{'s' if want[1] > 1 else ''} per sample", name)
            out = out.reshape(1, len(x), want[1]).float()
            if tgt is not None:  # the model predicts the target in its own units; scores take it standardized
                out = (out - tgt[0]) / tgt[1]
            scores.add(out, y.unsqueeze(0), torch.ones(1, len(x), device=device), tgt)
    return {k: float(v[0]) for k, v in scores.result(torch.tensor([float(n)], device=device)).items()}


def _target_stats(data: Dataset, rows: np.ndarray, task: str) -> tuple[float, float] | None:
    if task != "regression":
        return None
    t = np.asarray(data.y, dtype=np.float64)[rows]
    sd = float(t.std())
    return float(t.mean()), sd if sd > 1e-12 else 1.0


def refit_trainable(
    data: Dataset,
    params: Mapping[str, Any],
    settings: TrialSettings,
    *,
    seed: int,
    device: torch.device,
    epochs: int | None,
) -> TestResult:
    """The refit with ``settings.trainable``: one call on every non-test row for ``epochs`` epochs
    (``ctx.val`` is None; ``report`` never stops it early), or with ``epochs=None`` on an inner split of
    ``cv.val_fraction`` with early stopping; hpsearch then scores the returned model on the test split.

    The model is not saved (``state_dict`` is None): hpsearch cannot rebuild your architecture.
    """
    assert settings.trainable is not None
    t0 = time.perf_counter()
    fn, name = load_trainable(settings.trainable), factory_name(settings.trainable)
    if epochs is None:
        train_rows, val_rows = holdout_split(data.y, settings.cv.val_fraction, seed,
                                             stratify=settings.task == "classification")
        max_epochs, splits = settings.training.max_epochs, [(None, train_rows, val_rows)]
    else:
        train_rows, val_rows = np.arange(len(data.y)), None
        max_epochs, splits = int(epochs), [(None, train_rows, None)]
    run = _Run(fn, name, settings, refit=epochs is not None, max_epochs=max_epochs, report=None, keep_models=True)

    def body() -> TestResult:
        (f,) = run.run(_contexts(run, data, params, settings, seed, splits, device, ROLE_REFIT, max_epochs))
        assert f.stats is not None
        metrics = _score(f.model, data, f.stats, settings, device, name, _target_stats(data, train_rows, settings.task))
        epochs_run = f.reported
        return TestResult(
            test_accuracy=metrics.get("val_accuracy", math.nan),
            test_loss=metrics["val_loss"],
            best_epoch=f.record.best_epoch if epochs is None else epochs_run,
            epochs_run=epochs_run,
            duration_s=0.0,
            metrics=metrics,
            train_rows=len(train_rows),
            val_rows=0 if val_rows is None else len(val_rows),
        )

    result: TestResult = _in_own_rng(device, body)
    return TestResult(**{**result.__dict__, "duration_s": time.perf_counter() - t0})


def check_trainable(settings: TrialSettings, params: Mapping[str, Any], data: Dataset) -> None:
    """Try ``settings.trainable`` on the driver's CPU before any trial runs: import it, call it for
    one epoch on a few rows of fold 0 (``ctx.max_epochs`` is 1), check its report, and run the model
    it returns on a few test rows as the test score will.

    Raises
    ------
    TrainableError
        As :func:`run_trainable` would on a worker, saying that the driver's check found it.
    """
    assert settings.trainable is not None
    fn, name = load_trainable(settings.trainable), factory_name(settings.trainable)
    train_rows, val_rows = data.folds[0]
    splits = [(0, train_rows[:_PROBE_TRAIN_ROWS], val_rows[:_PROBE_VAL_ROWS])]
    run = _Run(fn, name, settings, refit=False, max_epochs=1, report=None, keep_models=True, check_saves=True)
    cpu = torch.device("cpu")

    def body() -> None:
        (f,) = run.run(_contexts(run, data, params, settings, 0, splits, cpu, ROLE_CV, 1))
        assert f.stats is not None
        _score(f.model, data, f.stats, settings, cpu, name, _target_stats(data, splits[0][1], settings.task), rows=8)

    try:
        _in_own_rng(cpu, body)
    except TrainableError as e:
        raise TrainableError(f"{e} (found by the driver's check before the study started, with params "
                             f"{dict(params)}; nothing was run or stored)", e.trainable, e.fold, e.epoch,
                             e.metric) from None
    except torch.OutOfMemoryError:
        pass  # the driver's memory says nothing about a worker's device
