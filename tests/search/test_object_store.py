"""An S3 artifact store (``--artifacts s3://BUCKET/PREFIX``), against a real S3 endpoint (moto's server):
checkpoints, the saved model, the dashboard, and the store's faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import optuna
import pytest
import yaml

import search
import storage as st
from search import LocalBackend, TrialJob, load_model, load_model_file, run_study
from search.inspect import start_dashboard
from tests.conftest import s3_settings
from trials import _checkpoint

from .fakes import MessageLog
from .test_checkpoints import SPEC, dies_once_at, invoke, trials
from .test_saved_model import scores_on_the_test_split

pytestmark = pytest.mark.usefixtures("quiet_optuna")


def keys(bucket: str, prefix: str = "") -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", ()))


@pytest.fixture
def plain(fast_dir: Path) -> optuna.trial.FrozenTrial:
    """The uninterrupted run of SPEC's trial (no checkpoints)."""
    url = f"sqlite:///{fast_dir / 'plain.db'}"
    run_study({**SPEC, "checkpoint": {}}, storage=url, backend=LocalBackend(1), refit=False)
    return trials(url, "ckpt")[0]


def test_a_study_on_s3_goes_on_from_its_checkpoint_and_saves_a_model_that_loads(fast_dir, s3_bucket, plain,
                                                                                monkeypatch) -> None:
    uri = f"s3://{s3_bucket}/team/run-1"
    url = f"sqlite:///{fast_dir / 'ckpt.db'}"
    seen: list[TrialJob] = []
    log = MessageLog()
    messages = log.messages

    res = run_study(SPEC, storage=url, backend=LocalBackend(1), worker_fn=dies_once_at(5, seen), callbacks=log,
                    artifacts=uri)
    first, rerun = trials(url, "ckpt")
    assert seen[0].checkpoint.directory == f"{uri}/"  # the workers write to the bucket, not a directory
    assert first.state.name == "FAIL" and rerun.user_attrs["resumed_from_epoch"] == 4
    assert "trial 1 went on from its checkpoint at epoch 4" in messages
    assert rerun.user_attrs["fold_scores"] == plain.user_attrs["fold_scores"]
    assert rerun.intermediate_values == plain.intermediate_values
    # the finished trial's checkpoint is deleted; the model stays, under the prefix
    artifact = res.test_result["model_artifact"]
    assert keys(s3_bucket) == [f"team/run-1/{artifact}"]
    assert f"saved the model of trial 1 to {uri}/ (artifact {artifact})" in messages

    assert res.test_result["model_store"] == f"{uri}/"  # the database records where the model is
    model = load_model("ckpt", storage=url)  # so no --artifacts is needed to read it
    acc, _ = scores_on_the_test_split(model, SPEC)
    assert scores_on_the_test_split(load_model("ckpt", storage=url, artifacts=uri), SPEC)[0] == acc
    assert acc == pytest.approx(res.test_result["test_accuracy"], abs=1e-6)
    out = fast_dir / "m.pt"
    code, _, err = invoke("export-model", "ckpt", "--storage", url, "--artifacts", uri, "--out", str(out))
    assert code == 0, err
    assert scores_on_the_test_split(load_model_file(out), SPEC)[0] == acc

    monkeypatch.delenv("HPSEARCH_ARTIFACTS", raising=False)
    assert optuna.load_study(study_name="ckpt", storage=url).user_attrs["hpsearch_artifact_store"] == f"{uri}/"
    code, shown, err = invoke("show", "ckpt", "--storage", url, "-o", "json")
    assert code == 0, err
    assert json.loads(shown)["checkpoints"] == {"directory": f"{uri}/", "files": 0, "bytes": 0, "kept": None}

    rdb = st.create_storage(url)
    with start_dashboard(url, port=0, artifacts=uri) as server:  # optuna-dashboard serves it from the bucket
        import urllib.request

        sid, tid = rdb.get_study_id_from_name("ckpt"), st.trial_id(rerun)
        with urllib.request.urlopen(f"{server.url}/artifacts/{sid}/{tid}/{artifact}", timeout=30) as r:
            assert r.read() == boto3.client("s3").get_object(Bucket=s3_bucket,
                                                             Key=f"team/run-1/{artifact}")["Body"].read()


