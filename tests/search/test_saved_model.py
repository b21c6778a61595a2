"""The best model, saved to the artifact store by the final refit, loaded back, exported, predicting."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from optuna.artifacts import get_all_artifact_meta

import search
import storage as st
from search import SimulatedBackend, load_model, load_model_file, parse_spec, run_study
from search.cli import main
from tests.permissions import run_without_dac_override
from trials import load_dataset

SPEC = {
    "name": "saved",
    "strategy": "random",
    "n_trials": 2,
    "seed": 3,
    "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
    "data": {"source": "digits"},
    "model": {"hidden": [32]},
    "training": {"max_epochs": 3, "optimizer": "adam"},
    "cv": {"folds": 2},
}


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def scores_on_the_test_split(model: torch.nn.Module, spec: dict) -> tuple[float, float]:
    s = parse_spec(spec)
    data = load_dataset(s.data, s.cv, s.seed)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.X_test))  # raw features: the model scales them itself
    y = torch.from_numpy(data.y_test)
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


@pytest.fixture(scope="module")
def studied(tmp_path_factory) -> tuple[str, search.StudyResult]:
    """One real study (real training on the simulated backend's clock) with its saved model."""
    url = f"sqlite:///{tmp_path_factory.mktemp('saved') / 'study.db'}"
    return url, run_study(SPEC, storage=url, backend=SimulatedBackend(1))


def test_the_loaded_model_reproduces_the_stored_test_score(studied) -> None:
    url, res = studied
    model = load_model("saved", storage=url)
    assert not model.training and model.classes == list(range(10)) and model.input_shape == (64,)
    acc, loss = scores_on_the_test_split(model, SPEC)
    assert acc == pytest.approx(res.test_result["test_accuracy"], abs=1e-6)
    assert acc == pytest.approx(res.test_result["test_score"], abs=1e-6)
    assert loss == pytest.approx(res.test_result["test_loss"], abs=1e-5)
    assert model.metadata["params"] == res.best.params and model.metadata["spec"]["name"] == "saved"


def test_the_artifact_sits_beside_the_sqlite_file_and_on_the_best_trial(studied) -> None:
    url, res = studied
    db = url.removeprefix("sqlite:///")
    artifact = res.test_result["model_artifact"]
    assert os.path.isfile(os.path.join(db + ".artifacts", artifact))
    rdb = st.create_storage(url)
    best = optuna.load_study(study_name="saved", storage=rdb).best_trial
    metas = get_all_artifact_meta(best, storage=rdb)  # what optuna-dashboard lists
    assert [(m.artifact_id, m.filename) for m in metas] == [(artifact, f"model-trial-{best.number}.pt")]


def test_the_dashboard_serves_the_saved_model(studied) -> None:
    import urllib.request

    from search.inspect import start_dashboard

    url, res = studied
    rdb = st.create_storage(url)
    study = optuna.load_study(study_name="saved", storage=rdb)
    trial_id = next(st.trial_id(t) for t in study.trials if t.number == res.best.number)
    artifact = res.test_result["model_artifact"]
    db = url.removeprefix("sqlite:///")
    with start_dashboard(url, port=0) as server:
        sid = rdb.get_study_id_from_name("saved")
        with urllib.request.urlopen(f"{server.url}/artifacts/{sid}/{trial_id}/{artifact}", timeout=30) as r:
            assert r.read() == Path(db + ".artifacts", artifact).read_bytes()


def test_best_and_show_json_expose_the_refit_epochs_and_the_model(studied) -> None:
    import json

    url, res = studied
    code, out, _ = invoke("best", "saved", "--storage", url, "-o", "json")
    test = json.loads(out)["test_result"]
    assert code == 0 and test == res.test_result
    keys = {"refit_mode", "fold_epochs", "cv_epochs", "refit_epochs", "train_rows", "val_rows", "model_artifact"}
    assert keys <= set(test)
    code, out, _ = invoke("show", "saved", "--storage", url, "-o", "json")
    assert code == 0 and json.loads(out)["test_result"] == test


def test_export_model_writes_a_file_that_loads_to_the_same_model(studied, tmp_path) -> None:
    url, _ = studied
    out = tmp_path / "model.pt"
    code, _, err = invoke("export-model", "saved", "--out", str(out), "--storage", url)
    assert code == 0 and "search.load_model_file" in err
    a, b = load_model("saved", storage=url), load_model_file(out)
    x = torch.randn(5, 64) * 5 + 3
    assert torch.equal(a(x), b(x))


def test_predict_writes_one_row_per_input_row(studied, tmp_path) -> None:
    url, _ = studied
    s = parse_spec(SPEC)
    data = load_dataset(s.data, s.cv, s.seed)
    rows = data.X_test[:37]
    path = tmp_path / "new.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([[f"px{i}" for i in range(64)], *rows.tolist()])
    out = tmp_path / "preds.csv"
    code, _, err = invoke("predict", "saved", "--data", str(path), "--out", str(out), "--storage", url)
    assert code == 0, err
    got = list(csv.DictReader(out.open()))
    assert len(got) == 37 and [int(r["row"]) for r in got] == list(range(37))
    model = load_model("saved", storage=url)
    assert [int(r["prediction"]) for r in got] == model.predict(torch.from_numpy(rows))
    assert all(abs(sum(float(r[f"p_{c}"]) for c in range(10)) - 1) < 1e-5 for r in got)
    # to stdout without --out; a file of another width is refused naming both widths
    code, stdout, _ = invoke("predict", "saved", "--data", str(path), "--storage", url)
    assert code == 0 and len(list(csv.DictReader(io.StringIO(stdout)))) == 37
    np.savez(tmp_path / "narrow.npz", X=rows[:, :10])
    code, _, err = invoke("predict", "saved", "--data", str(tmp_path / "narrow.npz"), "--storage", url)
    assert code == 2 and "has 10 feature columns" in err and "takes 64" in err


def test_a_factory_model_is_rebuilt_through_its_factory(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "trials"))
    spec = {**SPEC, "name": "factory", "model": {"factory": "trials_factories:batchnorm_mlp"}}
    url = f"sqlite:///{tmp_path / 'f.db'}"
    res = run_study(spec, storage=url, backend=SimulatedBackend(1))
    model = load_model("factory", storage=url)
    assert isinstance(model.net[1], torch.nn.BatchNorm1d)  # the factory's own module, buffers loaded
    acc, loss = scores_on_the_test_split(model, spec)
    assert acc == pytest.approx(res.test_result["test_score"], abs=1e-6)
    assert loss == pytest.approx(res.test_result["test_loss"], abs=1e-5)


