"""Checkpoints through the orchestrator: a re-run of an interrupted trial goes on from its checkpoint."""

from __future__ import annotations

import json
import os
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner

import search
import storage as st
from search import LocalBackend, TrialJob, run_study, train_job
from search.cli import main
from trials._store import _writer_tag

from .fakes import MessageLog

pytestmark = pytest.mark.usefixtures("quiet_optuna")

SPEC: dict[str, Any] = {
    "name": "ckpt",
    "strategy": "grid",
    "seed": 11,
    "space": {"lr": {"values": [0.05]}},
    "data": {"source": "digits"},
    "model": {"hidden": [32], "dropout": 0.2},
    "training": {"max_epochs": 8, "patience": 10, "optimizer": "adam", "lr_schedule": "plateau"},
    "cv": {"folds": 2},
    "checkpoint": {"every_epochs": 2},
}


class Died(Exception):
    """Stands for the worker process dying after an epoch."""


def dies_once_at(epoch: int, seen: list[TrialJob]):
    """The real training, whose first attempt of each trial dies after epoch ``epoch``."""
    def worker(data, settings, job, report):  # type: ignore[no-untyped-def]
        seen.append(job)

        def dying(r):  # type: ignore[no-untyped-def]
            if job.attempt == 0 and r.epoch == epoch:
                raise Died(f"killed after epoch {epoch}")
            return report(r)

        return train_job(data, settings, job, dying)
    return worker


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_a_rerun_goes_on_from_the_checkpoint_and_scores_as_an_uninterrupted_run(fast_dir) -> None:
    plain_url = f"sqlite:///{fast_dir / 'plain.db'}"
    run_study({**SPEC, "checkpoint": {}}, storage=plain_url, backend=LocalBackend(1), refit=False)
    plain = trials(plain_url, "ckpt")[0]

    url = f"sqlite:///{fast_dir / 'ckpt.db'}"
    seen: list[TrialJob] = []
    log = MessageLog()
    messages = log.messages

    run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False, worker_fn=dies_once_at(5, seen),
              callbacks=log)
    first, rerun = trials(url, "ckpt")
    assert first.state.name == "FAIL" and "killed after epoch 5" in first.user_attrs["fail_reason"]
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["retry_of"] == 0
    # the orchestrator chose the checkpoint before the trial ran; the re-run kept it, and went on from it
    assert first.user_attrs["checkpoint"] == rerun.user_attrs["checkpoint"] == seen[0].checkpoint.artifact_id
    assert seen[0].checkpoint.rerun is False and seen[1].checkpoint.rerun is True
    assert rerun.user_attrs["resumed_from_epoch"] == 4
    assert plain.user_attrs["resumed_from_epoch"] is None
    assert "trial 1 went on from its checkpoint at epoch 4" in messages
    # bit-equal fold scores, and every epoch's value is the uninterrupted run's (replayed ones included)
    assert rerun.user_attrs["fold_scores"] == plain.user_attrs["fold_scores"]
    assert rerun.user_attrs["fold_epochs"] == plain.user_attrs["fold_epochs"]
    assert rerun.user_attrs["curves"] == plain.user_attrs["curves"]
    assert rerun.intermediate_values == plain.intermediate_values and len(rerun.intermediate_values) == 8
    # a finished trial's checkpoint is deleted
    art = fast_dir / "ckpt.db.artifacts"
    assert art.is_dir() and os.listdir(art) == []

    code, out, err = invoke("show", "ckpt", "--storage", url, "-o", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert [t["resumed_from_epoch"] for t in shown["trials"]] == [None, 4]
    assert shown["checkpoints"] == {"directory": str(art), "files": 0, "bytes": 0, "kept": None}
    code, out, _ = invoke("show", "ckpt", "--storage", url)
    assert "went on from epoch 4" in out and "checkpoints: 0 file(s), 0.0 MB in" in out


def test_without_checkpoint_keys_no_checkpoint_is_written_and_show_says_nothing(fast_dir) -> None:
    url = f"sqlite:///{fast_dir / 'off.db'}"
    seen: list[TrialJob] = []
    run_study({**SPEC, "checkpoint": {}}, storage=url, backend=LocalBackend(1), refit=False,
              worker_fn=dies_once_at(5, seen))
    assert [j.checkpoint for j in seen] == [None, None]
    first, rerun = trials(url, "ckpt")
    assert "checkpoint" not in first.user_attrs and rerun.user_attrs["resumed_from_epoch"] is None
    code, out, _ = invoke("show", "ckpt", "--storage", url, "-o", "json")
    assert code == 0 and json.loads(out)["checkpoints"] is None
    assert not (fast_dir / "off.db.artifacts").exists()  # refit=False and no checkpoints: no directory


def test_a_running_trial_holds_one_checkpoint_file(fast_dir) -> None:
    """Disk use is bounded: while it runs, a trial's checkpoint is one file, overwritten in place."""
    url = f"sqlite:///{fast_dir / 'disk.db'}"
    art = fast_dir / "disk.db.artifacts"
    sizes: list[list[str]] = []

    def worker(data, settings, job, report):  # type: ignore[no-untyped-def]
        def watch(r):  # type: ignore[no-untyped-def]
            sizes.append(sorted(os.listdir(art)))
            return report(r)
        return train_job(data, settings, job, watch)

    run_study({**SPEC, "checkpoint": {"every_epochs": 1}}, storage=url, backend=LocalBackend(1), refit=False,
              worker_fn=worker)
    (trial,) = trials(url, "ckpt")
    ckpt = trial.user_attrs["checkpoint"]
    # plus, from the second save on, its spare: the version the last save replaced, which the next one is
    # written into (and, were the writes moved to a background thread, its other name while it moves)
    own = {f".{ckpt}.spare-{_writer_tag()}", f".{ckpt}.prev-{_writer_tag()}"}
    assert sizes[0] == [] and sizes[1] == [ckpt] and len(sizes) > 3
    assert all([n for n in s if not n.startswith(".")] == [ckpt] and set(s) - {ckpt} <= own for s in sizes[2:])
    assert os.listdir(art) == []


def test_an_artifact_directory_that_cannot_be_written_is_refused_before_any_trial(fast_dir) -> None:
    (fast_dir / "a-file").write_text("x")
    study = fast_dir / "study.yaml"
    study.write_text(yaml.safe_dump(SPEC))
    url = f"sqlite:///{fast_dir / 'r.db'}"
    code, _, err = invoke("run", str(study), "--storage", url, "--artifacts", str(fast_dir / "a-file" / "d"), "-q")
    assert code == 2 and "is not writable" in err and "checkpoints and the best model are saved there" in err
    assert not (fast_dir / "r.db").exists() or st.study_names(st.create_engine(url, create=False)) == []
    with pytest.raises(search.UsageError, match="checkpoints are saved there"):
        run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False, artifacts=str(fast_dir / "a-file" / "d"))


