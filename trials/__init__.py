"""trials: turn one set of hyperparameters into a trustworthy score.

Data loading and validation, the test split, CV folds, the stacked MLP (all folds of one
configuration train as one network with a leading member dimension), per-member early stopping,
and the final refit + test evaluation. ``trials`` never touches the database and never imports Ray.

The public API is re-exported here from small private modules; the training entry points
(:func:`run_trial`, :func:`run_trials`, :func:`refit_and_test`, :class:`TrialOutOfMemory`) are
imported on first use (PEP 562), so ``import trials`` alone does not import torch (~2.5 s) and the
driver's checks (:func:`check_data`, :func:`resolve_hyperparams`) stay cheap::

    from trials import CVSpec, DataSpec, TrialSettings, load_dataset, refit_and_test, run_trial, trial_seed

    settings = TrialSettings()  # model / training / cv sections, defaults
    data = load_dataset(DataSpec(source="digits"), settings.cv, seed=0)  # test split set aside first
    result = run_trial(data, {"lr": 0.05, "batch_size": 32}, settings, seed=trial_seed(0, 7))
    result.value("val_accuracy"), result.std("val_accuracy"), result.train_path  # ..., "stacked"
    test = refit_and_test(data, {"lr": 0.05, "batch_size": 32}, settings, seed=0)

Training path: the k folds of one configuration are the *members* of one stacked network
(weights ``[members, in, out]``, ``torch.baddbmm``); a single holdout split is a stack of one. Each
member has its own initialisation, data order, dropout masks, optimizer state, feature scaling
(fit on its own training rows) and early stopping, and computes exactly what it would compute
alone. User models (``model.factory``) run through ``torch.func`` (``vmap``) or, when vmap cannot
trace them, member by member in the same loop.

Several configurations that differ only in ``lr``, ``momentum``, ``weight_decay`` and ``dropout``
(equal :func:`stack_key`) can train as one stack of k folds x m configurations members
(:func:`run_trials`); each keeps the result it would have alone.

Your own training loop: with ``TrialSettings(trainable=fn)`` (``package.module:function`` or a
callable) :func:`run_trial` calls ``fn(ctx)`` once per fold with a :class:`TrainContext` (the
fold's data, params, device, seed and ``ctx.report(epoch, **metrics) -> stop``), in lockstep, and
scores the folds from the reports; :func:`refit_and_test` calls it on all non-test rows and scores
the returned model on the test split (see :mod:`trials._trainable`).

Scores: a member that diverges (non-finite validation loss) stops at once and reports ``nan``
``val_loss``; callers should treat a non-finite trial value as a failed trial.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._checkpoint import (
    CheckpointPlan,
    CheckpointWriteError,
    checkpoint_files,
    checkpoint_sizes,
    checkpoint_sizes_of,
    remove_checkpoints,
)
from ._config import (
    TUNABLE_PARAMS,
    CVSpec,
    DataSpec,
    HyperparameterError,
    Hyperparams,
    ModelError,
    ModelSpec,
    TrainingSpec,
    TrialSettings,
    check_param_names,
    factory_name,
    group_source_error,
    resolve_hyperparams,
    stack_key,
)
from ._data import DataError, Dataset, check_data, check_metric, decode_labels, encode_labels, load_dataset
from ._metrics import (
    LOSSES,
    METRICS,
    TASKS,
    check_task_settings,
    default_loss,
    metric_direction,
    metric_mode,
    task_metrics,
)
from ._results import EpochReport, FoldResult, MemberReport, TestResult, TrialResult
from ._seeding import trial_seed
from ._store import ArtifactLocation, is_object_store, open_location

__all__ = [
    "LOSSES",
    "METRICS",
    "TASKS",
    "TUNABLE_PARAMS",
    "ArtifactLocation",
    "CVSpec",
    "CheckpointPlan",
    "CheckpointWriteError",
    "DataError",
    "DataSpec",
    "Dataset",
    "EpochReport",
    "FoldResult",
    "HyperparameterError",
    "Hyperparams",
    "MemberReport",
    "ModelError",
    "ModelSpec",
    "TestResult",
    "TrainContext",
    "TrainableError",
    "TrainingSpec",
    "TrialOutOfMemory",
    "TrialResult",
    "TrialSettings",
    "check_data",
    "check_metric",
    "check_model",
    "check_param_names",
    "check_task_settings",
    "check_trainable",
    "checkpoint_files",
    "checkpoint_sizes",
    "checkpoint_sizes_of",
    "decode_labels",
    "default_loss",
    "encode_labels",
    "factory_name",
    "group_source_error",
    "is_object_store",
    "load_dataset",
    "metric_direction",
    "metric_mode",
    "open_location",
    "refit_and_test",
    "remove_checkpoints",
    "resolve_hyperparams",
    "run_trial",
    "run_trials",
    "stack_key",
    "task_metrics",
    "trial_seed",
]

# Names of the torch-bound module, imported on first access (``from trials import run_trial`` too).
_LAZY = {name: "._trial" for name in ("TrialOutOfMemory", "check_model", "check_trainable", "refit_and_test",
                                        "run_trial", "run_trials")}
_LAZY.update({name: "._trainable" for name in ("TrainContext", "TrainableError")})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trials' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from ._trainable import TrainableError, TrainContext
    from ._trial import TrialOutOfMemory, check_model, check_trainable, refit_and_test, run_trial, run_trials