def test_an_artifact_directory_that_cannot_be_written_is_refused_before_any_trial(tmp_path) -> None:
    """A path under a regular file cannot be created, whoever runs the test (root included)."""
    (tmp_path / "a-file").write_text("x")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(SPEC))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    code, _, err = invoke("run", str(study), "--storage", url, "--artifacts", str(tmp_path / "a-file" / "models"),
                          "-q")
    assert code == 2 and "is not writable" in err and "--artifacts DIR" in err
    assert not (tmp_path / "r.db").exists() or st.study_names(st.create_engine(url, create=False)) == []


@pytest.mark.skipif(os.geteuid() == 0 and not os.environ.get("HPSEARCH_AS_NON_ROOT"),
                    reason="root writes a read-only directory: test_read_only_dir_as_root_without_dac_override")
def test_a_read_only_artifact_directory_is_refused(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(search.UsageError, match="is not writable"):
            run_study(SPEC, storage=f"sqlite:///{tmp_path / 'r.db'}", backend=SimulatedBackend(1), artifacts=str(ro))
    finally:
        ro.chmod(0o700)


@pytest.mark.slow
def test_read_only_dir_as_root_without_dac_override() -> None:
    """As tests/trials/test_trials_data.py does: root bypasses modes unless its capabilities are dropped."""
    out = run_without_dac_override(f"{__file__}::test_a_read_only_artifact_directory_is_refused",
                                   env={"HPSEARCH_AS_NON_ROOT": "1"})
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr


def test_on_postgresql_the_model_needs_an_artifact_directory(postgres_url, tmp_path, monkeypatch) -> None:
    """No file to stand beside: without --artifacts the run says what to pass; with it, the model loads
    from the store the refit recorded."""
    monkeypatch.delenv("HPSEARCH_ARTIFACTS", raising=False)
    res = run_study(SPEC, storage=postgres_url, backend=SimulatedBackend(1))
    assert "model_artifact" not in res.test_result
    assert any("pass --artifacts DIR" in m for m in res.messages)
    with pytest.raises(search.UsageError, match="has no saved model"):
        load_model("saved", storage=postgres_url)
    spec = {**SPEC, "name": "saved-pg"}
    res = run_study(spec, storage=postgres_url, backend=SimulatedBackend(1), artifacts=str(tmp_path / "models"))
    assert res.test_result["model_store"] == str(tmp_path / "models")  # the database records where it is
    acc, _ = scores_on_the_test_split(load_model("saved-pg", storage=postgres_url), spec)
    assert acc == pytest.approx(res.test_result["test_score"], abs=1e-6)
    monkeypatch.setenv("HPSEARCH_ARTIFACTS", str(tmp_path / "elsewhere"))  # the recorded store wins over it
    assert scores_on_the_test_split(load_model("saved-pg", storage=postgres_url), spec)[0] == acc
    with pytest.raises(search.UsageError, match="pass the store the study saved it to"):  # an explicit one does not
        load_model("saved-pg", storage=postgres_url, artifacts=str(tmp_path / "elsewhere"))


def test_a_store_that_fails_at_save_time_stops_the_run_and_the_resume_saves(tmp_path) -> None:
    """The directory was writable at start and is gone (a file in its place) when the model is saved:
    exit 3 before test_result is stored; once it is back, the resume refits and saves."""
    import shutil

    arts = tmp_path / "models"

    class BreakTheStore(search.Callbacks):
        def on_refit_start(self, number: int) -> None:
            shutil.rmtree(arts)
            arts.write_text("not a directory")

    url = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(st.StorageError, match="cannot write the best model") as err:
        run_study(SPEC, storage=url, backend=SimulatedBackend(1), artifacts=str(arts), callbacks=BreakTheStore())
    assert "hpsearch resume saved" in str(err.value)
    study = optuna.load_study(study_name="saved", storage=st.create_storage(url))
    assert "test_result" not in study.user_attrs and len(study.trials) == 2
    arts.unlink()
    res = search.resume_study("saved", storage=url, backend=SimulatedBackend(1), artifacts=str(arts))
    assert len(load_model("saved", storage=url, artifacts=str(arts)).metadata["feature_mean"]) == 64
    assert res.test_result["model_artifact"]
    assert len(optuna.load_study(study_name="saved", storage=st.create_storage(url)).trials) == 2  # no trial re-ran


def test_wrong_artifact_places_and_files_are_clear_errors(studied, tmp_path) -> None:
    url, _ = studied
    code, _, err = invoke("export-model", "saved", "--out", str(tmp_path / "m.pt"), "--storage", url,
                          "--artifacts", str(tmp_path / "elsewhere"))
    assert code == 2 and "is not in the artifact store" in err and "--artifacts DIR" in err
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(search.UsageError, match="is not an hpsearch model file"):
        load_model_file(tmp_path / "junk.pt")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(SPEC))
    code, _, err = invoke("run", str(study), "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--artifacts",
                          "gs://bucket/models", "-q")
    assert code == 2 and "'gs://bucket/models': unsupported scheme" in err and "s3://BUCKET[/PREFIX]" in err


