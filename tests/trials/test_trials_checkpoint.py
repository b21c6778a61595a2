"""Checkpoints: a trial interrupted mid-training goes on from its checkpoint and ends as if it had not stopped."""

from __future__ import annotations

import json
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
    assert len(out.messages) == 1 and "corrupt" in out.messages[0] and "checksum" in out.messages[0]
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


def test_the_reports_so_far_are_packed_as_tensors_and_come_back_exactly(tmp_path):
    """A save carries every report so far; packed, they cost no JSON number printing, and lose nothing."""
    import math

    from trials import EpochReport, MemberReport
    from trials._checkpoint import ReportHistory, unpack_reports, write_checkpoint

    def pack_reports(reports):
        history = ReportHistory()
        for g, r in reports:
            history.append(g, r)
        return history.packed()

    a = MemberReport(0, 0.1 + 0.2, 1 / 3, 0.75, False, {"val_loss": 1 / 3, "val_f1_macro": 0.7})
    b = MemberReport(3, 2.5e-300, 7.0, math.nan, True, {"val_loss": 7.0, "val_mse": 49.0})  # other metrics
    c = MemberReport(1, 0.5, 0.25, 0.5, False, {})
    reports = [(0, EpochReport(1, (a, b))), (2, EpochReport(1, (c,))), (0, EpochReport(2, (b, a)))]
    write_checkpoint(str(tmp_path), "p", 2, "fp", {"reports": pack_reports(reports), "none": pack_reports([])})
    _, state = read_checkpoint(str(tmp_path), "p", "fp")
    back = unpack_reports(state["reports"])
    assert [(g, r.epoch) for g, r in back] == [(0, 1), (2, 1), (0, 2)]
    flat = [m for _, r in back for m in r.members]
    assert flat[0] == a and flat[2] == c and flat[4] == a  # bit-equal floats; only the metrics each had
    assert flat[1].metrics == b.metrics and flat[1].train_loss == 2.5e-300 and math.isnan(flat[1].val_accuracy)
    assert flat[1].stopped and flat[1].fold == 3
    assert unpack_reports(state["none"]) == []

    def layout_bytes(n_epochs: int) -> int:
        write_checkpoint(str(tmp_path), "n", 1, "fp", {"reports": pack_reports(
            [(0, EpochReport(e, (a, b, c))) for e in range(1, n_epochs + 1)])})
        return json.loads((tmp_path / "n").read_bytes().split(b"\n")[1])["layout_bytes"]

    assert layout_bytes(30) - layout_bytes(1) < 10  # no report's number is in the JSON: it does not grow


def test_a_checkpoint_that_kept_its_history_as_json_lists_still_resumes(small, tmp_path):
    """One saved before the packing (curves and reports as lists) goes on as before, bit-equal."""
    from trials._checkpoint import unpack_reports, write_checkpoint

    settings = CASES["sgd-step"]
    plain = run_trial(small, {}, settings, seed=7)
    plan = CheckpointPlan(str(tmp_path), "old", every_epochs=3)
    interrupted(small, settings, plan, at=8)
    fp = _fingerprint_of(small, settings, plan)
    epoch, state = read_checkpoint(str(tmp_path), "old", fp)
    state["curves"] = {k: [c.tolist() for c in v] for k, v in state["curves"].items()}
    state["reports"] = [[g, [r.epoch, [[m.fold, m.train_loss, m.val_loss, m.val_accuracy, m.stopped, dict(m.metrics)]
                                       for m in r.members]]] for g, r in unpack_reports(state["reports"])]
    write_checkpoint(str(tmp_path), "old", epoch, fp, state)
    seen = []
    resumed = run_trial(small, {}, settings, seed=7, report=lambda r: seen.append(r) or False,
                        checkpoint=CheckpointPlan(str(tmp_path), "old", every_epochs=3, rerun=True))
    assert resumed.resumed_from_epoch == 6 and not resumed.messages
    assert resumed.folds == plain.folds and resumed.curves == plain.curves
    assert [r.epoch for r in seen] == list(range(1, resumed.epochs_run + 1))


def test_a_stack_saved_in_the_background_from_copies_resumes_bit_equal(small, tmp_path):
    """A GPU's way (the state copied, written while training goes on), run on the CPU: the same checkpoint."""
    import torch

    from trials import resolve_hyperparams
    from trials._checkpoint import Checkpointer
    from trials._engine import MemberSplit, fit_stack
    from trials._seeding import member_seeds

    settings = CASES["adam-plateau"]
    hp = resolve_hyperparams(settings, {})
    splits = [MemberSplit(f, tr, va, member_seeds(7, f)) for f, (tr, va) in enumerate(small.folds)]

    def fit(checkpoint=None, report=None):
        return fit_stack(small.X, small.y, splits, hp, n_classes=small.n_classes, device=torch.device("cpu"), seed=7,
                         checkpoint=checkpoint, report=report)

    def dies(g, r):
        if r.epoch == 8:
            raise Killed
        return False

    plain = fit()
    plan = CheckpointPlan(str(tmp_path), "bg", every_epochs=1)
    with pytest.raises(Killed):
        fit(Checkpointer(plan, background=True), dies)
    again = Checkpointer(plan, background=True)
    resumed = fit(again)
    assert again.resumed_from_epoch == 7 and again.saved > 0  # the save of epoch 7 was whole when it died
    assert resumed.folds == plain.folds and resumed.curves == plain.curves


def test_a_checkpoint_checksummed_with_crc32_as_before_is_still_read_and_checked(tmp_path):
    import zlib

    import torch

    from trials._checkpoint import CheckpointUnusable, write_checkpoint

    write_checkpoint(str(tmp_path), "c", 3, "fp", {"w": torch.arange(6.0)})
    magic, header, body = (tmp_path / "c").read_bytes().split(b"\n", 2)
    meta = json.loads(header)
    assert "xxh3_64" in meta
    del meta["xxh3_64"]
    meta["crc32"] = zlib.crc32(body)  # as files written before 2026-12-06 are
    (tmp_path / "c").write_bytes(b"\n".join([magic, json.dumps(meta).encode(), body]))
    epoch, state = read_checkpoint(str(tmp_path), "c", "fp")
    assert epoch == 3 and torch.equal(state["w"], torch.arange(6.0))
    (tmp_path / "c").write_bytes(b"\n".join([magic, json.dumps(meta).encode(), body[:-1] + b"\x01"]))
    with pytest.raises(CheckpointUnusable, match="checksum does not match"):
        read_checkpoint(str(tmp_path), "c", "fp")