def test_checkpoints_need_a_directory_when_the_storage_has_none(fast_dir) -> None:
    """PostgreSQL has no file to stand beside: refused before the database is even opened."""
    with pytest.raises(search.UsageError, match="checkpoint: checkpoints are saved to the artifact directory"):
        run_study(SPEC, storage="postgresql://nobody@127.0.0.1:1/none", backend=LocalBackend(1), refit=False)


def test_a_stored_spec_without_checkpoint_keys_resumes_unchanged_and_they_may_be_added(fast_dir) -> None:
    url = f"sqlite:///{fast_dir / 'old.db'}"
    old = {k: v for k, v in SPEC.items() if k != "checkpoint"}
    run_study(old, storage=url, backend=LocalBackend(1), refit=False)
    stored = st.study_attrs(st.create_engine(url), "ckpt")["hpsearch_spec"]
    del stored["checkpoint"]  # as a study stored before the key existed
    optuna.load_study(study_name="ckpt", storage=url).set_user_attr("hpsearch_spec", stored)
    res = search.resume_study("ckpt", storage=url, backend=LocalBackend(1), refit=False)
    assert not any("updated" in m for m in res.messages)
    res = run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False)
    assert any("updated checkpoint.every_epochs: null -> 2" in m for m in res.messages), res.messages


