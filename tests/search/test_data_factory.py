"""A study on the user's own data (``data.source: python``) with grouped folds, end to end.

In process (LocalBackend): a study file naming a factory, the example, a notebook's callable and
its resume rules, and a factory that fails before any trial runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from search import LocalBackend, SpecError, load_spec, parse_spec, resume_study, run_study
from search.cli import main
from trials import CVSpec, DataError, load_dataset

from .resume_checks import ROOT, assert_one_line_error, check_invariants, snapshot, study_exists, trials_of


def _spec(factory: Any, **kw: Any) -> dict[str, Any]:
    spec = {
        "name": "own", "strategy": "random", "n_trials": 2, "seed": 1, "metric": "val_f1_macro",
        "space": {"lr": {"type": "float", "low": 0.02, "high": 0.1, "log": True}},
        "data": {"source": "python", "factory": factory}, "model": {"hidden": [8]},
        "training": {"max_epochs": 2}, "cv": {"folds": 3, "groups": "groups"},
    }
    spec.update(kw)
    return spec


def _notebook_data() -> Any:
    """A closure, as a notebook cell defines one: importable by no path."""
    calls: list[int] = []

    def load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append(1)
        rng = np.random.default_rng(0)
        user = np.arange(150) % 30
        return rng.normal(size=(150, 5)) + (user % 3)[:, None], user % 3, user

    load.calls = calls  # type: ignore[attr-defined]
    return load


def test_a_study_file_with_a_data_factory_and_groups_runs_to_a_test_score(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec("tests.trials.data_factories:dataset")), encoding="utf-8")
    spec = load_spec(path)
    res = run_study(spec, storage=f"sqlite:///{tmp_path}/s.db", backend=LocalBackend(1))
    assert res.done == 2 and res.best is not None and len(res.best.fold_scores) == 3
    assert res.test_result is not None and "test_f1_macro" in res.test_result
    # the folds the trials were scored on keep every user whole
    ds = load_dataset(spec.data, spec.cv, spec.seed)
    for train, val in ds.folds:
        assert not set(ds.groups[train]) & set(ds.groups[val])


def test_the_patients_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/patients.yaml (CI runs it with Ray: `make examples`), here at a budget of 2."""
    monkeypatch.syspath_prepend(str(ROOT))
    spec = load_spec(ROOT / "examples" / "patients.yaml", n_trials=2)
    res = run_study(spec, storage=f"sqlite:///{tmp_path}/p.db", backend=LocalBackend(1))
    assert res.done == 2 and res.test_result is not None and 0.0 <= res.test_result["test_auc"] <= 1.0
    ds = load_dataset(spec.data, spec.cv, spec.seed)
    assert ds.groups is not None and len(np.unique(ds.groups)) >= spec.cv.folds


