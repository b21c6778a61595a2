"""Checkpoints: a trial interrupted mid-training goes on from its checkpoint and ends as if it had not stopped."""

from __future__ import annotations

import os

import pytest

from trials import ModelSpec, TrainingSpec, TrialSettings, run_trial
from trials._checkpoint import CheckpointPlan, checkpoint_files, read_checkpoint, remove_checkpoints

# dropout (each member's own generator), early stopping that stops some folds before the others,
# and every optimizer state and schedule the loop keeps
CASES = {
    "sgd-step": TrialSettings(
        model=ModelSpec(hidden=(16,), dropout=0.3),
        training=TrainingSpec(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=16, max_epochs=12, patience=2,
                              lr_schedule="step", step_size=3, gamma=0.5)),
    "adam-plateau": TrialSettings(
        model=ModelSpec(hidden=(16, 8), dropout=0.2),
        training=TrainingSpec(optimizer="adam", lr=0.03, batch_size=32, max_epochs=12, patience=3,
                              weight_decay=1e-4, lr_schedule="plateau", plateau_patience=1)),
    "factory-vmap": TrialSettings(
        model=ModelSpec(factory="tests.trials.trials_factories:mlp", dropout=0.3),
        training=TrainingSpec(optimizer="adam", lr=0.03, batch_size=32, max_epochs=8, patience=3)),
}
# (fold 1 stops early: at epoch 6 with sgd-step, 7 with adam-plateau, 4 with factory-vmap, so the
# checkpoint of epoch 6 holds a stack already compacted, or one that compacts after the resume)


class Killed(Exception):
    """Stands for the process dying after an epoch."""


def interrupted(data, settings, plan, at: int, params=None):
    """Run the trial until the report of epoch ``at``, then die there."""
    def report(r):
        if r.epoch == at:
            raise Killed
        return False

    with pytest.raises(Killed):
        run_trial(data, params or {}, settings, seed=7, report=report, checkpoint=plan)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_trial_ends_bit_equal_to_an_uninterrupted_one(small, tmp_path, case):
    settings = CASES[case]
    plain = run_trial(small, {}, settings, seed=7)
    plan = CheckpointPlan(str(tmp_path), "ckpt-1", every_epochs=3)
    interrupted(small, settings, plan, at=8)
    epoch, _ = read_checkpoint(str(tmp_path), "ckpt-1", _fingerprint_of(small, settings, plan))
    assert epoch == 6  # saved after epochs 3 and 6 (each at the start of the next epoch)
    seen = []
    resumed = run_trial(small, {}, settings, seed=7, report=lambda r: seen.append(r.epoch) or False,
                        checkpoint=CheckpointPlan(str(tmp_path), "ckpt-1", every_epochs=3, rerun=True))
    assert resumed.resumed_from_epoch == 6 and not resumed.messages
    assert plain.resumed_from_epoch is None
    # the epochs before the checkpoint are reported again (in order), then training goes on
    assert seen == list(range(1, resumed.epochs_run + 1))
    assert resumed.folds == plain.folds  # every fold's best epoch, epochs run and metrics, bit-equal
    assert resumed.curves == plain.curves
    assert resumed.scores("val_loss") == plain.scores("val_loss")
    assert min(f.epochs_run for f in plain.folds) < plain.epochs_run  # early stopping compacted the stack


def _fingerprint_of(data, settings, plan):
    import torch

    from trials import resolve_hyperparams
    from trials._checkpoint import stack_fingerprint
    from trials._engine import MemberSplit, prepare_members
    from trials._seeding import member_seeds

    hp = resolve_hyperparams(settings, {})
    splits = [MemberSplit(f, data.folds[f][0], data.folds[f][1], member_seeds(7, f)) for f in range(len(data.folds))]
    *_, model, _ = prepare_members(data.X, data.y, splits, [hp] * len(splits), data.n_classes, torch.device("cpu"))
    return stack_fingerprint([hp] * len(splits), splits, [0] * len(splits), seed=7, n_features=data.X.shape[1],
                             n_classes=data.n_classes, shapes=[tuple(t.shape) for t in model.state_tensors()])


def test_every_s_saves_by_time_and_resumes_the_same(small, tmp_path):
    settings = CASES["sgd-step"]
    plain = run_trial(small, {}, settings, seed=7)
    plan = CheckpointPlan(str(tmp_path), "t", every_s=1e-9)  # due at every epoch boundary
    interrupted(small, settings, plan, at=5)
    resumed = run_trial(small, {}, settings, seed=7, checkpoint=plan)
    assert resumed.resumed_from_epoch == 4
    assert resumed.folds == plain.folds and resumed.curves == plain.curves