def test_a_corrupt_checkpoint_makes_the_rerun_start_fresh_with_a_message(fast_dir) -> None:
    plain_url = f"sqlite:///{fast_dir / 'plain.db'}"
    run_study({**SPEC, "checkpoint": {}}, storage=plain_url, backend=LocalBackend(1), refit=False)
    plain = trials(plain_url, "ckpt")[0]
    url = f"sqlite:///{fast_dir / 'bad.db'}"
    seen: list[TrialJob] = []
    dying = dies_once_at(5, seen)
    log = MessageLog()
    messages = log.messages

    def worker(data, settings, job, report):  # type: ignore[no-untyped-def]
        if job.attempt == 1:  # the disk garbled the file between the runs
            path = os.path.join(job.checkpoint.directory, job.checkpoint.artifact_id)
            raw = bytearray(open(path, "rb").read())
            raw[len(raw) // 2] ^= 0xFF
            open(path, "wb").write(bytes(raw))
        return dying(data, settings, job, report)

    run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False, worker_fn=worker, callbacks=log)
    _, rerun = trials(url, "ckpt")
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["resumed_from_epoch"] is None
    said = [m for m in messages if m.startswith("trial 1: the checkpoint")]
    assert len(said) == 1 and "is corrupt" in said[0] and "starts from epoch 1" in said[0], messages
    assert rerun.user_attrs["fold_scores"] == plain.user_attrs["fold_scores"]
    assert os.listdir(fast_dir / "bad.db.artifacts") == []


def test_checkpoint_keys_are_validated_with_their_key_path() -> None:
    with pytest.raises(search.SpecError) as e:
        search.parse_spec({**SPEC, "checkpoint": {"every_epochs": 0, "every_s": -1, "every": 3}})
    lines = e.value.errors
    assert any(x.startswith("checkpoint.every_epochs: ") and "greater than or equal to 1" in x for x in lines), lines
    assert any(x.startswith("checkpoint.every_s: ") and "greater than 0" in x for x in lines), lines
    assert any(x.startswith("checkpoint.every: unknown key") for x in lines), lines
    assert not search.parse_spec({k: v for k, v in SPEC.items() if k != "checkpoint"}).checkpoint.enabled
    assert search.parse_spec({**SPEC, "checkpoint": {"every_s": 600}}).checkpoint.enabled


def test_parallel_fold_parts_merge_their_resume_epochs_and_messages() -> None:
    """With resources.parallel_folds each fold part has its own checkpoint file; the trial went on
    from the earliest epoch any part went on from, and says what each part said."""
    from search.backends._events import Finished
    from search.backends._ray_folds import FoldGroup
    from trials import FoldResult, TrialResult

    def part(fold: int, resumed: int | None, messages: tuple[str, ...] = ()) -> Finished:
        res = TrialResult(folds=(FoldResult(fold, 3, 4, 0.5, 0.9),), curves={"val_loss": [[0.5] * 4]}, epochs_run=4,
                          duration_s=1.0, device="cpu", train_path="stacked", stopped_by_report=False,
                          resumed_from_epoch=resumed, messages=messages)
        return Finished(f"0.0/fold{fold}", res)

    group = FoldGroup(parts=["0.0/fold0", "0.0/fold1"])
    group.add_result("0.0/fold0", part(0, 4))
    group.add_result("0.0/fold1", part(1, 2, ("no checkpoint at x",)))
    merged = group.merged()
    assert merged is not None and merged.resumed_from_epoch == 2 and merged.messages == ("no checkpoint at x",)
    fresh = FoldGroup(parts=["a", "b"])
    fresh.add_result("a", part(0, None))
    fresh.add_result("b", part(1, None))
    assert fresh.merged().resumed_from_epoch is None

    from trials import CheckpointPlan

    plan = CheckpointPlan("/d", "checkpoint-1", every_epochs=2)
    assert plan.for_folds(None) is plan and plan.for_folds([1]).artifact_id == "checkpoint-1-folds-1"


