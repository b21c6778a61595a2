"""Tasks, losses and metrics: each metric equals scikit-learn's on the same predictions, regression
trains and scores, and early stopping, curves and the test score follow any metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from trials import (
    CVSpec,
    DataError,
    DataSpec,
    ModelSpec,
    TrainingSpec,
    TrialSettings,
    load_dataset,
    refit_and_test,
    run_trial,
)
from trials._scores import ClassificationScores, RegressionScores, sample_loss


def _padded(rng: np.random.Generator, m: int, v: int, sizes: list[int]) -> torch.Tensor:
    w = np.zeros((m, v), dtype=np.float32)
    for j, n in enumerate(sizes):
        w[j, :n] = 1.0
    return torch.from_numpy(w)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_classification_metrics_equal_scikit_learns(n_classes: int) -> None:
    rng = np.random.default_rng(0)
    m, v, sizes = 3, 50, [50, 37, 20]  # members with fewer rows are padded at weight 0
    out = torch.from_numpy(rng.normal(size=(m, v, n_classes)).astype(np.float32))
    out[..., 1] += 0.3  # some skill, and ties below
    out[0, :10] = 0.0  # tied margins: AUC counts them half
    y = torch.from_numpy(rng.integers(0, n_classes, size=(m, v)))
    w = _padded(rng, m, v, sizes)
    scores = ClassificationScores(m, n_classes, torch.device("cpu"), auc=n_classes == 2)
    for start in range(0, v, 16):  # in chunks, as evaluation runs
        sl = slice(start, start + 16)
        scores.add(out[:, sl], y[:, sl], w[:, sl], None)
    got = scores.result(torch.tensor([float(n) for n in sizes]))
    for j, n in enumerate(sizes):
        yj, oj = y[j, :n].numpy(), out[j, :n].numpy()
        pred = oj.argmax(-1)
        assert got["val_accuracy"][j].item() == pytest.approx(skm.accuracy_score(yj, pred), abs=1e-6)
        assert got["val_f1_macro"][j].item() == pytest.approx(skm.f1_score(yj, pred, average="macro"), abs=1e-6)
        ce = skm.log_loss(yj, torch.softmax(out[j, :n], -1).numpy(), labels=list(range(n_classes)))
        assert got["val_loss"][j].item() == pytest.approx(ce, rel=1e-5)
        if n_classes == 2:
            auc = skm.roc_auc_score(yj, oj[:, 1] - oj[:, 0])
            assert got["val_auc"][j].item() == pytest.approx(auc, abs=1e-6)
    assert ("val_auc" in got) == (n_classes == 2)


@pytest.mark.parametrize("loss", ["mse", "l1", "huber"])
def test_regression_metrics_equal_scikit_learns(loss: str) -> None:
    rng = np.random.default_rng(1)
    m, v, sizes = 2, 40, [40, 25]
    y = torch.from_numpy(rng.normal(150.0, 70.0, size=(m, v)).astype(np.float32))
    mean = torch.tensor([[140.0], [160.0]])
    scale = torch.tensor([[60.0], [80.0]])
    out = torch.from_numpy(rng.normal(size=(m, v, 1)).astype(np.float32))
    w = _padded(rng, m, v, sizes)
    scores = RegressionScores(m, loss, torch.device("cpu"))
    scores.add(out, y, w, (mean, scale))
    got = scores.result(torch.tensor([float(n) for n in sizes]))
    per = sample_loss(loss, out, y, (mean, scale))
    for j, n in enumerate(sizes):
        yj = y[j, :n].double().numpy()
        pred = out[j, :n, 0].double().numpy() * scale[j, 0].item() + mean[j, 0].item()
        assert got["val_mse"][j].item() == pytest.approx(skm.mean_squared_error(yj, pred), rel=1e-6)
        assert got["val_mae"][j].item() == pytest.approx(skm.mean_absolute_error(yj, pred), rel=1e-6)
        assert got["val_r2"][j].item() == pytest.approx(skm.r2_score(yj, pred), rel=1e-6)
        t = (yj - mean[j, 0].item()) / scale[j, 0].item()
        d = out[j, :n, 0].double().numpy() - t
        want = {"mse": d**2, "l1": np.abs(d), "huber": np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5)}[loss]
        assert got["val_loss"][j].item() == pytest.approx(want.mean(), rel=1e-5)
        np.testing.assert_allclose(per[j, :n].numpy(), want, rtol=1e-4, atol=1e-6)


REG = TrialSettings(
    task="regression",
    model=ModelSpec(hidden=(32,), dropout=0.0),
    training=TrainingSpec(optimizer="adam", lr=0.01, batch_size=32, max_epochs=40, patience=5, monitor="val_r2"),
    cv=CVSpec(folds=3),
)


@pytest.fixture(scope="module")
def diabetes():
    return load_dataset(DataSpec(source="diabetes"), REG.cv, seed=0, task="regression")


def test_regression_uses_plain_k_fold_and_a_float_target(diabetes) -> None:
    assert diabetes.task == "regression" and diabetes.classes is None and diabetes.n_classes == 1
    assert diabetes.y.dtype == np.float32 and len(np.unique(diabetes.y)) > 100
    from sklearn.model_selection import KFold

    want = list(KFold(3, shuffle=True, random_state=0).split(diabetes.X))
    for (tr, va), (wt, wv) in zip(diabetes.folds, want):
        np.testing.assert_array_equal(tr, wt)
        np.testing.assert_array_equal(va, wv)


def test_regression_trains_stops_on_r2_and_scores_every_metric(diabetes) -> None:
    res = run_trial(diabetes, {}, REG, seed=3)
    assert set(res.curves) == {"train_loss", "val_loss", "val_mse", "val_mae", "val_r2"}
    for f, r2, mse in zip(res.folds, res.curves["val_r2"], res.curves["val_mse"]):
        # monitored val_r2 is maximised: the restored epoch is the best R² seen, and its scores are that epoch's
        assert f.best_epoch == int(np.argmax(r2)) + 1
        assert f.get("val_r2") == pytest.approx(max(r2)) and f.get("val_mse") == pytest.approx(mse[f.best_epoch - 1])
        assert math.isnan(f.val_accuracy)
    assert 0.3 < res.value("val_r2") < 0.7  # a linear model gets ~0.5 on diabetes
    assert res.std("val_mse") > 0
    test = refit_and_test(diabetes, {}, REG, seed=0)
    assert set(test.metrics) == {"val_loss", "val_mse", "val_mae", "val_r2"}
    assert test.score("val_r2") == test.metrics["val_r2"] > 0.2 and math.isnan(test.test_accuracy)


def test_binary_classification_reports_auc_and_f1(tmp_path) -> None:
    settings = TrialSettings(model=ModelSpec(hidden=(16,)), training=TrainingSpec(max_epochs=4, monitor="val_auc"),
                             cv=CVSpec(folds=2))
    data = load_dataset(DataSpec(source="synthetic", n_samples=300, n_features=8), settings.cv, seed=0)
    res = run_trial(data, {"lr": 0.05}, settings, seed=1)
    assert {"val_auc", "val_f1_macro", "val_accuracy"} <= set(res.curves)
    assert 0.5 < res.value("val_auc") <= 1.0 and 0.5 < res.value("val_f1_macro") <= 1.0
    test = refit_and_test(data, {"lr": 0.05}, settings, seed=0)
    assert 0.5 < test.score("val_auc") <= 1.0


def test_digits_curves_have_f1_and_no_auc(digits) -> None:
    settings = TrialSettings(model=ModelSpec(hidden=(16,)), training=TrainingSpec(max_epochs=2))
    res = run_trial(digits, {"lr": 0.05}, settings, seed=1, folds=[0])
    assert set(res.curves) == {"train_loss", "val_loss", "val_accuracy", "val_f1_macro"}


@pytest.mark.parametrize(
    ("task", "y", "message"),
    [
        ("regression", np.array(["low", "high"] * 20), r"regression target must be numeric, found 'low' at row 0.*"
                                                       r"task: classification"),
        ("regression", np.where(np.arange(40) == 4, np.nan, 1.5 * np.arange(40)), r"target is nan at row 4"),
        ("classification", np.linspace(0, 1, 40), r"found the float 0\.0256.* at row 1; for a numeric target set "
                                                  r"task: regression"),
    ],
    ids=["text-target", "nan-target", "float-labels"],
)
def test_a_target_that_does_not_fit_the_task_is_refused(tmp_path, task, y, message) -> None:
    from trials import check_data

    np.savez(tmp_path / "d.npz", X=np.random.default_rng(0).normal(size=(40, 3)), y=y)
    spec = DataSpec(source="npz", path=str(tmp_path / "d.npz"))
    with pytest.raises(DataError, match=message):
        check_data(spec, task)
    with pytest.raises(DataError, match=message):
        load_dataset(spec, CVSpec(folds=2), seed=0, task=task)