def test_a_corrupt_checkpoint_is_detected_and_the_trial_starts_fresh(small, tmp_path):
    settings = CASES["sgd-step"]
    plain = run_trial(small, {}, settings, seed=7)
    plan = CheckpointPlan(str(tmp_path), "c", every_epochs=1, rerun=True)
    interrupted(small, settings, plan, at=4)
    path = tmp_path / "c"
    raw = bytearray(path.read_bytes())  # one flipped byte of the state; the header is whole
    raw[-len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    out = run_trial(small, {}, settings, seed=7, checkpoint=plan)
    assert out.resumed_from_epoch is None
    assert len(out.messages) == 1 and "corrupt" in out.messages[0] and "CRC-32" in out.messages[0]
    assert "starts from epoch 1" in out.messages[0]
    assert out.folds == plain.folds
    path.write_bytes(bytes(raw[: len(raw) // 2]))  # a truncated file
    out = run_trial(small, {}, settings, seed=7, checkpoint=plan)
    assert out.resumed_from_epoch is None and "corrupt" in out.messages[0]
    path.write_bytes(b"something else entirely")
    out = run_trial(small, {}, settings, seed=7, checkpoint=plan)
    assert out.resumed_from_epoch is None and "is not an hpsearch-checkpoint/1 file" in out.messages[0]


def test_a_missing_checkpoint_of_a_rerun_says_so_and_a_first_run_says_nothing(small, tmp_path):
    settings = CASES["sgd-step"]
    out = run_trial(small, {}, settings, seed=7, checkpoint=CheckpointPlan(str(tmp_path), "m", every_epochs=50))
    assert out.messages == () and out.resumed_from_epoch is None
    out = run_trial(small, {}, settings, seed=7,
                    checkpoint=CheckpointPlan(str(tmp_path), "m", every_epochs=50, rerun=True))
    assert out.resumed_from_epoch is None and "no checkpoint at" in out.messages[0]


@pytest.mark.parametrize("change", ["params", "shape", "seed"])
def test_a_checkpoint_is_never_loaded_into_another_trial(small, tmp_path, change):
    settings = CASES["sgd-step"]
    plan = CheckpointPlan(str(tmp_path), "x", every_epochs=1)
    interrupted(small, settings, plan, at=4, params={"lr": 0.05})
    params, seed, other = {"lr": 0.05}, 7, settings
    if change == "params":
        params = {"lr": 0.02}
    elif change == "shape":
        other = settings.model_copy(update={"model": ModelSpec(hidden=(32,), dropout=0.3)})
    else:
        seed = 8
    plain = run_trial(small, params, other, seed=seed)
    out = run_trial(small, params, other, seed=seed, checkpoint=plan)
    assert out.resumed_from_epoch is None
    assert "made for another stack" in out.messages[0] and "ignored" in out.messages[0]
    assert out.folds == plain.folds


def test_a_store_that_fails_every_attempt_stops_the_trial_and_keeps_the_last_checkpoint(small, tmp_path,
                                                                                         monkeypatch):
    """Every save from epoch 6 on fails (the store is unreachable): each is tried 3 times with backoff,
    then the trial stops with CheckpointWriteError; the checkpoint of epoch 3 is whole, and a re-run
    goes on from it and ends bit-equal to an uninterrupted run."""
    import errno

    from trials import CheckpointWriteError, _checkpoint

    settings = CASES["sgd-step"]
    plain = run_trial(small, {}, settings, seed=7)
    real, tries, slept = _checkpoint.write_checkpoint, [], []

    def flaky(directory, artifact_id, epoch, fingerprint, state):
        tries.append(epoch)
        if epoch >= 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, artifact_id, epoch, fingerprint, state)

    monkeypatch.setattr(_checkpoint, "write_checkpoint", flaky)
    monkeypatch.setattr(_checkpoint.time, "sleep", slept.append)
    plan = CheckpointPlan(str(tmp_path), "w", every_epochs=3)
    with pytest.raises(CheckpointWriteError) as e:
        run_trial(small, {}, settings, seed=7, checkpoint=plan)
    assert tries == [3, 6, 6, 6] and slept == [0.5, 1.0]  # 3 attempts, the wait doubling
    assert e.value.directory == str(tmp_path) and e.value.reason == "No space left on device"
    assert "cannot write the checkpoint" in str(e.value) and "after 3 attempts" in str(e.value)
    monkeypatch.setattr(_checkpoint, "write_checkpoint", real)
    resumed = run_trial(small, {}, settings, seed=7, checkpoint=CheckpointPlan(str(tmp_path), "w", every_epochs=3,
                                                                              rerun=True))
    assert resumed.resumed_from_epoch == 3 and resumed.folds == plain.folds


def test_checkpoint_files_are_one_per_trial_and_removed_whole(small, tmp_path):
    settings = CASES["sgd-step"]
    plan = CheckpointPlan(str(tmp_path), "r", every_epochs=1)
    interrupted(small, settings, plan, at=5)
    interrupted(small, settings, plan, at=5, params=None)  # overwritten in place, no second file
    run_trial(small, {}, settings, seed=7, folds=[1], checkpoint=plan)  # a fold part's own file
    assert checkpoint_files(str(tmp_path), "r") == ["r", "r-folds-1"]
    # no temporaries, and no spare for a next save (replace_parts): a run that ended dropped its own
    assert sorted(os.listdir(tmp_path)) == ["r", "r-folds-1"]
    assert remove_checkpoints(str(tmp_path), "r") > 0
    assert os.listdir(tmp_path) == []