def _ctrl_c_at_epoch_5(url: str):  # type: ignore[no-untyped-def]
    """Run SPEC until its first trial's epoch 5, then stop it as Ctrl-C does; the FAIL trial it left."""
    token = search.StopToken()

    def worker(data, settings, job, report):  # type: ignore[no-untyped-def]
        def stop_at_5(r):  # type: ignore[no-untyped-def]
            if r.epoch == 5:
                token.set("Ctrl-C")
            return report(r)
        return train_job(data, settings, job, stop_at_5)

    with pytest.raises(search.Interrupted):
        run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False, worker_fn=worker, stop=token)
    (first,) = [t for t in trials(url, "ckpt") if t.state.name == "FAIL"]
    return first


def test_ctrl_c_mid_trial_then_resume_goes_on_from_the_checkpoint(fast_dir) -> None:
    plain_url = f"sqlite:///{fast_dir / 'plain.db'}"
    run_study({**SPEC, "checkpoint": {}}, storage=plain_url, backend=LocalBackend(1), refit=False)
    plain = trials(plain_url, "ckpt")[0]
    url = f"sqlite:///{fast_dir / 'stop.db'}"
    first = _ctrl_c_at_epoch_5(url)
    assert "interrupted (Ctrl-C)" in first.user_attrs["fail_reason"]
    assert os.listdir(fast_dir / "stop.db.artifacts") == [first.user_attrs["checkpoint"]]  # kept for the re-run
    search.resume_study("ckpt", storage=url, backend=LocalBackend(1), refit=False)
    rerun = trials(url, "ckpt")[-1]
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["retry_of"] == first.number
    assert rerun.user_attrs["resumed_from_epoch"] in (4, 6)  # the stop lands at the next epoch boundary or so
    assert rerun.user_attrs["fold_scores"] == plain.user_attrs["fold_scores"]
    assert rerun.intermediate_values == plain.intermediate_values
    assert os.listdir(fast_dir / "stop.db.artifacts") == []


def test_a_rerun_of_a_trainable_goes_on_from_its_checkpoint_and_scores_as_an_uninterrupted_run(fast_dir) -> None:
    """A trainable that calls ctx.save_checkpoint / ctx.load_checkpoint: the orchestrator's plan reaches
    it as the built-in loop's, and the re-run's scores and per-epoch values are the uninterrupted run's."""
    spec = {**{k: v for k, v in SPEC.items() if k != "model"}, "name": "tckpt",
            "trainable": "tests.search.trainables:resumable",
            "training": {"max_epochs": 8, "patience": 10}, "checkpoint": {"every_epochs": 2}}
    plain_url = f"sqlite:///{fast_dir / 'plain.db'}"
    run_study({**spec, "checkpoint": {}}, storage=plain_url, backend=LocalBackend(1), refit=False)
    plain = trials(plain_url, "tckpt")[0]
    url = f"sqlite:///{fast_dir / 'tckpt.db'}"
    seen: list[TrialJob] = []
    log = MessageLog()
    messages = log.messages

    run_study(spec, storage=url, backend=LocalBackend(1), refit=False, worker_fn=dies_once_at(5, seen),
              callbacks=log)
    first, rerun = trials(url, "tckpt")
    assert first.state.name == "FAIL" and rerun.state.name == "COMPLETE"
    assert seen[1].checkpoint.artifact_id == seen[0].checkpoint.artifact_id and seen[1].checkpoint.rerun
    assert rerun.user_attrs["resumed_from_epoch"] == 4 and rerun.user_attrs["train_path"] == "trainable"
    assert "trial 1 went on from its checkpoint at epoch 4" in messages
    assert rerun.user_attrs["fold_scores"] == plain.user_attrs["fold_scores"]
    assert rerun.user_attrs["curves"] == plain.user_attrs["curves"]
    assert rerun.intermediate_values == plain.intermediate_values and len(rerun.intermediate_values) == 8
    assert os.listdir(fast_dir / "tckpt.db.artifacts") == []  # finished: deleted


