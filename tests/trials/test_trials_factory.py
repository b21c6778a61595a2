"""User model factories: vmap, member-by-member fallback, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trials import ModelSpec, TrainingSpec, TrialOutOfMemory, TrialSettings, run_trial


@pytest.fixture(autouse=True)
def _factories_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def _settings(factory: str, **training) -> TrialSettings:
    t = {"optimizer": "adam", "lr": 1e-2, "batch_size": 16, "max_epochs": 5, **training}
    return TrialSettings(model=ModelSpec(factory=f"trials_factories:{factory}"), training=TrainingSpec(**t))


def test_factory_trains_with_vmap(digits):
    result = run_trial(digits, {"width": 32, "dropout": 0.1}, _settings("mlp", batch_size=64), seed=0, folds=[0, 1])
    assert result.train_path == "vmap"
    assert result.value("val_accuracy") > 0.85


def test_factory_is_reproducible(small):
    a = run_trial(small, {"width": 8}, _settings("mlp"), seed=1)
    b = run_trial(small, {"width": 8}, _settings("mlp"), seed=1)
    assert a.curves == b.curves


def test_vmap_stack_matches_members_one_by_one(small):
    """No dropout: a vmap stack equals its members trained as stacks of one (BatchNorm buffers
    are per member). SGD, because Adam turns rounding noise in the mathematically zero gradient
    of the bias before BatchNorm into lr-sized steps that then show in the running mean."""
    settings = _settings("batchnorm_mlp", max_epochs=4, optimizer="sgd", lr=0.05)
    stacked = run_trial(small, {}, settings, seed=2)
    assert stacked.train_path == "vmap"
    for fold in range(3):
        alone = run_trial(small, {}, settings, seed=2, folds=[fold])
        np.testing.assert_allclose(stacked.curves["val_loss"][fold], alone.curves["val_loss"][0], rtol=1e-5)


def test_module_vmap_cannot_run_trains_member_by_member(small):
    result = run_trial(small, {}, _settings("item_net"), seed=0)
    assert result.train_path == "sequential"
    assert result.value("val_accuracy") > 0.5  # 3 classes: well above chance


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_xyz:make", r"'no_such_module_xyz:make'.*cannot import.*installed package"),
        ("trials_factories:missing", r"'trials_factories:missing'.*no attribute"),
        ("trials_factories:not_a_module", r"returned int, expected a torch\.nn\.Module"),
        ("trials_factories:wrong_shape",
         r"logits of shape \(2, 4\) for a batch of 2; expected \[batch, n_classes\] = \[2, 3\] \(the input batch "
         r"had shape \(2, 10\)\)"),
    ],
)
def test_bad_factory(small, path, message):
    settings = TrialSettings(model=ModelSpec(factory=path), training=TrainingSpec(max_epochs=1))
    with pytest.raises(ValueError, match=message):
        run_trial(small, {}, settings, seed=0)


def test_out_of_memory_becomes_trial_out_of_memory(small):
    with pytest.raises(TrialOutOfMemory, match=r"out of memory at batch_size=16"):
        run_trial(small, {}, _settings("oom_net"), seed=0)
    assert issubclass(TrialOutOfMemory, RuntimeError)
