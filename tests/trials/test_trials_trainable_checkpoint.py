"""Checkpoints of a trainable (``ctx.save_checkpoint`` / ``ctx.load_checkpoint``): a trial interrupted
mid-training goes on from its checkpoint and ends with the uninterrupted run's fold scores."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trials import CVSpec, DataSpec, TrainContext, TrainingSpec, TrialSettings, load_dataset, run_trial
from trials._checkpoint import CheckpointPlan, checkpoint_files
from trials._trainable_checkpoint import decode_state, encode_state


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=0)


class Killed(Exception):
    """Stands for the process dying after an epoch."""


def resumable(ctx: TrainContext) -> nn.Module:
    """Dropout (torch's global RNG), numpy's and random's global RNGs, a shuffled loader per epoch,
    Adam's state; saves after each report, goes on from the saved epoch."""
    model = nn.Sequential(nn.Linear(ctx.input_shape[0], 16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, ctx.n_outputs)).to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=float(ctx.params.get("lr", 0.02)))
    start = 1
    saved = ctx.load_checkpoint()
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["epoch"] + 1
    for epoch in range(start, ctx.max_epochs + 1):
        model.train()
        for x, y in ctx.loader("train", batch_size=32):
            scale = 1.0 + 0.01 * float(np.random.rand()) + 0.01 * random.random()
            loss = F.cross_entropy(model(x * scale), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            x, y = ctx.val.tensors
            out = model(x)
        stop = ctx.report(epoch, train_loss=loss.item(), val_loss=F.cross_entropy(out, y).item(),
                          val_accuracy=(out.argmax(1) == y).float().mean().item())
        ctx.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch})
        if stop:
            break
    return model


def _settings(fn: Any = resumable, **training: Any) -> TrialSettings:
    t = {"max_epochs": 12, "patience": 3, **training}
    return TrialSettings(training=TrainingSpec(**t), cv=CVSpec(folds=3), trainable=fn, metric="val_accuracy")


def interrupted(data: Any, settings: TrialSettings, plan: CheckpointPlan, at: int, params: Any = None) -> None:
    """Run the trial until the report of epoch ``at``, then die there."""
    def report(r: Any) -> bool:
        if r.epoch == at:
            raise Killed
        return False

    with pytest.raises(Killed):
        run_trial(data, params or {}, settings, seed=7, report=report, checkpoint=plan)


@pytest.mark.parametrize(("every", "at", "saved"), [({"every_epochs": 2}, 6, 4), ({"every_s": 1e-9}, 7, 6)])
def test_a_resumed_trainable_ends_bit_equal_to_an_uninterrupted_one(digits: Any, tmp_path: Any, every: Any, at: int,
                                                                     saved: int) -> None:
    settings = _settings()
    plain = run_trial(digits, {}, settings, seed=7)
    # fold 1 ends at epoch 6, the others at 7: the checkpoint of epoch 6 holds a fold that ended
    assert [f.epochs_run for f in plain.folds] == [7, 6, 7]
    plan = CheckpointPlan(str(tmp_path), "t-1", **every)
    interrupted(digits, settings, plan, at=at)
    assert checkpoint_files(str(tmp_path), "t-1") == ["t-1"]
    seen: list[int] = []
    resumed = run_trial(digits, {}, settings, seed=7, report=lambda r: seen.append(r.epoch) or False,
                        checkpoint=CheckpointPlan(str(tmp_path), "t-1", rerun=True, **every))
    assert resumed.resumed_from_epoch == saved and not resumed.messages
    assert plain.resumed_from_epoch is None
    assert seen == list(range(1, resumed.epochs_run + 1))  # the saved epochs' reports are sent again first
    assert resumed.folds == plain.folds  # best epochs, epochs run and metrics, bit-equal
    assert resumed.curves == plain.curves
    assert resumed.epochs_run == plain.epochs_run