def failing_saves_from(epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every checkpoint save of epoch ``epoch`` or later fails, as a store that became unreachable
    (deterministic: no race with the background writer); retries do not wait."""
    import errno

    from trials import _checkpoint

    real = _checkpoint.write_checkpoint

    def flaky(directory, artifact_id, at, fingerprint, state):  # type: ignore[no-untyped-def]
        if at >= epoch:
            raise OSError(errno.EACCES, "Permission denied")
        return real(directory, artifact_id, at, fingerprint, state)

    monkeypatch.setattr(_checkpoint, "write_checkpoint", flaky)
    monkeypatch.setattr(_checkpoint, "_WRITE_BACKOFF_S", 0.0)


def test_a_store_unreachable_mid_study_stops_it_resumable_and_the_resume_goes_on(fast_dir, monkeypatch) -> None:
    """A checkpoint the store refuses after its retries stops the study (ArtifactStoreError: exit 3); the
    trial is recorded FAIL with one re-run queued, keeps its last checkpoint, and the resume goes on from
    it to the uninterrupted run's scores: nothing lost, nothing run twice."""
    plain_url = f"sqlite:///{fast_dir / 'plain.db'}"
    run_study({**SPEC, "checkpoint": {}}, storage=plain_url, backend=LocalBackend(1), refit=False)
    plain = trials(plain_url, "ckpt")[0]
    url = f"sqlite:///{fast_dir / 'gone.db'}"
    failing_saves_from(6, monkeypatch)
    with pytest.raises(st.StorageError) as err:
        run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False)
    art = fast_dir / "gone.db.artifacts"
    text = str(err.value)
    assert type(err.value).__name__ == "ArtifactStoreError"
    assert "cannot write the checkpoint" in text and "Permission denied" in text and "after 3 attempts" in text
    assert repr(str(art)) in text and "hpsearch resume ckpt" in text
    first, queued = trials(url, "ckpt")  # the re-run is queued, not run
    assert first.state.name == "FAIL" and first.user_attrs["will_retry"] is True
    assert "the artifact store failed" in first.user_attrs["fail_reason"]
    assert queued.state.name == "WAITING" and queued.user_attrs["retry_of"] == 0
    assert queued.user_attrs["checkpoint"] == first.user_attrs["checkpoint"]
    assert os.listdir(art) == [first.user_attrs["checkpoint"]]  # the checkpoint of epoch 4, kept
    monkeypatch.undo()  # the store is back
    res = search.resume_study("ckpt", storage=url, backend=LocalBackend(1), refit=False)
    assert res.done == 1
    _, rerun = trials(url, "ckpt")
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["resumed_from_epoch"] == 4
    assert rerun.user_attrs["fold_scores"] == plain.user_attrs["fold_scores"]
    assert rerun.intermediate_values == plain.intermediate_values
    assert os.listdir(art) == []


def test_a_store_unreachable_mid_study_exits_3_naming_the_directory_and_the_fix(fast_dir, monkeypatch) -> None:
    monkeypatch.setattr("search._api.make_backend", lambda spec, address=None: LocalBackend(1))
    study = fast_dir / "study.yaml"
    study.write_text(yaml.safe_dump(SPEC))
    url = f"sqlite:///{fast_dir / 'cli.db'}"
    arts = fast_dir / "arts"
    failing_saves_from(4, monkeypatch)
    code, _, err = invoke("run", str(study), "--storage", url, "--artifacts", str(arts), "-q")
    assert code == 3, err
    assert "hpsearch: error: trial 0: cannot write the checkpoint" in err and str(arts) in err
    assert "Fix the artifact directory" in err and "hpsearch resume ckpt" in err and "Traceback" not in err
    monkeypatch.undo()  # the store is back: `hpsearch resume` finishes the study
    monkeypatch.setattr("search._api.make_backend", lambda spec, address=None: LocalBackend(1))
    code, _, err = invoke("resume", "ckpt", "--storage", url, "--artifacts", str(arts), "-q")
    assert code == 0, err
    assert [t.state.name for t in trials(url, "ckpt")] == ["FAIL", "COMPLETE"]


