"""Several configurations as one stack (k folds x m configurations): run_trials."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trials import ModelSpec, TrainingSpec, TrialSettings, resolve_hyperparams, run_trial, run_trials, stack_key
from trials._engine import FeatureSource

SETTINGS = TrialSettings(
    model=ModelSpec(hidden=(24, 24), dropout=0.2),
    training=TrainingSpec(optimizer="sgd", batch_size=16, max_epochs=8, patience=2),
)
# they differ in what may differ per member: lr, dropout, momentum, weight decay
CONFIGS = [
    {"lr": 0.05, "dropout": 0.1},
    {"lr": 0.2, "dropout": 0.0, "momentum": 0.5},
    {"lr": 0.01, "dropout": 0.4, "weight_decay": 1e-3},
]


def _same(a, b, tol: float) -> None:
    """Two results of one configuration agree: scores, stop epochs and whole curves."""
    assert [f.best_epoch for f in a.folds] == [f.best_epoch for f in b.folds]
    assert [f.epochs_run for f in a.folds] == [f.epochs_run for f in b.folds]
    assert a.scores("val_loss") == pytest.approx(b.scores("val_loss"), abs=tol)
    assert a.scores("val_accuracy") == pytest.approx(b.scores("val_accuracy"), abs=tol)
    for key in a.curves:
        for ca, cb in zip(a.curves[key], b.curves[key]):
            assert ca == pytest.approx(cb, abs=tol), key


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_configuration_gets_its_result_alone(small, seed, optimizer):
    """Tolerance 1e-5: on CPU the stack computes each member's exact operations (equal in practice)."""
    settings = SETTINGS.model_copy(update={"training": SETTINGS.training.model_copy(update={"optimizer": optimizer})})
    seeds = [seed * 10 + i for i in range(len(CONFIGS))]
    together = run_trials(small, CONFIGS, settings, seeds=seeds)
    assert [r.stack_size for r in together] == [3, 3, 3]
    for params, s, res in zip(CONFIGS, seeds, together):
        alone = run_trial(small, params, settings, seed=s)
        assert alone.stack_size == 1
        _same(res, alone, 1e-5)
    # and the configurations really differ from each other
    assert together[0].curves["train_loss"] != together[1].curves["train_loss"]


def test_a_configuration_does_not_change_its_stack_mates(small):
    """Changing one configuration's params or seed leaves the others' results as they were."""
    base = run_trials(small, CONFIGS, SETTINGS, seeds=[1, 2, 3])
    changed = run_trials(small, [CONFIGS[0], {"lr": 0.5, "dropout": 0.3}, CONFIGS[2]], SETTINGS, seeds=[1, 99, 3])
    _same(base[0], changed[0], 0.0)
    _same(base[2], changed[2], 0.0)
    assert base[1].curves != changed[1].curves


def test_report_stops_one_configuration_only(small):
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def report(i, r):  # type: ignore[no-untyped-def]
        seen[i].append(r.epoch)
        assert len(r.members) == 3  # that configuration's folds only
        return i == 1 and r.epoch == 2

    stacked = run_trials(small, CONFIGS, SETTINGS, seeds=[1, 2, 3], report=report)
    assert seen[1] == [1, 2] and len(seen[0]) > 2
    assert [r.stopped_by_report for r in stacked] == [False, True, False]
    assert stacked[1].epochs_run == 2
    _same(stacked[0], run_trial(small, CONFIGS[0], SETTINGS, seed=1), 1e-5)


def test_configurations_that_cannot_share_a_stack_are_refused(small):
    with pytest.raises(ValueError, match="cannot train in one stack"):
        run_trials(small, [{"batch_size": 16}, {"batch_size": 32}], SETTINGS, seeds=[0, 1])
    with pytest.raises(ValueError, match="one seed per configuration"):
        run_trials(small, CONFIGS, SETTINGS, seeds=[0])


def test_stack_key_separates_shape_and_batch_but_not_per_member_values():
    hp = resolve_hyperparams(SETTINGS, {"lr": 0.1, "dropout": 0.2})
    assert stack_key(hp) == stack_key(resolve_hyperparams(SETTINGS, {"lr": 0.01, "momentum": 0.3}))
    assert stack_key(hp) != stack_key(resolve_hyperparams(SETTINGS, {"batch_size": 64}))
    assert stack_key(hp) != stack_key(resolve_hyperparams(SETTINGS, {"hidden_size": 8}))
    assert stack_key(hp) != stack_key(dataclasses.replace(hp, optimizer="adam"))


@pytest.mark.parametrize("precompute_bytes", [1 << 30, 0])
def test_feature_source_serves_each_member_its_splits_scaling(precompute_bytes):
    """Members of different configurations that train one fold share that fold's statistics, on
    both paths (standardized copies precomputed, or standardized per batch), also after compaction."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(50, 4, generator=g), torch.arange(50) % 3
    mean, scale = torch.randn(2, 4, generator=g), torch.rand(2, 4, generator=g) + 0.5
    scaling = [0, 1, 0, 1]  # 2 configurations x 2 folds
    source = FeatureSource(X, y, mean, scale, scaling, precompute_bytes=precompute_bytes)
    rows = torch.randint(0, 50, (4, 7), generator=g)

    def expected(members: list[int]) -> torch.Tensor:
        s = torch.tensor([scaling[m] for m in members])
        return (X[rows[members]] - mean[s][:, None]) / scale[s][:, None]

    x, labels = source.gather(rows + torch.tensor(source.offsets)[:, None])
    torch.testing.assert_close(x, expected([0, 1, 2, 3]))
    assert torch.equal(labels, y[rows])
    source.select([1, 2])
    x, _ = source.gather(rows[[1, 2]] + torch.tensor(source.offsets)[:, None])
    torch.testing.assert_close(x, expected([1, 2]))
