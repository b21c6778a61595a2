"""``trainable``: your own training function, called once per fold in lockstep (trials._trainable)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trials import (
    CVSpec,
    DataSpec,
    EpochReport,
    TrainableError,
    TrainContext,
    TrainingSpec,
    TrialSettings,
    check_trainable,
    load_dataset,
    refit_and_test,
    run_trial,
)


@pytest.fixture(scope="module")
def digits() -> Any:
    return load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=0)


def _settings(fn: Callable[[TrainContext], Any], **training: Any) -> TrialSettings:
    t = {"max_epochs": 4, "patience": 5, **training}
    return TrialSettings(training=TrainingSpec(**t), cv=CVSpec(folds=3), trainable=fn, metric="val_accuracy")


def loop(ctx: TrainContext) -> nn.Module:
    """A plain loop with dropout (the global RNG) and a shuffled loader (its own generator)."""
    model = nn.Sequential(nn.Linear(ctx.input_shape[0], 16), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(16, ctx.n_outputs)).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=float(ctx.params.get("lr", 0.1)))
    for epoch in range(1, ctx.max_epochs + 1):
        model.train()
        for x, y in ctx.loader("train", batch_size=64):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        if ctx.val is None:
            stop = ctx.report(epoch, train_loss=loss.item())
        else:
            model.eval()
            with torch.no_grad():
                x, y = ctx.val.tensors
                out = model(x)
            stop = ctx.report(epoch, train_loss=loss.item(), val_loss=F.cross_entropy(out, y).item(),
                              val_accuracy=(out.argmax(1) == y).float().mean().item())
        if stop:
            break
    return model


def test_each_fold_computes_what_it_would_alone_and_a_seed_repeats(digits: Any) -> None:
    s = _settings(loop)
    seen: list[EpochReport] = []
    result = run_trial(digits, {"lr": 0.1}, s, seed=7, report=lambda r: seen.append(r) and False)
    again = run_trial(digits, {"lr": 0.1}, s, seed=7)
    assert result.scores("val_accuracy") == again.scores("val_accuracy")
    alone = [run_trial(digits, {"lr": 0.1}, s, seed=7, folds=[f]).scores("val_accuracy")[0] for f in range(3)]
    assert result.scores("val_accuracy") == alone  # lockstep: each fold has its own random state
    assert result.train_path == "trainable" and result.epochs_run == 4
    assert [r.epoch for r in seen] == [1, 2, 3, 4] and all(len(r.members) == 3 for r in seen)
    assert result.value("val_accuracy") > 0.8
    assert set(result.curves) == {"train_loss", "val_loss", "val_accuracy"}
    assert all(len(c) == 4 for c in result.curves["val_loss"])


def test_the_callers_random_state_is_left_as_it_was(digits: Any) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    want = (torch.rand(1).item(), np.random.rand(), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    run_trial(digits, {}, _settings(loop, max_epochs=1), seed=1)
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == want


def _scripted(losses: list[float]) -> Callable[[TrainContext], nn.Module]:
    """Reports ``losses`` as val_loss, one per epoch, until told to stop; records the answers."""
    answers: list[tuple[int | None, int, bool]] = []

    def train(ctx: TrainContext) -> nn.Module:
        for epoch, loss in enumerate(losses, 1):
            stop = ctx.report(epoch, val_loss=loss + (ctx.fold or 0), val_accuracy=1.0 / (1.0 + loss))
            answers.append((ctx.fold, epoch, stop))
            if stop:
                break
        return nn.Linear(ctx.input_shape[0], ctx.n_outputs)

    train.answers = answers  # type: ignore[attr-defined]
    return train


def test_hpsearch_stops_each_fold_early_from_what_it_reports(digits: Any) -> None:
    fn = _scripted([1.0, 0.5, 0.7, 0.8, 0.9, 0.4])
    result = run_trial(digits, {}, _settings(fn, max_epochs=6, patience=2), seed=0)
    assert [f.best_epoch for f in result.folds] == [2, 2, 2]
    assert [f.epochs_run for f in result.folds] == [4, 4, 4]  # two epochs without improvement
    assert result.scores("val_loss") == [0.5, 1.5, 2.5]  # the best epoch's reported values
    assert [a for a in fn.answers if a[2]] == [(0, 4, True), (1, 4, True), (2, 4, True)]
    assert not result.stopped_by_report


def test_a_stop_from_the_report_channel_stops_every_fold(digits: Any) -> None:
    fn = _scripted([1.0, 0.9, 0.8, 0.7])
    result = run_trial(digits, {}, _settings(fn), seed=0, report=lambda r: r.epoch == 2)
    assert result.stopped_by_report and result.epochs_run == 2
    assert sorted(a for a in fn.answers if a[2]) == [(0, 2, True), (1, 2, True), (2, 2, True)]


def _fails(body: Callable[[TrainContext], Any]) -> Callable[[TrainContext], Any]:
    def train(ctx: TrainContext) -> Any:
        return body(ctx)

    return train


@pytest.mark.parametrize(("body", "match"), [
    (lambda ctx: nn.Linear(1, 1), r"returned in fold 0 without calling ctx.report; report every epoch, e\.g\. "
                                  r"ctx\.report\(epoch, val_loss=\.\.\., val_accuracy=\.\.\.\)"),
    (lambda ctx: [ctx.report(1, val_loss=1.0, val_accuracy=0.5), ctx.report(2, val_loss=math.nan, val_accuracy=0.5)],
     r"reported val_loss=nan at epoch 2 of fold 0"),
    (lambda ctx: ctx.report(1, loss=1.0, val_accuracy=0.5),
     r"reported epoch 1 of fold 0 without val_loss \(training.monitor, for early stopping\); it reported "
     r"\['loss', 'val_accuracy'\]"),
    (lambda ctx: ctx.report(0, val_loss=1.0, val_accuracy=0.5), r"reported epoch 0 in fold 0 after no epoch; call "
                                                                r"ctx.report once per epoch, counting epochs from 1"),
    (lambda ctx: [ctx.report(1, val_loss=1.0, val_accuracy=0.5), "model"][1],
     r"returned str in fold 0, not a torch.nn.Module"),
])
def test_a_trainable_that_breaks_the_contract_fails_the_trial_saying_how(digits: Any, body: Any, match: str) -> None:
    with pytest.raises(TrainableError, match=match):
        run_trial(digits, {}, _settings(_fails(body)), seed=0)


def test_a_trainable_that_raises_fails_with_the_tail_of_its_traceback(digits: Any) -> None:
    def train(ctx: TrainContext) -> nn.Module:
        if ctx.fold == 1:
            ctx.report(1, val_loss=1.0, val_accuracy=0.5)
            helper_that_breaks(ctx.params)
        return loop(ctx)

    with pytest.raises(TrainableError) as info:
        run_trial(digits, {"lr": 0.1}, _settings(train), seed=0)
    msg = str(info.value)
    assert msg.startswith("trainable ") and "raised KeyError: 'width' in fold 1; its traceback ends:" in msg
    assert "in helper_that_breaks" in msg and 'return params["width"]' in msg and "in train" in msg
    assert info.value.fold == 1 and len(msg) < 2000  # stored whole in fail_reason


def helper_that_breaks(params: dict[str, Any]) -> int:
    return params["width"]


def test_the_refit_trains_every_row_for_the_cv_epochs_and_is_scored_on_the_test_split(digits: Any) -> None:
    calls: list[tuple[Any, int, int]] = []

    def train(ctx: TrainContext) -> nn.Module:
        calls.append((ctx.val, ctx.max_epochs, len(ctx.train)))
        return loop(ctx)

    test = refit_and_test(digits, {"lr": 0.1}, _settings(train, max_epochs=9), seed=0, epochs=3)
    assert calls == [(None, 3, len(digits.y))]
    assert test.epochs_run == 3 and test.train_rows == len(digits.y) and test.val_rows == 0
    assert test.test_accuracy > 0.5 and set(test.metrics) == {"val_loss", "val_accuracy", "val_f1_macro"}
    assert test.state_dict is None  # hpsearch cannot rebuild your architecture
    inner = refit_and_test(digits, {"lr": 0.1}, _settings(train, max_epochs=3), seed=0, epochs=None)
    assert inner.val_rows > 0 and inner.train_rows + inner.val_rows == len(digits.y)


def test_a_regression_model_predicts_the_target_in_its_own_units() -> None:
    data = load_dataset(DataSpec(source="diabetes"), CVSpec(folds=2), seed=0, task="regression")

    def mean_model(ctx: TrainContext) -> nn.Module:
        assert ctx.n_outputs == 1 and ctx.train.tensors[1].dtype == torch.float32
        m = float(ctx.train.tensors[1].mean())
        ctx.report(1, val_mse=1.0, val_loss=1.0)
        model = nn.Linear(ctx.input_shape[0], 1)
        nn.init.zeros_(model.weight)
        nn.init.constant_(model.bias, m)
        return model

    s = TrialSettings(task="regression", training=TrainingSpec(max_epochs=1), cv=CVSpec(folds=2),
                      trainable=mean_model, metric="val_mse")
    test = refit_and_test(data, {}, s, seed=0, epochs=1)
    assert abs(test.metrics["val_r2"]) < 0.1  # the training mean predicts no better than the mean
    assert test.metrics["val_mse"] == pytest.approx(float(np.mean((data.y_test - data.y.mean()) ** 2)), rel=1e-3)


def test_the_drivers_check_runs_one_epoch_and_the_returned_model(digits: Any) -> None:
    seen: list[int] = []

    def wrong_head(ctx: TrainContext) -> nn.Module:
        seen.append(ctx.max_epochs)
        ctx.report(1, val_loss=1.0, val_accuracy=0.5)
        return nn.Linear(ctx.input_shape[0], 3)

    with pytest.raises(TrainableError, match=r"maps a batch of shape \(8, 64\) to \(8, 3\), but hpsearch scores "
                                             r"\[batch, 10\] logits.*found by the driver's check"):
        check_trainable(_settings(wrong_head), {"lr": 0.1}, digits)
    assert seen == [1]
    check_trainable(_settings(loop), {"lr": 0.1}, digits)


def test_a_failure_leaves_no_fold_thread_behind(digits: Any) -> None:
    """When one fold raises, or the report channel does, the other folds' calls end at their report."""
    import threading

    def channel_fails(r: EpochReport) -> bool:
        raise ConnectionError("the driver went away")

    with pytest.raises(ConnectionError):
        run_trial(digits, {}, _settings(_scripted([1.0, 0.9, 0.8])), seed=0, report=channel_fails)

    def second_fold_raises(ctx: TrainContext) -> nn.Module:
        ctx.report(1, val_loss=1.0, val_accuracy=0.5)
        if ctx.fold == 1:
            raise RuntimeError("boom")
        ctx.report(2, val_loss=1.0, val_accuracy=0.5)
        return nn.Linear(ctx.input_shape[0], ctx.n_outputs)

    with pytest.raises(TrainableError, match="raised RuntimeError: boom in fold 1"):
        run_trial(digits, {}, _settings(second_fold_raises), seed=0)
    for t in threading.enumerate():
        if t.name.startswith("hpsearch-trainable-"):
            t.join(timeout=5)
            assert not t.is_alive(), t.name
