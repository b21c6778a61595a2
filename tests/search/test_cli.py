"""The CLI as a user meets it: exit codes, one-line errors naming the key, JSON contracts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from search.cli import main

GOOD = {
    "name": "cli",
    "strategy": "random",
    "n_trials": 2,
    "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
    "data": {"source": "digits"},
    "model": {"hidden": [16]},
    "training": {"max_epochs": 2},
    "cv": {"folds": 2},
}


def write(tmp_path: Path, spec: dict) -> str:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(spec))
    return str(p)


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_init_writes_a_valid_commented_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    code, out, _ = invoke("init", str(path))
    assert code == 0 and "hpsearch run" in out
    text = path.read_text()
    assert "name: mine" in text and "#" in text
    code, _, err = invoke("init", str(path))
    assert code == 2 and "exists; pass --force" in err


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"epochs": 3}, "epochs: unknown key"),
        ({"n_trials": "ten"}, "n_trials:"),
        ({"space": {}}, "space: is empty"),
        ({"space": {"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "space.lr.low: must be > 0"),
        ({"strategy": "annealing"}, "strategy: Input should be"),
        ({"strategy": "grid"}, "space.lr.values: strategy grid needs a list of values"),
        ({"training": {"max_epochs": "x"}}, "training.max_epochs:"),
    ],
)
def test_bad_study_files_exit_2_naming_the_key(tmp_path: Path, change: dict, key: str) -> None:
    code, _, err = invoke("run", write(tmp_path, {**GOOD, **change}), "--storage", f"sqlite:///{tmp_path}/s.db")
    assert code == 2
    assert err.startswith("hpsearch: error: invalid study file") and key in err
    assert "Traceback" not in err
    assert not (tmp_path / "s.db").exists(), "nothing may be written for an invalid file"


@pytest.mark.slow
def test_gpus_where_none_exist_exit_2(tmp_path: Path) -> None:
    spec = {**GOOD, "resources": {"gpus_per_trial": 1}}
    code, _, err = invoke("run", write(tmp_path, spec), "--storage", f"sqlite:///{tmp_path}/s.db", "-q")
    assert code == 2 and "resources.gpus_per_trial: 1 GPU per trial requested" in err


@pytest.mark.slow
def test_run_then_show_and_best_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, err = invoke("run", write(tmp_path, GOOD), "--storage", url, "-q")
    assert code == 0, err
    assert "2/2 trials done" in out and "best trial" in out
    code, out, _ = invoke("show", "cli", "--storage", url, "-o", "json")
    shown = json.loads(out)
    assert shown["study"] == "cli" and shown["direction"] == "maximize"
    assert [t["number"] for t in shown["trials"]] == [0, 1]
    for t in shown["trials"]:
        assert {"number", "state", "value", "params", "value_std", "fold_scores", "epochs"} <= set(t)
        assert t["state"] == "COMPLETE" and len(t["fold_scores"]) == 2
    code, out, _ = invoke("best", "cli", "--storage", url, "-o", "json")
    best = json.loads(out)
    assert {"study", "number", "value", "params", "fold_scores", "test_score"} <= set(best)
    assert best["value"] == max(t["value"] for t in shown["trials"])
    assert 0 < best["test_score"] <= 1
    code, out, _ = invoke("ls", "--storage", url, "-o", "json")
    assert json.loads(out)["studies"][0]["name"] == "cli"


def test_unknown_study_and_bad_storage(tmp_path: Path) -> None:
    code, _, err = invoke("best", "nope", "--storage", f"sqlite:///{tmp_path}/none.db")
    assert code == 3 and err.startswith("hpsearch: error:")
    code, _, err = invoke("ls", "--storage", "mysql://u:secret@h/db")
    assert code == 2 and "secret" not in err  # a URL hpsearch cannot use is bad input