def test_a_checkpoint_left_when_checkpoints_are_turned_off_is_deleted_when_its_trial_finishes(fast_dir) -> None:
    """A trial stopped with a checkpoint on disk, then resumed from a study file without checkpoint keys
    (and no refit): the re-run starts fresh, and its finish deletes the earlier run's file all the same."""
    url = f"sqlite:///{fast_dir / 'off-later.db'}"
    first = _ctrl_c_at_epoch_5(url)
    art = fast_dir / "off-later.db.artifacts"
    assert os.listdir(art) == [first.user_attrs["checkpoint"]]
    seen: list[TrialJob] = []
    run_study({**SPEC, "checkpoint": {}}, storage=url, backend=LocalBackend(1), refit=False,
              worker_fn=dies_once_at(99, seen))
    rerun = trials(url, "ckpt")[-1]
    assert [j.checkpoint for j in seen] == [None]  # checkpoints off: not used, not written
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["resumed_from_epoch"] is None
    assert rerun.user_attrs["checkpoint"] == first.user_attrs["checkpoint"]  # the re-run holds it ...
    assert os.listdir(art) == []  # ... and its finish deleted it


def test_a_trial_that_fails_for_good_has_its_checkpoint_deleted(fast_dir) -> None:
    url = f"sqlite:///{fast_dir / 'failed.db'}"
    seen: list[TrialJob] = []
    with pytest.raises(search.NoTrialCompleted):
        run_study({**SPEC, "retries": {"max_retries": 0}}, storage=url, backend=LocalBackend(1), refit=False,
                  worker_fn=dies_once_at(5, seen))
    (failed,) = trials(url, "ckpt")
    assert failed.state.name == "FAIL" and "will_retry" not in failed.user_attrs and failed.user_attrs["checkpoint"]
    assert seen[0].checkpoint is not None and os.listdir(fast_dir / "failed.db.artifacts") == []


def test_keep_best_keeps_the_best_trials_checkpoint_at_its_end_and_only_that_one(fast_dir) -> None:
    """checkpoint.keep_best: the best trial's checkpoint stays (saved once more when the trial ended: its
    epoch is the trial's last), the study records where, a better trial's replaces it, and no other
    finished trial's file is left: disk use is one trial's plus the trials in flight."""
    url = f"sqlite:///{fast_dir / 'keep.db'}"
    art = fast_dir / "keep.db.artifacts"
    spec = {**SPEC, "space": {"lr": {"values": [0.0005, 0.05, 0.002]}},
            "training": {**SPEC["training"], "max_epochs": 5}, "checkpoint": {"every_epochs": 2, "keep_best": True}}
    left: list[list[str]] = []

    class Watch(search.Callbacks):
        def on_trial_end(self, trial, done, budget):  # type: ignore[no-untyped-def]
            left.append(sorted(n for n in os.listdir(art) if not n.startswith(".")))

    run_study(spec, storage=url, backend=LocalBackend(1), refit=False, callbacks=Watch())
    study = optuna.load_study(study_name="ckpt", storage=url)
    best = study.best_trial
    kept = study.user_attrs["hpsearch_kept_checkpoint"]
    assert kept == {"trial": best.number, "checkpoint": best.user_attrs["checkpoint"], "directory": str(art)}
    assert os.listdir(art) == [kept["checkpoint"]]
    assert all(len(names) == 1 for names in left), left  # never more than the best so far
    with open(art / kept["checkpoint"], "rb") as f:
        assert f.readline() == b"hpsearch-checkpoint/1\n"
        assert json.loads(f.readline())["epoch"] == best.user_attrs["epochs"]  # the trial's end
    code, out, err = invoke("show", "ckpt", "--storage", url, "-o", "json")
    assert code == 0, err
    shown = json.loads(out)["checkpoints"]
    assert shown["kept"] == kept and shown["files"] == 1 and shown["bytes"] == os.path.getsize(art / kept["checkpoint"])
    code, out, _ = invoke("show", "ckpt", "--storage", url)
    assert f"kept (checkpoint.keep_best): the checkpoint of trial {best.number}" in out
    # the kept fold models, rebuilt: each scores its fold's validation rows as the trial did
    import torch

    from trials import load_dataset

    parsed = search.parse_spec(spec)
    data = load_dataset(parsed.data, parsed.cv, parsed.seed, parsed.task)
    models = search.load_fold_models("ckpt", storage=url)
    assert len(models) == len(data.folds) == 2 and not any(m.training for m in models)
    for model, (_, val), score in zip(models, data.folds, best.user_attrs["fold_scores"]):
        with torch.no_grad():
            hits = (model(torch.from_numpy(data.X[val])).argmax(1).numpy() == data.y[val]).mean()
        assert hits == pytest.approx(score, abs=1e-6)  # the same count of rows (scores are float32)
    other = f"sqlite:///{fast_dir / 'nokeep.db'}"
    run_study({**spec, "checkpoint": {"every_epochs": 2}, "space": {"lr": {"values": [0.05]}}}, storage=other,
              backend=LocalBackend(1), refit=False)
    with pytest.raises(search.UsageError, match=r"keeps no fold models: set checkpoint\.keep_best"):
        search.load_fold_models("ckpt", storage=other)