def test_a_bucket_that_is_missing_or_misnamed_is_refused_before_any_trial(fast_dir, s3_bucket) -> None:
    study = fast_dir / "study.yaml"
    study.write_text(yaml.safe_dump(SPEC))
    url = f"sqlite:///{fast_dir / 'x.db'}"
    code, _, err = invoke("run", str(study), "--storage", url, "--artifacts", "s3://no-such-bucket-here/runs", "-q")
    assert code == 2, err
    assert "the artifact store 's3://no-such-bucket-here/runs/' cannot be written (NoSuchBucket" in err
    assert "Check that the bucket exists" in err and "Traceback" not in err
    assert optuna.get_all_study_names(url) == []  # nothing ran, nothing was written
    code, _, err = invoke("run", str(study), "--storage", url, "--artifacts", "s3://My_Bucket/runs", "-q")
    assert code == 2 and "'My_Bucket' is not an S3 bucket name" in err
    assert keys(s3_bucket) == []


def test_s3_without_boto3_names_the_extra_to_install(monkeypatch) -> None:
    import importlib.util

    from search._artifacts import resolve_artifacts

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a))
    with pytest.raises(search.UsageError, match=r"needs boto3, which is not installed; pip install 'hpsearch\[s3\]'"):
        resolve_artifacts("sqlite:///x.db", "s3://bucket-x/p")
    assert resolve_artifacts("sqlite:///x.db", "/tmp/x") == "/tmp/x"  # a directory needs no boto3


@pytest.fixture
def stoppable_s3(monkeypatch) -> Any:
    """An S3 endpoint of this test's own, that the test can take down and bring back (its objects stay)."""
    from moto.server import ThreadedMotoServer

    class Endpoint:
        def __init__(self) -> None:
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            self.port = self.server.get_host_and_port()[1]

        def down(self) -> None:
            self.server.stop()

        def up(self) -> None:
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()

    end = Endpoint()
    for key, value in s3_settings(end.server, max_attempts=1).items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="flaky-store")
    yield end
    end.server.stop()


def test_an_endpoint_lost_mid_study_stops_it_resumable_and_the_resume_goes_on(fast_dir, plain, stoppable_s3,
                                                                              monkeypatch) -> None:
    """The endpoint goes down after epoch 5: the next save fails its attempts, the study stops (exit 3 in
    the CLI) with the trial's re-run queued; once the endpoint is back, the resume goes on from the last
    checkpoint that was written, to the uninterrupted run's scores."""
    monkeypatch.setattr(_checkpoint, "_WRITE_BACKOFF_S", 0.0)
    uri = "s3://flaky-store/ckpt"
    url = f"sqlite:///{fast_dir / 'gone.db'}"

    def worker(data, settings, job, report):  # type: ignore[no-untyped-def]
        def cut(r):  # type: ignore[no-untyped-def]
            if job.attempt == 0 and r.epoch == 5:
                stoppable_s3.down()
            return report(r)

        return search.train_job(data, settings, job, cut)

    with pytest.raises(st.StorageError) as err:
        run_study(SPEC, storage=url, backend=LocalBackend(1), refit=False, worker_fn=worker, artifacts=uri)
    text = str(err.value)
    assert type(err.value).__name__ == "ArtifactStoreError"
    assert f"cannot write the checkpoint {uri}/" in text and "Could not connect to the endpoint" in text
    assert "Fix the artifact store 's3://flaky-store/ckpt/' (the endpoint, the bucket, the AWS credentials" in text
    first, queued = trials(url, "ckpt")
    assert first.state.name == "FAIL" and first.user_attrs["will_retry"] is True
    assert queued.state.name == "WAITING" and queued.user_attrs["checkpoint"] == first.user_attrs["checkpoint"]

    stoppable_s3.up()
    assert keys("flaky-store") == [f"ckpt/{first.user_attrs['checkpoint']}"]  # the last whole checkpoint
    assert search.resume_study("ckpt", storage=url, backend=LocalBackend(1), refit=False,
                               artifacts=uri).done == 1
    rerun = trials(url, "ckpt")[1]
    # epoch 4's save may have been in flight when the endpoint went: the checkpoint is epoch 4's or 2's
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs["resumed_from_epoch"] in (2, 4)
    assert rerun.user_attrs["fold_scores"] == plain.user_attrs["fold_scores"]
    assert rerun.intermediate_values == plain.intermediate_values
    assert keys("flaky-store") == []

