"""The final refit through the orchestrator: the epochs the CV chose, on every non-test row."""

from __future__ import annotations

import optuna
import pytest

import storage as st
from search import SimulatedBackend, TrialJob, resume_study, run_study, train_job
from trials import EpochReport, FoldResult, MemberReport, TrialResult

FOLD_EPOCHS = (3, 8, 5)  # median 5
refits: list[TrialJob] = []


def folds_disagree(data, settings, job, report):  # type: ignore[no-untyped-def]
    """Trials: three folds whose best epochs are 3, 8 and 5; the refit: the real one."""
    if job.kind == "refit":
        refits.append(job)
        return train_job(data, settings, job, report)
    score = 0.5 + job.params["lr"]
    for epoch in range(1, 9):
        report(EpochReport(epoch, tuple(MemberReport(i, 0.5, 0.5, score, False) for i in range(3))))
    folds = tuple(FoldResult(i, e, 8, 0.5, score) for i, e in enumerate(FOLD_EPOCHS))
    return TrialResult(folds=folds, curves={}, epochs_run=8, duration_s=0.1, device="cpu", train_path="fake",
                       stopped_by_report=False)


@pytest.fixture
def spec(make_spec):
    refits.clear()
    return make_spec(space={"lr": {"type": "float", "low": 0.01, "high": 0.1}}, n_trials=3, cv={"folds": 3},
                     training={"max_epochs": 8, "batch_size": 64})


def test_the_refit_trains_the_median_of_the_folds_best_epochs_on_every_non_test_row(spec, sqlite_url):
    res = run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=folds_disagree)
    assert [j.epochs for j in refits] == [5]
    test = res.test_result
    assert test["refit_mode"] == "cv_median" and test["fold_epochs"] == list(FOLD_EPOCHS)
    assert (test["cv_epochs"], test["refit_epochs"], test["epochs"]) == (5, 5, 5)
    assert (test["train_rows"], test["val_rows"]) == (1437, 0)  # digits: 1797 rows, 20 % test
    assert test["test_score"] == test["test_accuracy"] > 0.8
    # a resume finds the refit stored: it does not refit again
    again = resume_study("t", storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=folds_disagree)
    assert len(refits) == 1 and again.test_result == test


def test_refit_epochs_early_stopping_restores_the_inner_split(spec, sqlite_url):
    res = run_study({**spec, "refit": {"epochs": "early_stopping"}}, storage=sqlite_url,
                    backend=SimulatedBackend(1), worker_fn=folds_disagree)
    assert [j.epochs for j in refits] == [None]
    test = res.test_result
    assert test["refit_mode"] == "early_stopping" and test["cv_epochs"] == 5
    assert test["val_rows"] == 288 and test["train_rows"] == 1437 - 288  # cv.val_fraction 0.2, stratified
    assert 1 <= test["epochs"] <= test["refit_epochs"] <= 8


def test_a_study_stored_before_the_refit_key_existed_resumes(spec, sqlite_url):
    """An older study's stored spec has no ``refit``: it runs again with the default refit."""
    run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=folds_disagree, refit=False)
    study = optuna.load_study(study_name="t", storage=st.create_storage(sqlite_url))
    stored = dict(study.user_attrs["hpsearch_spec"])
    del stored["refit"]
    study.set_user_attr("hpsearch_spec", stored)
    res = run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=folds_disagree)
    assert res.test_result["refit_mode"] == "cv_median" and [j.epochs for j in refits] == [5]


def test_cv_epochs_is_the_median_rounded_half_up():
    from search._refit import cv_epochs

    assert cv_epochs([15, 11, 20], 50) == 15
    assert cv_epochs([11, 12], 50) == 12 and cv_epochs([12, 13], 50) == 13  # not banker's rounding
    assert cv_epochs([], 7) == 7 and cv_epochs([0], 0) == 1
