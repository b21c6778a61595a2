"""A data factory's ``Dataset`` too large to preload streams (``trials._stream``, ``trials._stream_fit``).

The driver reads it once for its labels and groups (its features are not kept); trials and the
refit read their rows in batches from the Dataset a worker builds again, and score as the
preloaded data does (up to float summation order; a ``trainable`` bit for bit).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from trials import (
    CVSpec,
    DataError,
    DataSpec,
    TrialSettings,
    check_trainable,
    load_dataset,
    refit_and_test,
    run_trial,
    run_trials,
)
from trials._config import TrainingSpec
from trials._engine import fit_scaling
from trials._stream_fit import split_samples, streamed_scaling

from . import data_factories as f

MOD = "tests.trials.data_factories"
CV = CVSpec(folds=3, groups="groups")


def _load(limit_mb: float = 0.001, name: str = "counted", cv: CVSpec = CV):
    task = "regression" if name.endswith("regression") else "classification"
    return load_dataset(DataSpec(source="python", factory=f"{MOD}:{name}", max_preload_mb=limit_mb), cv, seed=0,
                        task=task)


def _settings(cv: CVSpec = CV, **kw) -> TrialSettings:
    return TrialSettings(cv=cv, training=TrainingSpec(max_epochs=4, batch_size=16, patience=2), **kw)


def _shipped(data):
    """``data`` as a worker gets it (Ray pickles it): without the driver's Dataset."""
    return pickle.loads(pickle.dumps(data))


def test_a_dataset_over_the_limit_is_read_once_for_its_labels_and_split_as_the_preloaded_one():
    f.GETS.clear()
    streamed = _load()
    assert sorted(f.GETS) == list(range(f.N))  # one pass over the samples
    assert streamed.stream is not None and streamed.stream.n == f.N
    assert streamed.X.shape == (0, 1, 4, 4) and streamed.X_test.shape == (0, 1, 4, 4)  # no features kept
    assert streamed.input_shape == (1, 4, 4) and streamed.n_features == 16 and streamed.scaling == "global"
    preloaded = _load(limit_mb=100)
    assert preloaded.stream is None and len(preloaded.X) == len(preloaded.y)
    # stratification and cv.groups work on the labels and groups read once: the same split and folds
    for key in ("y", "y_test", "index", "test_index", "groups"):
        np.testing.assert_array_equal(getattr(streamed, key), getattr(preloaded, key))
    for (a_tr, a_va), (b_tr, b_va) in zip(streamed.folds, preloaded.folds):
        np.testing.assert_array_equal(a_tr, b_tr)
        np.testing.assert_array_equal(a_va, b_va)
    g = streamed.groups
    for train, val in streamed.folds:
        assert not set(g[train]) & set(g[val])
    assert _load().fingerprint() == streamed.fingerprint() != preloaded.fingerprint()


def test_changed_features_change_the_streamed_fingerprint(monkeypatch):
    before = _load().fingerprint()
    arrays = f._arrays
    monkeypatch.setattr(f, "_arrays", lambda seed=0: (arrays(seed)[0] + 1.0, *arrays(seed)[1:]))
    assert _load().fingerprint() != before  # the labels are the same: the digest of the features tells


def test_a_shipped_dataset_holds_no_features_and_a_worker_builds_its_own():
    data = _load()
    payload = pickle.dumps(data)
    assert b"Counted" not in payload  # the driver's Dataset object does not travel
    worker = pickle.loads(payload)
    f.GETS.clear()
    ds = worker.stream.open()
    assert isinstance(ds, f.Counted) and ds is not data.stream.open() and worker.stream.open() is ds
    assert f.GETS == []  # opening reads nothing: samples are read as batches need them


