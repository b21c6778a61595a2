"""A real process killed (SIGKILL) in the middle of a long trial, then resumed: the trial goes on from
its checkpoint and scores what an uninterrupted run scores (a trial alone, a stack of two, a trial
whose checkpoints go to an S3 bucket).

Slow: the study runs as ``hpsearch run`` in a subprocess (tests/search/study_proc.py: epochs slowed to
0.25 s) on the module's local Ray, as tests/search/test_resume.py's real-process tests do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import torch

from search import parse_spec
from tests.conftest import s3_settings
from trials import load_dataset, run_trial, trial_seed

from .resume_checks import StudyProc
from .test_resume import PROC_ENV, invoke, local_ray, write_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quiet_optuna")]

SPEC: dict[str, Any] = {
    "name": "ckpt-kill", "strategy": "grid", "seed": 5,
    "space": {"lr": {"values": [0.05]}},
    "data": {"source": "digits"}, "model": {"hidden": [32], "dropout": 0.2},
    "training": {"max_epochs": 16, "patience": 30, "optimizer": "adam"}, "cv": {"folds": 2},
    "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
    "checkpoint": {"every_epochs": 2},
}


@pytest.fixture(scope="module")
def ray_here(_moto_server: object) -> Iterator[str]:
    """One local Ray for the module (test_resume's), whose workers also inherit the AWS settings of the
    session's S3 endpoint (moto's server), so that a trial's checkpoints can go to a bucket there."""
    settings = s3_settings(_moto_server)
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        with local_ray() as address:
            yield address
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def epochs_reported(url: str, name: str) -> int:
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    return max((len(t.intermediate_values) for t in trials), default=0)


def run_until_killed(tmp_path: Any, spec: dict[str, Any], ray_here: str, *args: str) -> str:
    """``hpsearch run`` of ``spec`` (more ``args``) on the module's Ray, SIGKILLed once 7 epochs are
    reported; returns its storage URL."""
    url = f"sqlite:///{tmp_path}/study.db"
    study_file = write_spec(tmp_path / "study.yaml", spec)
    proc = StudyProc(["run", study_file, "--storage", url, "-q", "--address", ray_here, "--allow-sqlite", *args],
                     env=PROC_ENV)
    try:
        proc.wait_for(lambda: epochs_reported(url, spec["name"]) >= 7, what="7 epochs")
        proc.proc.kill()
        proc.proc.wait()
    finally:
        proc.cleanup()
    return url


def test_sigkill_mid_trial_then_resume_goes_on_from_the_checkpoint(tmp_path, monkeypatch, ray_here) -> None:
    url = run_until_killed(tmp_path, SPEC, ray_here)
    art = tmp_path / "study.db.artifacts"
    (trial,) = optuna.load_study(study_name=SPEC["name"], storage=url).get_trials()
    assert trial.state.name == "RUNNING" and len(trial.intermediate_values) < 16, "killed mid-trial"
    with open(art / trial.user_attrs["checkpoint"], "rb") as f:  # what the worker left on disk: its header
        assert f.readline() == b"hpsearch-checkpoint/1\n"
        saved_epoch = json.loads(f.readline())["epoch"]
    assert saved_epoch >= 6 and saved_epoch % 2 == 0

    monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "600")  # taken over by the same-host rule: its pid is gone
    code, _, err = invoke("resume", SPEC["name"], "--storage", url, "-q", "--address", ray_here, "--allow-sqlite")
    assert code == 0, err
    assert f"went on from its checkpoint at epoch {saved_epoch}" in err
    first, rerun = optuna.load_study(study_name=SPEC["name"], storage=url).get_trials()
    assert first.state.name == "FAIL" and "orchestrator stopped" in first.user_attrs["fail_reason"]
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["retry_of"] == 0
    assert rerun.user_attrs["resumed_from_epoch"] == saved_epoch
    assert sorted(rerun.intermediate_values) == list(range(1, 17))

    plain = _plain()  # the uninterrupted run's
    assert rerun.user_attrs["fold_scores"] == plain.scores(parse_spec(SPEC).metric)
    assert rerun.user_attrs["fold_epochs"] == [f.best_epoch for f in plain.folds]
    assert [k for k in os.listdir(art) if k.startswith("checkpoint-")] == []  # finished: deleted


# two configurations trained as one stack (resources.stack_trials): they differ in lr only
STACK_SPEC: dict[str, Any] = {**SPEC, "name": "ckpt-kill-stack", "space": {"lr": {"values": [0.05, 0.01]}},
                              "resources": {"cpus_per_trial": 1, "max_concurrent": 2, "stack_trials": 2}}


