"""Samples keep their shape: N-D data, ``data.shape``, ``data.scaling``, and factories that get the
input shape (stacked through torch.func.vmap, or one member at a time), with the saved model."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trials import (
    CVSpec,
    DataError,
    DataSpec,
    ModelError,
    ModelSpec,
    TrainingSpec,
    TrialSettings,
    check_data,
    check_model,
    load_dataset,
    refit_and_test,
    resolve_hyperparams,
    run_trial,
)
from trials._engine import fit_scaling
from trials._export import build_model, build_module
from trials._models import ModelFactory

CV = CVSpec(folds=3)


@pytest.fixture(autouse=True)
def _factories_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.fixture(scope="module")
def images() -> object:
    """The 8x8 digits as images [n, 1, 8, 8] (a subset: 3 folds train in seconds)."""
    return load_dataset(DataSpec(source="digits", shape=(1, 8, 8)), CV, seed=0)


def _settings(factory: str | None = None, **training: object) -> TrialSettings:
    model = ModelSpec(factory=f"trials_factories:{factory}") if factory else ModelSpec(hidden=(32,))
    train = {"max_epochs": 2, "batch_size": 64, **training}
    return TrialSettings(model=model, training=TrainingSpec(**train), cv=CV)


# -- data --------------------------------------------------------------------------------------------------


def test_npz_keeps_nd_samples_and_its_fingerprint_is_the_flat_one(tmp_path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.random((60, 2, 3, 4)).astype(np.float32), np.arange(60) % 3
    np.savez(tmp_path / "nd.npz", X=X, y=y)
    np.savez(tmp_path / "flat.npz", X=X.reshape(60, -1), y=y)
    nd = load_dataset(DataSpec(source="npz", path=str(tmp_path / "nd.npz")), CV, seed=0)
    flat = load_dataset(DataSpec(source="npz", path=str(tmp_path / "flat.npz")), CV, seed=0)
    assert nd.X.shape[1:] == (2, 3, 4) and nd.input_shape == (2, 3, 4) and nd.n_features == 24
    assert nd.scaling == "global" and flat.scaling == "per_feature"  # data.scaling: auto
    # a study stored before samples kept their shape scored the same rows, flattened: it still resumes
    assert nd.fingerprint() == flat.fingerprint()


def test_data_shape_reshapes_table_rows(tmp_path) -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.random((40, 12)), columns=[f"p{i}" for i in range(12)])
    df["label"] = np.arange(40) % 2
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = load_dataset(DataSpec(source="csv", path=str(tmp_path / "t.csv"), target="label", shape=(3, 2, 2)), CV,
                      seed=0)
    assert ds.X.shape[1:] == (3, 2, 2)
    rows = df.drop(columns="label").to_numpy(np.float32)
    np.testing.assert_array_equal(ds.X.reshape(len(ds.X), -1), rows[ds.index])
    bad = DataSpec(source="csv", path=str(tmp_path / "t.csv"), target="label", shape=(1, 28, 28))
    expect = r"data.shape \[1, 28, 28\] holds 784 values per sample, but the data has rows of 12 values"
    with pytest.raises(DataError, match=expect):
        check_data(bad)  # from the header alone, before Ray starts
    with pytest.raises(DataError, match=expect):
        load_dataset(bad, CV, seed=0)


def test_per_channel_needs_nd_samples() -> None:
    with pytest.raises(DataError, match=r"per_channel needs N-D samples.*shape \[64\].*set data.shape"):
        load_dataset(DataSpec(source="digits", scaling="per_channel"), CV, seed=0)


def test_data_shape_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"data.shape must list positive sizes"):
        DataSpec(shape=(1, 0, 8))


# -- scaling ------------------------------------------------------------------------------------------------


def test_fit_scaling_kinds_match_numpy() -> None:
    rng = np.random.default_rng(2)
    X = (rng.random((50, 2, 3, 3)) * np.array([1.0, 10.0])[None, :, None, None] + 5).astype(np.float32)
    flat, rows = X.reshape(50, -1), np.arange(0, 50, 2)
    mean, scale = fit_scaling(flat, rows, "global", (2, 3, 3))
    np.testing.assert_allclose(mean, X[rows].mean(), rtol=1e-5)
    np.testing.assert_allclose(scale, X[rows].std(), rtol=1e-5)
    mean, scale = fit_scaling(flat, rows, "per_channel", (2, 3, 3))
    for c in range(2):
        np.testing.assert_allclose(mean.reshape(2, 9)[c], X[rows, c].mean(), rtol=1e-5)
        np.testing.assert_allclose(scale.reshape(2, 9)[c], X[rows, c].std(), rtol=1e-5)
    mean, scale = fit_scaling(flat, rows, "none", (2, 3, 3))
    assert not mean.any() and (scale == 1).all()
    mean, scale = fit_scaling(flat, rows, "per_feature", (2, 3, 3))
    np.testing.assert_allclose(mean, X[rows].reshape(25, -1).mean(0), rtol=1e-5)


def test_scaling_is_fit_on_each_folds_training_rows(images) -> None:
    """A fold's statistics are its own training rows' (the validation rows do not leak into them)."""
    from trials._engine import MemberSplit, prepare_members
    from trials._seeding import member_seeds

    hp = resolve_hyperparams(_settings(), {})
    splits = [MemberSplit(f, tr, va, member_seeds(0, f)) for f, (tr, va) in enumerate(images.folds)]
    _, mean, scale, _, _ = prepare_members(images.X, images.y, splits, [hp] * 3, 10, torch.device("cpu"), "global")
    for f, (tr, _) in enumerate(images.folds):
        np.testing.assert_allclose(mean[f].numpy(), images.X[tr].mean(), rtol=1e-5)
        np.testing.assert_allclose(scale[f].numpy(), images.X[tr].std(), rtol=1e-5)


# -- the built-in MLP -----------------------------------------------------------------------------------------


def test_builtin_mlp_scores_as_before() -> None:
    """Same seed, same result as before samples kept their shape (values measured on main), and the
    MLP on images [1, 8, 8] (it flattens them itself) trains exactly as on the flat rows."""
    flat = load_dataset(DataSpec(source="digits"), CV, seed=0)
    shaped = load_dataset(DataSpec(source="digits", shape=(1, 8, 8), scaling="per_feature"), CV, seed=0)
    s = _settings(max_epochs=3)
    r = run_trial(flat, {"lr": 0.05}, s, seed=7)
    main = [[1.2233320475, 0.4532479346, 0.2816236615], [1.1743593216, 0.3146672845, 0.1660672277],
            [1.2666035891, 0.4816584289, 0.2793259323]]
    # measured on one machine: another CPU's BLAS kernels (AVX-512 or not) round differently, by up to
    # 3e-5 relative after 3 epochs (seen on an AMD EPYC without AVX-512); a changed loop moves far more
    np.testing.assert_allclose(r.curves["val_loss"], main, rtol=2e-4)
    assert run_trial(shaped, {"lr": 0.05}, s, seed=7).curves == r.curves
    t = refit_and_test(flat, {"lr": 0.05}, s, seed=7, epochs=3)
    assert t.test_loss == pytest.approx(0.18083085119724274, rel=1e-6)
    assert t.test_accuracy == pytest.approx(0.9472222328186035, rel=1e-6)
    assert t.metrics == refit_and_test(shaped, {"lr": 0.05}, s, seed=7, epochs=3).metrics


# -- factories --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "cnn_keywords", "cnn_kwargs"])
def test_a_shaped_factory_gets_the_input_shape(images, name) -> None:
    result = run_trial(images, {}, _settings(name), seed=0)
    assert result.train_path == "vmap"
    assert result.value("val_accuracy") > 0.5  # 10 classes, 2 epochs: well above chance


def test_lazy_modules_are_initialized_from_a_first_batch_and_stacked(images) -> None:
    result = run_trial(images, {}, _settings("lazy_cnn"), seed=0)
    assert result.train_path == "vmap" and result.value("val_accuracy") > 0.5
    assert run_trial(images, {}, _settings("lazy_cnn"), seed=0).curves == result.curves  # seeded


def test_factory_forms_are_recognised() -> None:
    import trials_factories as f

    assert ModelFactory(f.cnn).shaped and ModelFactory(f.cnn_keywords).shaped and ModelFactory(f.cnn_kwargs).shaped
    assert not ModelFactory(f.mlp).shaped and not ModelFactory(f.flat_only).shaped


def test_a_legacy_factory_gets_flat_rows_of_nd_samples(images) -> None:
    """factory(params, n_features, n_classes): n_features = prod(shape), and its module flat batches."""
    result = run_trial(images, {}, _settings("flat_only"), seed=0)
    assert result.train_path == "vmap" and result.value("val_accuracy") > 0.5
    assert check_model(_settings("flat_only"), {}, (1, 8, 8), 10) is None  # vmap runs it: no fallback reason


def test_cnn_stacked_equals_each_fold_alone(images) -> None:
    """No dropout (vmap draws one mask for the whole stack): the stack equals its members alone."""
    s = _settings("cnn")
    stacked = run_trial(images, {"dropout": 0.0}, s, seed=3)
    for fold in range(3):
        alone = run_trial(images, {"dropout": 0.0}, s, seed=3, folds=[fold])
        np.testing.assert_allclose(stacked.curves["val_loss"][fold], alone.curves["val_loss"][0], rtol=1e-4)


def test_a_cnn_vmap_cannot_run_trains_one_member_at_a_time_and_says_why(images, caplog, monkeypatch) -> None:
    monkeypatch.setattr("trials._models._LOGGED_FALLBACKS", set())  # logged once per process: not yet in this one
    with caplog.at_level(logging.WARNING, logger="trials._models"):
        reason = check_model(_settings("item_cnn"), {}, (1, 8, 8), 10)
        result = run_trial(images, {"dropout": 0.0}, _settings("item_cnn"), seed=3)
    assert reason is not None and "item" in reason
    assert result.train_path == "sequential" and result.value("val_accuracy") > 0.5
    assert any("cannot run its module" in r.getMessage() and "item_cnn" in r.getMessage() for r in caplog.records)
    # the same scores as the vmap path would give: each member computes what it computes alone
    alone = run_trial(images, {"dropout": 0.0}, _settings("item_cnn"), seed=3, folds=[1])
    np.testing.assert_allclose(result.curves["val_loss"][1], alone.curves["val_loss"][0], rtol=1e-4)


def test_a_factory_for_other_inputs_names_both_shapes() -> None:
    with pytest.raises(ModelError, match=r"fails on an input batch of shape \[2, 1, 8, 8\] \(one sample: \[1, 8, 8\]"
                                         r"; called as factory\(params, input_shape=\(1, 8, 8\), n_outputs=10\)"):
        check_model(_settings("three_channel_cnn"), {}, (1, 8, 8), 10)
    with pytest.raises(ModelError, match=r"logits of shape \(2, 4\) for a batch of 2; expected \[batch, n_classes\] "
                                         r"= \[2, 3\] \(the input batch had shape \(2, 64\)\)"):
        check_model(_settings("wrong_shape"), {}, (1, 8, 8), 3)


# -- the saved model ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "scaling"), [("cnn", "per_channel"), ("cnn", "none"), (None, "global")])
def test_the_saved_model_scales_raw_inputs_as_training_did(factory, scaling) -> None:
    data = load_dataset(DataSpec(source="digits", shape=(1, 8, 8), scaling=scaling), CV, seed=0)
    s = _settings(factory, max_epochs=3)
    hp = resolve_hyperparams(s, {})
    res = refit_and_test(data, {}, s, seed=0, epochs=3)
    state = torch.load(io.BytesIO(res.state_dict), weights_only=True)
    model = build_model(hp, state, n_features=64, n_classes=10, mean=res.feature_mean, scale=res.feature_scale,
                        classes=list(range(10)), input_shape=[1, 8, 8], scaling=data.scaling)
    with torch.no_grad():
        acc = (model(torch.from_numpy(data.X_test)).argmax(1).numpy() == data.y_test).mean()
        flat = model(torch.from_numpy(data.X_test.reshape(len(data.X_test), -1))).argmax(1).numpy()
    assert acc == pytest.approx(res.test_accuracy, abs=1e-6)  # raw images in, the refit's test score out
    assert (flat == data.y_test).mean() == pytest.approx(acc)  # flat rows are taken too
    assert model.scaling == scaling and model.input_shape == (1, 8, 8)


def test_builtin_module_keeps_its_state_dict_keys() -> None:
    """A model saved before the MLP flattened its input loads: the Linear layers keep keys 0, 3, ..."""
    net = build_module(resolve_hyperparams(_settings(), {}), (1, 8, 8), 10)
    assert list(net.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