@pytest.mark.parametrize("scaling", ["per_feature", "global", "per_channel", "none"])
def test_the_streaming_scaling_pass_gives_the_in_memory_statistics(scaling):
    streamed, preloaded = _load(), _load(limit_mb=100)
    rows = streamed.folds[1][0]
    mean, scale = streamed_scaling(split_samples(streamed, rows), scaling, streamed.sample_shape)
    want = fit_scaling(preloaded.X.reshape(len(preloaded.X), -1), rows, scaling, preloaded.sample_shape)
    np.testing.assert_allclose(mean, want[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scale, want[1], rtol=1e-6)


def test_a_streamed_trial_scores_its_folds_as_the_preloaded_one_and_repeats_itself():
    streamed, settings = _shipped(_load()), _settings()
    f.GETS.clear()
    a = run_trial(streamed, {"lr": 0.05}, settings, seed=3)
    assert f.GETS  # the worker read the samples, in batches
    b = run_trial(_shipped(_load()), {"lr": 0.05}, settings, seed=3)
    assert a.train_path == "streamed" and len(a.folds) == 3
    assert [r.metrics for r in a.folds] == [r.metrics for r in b.folds]  # same seed, same scores (CPU)
    assert a.curves == b.curves
    # without dropout (whose masks a last, partial batch draws fewer of than the stacked loop's padded
    # one), the same rows, order, init, losses and optimizer steps as the stacked loop: the same scores
    params = {"lr": 0.05, "dropout": 0.0}
    got = run_trial(_load(), params, settings, seed=3)
    pre = run_trial(_load(limit_mb=100), params, settings, seed=3)
    assert pre.train_path == "stacked"
    for x, y in zip(got.folds, pre.folds):
        assert x.best_epoch == y.best_epoch
        assert x.metrics == pytest.approx(y.metrics, rel=1e-5)
    np.testing.assert_allclose(got.curves["train_loss"], pre.curves["train_loss"], rtol=1e-5)


def test_configurations_stacked_on_streamed_data_score_as_each_alone():
    """resources.stack_trials on streamed data: one member per fold and configuration, each as alone."""
    data, settings = _load(), _settings()
    params = [{"lr": 0.05}, {"lr": 0.02, "dropout": 0.1}]
    both = run_trials(data, params, settings, seeds=[3, 4])
    alone = [run_trial(data, p, settings, seed=s) for p, s in zip(params, [3, 4])]
    assert [[r.metrics for r in t.folds] for t in both] == [[r.metrics for r in t.folds] for t in alone]
    assert [t.stack_size for t in both] == [2, 2]


def test_a_report_stops_a_streamed_trial_with_every_fold_in_each_epoch():
    seen = []

    def report(r):
        seen.append((r.epoch, [m.fold for m in r.members]))
        return r.epoch == 2

    res = run_trial(_load(), {"lr": 0.05}, _settings(), seed=0, report=report)
    assert seen == [(1, [0, 1, 2]), (2, [0, 1, 2])] and res.stopped_by_report and res.epochs_run == 2


@pytest.mark.parametrize("epochs", [3, None])
def test_the_refit_streams_and_scores_the_test_split(epochs):
    streamed, preloaded, settings = _shipped(_load()), _load(limit_mb=100), _settings()
    params = {"lr": 0.05, "dropout": 0.0}
    got = refit_and_test(streamed, params, settings, seed=0, epochs=epochs)
    want = refit_and_test(preloaded, params, settings, seed=0, epochs=epochs)
    assert got.train_rows == want.train_rows and got.val_rows == want.val_rows
    assert got.epochs_run == want.epochs_run and got.state_dict and len(got.feature_mean) == 16
    np.testing.assert_allclose(got.feature_mean, want.feature_mean, rtol=1e-5)
    assert got.metrics == pytest.approx(want.metrics, rel=1e-5)


def test_a_worker_dataset_of_another_length_is_a_clear_error(monkeypatch):
    shipped = _shipped(_load())
    monkeypatch.setenv("HPSEARCH_TEST_STREAM_N", "100")
    with pytest.raises(DataError, match=r"data\.factory 'tests\.trials\.data_factories:counted': the Dataset built on "
                                        r"this worker has 100 samples, the driver's had 120; .* the factory must "
                                        r"return the same Dataset wherever it runs"):
        run_trial(shipped, {"lr": 0.05}, _settings(), seed=0)


def test_a_streamed_trial_refuses_checkpoints_naming_both_keys():
    with pytest.raises(DataError, match=r"so it streams; checkpoint\.every_epochs and checkpoint\.every_s are not "
                                        r"supported with streamed data: remove the checkpoint section, or raise "
                                        r"data\.max_preload_mb"):
        run_trial(_load(), {"lr": 0.05}, _settings(), seed=0, checkpoint=object())  # type: ignore[arg-type]


SEEN: list[tuple[str, type, str]] = []


def _train(ctx):
    """A trainable that reads its data only through ``ctx.loader`` (as a streamed Dataset needs)."""
    SEEN.append((ctx.fold, type(ctx.train), str(ctx.device)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, ctx.n_outputs)).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=ctx.params["lr"])
    for epoch in range(1, ctx.max_epochs + 1):
        model.train()
        for x, y in ctx.loader("train"):
            assert x.shape[1:] == ctx.input_shape and x.device == ctx.device and y.dtype == torch.int64
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        metrics = {}
        if ctx.val is not None:
            model.eval()
            with torch.no_grad():
                outs, ys = zip(*[(model(x), y) for x, y in ctx.loader("val")])
            out, y = torch.cat(outs), torch.cat(ys)
            metrics = {"val_loss": F.cross_entropy(out, y).item(),
                       "val_accuracy": (out.argmax(1) == y).float().mean().item()}
        if ctx.report(epoch, train_loss=loss.item(), **metrics):
            break
    return model


