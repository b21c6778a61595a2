"""What a trial reports per epoch and returns at the end."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ._metrics import METRICS

__all__ = ["EpochReport", "FoldResult", "MemberReport", "TestResult", "TrialResult"]

_METRICS = ("train_loss", *METRICS)
_ALIASES = {"loss": "val_loss", "accuracy": "val_accuracy"}


def _metric(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; use one of {list(_METRICS)} (or 'loss', 'accuracy')")
    return name


def _get(obj: object, metrics: Mapping[str, float], name: str) -> float:
    """``name`` from ``metrics``, else the attribute (``train_loss``, ``val_loss``, ``val_accuracy``)."""
    m = _metric(name)
    if m in metrics:
        return float(metrics[m])
    value = getattr(obj, m, None)
    if value is None:
        raise ValueError(f"metric {m!r} was not computed for this task; it has {sorted(metrics)}")
    return float(value)


@dataclass(frozen=True)
class MemberReport:
    """One member (fold) after one epoch.

    A member that has stopped early (``stopped=True``) reports the values of its restored best
    epoch. ``metrics`` holds every validation metric of the task by name (``val_f1_macro``,
    ``val_mse`` ...); ``val_accuracy`` is ``nan`` for regression.
    """

    fold: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    stopped: bool
    metrics: Mapping[str, float] = field(default_factory=dict)

    def get(self, metric: str) -> float:
        """The value of ``metric`` (any name of :data:`trials.METRICS`, or ``train_loss``)."""
        return _get(self, self.metrics, metric)


@dataclass(frozen=True)
class EpochReport:
    """All members after one epoch (``epoch`` is 1-based)."""

    epoch: int
    members: tuple[MemberReport, ...]

    def value(self, metric: str) -> float:
        """Mean of ``metric`` (``train_loss`` or a validation metric of the task) over the members."""
        return float(np.mean([r.get(metric) for r in self.members]))


@dataclass(frozen=True)
class FoldResult:
    """A fold's result at its restored best epoch (``best_epoch`` is 1-based)."""

    fold: int
    best_epoch: int
    epochs_run: int
    val_loss: float
    val_accuracy: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Every validation metric of the task at the best epoch, by name."""

    def get(self, metric: str) -> float:
        return _get(self, self.metrics, metric)


@dataclass(frozen=True)
class TrialResult:
    """The result of :func:`run_trial`.

    Attributes
    ----------
    folds
        One result per trained fold, in fold order.
    curves
        ``train_loss`` and every validation metric of the task (``val_loss``, ``val_accuracy``,
        ``val_f1_macro``, ``val_auc`` for two classes; ``val_loss``, ``val_mse``, ``val_mae``,
        ``val_r2`` for regression): one list per fold, one value per epoch the fold ran
        (``train_loss`` is the sample-weighted mean of the epoch's batch losses, with
        dropout active).
    epochs_run
        Epochs run by the longest-running fold.
    duration_s
        Wall time of the trial.
    device
        ``cpu``, ``cuda:0``, ...
    train_path
        ``stacked`` (built-in MLP), ``vmap`` or ``sequential`` (user model factory), ``trainable`` (your
        own training function).
    stopped_by_report
        The report callback asked to stop (pruning).
    stack_size
        Configurations trained in the same stack as this one (1: alone; see
        :func:`trials.run_trials`); ``duration_s`` is then the whole stack's.
    resumed_from_epoch
        The epoch of the checkpoint the trial went on from (:class:`trials.CheckpointPlan`);
        None when it trained from epoch 1.
    messages
        What the user should know about the run (a checkpoint that could not be used or written).
    """

    folds: tuple[FoldResult, ...]
    curves: dict[str, list[list[float]]]
    epochs_run: int
    duration_s: float
    device: str
    train_path: str
    stopped_by_report: bool
    stack_size: int = 1
    resumed_from_epoch: int | None = None
    messages: tuple[str, ...] = ()

    def scores(self, metric: str) -> list[float]:
        """``metric`` (a validation metric of the task, or ``train_loss``) of each fold at its best epoch."""
        m = _metric(metric)
        if m == "train_loss":
            return [float(c[f.best_epoch - 1]) for c, f in zip(self.curves["train_loss"], self.folds)]
        return [f.get(m) for f in self.folds]

    def value(self, metric: str) -> float:
        """Mean of :meth:`scores` over the folds."""
        return float(np.mean(self.scores(metric)))

    def std(self, metric: str) -> float:
        """Standard deviation (``ddof=0``) of :meth:`scores` over the folds."""
        return float(np.std(self.scores(metric)))


@dataclass(frozen=True)
class TestResult:
    """The result of :func:`refit_and_test`: one evaluation on the test split.

    ``metrics`` holds every metric of the task on the test split under its validation name
    (``val_f1_macro``, ``val_mse`` ...: :meth:`score` takes the study's ``metric``);
    ``test_accuracy`` is ``nan`` for regression.

    Attributes
    ----------
    best_epoch, epochs_run
        The epoch whose weights were kept, and the epochs trained (equal for a fixed-epoch refit).
    train_rows, val_rows
        Rows the refit trained on, and rows of its inner early-stopping split (0 without one).
    state_dict
        The trained network as ``torch.save`` bytes of the ``state_dict`` of
        :func:`trials.build_module`'s module (None where a caller did not ask for it).
    feature_mean, feature_scale
        The scaling the network expects: statistics of its training rows, one value per feature.
    target_mean, target_scale
        Regression: the network predicts the target standardized with these statistics of its
        training rows (``None`` for classification).
    """

    __test__ = False  # not a pytest test class

    test_accuracy: float
    test_loss: float
    best_epoch: int
    epochs_run: int
    duration_s: float
    train_rows: int = 0
    val_rows: int = 0
    state_dict: bytes | None = None
    feature_mean: tuple[float, ...] = ()
    feature_scale: tuple[float, ...] = ()
    target_mean: float | None = None
    target_scale: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    def score(self, metric: str) -> float:
        """The test value of validation metric ``metric`` (``val_accuracy`` -> the test accuracy)."""
        m = _metric(metric)
        if m in self.metrics:
            return float(self.metrics[m])
        if m in ("val_accuracy", "val_loss"):
            return float(self.test_accuracy if m == "val_accuracy" else self.test_loss)
        return math.nan
