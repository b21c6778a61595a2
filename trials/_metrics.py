"""The tasks, their losses and metrics, and which way each metric is better: named once, here.

Imports neither torch nor scikit-learn, so the study file's checks (``search/_spec.py``) and the
views use the same names and directions as training.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "LOSSES",
    "METRICS",
    "TASKS",
    "Task",
    "check_task_settings",
    "default_loss",
    "metric_direction",
    "metric_mode",
    "task_losses",
    "task_metrics",
]

Task = Literal["classification", "regression"]
TASKS: tuple[str, ...] = ("classification", "regression")

_METRICS: dict[str, tuple[str, ...]] = {
    # val_auc only for two classes: training computes it only then (see task_metrics)
    "classification": ("val_loss", "val_accuracy", "val_f1_macro", "val_auc"),
    "regression": ("val_loss", "val_mse", "val_mae", "val_r2"),
}
METRICS: tuple[str, ...] = tuple(dict.fromkeys(m for ms in _METRICS.values() for m in ms))
"""Every validation metric of any task (the values ``metric`` and ``training.monitor`` may take)."""

_LOSSES: dict[str, tuple[str, ...]] = {
    "classification": ("cross_entropy",),
    "regression": ("mse", "l1", "huber"),
}
LOSSES: tuple[str, ...] = tuple(dict.fromkeys(x for xs in _LOSSES.values() for x in xs))

_MAXIMIZED = frozenset({"val_accuracy", "val_f1_macro", "val_auc", "val_r2"})


def task_metrics(task: str, n_classes: int | None = None) -> tuple[str, ...]:
    """The validation metrics of ``task``; with ``n_classes`` known, ``val_auc`` only for two classes."""
    metrics = _METRICS[task]
    if task == "classification" and n_classes is not None and n_classes != 2:
        metrics = tuple(m for m in metrics if m != "val_auc")
    return metrics


def task_losses(task: str) -> tuple[str, ...]:
    """The training losses ``task`` can use (``training.loss``)."""
    return _LOSSES[task]


def default_loss(task: str) -> str:
    """``cross_entropy`` for classification, ``mse`` for regression."""
    return _LOSSES[task][0]


def metric_direction(metric: str) -> str:
    """``maximize`` for accuracy, F1, AUC and R²; ``minimize`` for losses and errors."""
    return "maximize" if metric in _MAXIMIZED else "minimize"


def metric_mode(metric: str) -> str:
    """``max`` or ``min``: :func:`metric_direction` as early stopping and schedules spell it."""
    return "max" if metric in _MAXIMIZED else "min"


def check_task_settings(task: str, *, metric: str | None, monitor: str, loss: str | None) -> list[str]:
    """Lines ``key: problem; fix`` for a metric, monitor or loss that ``task`` does not have."""
    errors: list[str] = []
    have = _METRICS[task]
    for key, value in (("metric", metric), ("training.monitor", monitor)):
        if value is not None and value not in have:
            other = next(t for t in TASKS if t != task)
            errors.append(f"{key}: {value} is not a metric of task {task} (it is one of task {other}); use one "
                          f"of {', '.join(have)}, or set task: {other}")
    if loss is not None and loss not in _LOSSES[task]:
        errors.append(f"training.loss: {loss} is not a loss for task {task}; use one of "
                      f"{', '.join(_LOSSES[task])} (or leave it out for {default_loss(task)})")
    return errors
