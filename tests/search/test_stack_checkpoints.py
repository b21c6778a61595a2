"""Checkpoints of a stack of trials (``resources.stack_trials``): one file for the whole stack, which
its members' re-runs go on from as the same stack again; a member re-run in any other group starts
from epoch 1, and nothing of another stack's is ever loaded into it."""

from __future__ import annotations

import os
from typing import Any

import optuna
import pytest

import search
from search import LocalBackend, run_study, train_job, train_stack

from .fakes import MessageLog

pytestmark = pytest.mark.usefixtures("quiet_optuna")

# two configurations that share a stack (they differ in lr only)
SPEC: dict[str, Any] = {
    "name": "stk",
    "strategy": "grid",
    "seed": 5,
    "space": {"lr": {"values": [0.05, 0.01]}},
    "data": {"source": "digits"},
    "model": {"hidden": [32], "dropout": 0.2},
    "training": {"max_epochs": 8, "patience": 10, "optimizer": "adam", "lr_schedule": "plateau"},
    "cv": {"folds": 2},
    "resources": {"stack_trials": 2},
    "checkpoint": {"every_epochs": 2},
}


class Died(Exception):
    """Stands for the stack's worker process dying after an epoch."""


def stacking(on_report: Any, seen: list[list[search.TrialJob]]) -> Any:
    """The real training, with ``on_report(jobs, r)`` called on each stack's every report first."""
    def worker(data, settings, job, report):  # type: ignore[no-untyped-def]
        seen.append([job])
        return train_job(data, settings, job, report)

    def stack(data, settings, jobs, report):  # type: ignore[no-untyped-def]
        seen.append(list(jobs))

        def watched(key, r):  # type: ignore[no-untyped-def]
            on_report(jobs, r)
            return report(key, r)
        return train_stack(data, settings, jobs, watched)

    worker.stack = stack  # type: ignore[attr-defined]
    return worker


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="stk", storage=url).get_trials()


def by_lr(ts: list[optuna.trial.FrozenTrial]) -> dict[float, optuna.trial.FrozenTrial]:
    return {t.params["lr"]: t for t in ts}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[float, optuna.trial.FrozenTrial]:  # type: ignore[no-untyped-def]
    """The two configurations trained as one stack, uninterrupted, without checkpoints."""
    url = f"sqlite:///{tmp_path_factory.mktemp('plain') / 'plain.db'}"
    run_study({**SPEC, "checkpoint": {}}, storage=url, backend=LocalBackend(1), refit=False)
    done = by_lr(trials(url))
    assert {t.user_attrs["stack_size"] for t in done.values()} == {2}
    return done


def _ctrl_c_mid_stack(url: str) -> list[optuna.trial.FrozenTrial]:
    """Run SPEC until its stack's epoch 5, then stop it as Ctrl-C does; the FAIL trials it left."""
    token = search.StopToken()
    seen: list[list[search.TrialJob]] = []

    def stop_at_5(jobs, r):  # type: ignore[no-untyped-def]
        if r.epoch == 5:
            token.set("Ctrl-C")

    with pytest.raises(search.Interrupted):
        run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False, worker_fn=stacking(stop_at_5, seen),
                  stop=token)
    assert [len(jobs) for jobs in seen] == [2]
    failed = [t for t in trials(url) if t.state.name == "FAIL"]
    assert len(failed) == 2
    return failed


def test_an_interrupted_stack_goes_on_from_its_one_checkpoint_as_that_stack_and_scores_as_uninterrupted(
        fast_dir, plain) -> None:
    url = f"sqlite:///{fast_dir / 'stop.db'}"
    art = fast_dir / "stop.db.artifacts"
    first = _ctrl_c_mid_stack(url)
    ckpt = first[0].user_attrs["checkpoint"]
    # one checkpoint for the whole stack: each member records its id and its place in the stack
    assert {t.user_attrs["checkpoint"] for t in first} == {ckpt}
    assert sorted(t.user_attrs["checkpoint_slot"] for t in first) == [[0, 2], [1, 2]]
    assert os.listdir(art) == [ckpt]

    seen: list[list[search.TrialJob]] = []
    log = MessageLog()
    messages = log.messages

    search.resume_study("stk", storage=url, backend=LocalBackend(1), refit=False,
                        worker_fn=stacking(lambda jobs, r: None, seen), callbacks=log)
    # the two re-runs ran as the same stack again, in its order, going on from its checkpoint
    (jobs,) = seen
    assert [j.checkpoint.artifact_id for j in jobs] == [ckpt, ckpt] and all(j.checkpoint.rerun for j in jobs)
    slot_of = {t.params["lr"]: t.user_attrs["checkpoint_slot"][0] for t in first}
    assert [slot_of[j.params["lr"]] for j in jobs] == [0, 1]
    reruns = by_lr([t for t in trials(url) if t.state.name == "COMPLETE"])
    assert sorted(reruns) == sorted(plain)
    epochs = {t.user_attrs["resumed_from_epoch"] for t in reruns.values()}
    assert len(epochs) == 1 and epochs <= {4, 6}  # the stop lands at the next epoch boundary or so
    assert sum(f"went on from its checkpoint at epoch {min(epochs)}" in m for m in messages) == 2
    for lr, rerun in reruns.items():
        assert rerun.user_attrs["checkpoint"] == ckpt and rerun.user_attrs["stack_size"] == 2
        assert rerun.user_attrs["fold_scores"] == plain[lr].user_attrs["fold_scores"]
        assert rerun.user_attrs["curves"] == plain[lr].user_attrs["curves"]
        assert rerun.intermediate_values == plain[lr].intermediate_values
    assert os.listdir(art) == []  # deleted once both members were recorded


