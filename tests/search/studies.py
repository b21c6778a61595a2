"""Build studies shaped like the orchestrator writes them, directly with Optuna (milliseconds)."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

import storage as st

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "batch_size": CategoricalDistribution([32, 64]),
}
SPEC = {
    "version": 1,
    "strategy": "random",
    "metric": "val_accuracy",
    "direction": "maximize",
    "n_trials": 10,
    "seed": 0,
    "space": {
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
    },
    "cv": {"folds": 3},
}
FOLDS = 3
EPOCHS = 4


def score(lr: float, dropout: float) -> float:
    """Accuracy-like, best at lr=0.01 and dropout=0.2."""
    return max(0.05, 0.95 - (math.log10(lr) + 2.0) ** 2 / 5.0 - (dropout - 0.2) ** 2)


def build_study(url: str, name: str = "demo", *, n_complete: int = 8, n_fail: int = 2, n_pruned: int = 1,
                refit: bool = True) -> optuna.Study:
    """A finished-looking study: COMPLETE trials with every contract attribute, FAIL and PRUNED trials.

    Parameters
    ----------
    url : str
        Storage URL (created if missing).
    name : str
        Study name.
    n_complete, n_fail, n_pruned : int
        Trials per state; COMPLETE trials come first, then PRUNED, then FAIL.
    refit : bool
        Store a ``test_result`` for the best trial.
    """
    study = optuna.create_study(storage=st.create_storage(url), study_name=name, direction="maximize")
    study.set_user_attr("hpsearch_spec", {**SPEC, "name": name})
    study.set_user_attr("hpsearch_version", "0.1.0")
    lrs = [10 ** (-4 + 4 * i / max(1, n_complete + n_pruned + n_fail - 1))
           for i in range(n_complete + n_pruned + n_fail)]
    number = 0
    for i in range(n_complete):
        params = {"lr": lrs[i], "dropout": 0.05 * (i % 8), "batch_size": (32, 64)[i % 2]}
        s = score(params["lr"], params["dropout"])
        folds = [s - 0.01, s, s + 0.01]
        value = sum(folds) / FOLDS
        std = math.sqrt(sum((f - value) ** 2 for f in folds) / FOLDS)
        curves = {
            "train_loss": [[1.0 - f * e / EPOCHS + 0.05 for e in range(1, EPOCHS + 1)] for f in folds],
            "val_loss": [[1.0 - f * e / EPOCHS for e in range(1, EPOCHS + 1)] for f in folds],
            "val_accuracy": [[f * e / EPOCHS for e in range(1, EPOCHS + 1)] for f in folds],
        }
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=DISTRIBUTIONS, value=value, state=TrialState.COMPLETE,
            intermediate_values={e: value * e / EPOCHS for e in range(1, EPOCHS + 1)},
            user_attrs=_attrs(folds, std, curves, number=number),
        ))
        number += 1
    for i in range(n_complete, n_complete + n_pruned):
        params = {"lr": lrs[i], "dropout": 0.45, "batch_size": 32}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=DISTRIBUTIONS, value=0.1, state=TrialState.PRUNED,
            intermediate_values={1: 0.1}, user_attrs={"epochs": 1, "duration_s": 0.5, "node": "host-a",
                                                      "attempt": 0},
        ))
        number += 1
    for i in range(n_complete + n_pruned, n_complete + n_pruned + n_fail):
        params = {"lr": lrs[i], "dropout": 0.3, "batch_size": 64}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=DISTRIBUTIONS, state=TrialState.FAIL,
            user_attrs={"fail_reason": f"RuntimeError: CUDA out of memory (trial {number})",
                        "will_retry": False, "attempt": 0, "node": "host-b", "duration_s": 0.25},
        ))
        number += 1
    if refit and n_complete:
        best = study.best_trial
        study.set_user_attr("test_result", {
            "trial": best.number, "test_accuracy": 0.9321, "test_loss": 0.2345, "test_score": 0.9321,
            "metric": "val_accuracy", "epochs": EPOCHS,
        })
    return study


def _attrs(folds: list[float], std: float, curves: dict[str, Any], *, number: int) -> dict[str, Any]:
    return {
        "fold_scores": folds,
        "value_std": std,
        "fold_epochs": [EPOCHS] * FOLDS,
        "epochs": EPOCHS,
        "duration_s": 1.5 + number,
        "node": "host-a",
        "node_id": "",
        "device": "cpu",
        "train_path": "stacked",
        "curves": curves,
        "attempt": 0,
    }
