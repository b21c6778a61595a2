"""Studies on N-D samples: a CNN's study end to end (stacked folds, the saved model on raw images),
the fallback said once, ``data.shape`` refused before any study, and the scaling a stored study keeps."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner

import storage as st
from search import Callbacks, SimulatedBackend, load_model, parse_spec, run_study
from search._open import check_scaling
from search.cli import main
from storage import StudyAttr
from trials import DataError, load_dataset

SPEC = {
    "name": "cnn",
    "strategy": "random",
    "n_trials": 2,
    "seed": 3,
    "space": {"lr": {"type": "float", "low": 0.003, "high": 0.01, "log": True}},
    "data": {"source": "digits", "shape": [1, 8, 8], "scaling": "per_channel"},
    "model": {"factory": "trials_factories:cnn"},
    "training": {"max_epochs": 2, "optimizer": "adam"},
    "cv": {"folds": 2},
}


@pytest.fixture(autouse=True)
def _factories_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "trials"))


class _Messages(Callbacks):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_message(self, text: str) -> None:
        self.messages.append(text)


def test_a_cnn_study_stacks_its_folds_and_saves_a_model_that_takes_raw_images(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    said = _Messages()
    res = run_study(SPEC, storage=url, backend=SimulatedBackend(1), callbacks=said)
    trials = optuna.load_study(study_name="cnn", storage=st.create_storage(url)).get_trials()
    assert [t.user_attrs["train_path"] for t in trials] == ["vmap", "vmap"]
    assert not [m for m in said.messages if "one member at a time" in m]
    model = load_model("cnn", storage=url)
    assert model.input_shape == (1, 8, 8) and model.scaling == "per_channel"
    assert model.metadata["input_shape"] == [1, 8, 8] and model.metadata["scaling"] == "per_channel"
    s = parse_spec(SPEC)
    data = load_dataset(s.data, s.cv, s.seed)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(data.X_test)).argmax(1).numpy() == data.y_test).mean())
    assert acc == pytest.approx(res.test_result["test_score"], abs=1e-6)
    # hpsearch predict reads flat rows (a csv of 64 pixels) and the model reshapes them
    path = tmp_path / "new.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([[f"px{i}" for i in range(64)], *data.X_test[:9].reshape(9, -1).tolist()])
    r = CliRunner().invoke(main, ["predict", "cnn", "--data", str(path), "--storage", url])
    assert r.exit_code == 0, r.stderr
    got = [int(row["prediction"]) for row in csv.DictReader(r.stdout.splitlines())]
    assert got == model.predict(torch.from_numpy(data.X_test[:9]))


def test_a_model_vmap_cannot_run_is_said_once_and_trains_one_member_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    said = _Messages()
    spec = {**SPEC, "n_trials": 1, "model": {"factory": "trials_factories:item_cnn"}}
    run_study(spec, storage=url, backend=SimulatedBackend(1), callbacks=said, refit=False)
    fallback = [m for m in said.messages if "one member at a time" in m]
    assert len(fallback) == 1 and "trials_factories:item_cnn" in fallback[0] and "item" in fallback[0]
    trial = optuna.load_study(study_name="cnn", storage=st.create_storage(url)).get_trials()[0]
    assert trial.user_attrs["train_path"] == "sequential"


def test_a_data_shape_that_does_not_fit_the_rows_leaves_no_study(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = np.random.default_rng(0).random((30, 12))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([[*(f"p{i}" for i in range(12)), "label"], *[[*r, i % 2] for i, r in
                                                                           enumerate(rows.tolist())]])
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = {**SPEC, "data": {"source": "csv", "path": str(path), "target": "label", "shape": [1, 4, 4]}}
    with pytest.raises(DataError, match=r"data.shape \[1, 4, 4\] holds 16 values per sample, but the data has rows "
                                        r"of 12 values"):
        run_study(spec, storage=url, backend=SimulatedBackend(1))
    assert optuna.get_all_study_names(st.create_storage(url)) == []


def test_a_study_stored_before_data_scaling_keeps_per_feature_scaling() -> None:
    """Its trials standardized every pixel: a resume scores the rest the same way; a new study
    stores the scaling its data resolves to."""
    old = optuna.create_study()
    old.set_user_attr(StudyAttr.DATA_FINGERPRINT, "f" * 32)  # scored by an hpsearch without data.scaling
    assert check_scaling(old, "global") == "per_feature"
    assert old.user_attrs[StudyAttr.SCALING] == "per_feature"
    new = optuna.create_study()
    assert check_scaling(new, "global") == "global" and new.user_attrs[StudyAttr.SCALING] == "global"
    new.set_user_attr(StudyAttr.DATA_FINGERPRINT, "f" * 32)
    assert check_scaling(new, "global") == "global"  # stored: kept on every resume


def test_the_cnn_example_parses_and_its_model_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/digits_cnn.yaml (run end to end by `make examples`): its factory takes the digits as
    images [1, 8, 8] at both ends of the space, and vmap stacks it."""
    from search import load_spec
    from trials import check_model

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(repo))
    spec = load_spec(repo / "examples" / "digits_cnn.yaml")
    data = load_dataset(spec.data, spec.cv, spec.seed)
    assert data.input_shape == (1, 8, 8) and data.scaling == "global"
    for params in spec.probe_params():
        assert check_model(spec.settings, params, data.input_shape, data.n_classes) is None
