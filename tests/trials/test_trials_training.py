"""The stacked training path: correctness as ML, member independence, early stopping, reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from trials import (
    EpochReport,
    ModelSpec,
    TrainingSpec,
    TrialSettings,
    refit_and_test,
    resolve_hyperparams,
    run_trial,
)
from trials._engine import MemberSplit, evaluate, fit_stack
from trials._models import StackedMLP
from trials._seeding import member_seeds

TINY = TrialSettings(
    model=ModelSpec(hidden=(16,), dropout=0.3),
    training=TrainingSpec(optimizer="sgd", lr=0.05, batch_size=16, max_epochs=6, patience=3),
)
# Overfits small training sets quickly: validation loss turns up after a few epochs.
OVERFIT = TrialSettings(
    model=ModelSpec(hidden=(128, 128), dropout=0.0),
    training=TrainingSpec(optimizer="sgd", lr=0.1, batch_size=32, max_epochs=60, patience=2),
)


def _splits(data, seed, folds=None):
    folds = range(len(data.folds)) if folds is None else folds
    return [MemberSplit(f, data.folds[f][0], data.folds[f][1], member_seeds(seed, f)) for f in folds]


def _fit(data, settings, splits, seed=0, **kw):
    hp = resolve_hyperparams(settings, {})
    return fit_stack(data.X, data.y, splits, hp, n_classes=data.n_classes, device=torch.device("cpu"), seed=seed, **kw)


def test_same_params_and_seed_give_identical_scores(small):
    a = run_trial(small, {"lr": 0.1}, TINY, seed=3)
    b = run_trial(small, {"lr": 0.1}, TINY, seed=3)
    c = run_trial(small, {"lr": 0.1}, TINY, seed=4)
    assert a.scores("val_loss") == b.scores("val_loss")
    assert a.scores("val_accuracy") == b.scores("val_accuracy")
    assert a.curves == b.curves
    assert a.scores("val_loss") != c.scores("val_loss")
    assert a.train_path == "stacked" and a.device == "cpu" and len(a.folds) == 3


def test_reasonable_config_reaches_95_percent_on_digits(digits):
    settings = TrialSettings(training=TrainingSpec(optimizer="adam", lr=1e-3, batch_size=32, max_epochs=30))
    result = run_trial(digits, {}, settings, seed=0)
    assert len(result.folds) == 5
    assert result.value("val_accuracy") >= 0.95, result.scores("val_accuracy")
    assert result.std("val_accuracy") < 0.03


def test_dropout_is_off_in_evaluation():
    kw = dict(activation="relu", init_seeds=[1, 2], dropout_seeds=[3, 4])
    with_dropout = StackedMLP(8, (32, 32), 3, dropout=0.5, **kw)
    without = StackedMLP(8, (32, 32), 3, dropout=0.0, **kw)
    x = torch.randn(2, 50, 8)
    with_dropout.eval()
    without.eval()
    with torch.no_grad():
        out = with_dropout(x)
        assert torch.equal(out, with_dropout(x))
        assert torch.equal(out, without(x))
        with_dropout.train()
        train_out = with_dropout(x)
    assert not torch.allclose(train_out, out)


def test_stacked_mlp_initialises_each_member_like_nn_linear():
    model = StackedMLP(5, (7,), 3, activation="relu", dropout=0.0, init_seeds=[11, 12], dropout_seeds=[0, 0])
    for m, seed in enumerate([11, 12]):
        torch.manual_seed(seed)
        ref = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        assert torch.equal(model.weights[0][m], ref[0].weight.t())
        assert torch.equal(model.biases[0][m, 0], ref[0].bias)
        assert torch.equal(model.weights[1][m], ref[2].weight.t())
        assert torch.equal(model.biases[1][m, 0], ref[2].bias)


def test_early_stopping_stops_and_restores_each_members_best_weights(digits, make_uneven):
    data = make_uneven(digits, (60, 150, 300), n_val=300)
    out = _fit(data, OVERFIT, _splits(data, seed=0))
    epochs = [f.epochs_run for f in out.folds]
    assert max(epochs) < OVERFIT.training.max_epochs
    assert len(set(epochs)) > 1  # members stop at different epochs (the stack is compacted)
    for f in out.folds:
        curve = out.curves["val_loss"][f.fold]
        assert len(curve) == f.epochs_run
        assert f.epochs_run == f.best_epoch + OVERFIT.training.patience
        assert f.val_loss == curve[f.best_epoch - 1] == min(curve)
        assert curve[-1] > f.val_loss  # the last epoch was worse: restoring matters
    # the restored stack reproduces every member's own best validation loss, not its last one
    loss, acc = evaluate(out.model, out.source, *out.eval_index)
    for f, lo, ac in zip(out.folds, loss.tolist(), acc.tolist()):
        assert lo == pytest.approx(f.val_loss, rel=1e-5)
        assert ac == pytest.approx(f.val_accuracy, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stack_matches_members_trained_one_by_one(small, make_uneven, seed):
    """Folds of unequal size (different step counts, partial last batches, masked steps):
    the stack of three equals three stacks of one. Tolerance: 1e-6 (it is exact on CPU)."""
    data = make_uneven(small, (100, 130, 75))
    stacked = run_trial(data, {}, TINY, seed=seed)
    for fold in range(3):
        alone = run_trial(data, {}, TINY, seed=seed, folds=[fold])
        f, g = stacked.folds[fold], alone.folds[0]
        assert (f.fold, f.best_epoch, f.epochs_run) == (g.fold, g.best_epoch, g.epochs_run)
        for key in ("train_loss", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(stacked.curves[key][fold], alone.curves[key][0], rtol=1e-6, atol=1e-7)


def test_members_are_independent(small, make_uneven):
    data = make_uneven(small, (100, 130, 75))
    base = _splits(data, seed=5)
    ref = _fit(data, TINY, base)
    # member 2 gets other training rows, member 1 other seeds: member 0 must not notice
    rng = np.random.default_rng(9)
    changed = [
        base[0],
        MemberSplit(1, base[1].train, base[1].val, member_seeds(99, 1)),
        MemberSplit(2, np.sort(rng.choice(len(data.y), 90, replace=False)), base[2].val, base[2].seeds),
    ]
    out = _fit(data, TINY, changed)
    assert out.curves["val_loss"][0] == ref.curves["val_loss"][0]
    assert out.curves["train_loss"][0] == ref.curves["train_loss"][0]
    assert out.curves["val_loss"][1] != ref.curves["val_loss"][1]
    assert out.curves["train_loss"][2] != ref.curves["train_loss"][2]
    # and member 2's change does not reach member 1 either
    only2 = _fit(data, TINY, [base[0], base[1], changed[2]])
    assert only2.curves["val_loss"][1] == ref.curves["val_loss"][1]


def test_no_validation_row_enters_a_members_training_batches(small, make_uneven):
    data = make_uneven(small, (100, 130, 75))
    splits = _splits(data, seed=0)
    seen: list[list[list[int]]] = [[] for _ in splits]  # per member: rows of each epoch

    def on_batch(step, rows, weight):
        if step == 0:
            for s in seen:
                s.append([])
        for m in range(rows.shape[0]):
            train = set(splits[m].train.tolist())
            assert set(rows[m].tolist()) <= train  # padding, too, is the member's own rows
            assert not set(rows[m].tolist()) & set(splits[m].val.tolist())
            seen[m][-1].extend(rows[m][weight[m] > 0].tolist())

    settings = TrialSettings(model=TINY.model, training=TINY.training.model_copy(update={"patience": 100}))
    _fit(data, settings, splits, on_batch=on_batch)
    for m, epochs in enumerate(seen):
        assert len(epochs) == settings.training.max_epochs
        for rows in epochs:  # each epoch visits every training row of the member exactly once
            assert sorted(rows) == sorted(splits[m].train.tolist())
        assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_standardization_is_fit_on_each_members_training_rows_only(small):
    splits = _splits(small, seed=0)
    out = _fit(small, TINY, splits)
    for m, s in enumerate(splits):
        ref = StandardScaler().fit(small.X[s.train].astype(np.float64))
        np.testing.assert_allclose(out.mean[m].numpy(), ref.mean_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.scale[m].numpy(), ref.scale_, rtol=1e-5)


def test_report_sees_every_member_and_can_stop_training(small):
    reports: list[EpochReport] = []

    def report(r: EpochReport) -> bool:
        reports.append(r)
        return r.epoch == 3

    result = run_trial(small, {}, TINY, seed=0, report=report)
    assert result.stopped_by_report and result.epochs_run == 3
    assert [r.epoch for r in reports] == [1, 2, 3]
    for r in reports:
        assert [m.fold for m in r.members] == [0, 1, 2]
        assert r.value("val_loss") == pytest.approx(np.mean([m.val_loss for m in r.members]))
    for f in range(3):
        assert len(result.curves["val_loss"][f]) == 3
        assert reports[-1].members[f].val_loss == result.curves["val_loss"][f][-1]


def test_report_of_a_stopped_member_holds_its_best_epoch(digits, make_uneven):
    data = make_uneven(digits, (60, 150, 300), n_val=300)
    reports: list[EpochReport] = []
    result = run_trial(data, {}, OVERFIT, seed=0, report=lambda r: reports.append(r) is None and False)
    assert not result.stopped_by_report
    assert len(reports) == result.epochs_run
    final = reports[-1]
    assert all(m.stopped for m in final.members)
    for m, f in zip(final.members, result.folds):
        assert (m.val_loss, m.val_accuracy) == (f.val_loss, f.val_accuracy)
    assert final.value("val_accuracy") == pytest.approx(result.value("val_accuracy"))


@pytest.mark.parametrize("schedule", ["step", "plateau"])
def test_lr_schedules_run(small, schedule):
    settings = TrialSettings(
        model=TINY.model,
        training=TINY.training.model_copy(update={"lr_schedule": schedule, "step_size": 2, "plateau_patience": 0}),
    )
    result = run_trial(small, {"optimizer": "adam", "lr": 0.01}, settings, seed=0)
    assert all(math.isfinite(v) for v in result.scores("val_loss"))


def test_diverging_members_stop_at_once(small):
    result = run_trial(small, {"lr": 1e6, "momentum": 0.99}, TINY, seed=0)
    assert result.epochs_run == 1
    assert all(math.isnan(v) for v in result.scores("val_loss"))  # the orchestrator sees NaN


def test_refit_and_test(digits):
    settings = TrialSettings(training=TrainingSpec(optimizer="adam", lr=1e-3, batch_size=32, max_epochs=15))
    res = refit_and_test(digits, {"dropout": 0.1}, settings, seed=0)
    assert res.test_accuracy > 0.93
    assert 1 <= res.best_epoch <= res.epochs_run <= 15
    assert res.test_loss > 0 and res.duration_s > 0


def test_device_and_threads(small, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            run_trial(small, {}, TINY, seed=0, device="cuda")
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        result = run_trial(small, {}, TINY, seed=0, device="cpu", folds=[1])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert [f.fold for f in result.folds] == [1] and result.device == "cpu"
    with pytest.raises(ValueError, match="folds"):
        run_trial(small, {}, TINY, seed=0, folds=[3])
