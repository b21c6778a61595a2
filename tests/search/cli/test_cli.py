"""The CLI as a user meets it: exit codes, one-line errors naming the key, JSON contracts."""

from __future__ import annotations

import io
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
    test = best["test_result"]  # the refit trained the epochs the folds chose, on every non-test row
    assert test["refit_mode"] == "cv_median" and test["refit_epochs"] == test["cv_epochs"] >= 1
    assert test["val_rows"] == 0 and test["model_artifact"] and shown["test_result"] == test
    code, out, _ = invoke("ls", "--storage", url, "-o", "json")
    assert json.loads(out)["studies"][0]["name"] == "cli"


def test_unknown_study_and_bad_storage(tmp_path: Path) -> None:
    code, _, err = invoke("best", "nope", "--storage", f"sqlite:///{tmp_path}/none.db")
    assert code == 3 and err.startswith("hpsearch: error:")
    code, _, err = invoke("ls", "--storage", "mysql://u:secret@h/db")
    assert code == 2 and "secret" not in err  # a URL hpsearch cannot use is bad input


def test_a_closed_pipe_does_not_stop_the_run(make_spec, sqlite_url) -> None:
    """`hpsearch resume X 2>&1 | head -2`: before, the next progress line raised BrokenPipeError and the
    run died with exit 1; now the bar goes quiet and the study completes."""
    from rich.console import Console

    from search import LocalBackend, run_study
    from search.cli._progress import ProgressCallbacks

    from .. import fakes

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    with ProgressCallbacks(enabled=True, console=Console(file=ClosedPipe(), force_terminal=True)) as cb:
        res = run_study(make_spec(n_trials=3), storage=sqlite_url, backend=LocalBackend(1),
                        worker_fn=fakes.quadratic, callbacks=cb)
    assert res.done == 3 and res.best is not None


def test_show_notes_say_whose_re_run_a_trial_is() -> None:
    from search.cli._views import _note

    assert _note({"fail_reason": None, "retry_of": 3}) == "re-run of #3"
    assert _note({"fail_reason": "boom", "retry_of": 0}) == "boom; re-run of #0"
    assert _note({"fail_reason": None, "retry_of": None}) == ""


@pytest.mark.parametrize("n_done", [3, 0])
def test_a_finished_run_whose_reader_left_exits_with_the_runs_own_code(make_spec, sqlite_url, n_done) -> None:
    """`hpsearch run X | head -1` after the run: the summary meets a closed pipe. Before, the run exited 1
    as if it had failed; now a complete run exits 0 (and one with no completed trial still 4)."""
    import os
    import sys

    from search import LocalBackend, run_study
    from search.cli._run import _run_and_print

    from .. import fakes

    class Progress:
        def close(self) -> None:
            pass

    worker = fakes.quadratic if n_done else fakes.broken
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader is gone before the summary is printed
    saved, sys.stdout = sys.stdout, open(write_fd, "w", buffering=1)
    try:
        try:
            _run_and_print(lambda: run_study(make_spec(n_trials=3), storage=sqlite_url,
                                             backend=LocalBackend(1), worker_fn=worker), Progress())
            code = 0
        except SystemExit as e:
            code = e.code
    finally:
        closed, sys.stdout = sys.stdout, saved
        closed.close()
    assert code == (0 if n_done else 4)