def test_the_streamed_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/streamed.yaml (not in `make examples`), here at a budget of 2: its Dataset streams."""
    monkeypatch.syspath_prepend(str(ROOT))
    spec = load_spec(ROOT / "examples" / "streamed.yaml", n_trials=2)
    res = run_study(spec, storage=f"sqlite:///{tmp_path}/e.db", backend=LocalBackend(1))
    assert res.done == 2 and res.test_result is not None and res.test_result["test_accuracy"] > 0.5  # 4 classes
    assert load_dataset(spec.data, spec.cv, spec.seed).stream is not None


def test_a_callable_data_factory_runs_and_resumes_from_the_same_process(tmp_path: Path) -> None:
    """Running the same spec (with its callable) again continues the study; the CLI and resume_study,
    which have only the stored name, refuse with exit 2 and say how to continue."""
    url = f"sqlite:///{tmp_path}/s.db"
    load = _notebook_data()
    first = run_study(_spec(load), storage=url, backend=LocalBackend(1))
    assert first.done == 2 and first.test_result is not None
    assert len(load.calls) == 1  # called once, on the driver
    before = snapshot(trials_of(url, "own"))
    again = run_study(parse_spec(_spec(load)), storage=url, backend=LocalBackend(1), n_trials=4)
    assert again.done == 4
    check_invariants(trials_of(url, "own"), budget=4, seed=1, keys=("lr",), before=before)

    refused = r"data\.factory was the Python callable .*_notebook_data\.<locals>\.load, which a stored study names"
    with pytest.raises(DataError, match=refused + r" but cannot import; continue it from Python"):
        resume_study("own", storage=url, backend=LocalBackend(1), n_trials=6)
    r = CliRunner().invoke(main, ["resume", "own", "--n-trials", "6", "--storage", url], prog_name="hpsearch")
    assert r.exit_code == 2, r.output
    assert_one_line_error(r.stderr, "data.factory was the Python callable", "run_study")
    assert len(trials_of(url, "own")) == 4  # nothing ran
    # the stored study is still shown as any other
    r = CliRunner().invoke(main, ["best", "own", "--storage", url], prog_name="hpsearch")
    assert r.exit_code == 0, r.output


def test_changed_data_from_the_factory_is_refused_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    spec = _spec("tests.trials.data_factories:from_env", cv={"folds": 2})
    run_study(spec, storage=url, backend=LocalBackend(1))
    monkeypatch.setenv("HPSEARCH_TEST_DATA_SEED", "1")
    with pytest.raises(Exception, match=r"the data of study 'own' changed since its trials were scored \(data\.factory "
                                        r"'tests\.trials\.data_factories:from_env': fingerprint"):
        run_study(spec, storage=url, backend=LocalBackend(1), n_trials=3)


@pytest.mark.parametrize(
    ("factory", "cv", "message"),
    [
        ("tests.trials.data_factories:raises", {}, r"raised FileNotFoundError: /data/visits\.parquet"),
        ("tests.trials.data_factories:number", {}, r"returned a builtins\.int; expected \(X, y\)"),
        ("tests.trials.data_factories:tensors_with_groups", {"folds": 30, "groups": "groups"},
         r"has 1\d group\(s\) in cv\.groups 'groups', fewer than the 30 cv\.folds=30 needs"),
    ],
)
def test_a_data_factory_that_cannot_serve_leaves_no_study_behind(tmp_path: Path, factory: str, cv: dict[str, Any],
                                                                message: str) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    spec = _spec(factory, cv=cv or {"folds": 2})
    with pytest.raises(DataError, match=message):
        run_study(spec, storage=url, backend=LocalBackend(1))
    assert not study_exists(url, "own")


def test_a_study_file_setting_groups_for_a_source_without_them_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cv\.groups 'patient' is set, but data\.source 'digits' has no groups"):
        parse_spec(_spec(None, data={"source": "digits"}, cv={"folds": 3, "groups": "patient"}))
    assert CVSpec(groups="patient").groups == "patient"


def test_a_grouped_csv_study_predicts_on_rows_that_still_have_their_groups_column(tmp_path: Path) -> None:
    """The groups column is no feature: training leaves it out, and so does ``predict``."""
    import pandas as pd

    from search import predict

    rng = np.random.default_rng(0)
    patient = np.arange(120) % 20
    df = pd.DataFrame(rng.normal(size=(120, 3)), columns=["a", "b", "c"]).assign(label=patient % 2, patient=patient)
    df.to_csv(tmp_path / "v.csv", index=False)
    spec = _spec(None, data={"source": "csv", "path": str(tmp_path / "v.csv"), "target": "label"},
                 cv={"folds": 3, "groups": "patient"})
    url = f"sqlite:///{tmp_path}/s.db"
    run_study(spec, storage=url, backend=LocalBackend(1))
    got = predict("own", tmp_path / "v.csv", storage=url)
    assert len(got.labels) == 120 and set(got.labels) <= {0, 1}


def test_a_dataset_over_the_preload_limit_streams_through_a_study_to_a_test_score(tmp_path: Path) -> None:
    """A map-style Dataset over data.max_preload_mb: the driver reads it once (labels and groups), the
    trials and the refit stream its samples, and the run says so; with checkpoints it is refused first."""
    import optuna

    from search import Callbacks
    from tests.trials import data_factories as f

    said: list[str] = []

    class Said(Callbacks):
        def on_message(self, text: str) -> None:
            said.append(text)

    url = f"sqlite:///{tmp_path}/s.db"
    data = {"source": "python", "factory": "tests.trials.data_factories:counted", "max_preload_mb": 0.001}
    f.GETS.clear()
    res = run_study(_spec("x", data=data), storage=url, backend=LocalBackend(1), callbacks=Said())
    assert res.done == 2 and res.best is not None and len(res.best.fold_scores) == 3
    assert res.test_result is not None and 0.0 <= res.test_result["test_f1_macro"] <= 1.0
    assert 0 < res.test_result["train_rows"] < f.N  # every non-test sample, streamed
    assert any("more than data.max_preload_mb=0.001: it streams" in m for m in said)
    study = optuna.load_study(study_name="own", storage=url)
    assert {t.user_attrs["train_path"] for t in study.trials} == {"streamed"}
    with pytest.raises(DataError, match=r"checkpoint\.every_epochs and checkpoint\.every_s are not supported with "
                                        r"streamed data: remove the checkpoint section, or raise data\.max_preload_mb"):
        run_study(_spec("x", data=data, name="ck", checkpoint={"every_epochs": 1}), storage=url,
                  backend=LocalBackend(1), artifacts=str(tmp_path / "art"))
    assert not study_exists(url, "ck")
