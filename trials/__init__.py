"""trials: turn one set of hyperparameters into a trustworthy score.

Data loading and validation, the test split, CV folds, the stacked MLP (all folds of one
configuration train as one network with a leading member dimension), per-member early stopping,
and the final refit + test evaluation. ``trials`` never touches the database and never imports Ray.

The public API is re-exported here from small private modules.
"""

from __future__ import annotations

from ._config import (
    TUNABLE_PARAMS,
    CVSpec,
    DataSpec,
    Hyperparams,
    ModelSpec,
    TrainingSpec,
    TrialSettings,
    check_param_names,
    resolve_hyperparams,
)
from ._data import DataError, Dataset, load_dataset
from ._results import EpochReport, FoldResult, MemberReport, TestResult, TrialResult
from ._seeding import trial_seed
from ._trial import TrialOutOfMemory, refit_and_test, run_trial

__all__ = [
    "TUNABLE_PARAMS",
    "CVSpec",
    "DataError",
    "DataSpec",
    "Dataset",
    "EpochReport",
    "FoldResult",
    "Hyperparams",
    "MemberReport",
    "ModelSpec",
    "TestResult",
    "TrainingSpec",
    "TrialOutOfMemory",
    "TrialResult",
    "TrialSettings",
    "check_param_names",
    "load_dataset",
    "refit_and_test",
    "resolve_hyperparams",
    "run_trial",
    "trial_seed",
]