def test_a_checkpoint_of_another_trial_or_a_corrupt_one_is_ignored_and_the_trial_starts_fresh(digits: Any,
                                                                                             tmp_path: Any) -> None:
    settings = _settings(max_epochs=6)
    plan = CheckpointPlan(str(tmp_path), "x", every_epochs=1)
    interrupted(digits, settings, plan, at=4, params={"lr": 0.02})
    for params, seed in (({"lr": 0.03}, 7), ({"lr": 0.02}, 8)):
        plain = run_trial(digits, params, settings, seed=seed)
        out = run_trial(digits, params, settings, seed=seed, checkpoint=plan)
        assert out.resumed_from_epoch is None and out.folds == plain.folds
        assert "made for another stack" in out.messages[0] and "starts from epoch 1" in out.messages[0]
    path = tmp_path / "x"
    raw = bytearray(path.read_bytes())
    raw[-len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    plain = run_trial(digits, {"lr": 0.02}, settings, seed=7)
    out = run_trial(digits, {"lr": 0.02}, settings, seed=7, checkpoint=plan)
    assert out.resumed_from_epoch is None and "corrupt" in out.messages[0] and out.folds == plain.folds


def test_a_trainable_that_does_not_load_its_checkpoint_starts_fresh_saying_why(digits: Any, tmp_path: Any) -> None:
    def saves_but_never_loads(ctx: TrainContext) -> nn.Module:
        model = nn.Linear(ctx.input_shape[0], ctx.n_outputs)
        for epoch in range(1, ctx.max_epochs + 1):
            stop = ctx.report(epoch, val_loss=1.0 / epoch, val_accuracy=0.1 * epoch)
            ctx.save_checkpoint({"epoch": epoch})
            if stop:
                break
        return model

    settings = _settings(saves_but_never_loads, max_epochs=6)
    plan = CheckpointPlan(str(tmp_path), "n", every_epochs=1)
    interrupted(digits, settings, plan, at=4)
    out = run_trial(digits, {}, settings, seed=7, checkpoint=plan)
    assert out.resumed_from_epoch is None and out.epochs_run == 6
    assert len(out.messages) == 1 and "did not call ctx.load_checkpoint() in fold 0" in out.messages[0]
    assert "starts from epoch 1" in out.messages[0]


def test_without_a_plan_save_is_a_no_op_and_load_gives_none(digits: Any) -> None:
    got: list[Any] = []

    def train(ctx: TrainContext) -> nn.Module:
        got.append(ctx.load_checkpoint())
        ctx.report(1, val_loss=1.0, val_accuracy=0.5)
        ctx.save_checkpoint({"epoch": 1})
        return nn.Linear(ctx.input_shape[0], ctx.n_outputs)

    run_trial(digits, {}, _settings(train, max_epochs=1), seed=0)
    assert got == [None, None, None]


def test_the_state_keeps_int_keys_tuples_and_devices_and_refuses_other_types() -> None:
    opt = torch.optim.Adam(nn.Linear(2, 1).parameters())
    state = {"opt": opt.state_dict(), "t": (1, 2.5, "x", None, True), "a": np.arange(3), 4: [torch.ones(2)]}
    back = decode_state(encode_state(state), torch.device("cpu"))
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999) and back["t"] == (1, 2.5, "x", None, True)
    assert back[4][0].equal(torch.ones(2)) and back["a"].tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match=r"state\['m'\] is a Linear; save tensors"):
        encode_state({"m": nn.Linear(1, 1)})


def _scripted(ctx: TrainContext) -> nn.Module:
    """Fold 0 gets worse after epoch 1 (it stops at 2, patience 1); the others improve to the end."""
    saved = ctx.load_checkpoint()
    start = 1 if saved is None else saved["epoch"] + 1
    for epoch in range(start, ctx.max_epochs + 1):
        loss = float(epoch) if ctx.fold == 0 else 1.0 / epoch + 0.01 * float(torch.rand(()))
        stop = ctx.report(epoch, val_loss=loss, val_accuracy=1.0 / (1.0 + loss))
        ctx.save_checkpoint({"epoch": epoch})
        if stop:
            break
    return nn.Linear(ctx.input_shape[0], ctx.n_outputs)


def test_a_resumed_trial_saves_again_and_a_second_interruption_goes_on_from_the_later_checkpoint(
        digits: Any, tmp_path: Any) -> None:
    settings = _settings(_scripted, max_epochs=9, patience=1)
    plain = run_trial(digits, {}, settings, seed=7)
    assert [f.epochs_run for f in plain.folds] == [2, 9, 9]
    plan = CheckpointPlan(str(tmp_path), "twice", every_epochs=2, rerun=True)
    interrupted(digits, settings, plan, at=5)  # saved epoch 4, fold 0 ended at 2
    seen: list[int] = []

    def dies_at_7(r: Any) -> bool:
        seen.append(r.epoch)
        if r.epoch == 7:
            raise Killed
        return False

    with pytest.raises(Killed):
        run_trial(digits, {}, settings, seed=7, report=dies_at_7, checkpoint=plan)
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    resumed = run_trial(digits, {}, settings, seed=7, checkpoint=plan)
    assert resumed.resumed_from_epoch == 6 and not resumed.messages  # the re-run saved epoch 6 itself
    assert resumed.folds == plain.folds and resumed.curves == plain.curves


def test_a_stop_from_the_reports_sent_again_ends_the_trial_without_calling_the_folds(digits: Any,
                                                                                      tmp_path: Any) -> None:
    calls: list[Any] = []

    def counted(ctx: TrainContext) -> nn.Module:
        calls.append(ctx.fold)
        return _scripted(ctx)

    settings = _settings(counted, max_epochs=9, patience=1)
    plan = CheckpointPlan(str(tmp_path), "p", every_epochs=2)
    interrupted(digits, settings, plan, at=5)
    calls.clear()
    out = run_trial(digits, {}, settings, seed=7, report=lambda r: r.epoch == 3, checkpoint=plan)
    assert calls == [] and out.stopped_by_report and out.resumed_from_epoch == 4
    assert [f.epochs_run for f in out.folds] == [2, 4, 4]  # where the checkpoint left them


def test_a_state_that_cannot_be_saved_fails_the_drivers_check(digits: Any) -> None:
    from trials import TrainableError, check_trainable

    def saves_the_module(ctx: TrainContext) -> nn.Module:
        model = nn.Linear(ctx.input_shape[0], ctx.n_outputs)
        ctx.report(1, val_loss=1.0, val_accuracy=0.5)
        ctx.save_checkpoint({"model": model, "epoch": 1})  # the module itself, not its state_dict()
        return model

    with pytest.raises(TrainableError, match=r"saves_the_module: ctx.save_checkpoint: state\['model'\] is a "
                                             r"Linear; save tensors.*\(in fold 0, after epoch 1\) \(found by the "
                                             r"driver's check"):
        check_trainable(_settings(saves_the_module), {}, digits)
    check_trainable(_settings(resumable), {}, digits)