def test_a_regression_model_predicts_in_the_targets_units(tmp_path: Path) -> None:
    """The network learns the standardized target; the saved model un-standardizes it, so its
    predictions on the test split reproduce the stored test MSE, and predict writes values."""
    spec = {**SPEC, "name": "reg", "task": "regression", "metric": "val_mse", "data": {"source": "csv",
            "path": str(tmp_path / "reg.csv"), "target": "y"}, "training": {"max_epochs": 3, "optimizer": "adam"}}
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = 50.0 + 20.0 * X[:, 0] - 10.0 * X[:, 1] + rng.normal(size=300)
    with open(tmp_path / "reg.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "d", "y"])
        w.writerows([[*row, t] for row, t in zip(X, y)])
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    res = run_study(spec, storage=url, backend=SimulatedBackend(1))
    model = load_model("reg", storage=url)
    assert model.target is not None and model.classes == []
    s = parse_spec(spec)
    data = load_dataset(s.data, s.cv, s.seed, s.task)
    with torch.no_grad():
        pred = model(torch.from_numpy(data.X_test))[:, 0].double().numpy()
    mse = float(np.mean((pred - data.y_test) ** 2))
    assert mse == pytest.approx(res.test_result["test_mse"], rel=1e-4)
    assert model.predict(torch.from_numpy(data.X_test[:3])) == pytest.approx(pred[:3].tolist(), rel=1e-5)
    code, _, err = invoke("predict", "reg", "--data", str(tmp_path / "reg.csv"), "--storage", url,
                          "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 300 and list(rows[0]) == ["row", "prediction"]
    assert abs(float(rows[0]["prediction"]) - 50.0) < 60  # the target's units, not standardized ones