def test_a_stack_that_failed_reruns_each_trial_alone_from_epoch_1_and_its_checkpoint_is_deleted(fast_dir) -> None:
    url = f"sqlite:///{fast_dir / 'died.db'}"
    art = fast_dir / "died.db.artifacts"
    seen: list[list[search.TrialJob]] = []
    log = MessageLog()
    messages = log.messages

    def dies_at_5(jobs, r):  # type: ignore[no-untyped-def]
        if r.epoch == 5:
            raise Died("killed after epoch 5")

    run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False, worker_fn=stacking(dies_at_5, seen),
              callbacks=log)
    assert [len(jobs) for jobs in seen] == [2, 1, 1]  # the stack, then each of its trials alone
    failed = [t for t in trials(url) if t.state.name == "FAIL"]
    done = [t for t in trials(url) if t.state.name == "COMPLETE"]
    stack_ckpt = seen[0][0].checkpoint.artifact_id
    assert {t.user_attrs["checkpoint"] for t in failed} == {stack_ckpt} and len(done) == 2
    # alone, each re-run has its own new checkpoint and no slot: the stack's file holds another stack
    for t in done:
        assert t.user_attrs["checkpoint"] not in (None, stack_ckpt) and t.user_attrs["checkpoint_slot"] is None
        assert t.user_attrs["resumed_from_epoch"] is None and t.user_attrs["stack_size"] == 1
    assert len({t.user_attrs["checkpoint"] for t in done}) == 2
    assert sum("starts from epoch 1: its checkpoint holds the stack" in m for m in messages) == 2
    assert os.listdir(art) == []


def test_a_member_of_an_interrupted_stack_that_cannot_rejoin_it_starts_fresh_and_nothing_is_left(
        fast_dir, plain) -> None:
    """A member that must run alone on resume breaks the stack: both re-runs start from epoch 1 with
    new checkpoints (neither loads the stack's state), and the stack's file is deleted."""
    url = f"sqlite:///{fast_dir / 'broken.db'}"
    art = fast_dir / "broken.db.artifacts"
    first = _ctrl_c_mid_stack(url)
    study = optuna.load_study(study_name="stk", storage=url)
    waiting = [t for t in study.get_trials() if t.state.name == "WAITING"]
    assert len(waiting) == 2
    study._storage.set_trial_user_attr(waiting[0]._trial_id, "alone", True)  # as a re-run after its own failure
    seen: list[list[search.TrialJob]] = []
    search.resume_study("stk", storage=url, backend=LocalBackend(1), refit=False,
                        worker_fn=stacking(lambda jobs, r: None, seen))
    assert [len(jobs) for jobs in seen] == [1, 1]
    done = [t for t in trials(url) if t.state.name == "COMPLETE"]
    assert len(done) == 2 and all(t.user_attrs["resumed_from_epoch"] is None for t in done)
    assert not {t.user_attrs["checkpoint"] for t in done} & {first[0].user_attrs["checkpoint"]}
    for t in done:  # alone, from epoch 1: its own scores (not the stack's, up to summation order)
        assert t.user_attrs["fold_scores"] == pytest.approx(plain[t.params["lr"]].user_attrs["fold_scores"], abs=1e-6)
    assert os.listdir(art) == []


def test_keep_best_with_stacks_keeps_the_stacks_file_with_the_best_trials_slot_and_loads_its_folds(fast_dir) -> None:
    url = f"sqlite:///{fast_dir / 'keep.db'}"
    art = fast_dir / "keep.db.artifacts"
    spec = {**SPEC, "space": {"lr": {"values": [0.0005, 0.05]}}, "training": {**SPEC["training"], "max_epochs": 5},
            "checkpoint": {"every_epochs": 2, "keep_best": True}}
    run_study(spec, storage=url, backend=LocalBackend(1), refit=False)
    study = optuna.load_study(study_name="stk", storage=url)
    best = study.best_trial
    kept = study.user_attrs["hpsearch_kept_checkpoint"]
    assert kept == {"trial": best.number, "checkpoint": best.user_attrs["checkpoint"], "directory": str(art),
                    "slot": best.user_attrs["checkpoint_slot"]}
    assert best.user_attrs["stack_size"] == 2 and os.listdir(art) == [kept["checkpoint"]]
    import torch

    from trials import load_dataset

    parsed = search.parse_spec(spec)
    data = load_dataset(parsed.data, parsed.cv, parsed.seed, parsed.task)
    models = search.load_fold_models("stk", storage=url)
    assert len(models) == len(data.folds) == 2
    for model, (_, val), score in zip(models, data.folds, best.user_attrs["fold_scores"]):
        with torch.no_grad():
            hits = (model(torch.from_numpy(data.X[val])).argmax(1).numpy() == data.y[val]).mean()
        assert hits == pytest.approx(score, abs=1e-6)  # the best trial's members, not its stack-mate's
