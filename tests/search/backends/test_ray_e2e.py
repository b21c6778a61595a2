"""End to end with real Ray, real training on digits, and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import optuna
import pytest
import ray
from optuna.trial import TrialState

import storage as st
from search import RayBackend, ResourceError, parse_spec, run_study
from trials import load_dataset, run_trial

from .. import fakes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """One local Ray for the module (a backend only shuts down a Ray it started itself)."""
    before = os.environ.get("FAKE_EPOCH_S")
    os.environ["FAKE_EPOCH_S"] = "0.04"  # workers inherit it: the fake worker's epoch time
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 object_store_memory=200 * 1024 * 1024)
        yield
        ray.shutdown()
    finally:  # later modules' fake workers run at full speed again, whatever the order
        if before is None:
            os.environ.pop("FAKE_EPOCH_S", None)
        else:
            os.environ["FAKE_EPOCH_S"] = before


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.create_storage(url))


def grid_spec(name: str) -> dict:
    return {
        "name": name,
        "strategy": "grid",
        "seed": 0,
        "space": {"lr": {"values": [0.02, 0.1]}, "batch_size": {"choices": [32, 64]}},
        "data": {"source": "digits"},
        "model": {"hidden": [32]},
        "training": {"max_epochs": 4, "patience": 2},
        "cv": {"folds": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
    }


def check_grid_study(url: str, name: str) -> None:
    study = load(url, name)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert Counter((t.params["lr"], t.params["batch_size"]) for t in trials) == Counter(
        {(0.02, 32): 1, (0.02, 64): 1, (0.1, 32): 1, (0.1, 64): 1}
    )
    for t in trials:
        assert len(t.user_attrs["fold_scores"]) == 2 and t.user_attrs["train_path"] == "stacked"
        assert len(t.intermediate_values) == t.user_attrs["epochs"]
        assert t.user_attrs["node_id"]
    # 2 at once on 2 CPUs: the second trial was dispatched before the first one finished. (Whether
    # their worker intervals overlap too depends on Ray: these trials take ~0.1 s, less than a
    # worker's torch import, so one warm worker may run several before the other is ready.)
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), spans
    test = study.user_attrs["test_result"]
    assert test["trial"] == study.best_trial.number and 0.5 < test["test_accuracy"] <= 1.0


def test_grid_on_ray_and_sqlite(sqlite_url) -> None:
    res = run_study(grid_spec("grid-sqlite"), storage=sqlite_url)
    assert res.done == 4 and res.best is not None and res.best.test_score is not None
    check_grid_study(sqlite_url, "grid-sqlite")
    # the refit's weights came back from a Ray worker: the saved model scores what the refit scored
    import torch

    from search import load_model

    spec = parse_spec(grid_spec("grid-sqlite"))
    data = load_dataset(spec.data, spec.cv, spec.seed)
    with torch.no_grad():
        pred = load_model("grid-sqlite", storage=sqlite_url)(torch.from_numpy(data.X_test)).argmax(1).numpy()
    assert float((pred == data.y_test).mean()) == pytest.approx(res.best.test_score, abs=1e-6)


@pytest.mark.postgres
def test_grid_on_ray_and_postgres(postgres_url) -> None:
    run_study(grid_spec("grid-pg"), storage=postgres_url)
    check_grid_study(postgres_url, "grid-pg")


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_random_and_tpe_run_the_budget_on_ray(sqlite_url, strategy) -> None:
    spec = {**grid_spec(f"s-{strategy}"), "strategy": strategy, "n_trials": 5,
            "space": {"lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
                      "dropout": {"type": "float", "low": 0.0, "high": 0.3}},
            "tpe": {"n_startup_trials": 2}}
    if strategy == "random":  # also: trials stacked on the workers (k folds x m configurations)
        spec["resources"] = {**spec["resources"], "stack_trials": 3}
    res = run_study(spec, storage=sqlite_url, refit=False)
    trials = load(sqlite_url, f"s-{strategy}").trials
    assert res.done == 5 and [t.state for t in trials] == [TrialState.COMPLETE] * 5
    if strategy == "random":
        sizes = sorted(t.user_attrs["stack_size"] for t in trials)
        assert sum(sizes) >= 5 and max(sizes) >= 2, sizes
        # a stacked trial scores what it scores alone
        s = parse_spec(spec)
        data = load_dataset(s.data, s.cv, s.seed)
        t = next(t for t in trials if t.user_attrs["stack_size"] > 1)
        alone = run_trial(data, t.params, s.settings, seed=t.user_attrs["seed"])
        assert t.user_attrs["fold_scores"] == pytest.approx(alone.scores("val_accuracy"), abs=1e-5)


def test_pruning_on_ray(sqlite_url) -> None:
    spec = {**grid_spec("prune"), "strategy": "random", "n_trials": 12, "seed": 4,
            "space": {"lr": {"type": "categorical", "choices": [0.01, 1e-4]}},
            "training": {"max_epochs": 15},
            "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
            "resources": {"max_concurrent": 1}}
    run_study(spec, storage=sqlite_url, worker_fn=fakes.quadratic, refit=False)
    trials = load(sqlite_url, "prune").trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["lr"] == 1e-4 and t.user_attrs["epochs"] < 15 for t in pruned)


def test_gpus_on_a_cluster_without_gpus_fail_fast(sqlite_url) -> None:
    spec = {**grid_spec("gpu"), "resources": {"gpus_per_trial": 1}}
    with pytest.raises(ResourceError, match=r"resources.gpus_per_trial: 1 GPU per trial requested, but the Ray "
                                            r"cluster has 2 CPUs and 0 GPUs"):
        run_study(spec, storage=sqlite_url)


def test_parallel_folds_merge_into_one_trial(sqlite_url) -> None:
    spec = {**grid_spec("pf"), "strategy": "random", "n_trials": 2,
            "space": {"lr": {"type": "float", "low": 0.02, "high": 0.1}},
            "resources": {"cpus_per_trial": 2, "parallel_folds": True}}
    run_study(spec, storage=sqlite_url, refit=False, backend=RayBackend(cpus_per_trial=2, parallel_folds=True,
                                                                       n_folds=2))
    for t in load(sqlite_url, "pf").trials:
        assert t.state == TrialState.COMPLETE
        assert len(t.user_attrs["fold_scores"]) == 2 and len(t.user_attrs["curves"]["val_loss"]) == 2
        assert t.value == pytest.approx(sum(t.user_attrs["fold_scores"]) / 2)
