"""What a trial reports per epoch and returns at the end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpochReport", "FoldResult", "MemberReport", "TestResult", "TrialResult"]

_METRICS = ("train_loss", "val_loss", "val_accuracy")
_ALIASES = {"loss": "val_loss", "accuracy": "val_accuracy"}


def _metric(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; use one of {list(_METRICS)} (or 'loss', 'accuracy')")
    return name


@dataclass(frozen=True)
class MemberReport:
    """One member (fold) after one epoch.

    A member that has stopped early (``stopped=True``) reports the values of its restored best
    epoch.
    """

    fold: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    stopped: bool


@dataclass(frozen=True)
class EpochReport:
    """All members after one epoch (``epoch`` is 1-based)."""

    epoch: int
    members: tuple[MemberReport, ...]

    def value(self, metric: str) -> float:
        """Mean of ``metric`` (``train_loss``, ``val_loss``, ``val_accuracy``) over the members."""
        m = _metric(metric)
        return float(np.mean([getattr(r, m) for r in self.members]))


@dataclass(frozen=True)
class FoldResult:
    """A fold's result at its restored best epoch (``best_epoch`` is 1-based)."""

    fold: int
    best_epoch: int
    epochs_run: int
    val_loss: float
    val_accuracy: float


@dataclass(frozen=True)
class TrialResult:
    """The result of :func:`run_trial`.

    Attributes
    ----------
    folds
        One result per trained fold, in fold order.
    curves
        ``train_loss`` / ``val_loss`` / ``val_accuracy``: one list per fold, one value per epoch the
        fold ran (``train_loss`` is the sample-weighted mean of the epoch's batch losses, with
        dropout active).
    epochs_run
        Epochs run by the longest-running fold.
    duration_s
        Wall time of the trial.
    device
        ``cpu``, ``cuda:0``, ...
    train_path
        ``stacked`` (built-in MLP), ``vmap`` or ``sequential`` (user model factory).
    stopped_by_report
        The report callback asked to stop (pruning).
    stack_size
        Configurations trained in the same stack as this one (1: alone; see
        :func:`trials.run_trials`); ``duration_s`` is then the whole stack's.
    """

    folds: tuple[FoldResult, ...]
    curves: dict[str, list[list[float]]]
    epochs_run: int
    duration_s: float
    device: str
    train_path: str
    stopped_by_report: bool
    stack_size: int = 1

    def scores(self, metric: str) -> list[float]:
        """``metric`` (``val_loss`` or ``val_accuracy``) of each fold at its best epoch."""
        m = _metric(metric)
        if m == "train_loss":
            return [float(c[f.best_epoch - 1]) for c, f in zip(self.curves["train_loss"], self.folds)]
        return [float(getattr(f, m)) for f in self.folds]

    def value(self, metric: str) -> float:
        """Mean of :meth:`scores` over the folds."""
        return float(np.mean(self.scores(metric)))

    def std(self, metric: str) -> float:
        """Standard deviation (``ddof=0``) of :meth:`scores` over the folds."""
        return float(np.std(self.scores(metric)))


@dataclass(frozen=True)
class TestResult:
    """The result of :func:`refit_and_test`: one evaluation on the test split."""

    __test__ = False  # not a pytest test class

    test_accuracy: float
    test_loss: float
    best_epoch: int
    epochs_run: int
    duration_s: float