def test_a_trainable_gets_subsets_of_the_streamed_dataset_and_scores_as_on_preloaded_data():
    cv = CVSpec(folds=3)
    settings = _settings(cv, trainable=_train, metric="val_accuracy")
    SEEN.clear()
    streamed = _shipped(_load(name="counted_without_groups", cv=cv))
    got = run_trial(streamed, {"lr": 0.02}, settings, seed=1)
    assert [(fold, kind) for fold, kind, _ in SEEN] == [(0, Subset), (1, Subset), (2, Subset)]
    want = run_trial(_load(100, "counted_without_groups", cv), {"lr": 0.02}, settings, seed=1)
    assert [r.metrics for r in got.folds] == [r.metrics for r in want.folds]  # the same samples, scaled alike
    check_trainable(settings, {"lr": 0.02}, streamed)  # the driver's check reads a few samples alike
    test = refit_and_test(streamed, {"lr": 0.02}, settings, seed=1, epochs=2)
    assert test.metrics == refit_and_test(_load(100, "counted_without_groups", cv), {"lr": 0.02}, settings, seed=1,
                                          epochs=2).metrics


def test_a_streamed_regression_and_a_model_factory_score_as_on_preloaded_data():
    """The target's scaling (regression) and a user model's stack of one (a CNN, under vmap) stream alike."""
    from trials import ModelSpec

    cv = CVSpec(folds=3)
    reg = TrialSettings(task="regression", cv=cv,
                        training=TrainingSpec(max_epochs=3, batch_size=16, monitor="val_loss"))
    got = run_trial(_load(name="counted_regression", cv=cv), {"lr": 0.01, "dropout": 0.0}, reg, seed=0)
    want = run_trial(_load(100, "counted_regression", cv), {"lr": 0.01, "dropout": 0.0}, reg, seed=0)
    assert got.train_path == "streamed" and "val_r2" in got.folds[0].metrics
    for x, y in zip(got.folds, want.folds):
        assert x.metrics == pytest.approx(y.metrics, rel=1e-4)
    test = refit_and_test(_load(name="counted_regression", cv=cv), {"lr": 0.01, "dropout": 0.0}, reg, seed=0, epochs=2)
    assert test.target_mean is not None and test.metrics == pytest.approx(refit_and_test(
        _load(100, "counted_regression", cv), {"lr": 0.01, "dropout": 0.0}, reg, seed=0, epochs=2).metrics, rel=1e-4)
    cnn = TrialSettings(cv=CV, model=ModelSpec(factory="tests.trials.trials_factories:cnn"),
                        training=TrainingSpec(max_epochs=2, batch_size=16))
    got = run_trial(_load(), {"lr": 0.05, "dropout": 0.0}, cnn, seed=0)
    want = run_trial(_load(100), {"lr": 0.05, "dropout": 0.0}, cnn, seed=0)
    assert got.train_path == "streamed" and want.train_path == "vmap"
    for x, y in zip(got.folds, want.folds):
        assert x.metrics == pytest.approx(y.metrics, rel=1e-4)