def test_checkpoints_a_stopped_run_left_for_finished_trials_are_deleted_on_resume(fast_dir) -> None:
    """A kill between recording a trial finished and deleting its checkpoint (or between recording a new
    kept checkpoint and deleting the previous best's) leaves a file; the next run of the study deletes it,
    keeps the kept one, and leaves alone a file that is no trial's of this study (a store may be shared)."""
    url = f"sqlite:///{fast_dir / 'sweep.db'}"
    art = fast_dir / "sweep.db.artifacts"
    spec = {**SPEC, "space": {"lr": {"values": [0.0005, 0.05]}}, "training": {**SPEC["training"], "max_epochs": 3},
            "checkpoint": {"every_epochs": 2, "keep_best": True}}
    run_study(spec, storage=url, backend=LocalBackend(1), refit=False)
    study = optuna.load_study(study_name="ckpt", storage=url)
    kept = study.user_attrs["hpsearch_kept_checkpoint"]["checkpoint"]
    (other,) = [t.user_attrs["checkpoint"] for t in study.trials if t.user_attrs["checkpoint"] != kept]
    assert os.listdir(art) == [kept]
    foreign = "checkpoint-" + "0" * 32  # another study's, in the same store
    for name in (other, f"{other}-folds-1", f".{other}.tmp-1-2", foreign):  # what the kills left
        (art / name).write_bytes(b"left")
    res = search.resume_study("ckpt", storage=url, backend=LocalBackend(1), refit=False)  # finished: no trial runs
    assert sorted(os.listdir(art)) == sorted([kept, foreign])
    assert f"deleted the checkpoints of 1 finished trial(s) that a stopped run left in {art} (0.0 MB)" in res.messages
    res = search.resume_study("ckpt", storage=url, backend=LocalBackend(1), refit=False)
    assert not any("deleted the checkpoints" in m for m in res.messages)  # nothing left to delete: no message


def test_the_sweep_spares_the_checkpoints_of_trials_still_to_run(tmp_path) -> None:
    """What a run deletes at its start: finished trials' checkpoints only; not a checkpoint that a trial
    still running or waiting (a queued re-run) holds, even when a finished member of its stack shares it."""
    from optuna.trial import TrialState, create_trial

    from search._orchestrator import sweep_checkpoints

    ids = [f"checkpoint-{i:032x}" for i in range(4)]
    for cid in ids:
        (tmp_path / cid).write_bytes(b"12345")
    made = [create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                         user_attrs={"checkpoint": cid})
            for state, cid in [(TrialState.COMPLETE, ids[0]), (TrialState.FAIL, ids[1]), (TrialState.WAITING, ids[1]),
                               (TrialState.COMPLETE, ids[2]), (TrialState.RUNNING, ids[2]),
                               (TrialState.COMPLETE, ids[3])]]
    said = sweep_checkpoints(made, str(tmp_path), kept=ids[3])
    assert said == f"deleted the checkpoints of 1 finished trial(s) that a stopped run left in {tmp_path} (0.0 MB)"
    assert sorted(os.listdir(tmp_path)) == ids[1:]
    assert sweep_checkpoints(made, None, None) is None
