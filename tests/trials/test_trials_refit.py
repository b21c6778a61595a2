"""The final refit: by default every non-test row, no inner split, for the epochs the CV chose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trials._refit as refit_module
from trials import TrainingSpec, TrialSettings, refit_and_test
from trials._export import member_state_dict
from trials._models import StackedMLP

SETTINGS = TrialSettings(training=TrainingSpec(optimizer="adam", lr=1e-3, batch_size=64, max_epochs=30))


def test_the_default_refit_trains_every_non_test_row_for_exactly_the_given_epochs(small, monkeypatch):
    """Counted where the training happens: epochs run and the rows each epoch trained on."""
    seen: list[set[int]] = []
    real = refit_module.train_one_epoch

    def counting(model, optimizer, source, batches, on_batch=None, loss="cross_entropy"):
        rows: set[int] = set()

        def note(step, r, w):
            rows.update(r[0][w[0] > 0].tolist())

        seen.append(rows)
        return real(model, optimizer, source, batches, on_batch=note, loss=loss)

    monkeypatch.setattr(refit_module, "train_one_epoch", counting)
    res = refit_and_test(small, {}, SETTINGS, seed=3, epochs=7)
    assert len(seen) == 7
    assert all(rows == set(range(len(small.y))) for rows in seen)  # all rows, every epoch: no inner split
    assert (res.epochs_run, res.best_epoch, res.train_rows, res.val_rows) == (7, 7, len(small.y), 0)


def test_early_stopping_restores_the_old_refit(small):
    """epochs=None: an inner cv.val_fraction split, early stopping, the best epoch restored."""
    res = refit_and_test(small, {}, SETTINGS, seed=3)
    assert res.val_rows == pytest.approx(0.2 * len(small.y), abs=1)
    assert res.train_rows + res.val_rows == len(small.y)
    assert 1 <= res.best_epoch <= res.epochs_run <= 30


def test_a_fixed_refit_is_deterministic_and_carries_its_model_and_scaling(small):
    a = refit_and_test(small, {"dropout": 0.1}, SETTINGS, seed=5, epochs=4)
    b = refit_and_test(small, {"dropout": 0.1}, SETTINGS, seed=5, epochs=4)
    assert a.state_dict == b.state_dict and a.test_loss == b.test_loss
    assert np.allclose(a.feature_mean, small.X.mean(axis=0), atol=1e-5)
    assert np.allclose(a.feature_scale, small.X.std(axis=0), atol=1e-4)


def test_a_plain_module_computes_what_its_stack_member_computes():
    from trials import resolve_hyperparams
    from trials._export import build_module

    stack = StackedMLP(6, [5, 5], 3, activation="leaky_relu", dropout=0.3, init_seeds=[1, 2], dropout_seeds=[3, 4])
    hp = resolve_hyperparams(TrialSettings(), {"hidden_size": 5, "n_layers": 2, "activation": "leaky_relu"})
    net = build_module(hp, 6, 3)
    net.load_state_dict(member_state_dict(stack, member=1))
    x = torch.randn(2, 8, 6)
    stack.eval()
    net.eval()
    assert torch.allclose(net(x[1]), stack(x)[1], atol=1e-6)