def test_sigkill_mid_stack_then_resume_goes_on_from_the_stacks_checkpoint(tmp_path, monkeypatch, ray_here) -> None:
    """The orchestrator killed while a stack of two trials trains: the resume recovers both (``_recover``)
    and runs their re-runs as that stack again, from its one checkpoint, to the uninterrupted stack's scores."""
    from trials import run_trials

    url = run_until_killed(tmp_path, STACK_SPEC, ray_here)
    art = tmp_path / "study.db.artifacts"
    name = STACK_SPEC["name"]
    killed = optuna.load_study(study_name=name, storage=url).get_trials()
    assert [t.state.name for t in killed] == ["RUNNING", "RUNNING"], "killed mid-stack"
    (ckpt,) = {t.user_attrs["checkpoint"] for t in killed}  # one file for the stack
    assert sorted(t.user_attrs["checkpoint_slot"] for t in killed) == [[0, 2], [1, 2]]
    with open(art / ckpt, "rb") as f:
        assert f.readline() == b"hpsearch-checkpoint/1\n"
        saved_epoch = json.loads(f.readline())["epoch"]
    assert saved_epoch >= 6 and saved_epoch % 2 == 0

    monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "600")  # taken over by the same-host rule: its pid is gone
    code, _, err = invoke("resume", name, "--storage", url, "-q", "--address", ray_here, "--allow-sqlite")
    assert code == 0, err
    reruns = {t.params["lr"]: t for t in optuna.load_study(study_name=name, storage=url).get_trials()
              if t.state.name == "COMPLETE"}
    assert len(reruns) == 2 and all(t.user_attrs["stack_size"] == 2 for t in reruns.values())
    assert {t.user_attrs["resumed_from_epoch"] for t in reruns.values()} == {saved_epoch}
    assert {t.user_attrs["checkpoint"] for t in reruns.values()} == {ckpt}

    # the uninterrupted stack, here (one thread, as on the worker)
    spec = parse_spec(STACK_SPEC)
    data = load_dataset(spec.data, spec.cv, spec.seed)
    order = sorted(killed, key=lambda t: t.user_attrs["checkpoint_slot"][0])  # the stack's order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = run_trials(data, [dict(t.params) for t in order], spec.settings,
                           seeds=[trial_seed(spec.seed, t.number) for t in order])
    finally:
        torch.set_num_threads(threads)
    for t, result in zip(order, plain):
        assert reruns[t.params["lr"]].user_attrs["fold_scores"] == result.scores(spec.metric)
    assert not [n for n in os.listdir(art) if n.startswith("checkpoint-")]  # deleted: only the model is left


def test_sigkill_mid_trial_on_s3_then_resume_goes_on_from_the_bucket(tmp_path, monkeypatch, ray_here,
                                                                     s3_bucket) -> None:
    """``hpsearch run --artifacts s3://...`` killed mid-trial: its Ray worker wrote the checkpoints to the
    bucket (boto3 in the worker, from the AWS settings it inherits); the resume goes on from the object
    and ends with the uninterrupted run's fold scores, then deletes it (the refit's model stays)."""
    import boto3

    uri = f"s3://{s3_bucket}/kill"
    url = run_until_killed(tmp_path, SPEC, ray_here, "--artifacts", uri)
    (trial,) = optuna.load_study(study_name=SPEC["name"], storage=url).get_trials()
    assert trial.state.name == "RUNNING", "killed mid-trial"
    s3 = boto3.client("s3")
    key = f"kill/{trial.user_attrs['checkpoint']}"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]] == [key]
    body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"]
    assert body.readline() == b"hpsearch-checkpoint/1\n"
    saved_epoch = json.loads(body.readline())["epoch"]
    assert saved_epoch >= 6 and saved_epoch % 2 == 0

    monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "600")  # taken over by the same-host rule: its pid is gone
    code, _, err = invoke("resume", SPEC["name"], "--storage", url, "-q", "--artifacts", uri, "--address", ray_here,
                          "--allow-sqlite")
    assert code == 0, err
    assert f"went on from its checkpoint at epoch {saved_epoch}" in err
    study = optuna.load_study(study_name=SPEC["name"], storage=url)
    rerun = study.get_trials()[1]
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["resumed_from_epoch"] == saved_epoch
    assert rerun.user_attrs["fold_scores"] == _plain().scores(parse_spec(SPEC).metric)
    model = study.user_attrs["test_result"]["model_artifact"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]] == [f"kill/{model}"]


def _plain() -> Any:
    """SPEC's trial uninterrupted, here (one thread, as on the worker): its TrialResult."""
    spec = parse_spec(SPEC)
    data = load_dataset(spec.data, spec.cv, spec.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_trial(data, {"lr": 0.05}, spec.settings, seed=trial_seed(spec.seed, 0))
    finally:
        torch.set_num_threads(threads)
