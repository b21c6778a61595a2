"""Bad inputs and what the user gets: the table of docs/reliability.md, one test per row.

Most rows run the CLI in this process (click's CliRunner on ``search.cli.main``, the function the
``hpsearch`` script calls); where a run needs trials, ``make_backend`` is replaced by the in-process
backend (Ray plays no part in these inputs). A few rows run the installed ``hpsearch`` script in a
subprocess to show the same in a real process: exit code, one ``hpsearch: error:`` line, no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from search import LocalBackend, run_study
from search.cli import main

from . import fakes
from .resume_checks import HPSEARCH, assert_one_line_error, check_invariants, cli, trials_of

SPEC: dict[str, Any] = {
    "name": "bad",
    "strategy": "random",
    "n_trials": 2,
    "seed": 1,
    "space": {"lr": {"type": "float", "low": 0.02, "high": 0.1, "log": True}},
    "data": {"source": "digits"},
    "model": {"hidden": [16]},
    "training": {"max_epochs": 2},
    "cv": {"folds": 2},
}


def write(path: Path, spec: dict[str, Any] | str) -> str:
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return str(path)


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args), prog_name="hpsearch")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception  # an exception that escaped the CLI's mapping: a traceback for the user
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def local_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``hpsearch run``/``resume`` train on the in-process backend instead of a local Ray."""
    monkeypatch.setattr("search._api.make_backend", lambda spec, address=None: LocalBackend(2))


# -- study file ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "code", "expect"),
    [
        ({**SPEC, "epochs": 3}, 2, "epochs: unknown key (typo?)"),
        ({**SPEC, "n_trials": "ten"}, 2, "n_trials: Input should be a valid integer"),
        ({**SPEC, "training": {"max_epochs": 2, "paitence": 3}}, 2, "training.paitence: unknown key"),
        ("name: x\nspace: {lr: [\n", 2, "not valid YAML"),
        ("", 2, "the file is empty"),
        (None, 2, "no such file; create one with `hpsearch init"),
    ],
    ids=["typo", "wrong-type", "nested-typo", "yaml-syntax", "empty", "missing-file"],
)
def test_bad_study_file(tmp_path: Path, text: Any, code: int, expect: str) -> None:
    path = str(tmp_path / "missing.yaml") if text is None else write(tmp_path / "study.yaml", text)
    got, _, err = invoke("run", path, "--storage", f"sqlite:///{tmp_path}/s.db")
    assert got == code
    assert_one_line_error(err, expect)
    assert not (tmp_path / "s.db").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    code, _, err = invoke("run", "--n-trials", "0", write(tmp_path / "s.yaml", SPEC))
    assert code == 2
    assert_one_line_error(err, "Invalid value for '--n-trials'", "see `hpsearch run --help`")
    code, _, err = invoke("frobnicate")
    assert code == 2
    assert_one_line_error(err, "No such command 'frobnicate'")


# -- storage ---------------------------------------------------------------------------------------------

def test_unknown_study_on_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    run_study(SPEC, storage=url, backend=LocalBackend(1), worker_fn=fakes.quadratic, refit=False)
    code, _, err = invoke("resume", "nope", "--storage", url)
    assert code == 2
    assert_one_line_error(err, "no study named 'nope'", "existing studies: bad")
    # a storage file that does not exist is reported, and not created by the attempt to read it
    code, _, err = invoke("resume", "bad", "--storage", f"sqlite:///{tmp_path}/typo.db")
    assert code == 3
    assert_one_line_error(err, "does not exist; check --storage")
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize(
    ("url", "expect", "exit_code"),
    [  # a wrong URL is bad input (2); a database that cannot be reached is a storage problem (3)
        ("mysql://user@host/db", "database type 'mysql' is not supported; expected sqlite:///", 2),
        ("garbage", "malformed storage URL 'garbage'", 2),
        ("postgresql+pg8000://u@h/db", "driver 'pg8000' is not supported", 2),
        ("postgresql://user:s3cret@127.0.0.1:1/db", "cannot reach PostgreSQL at 127.0.0.1:1", 3),
    ],
    ids=["mysql", "garbage", "other-driver", "closed-port"],
)
def test_bad_storage_url(tmp_path: Path, url: str, expect: str, exit_code: int) -> None:
    study_file = write(tmp_path / "s.yaml", SPEC)
    for args in (["run", study_file], ["resume", "bad"], ["ls"], ["show", "bad"], ["best", "bad"]):
        t0 = time.monotonic()
        code, _, err = invoke(*args, "--storage", url)
        assert code == exit_code, (args, err)
        assert_one_line_error(err, expect)
        assert "s3cret" not in err
        assert time.monotonic() - t0 < 15  # refused at once, not after the retry budget


@pytest.mark.postgres
def test_missing_postgres_database(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(database="hpsearch_no_such_db").render_as_string(hide_password=False)
    code, _, err = invoke("ls", "--storage", url)
    assert code == 3
    assert_one_line_error(err, "database 'hpsearch_no_such_db' does not exist", "createdb")


def test_corrupt_sqlite_file(tmp_path: Path, local_runs: None) -> None:
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(rng.bytes(8192))
    study_file = write(tmp_path / "s.yaml", SPEC)
    for args in (["run", study_file], ["resume", "bad"], ["ls"], ["show", "bad"]):
        code, _, err = invoke(*args, "--storage", f"sqlite:///{garbage}")
        assert code == 3, (args, err)
        assert_one_line_error(err, "is not a usable SQLite database", "move it aside")
    # a real study file whose pages after the header are overwritten
    url = f"sqlite:///{tmp_path}/study.db"
    assert invoke("run", study_file, "--storage", url, "-q")[0] == 0
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path}/study.db{suffix}").unlink(missing_ok=True)
    data = bytearray((tmp_path / "study.db").read_bytes())
    data[4096:] = rng.bytes(len(data) - 4096)
    (tmp_path / "study.db").write_bytes(bytes(data))
    for args in (["resume", "bad"], ["ls"], ["show", "bad"]):
        code, _, err = invoke(*args, "--storage", url)
        assert code == 3, (args, err)
        # SQLite reports this one as "disk I/O error": exit 3 and the file named, a less precise hint
        line = assert_one_line_error(err, "study.db")
        assert "is not a usable SQLite database" in line or "cannot open storage" in line, line


@pytest.mark.slow
def test_in_a_real_process_no_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    res = cli(["ls", "--storage", f"sqlite:///{garbage}"], timeout=60)
    assert res.returncode == 3
    assert_one_line_error(res.stderr, "is not a usable SQLite database")
    res = cli(["resume", "x", "--storage", "postgresql://postgres@127.0.0.1:1/db"], timeout=60)
    assert res.returncode == 3
    assert_one_line_error(res.stderr, "cannot reach PostgreSQL at 127.0.0.1:1")


@pytest.fixture(scope="module")
def big_study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A study with more output than a pipe buffers (64 KiB), built once for the commands that read it."""
    from .studies import build_study

    url = f"sqlite:///{tmp_path_factory.mktemp('pipe')}/s.db"
    build_study(url, "demo", n_complete=400)
    return url


@pytest.mark.slow
@pytest.mark.parametrize("args", [["show", "demo"], ["export", "demo", "-f", "json"]])
def test_output_into_a_closed_pipe_stops_quietly(big_study: str, args: list[str]) -> None:
    """``hpsearch show demo | head -1``: the reader stops after one line; no traceback, no error line."""
    url = big_study
    proc = subprocess.Popen([HPSEARCH, *args, "--storage", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 1) and err == "", err


_USER_MODELS = """
import torch
from torch import nn


class _FailsOnRealBatches(nn.Module):
    def __init__(self, n_features, n_classes):
        super().__init__()
        self.lin = nn.Linear(n_features, n_classes)

    def forward(self, x):
        if x.shape[-2] > 2:  # the driver's check uses a batch of 2; training batches fail
            raise RuntimeError("this model fails in training")
        return self.lin(x)


def fails_in_training(params, n_features, n_classes):
    return _FailsOnRealBatches(n_features, n_classes)


def wrong_width(params, n_features, n_classes):
    return nn.Linear(n_features, n_classes + 1)


def narrow_only(params, n_features, n_classes):
    width = int(params["width"])
    if width > 32:
        raise ValueError(f"width {width} is not supported")
    return nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, n_classes))


def rgb_cnn(params, input_shape, n_outputs):  # the current form, written for RGB images
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(n_outputs))


def good(params, n_features, n_classes):
    return nn.Sequential(nn.Linear(n_features, int(params.get("width", 16))), nn.ReLU(),
                         nn.Linear(int(params.get("width", 16)), n_classes))
"""


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module ``hpsearch_test_models`` of user factories (the in-process backend's
    threads see this process's sys.path)."""
    (tmp_path / "hpsearch_test_models.py").write_text(_USER_MODELS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "hpsearch_test_models"


def test_a_budget_spent_on_failures_exits_4(tmp_path: Path, local_runs: None, user_models: str) -> None:
    """Every trial failed (here: a model that fails on training batches): exit 4, not 0, so a script
    notices; the reasons are in ``hpsearch show``."""
    url = f"sqlite:///{tmp_path}/s.db"
    spec = {**SPEC, "model": {"factory": f"{user_models}:fails_in_training"}}
    code, out, err = invoke("run", write(tmp_path / "s.yaml", spec), "--storage", url, "-q")
    assert code == 4, err
    assert "no trial completed" in out
    assert_one_line_error(err, "no trial of study 'bad' completed; `hpsearch show bad` lists why")
    code, out, _ = invoke("show", "bad", "--storage", url)
    assert code == 0 and "this model fails in training" in out


@pytest.mark.parametrize(
    ("factory", "space", "expect"),
    [
        ("no_such_module_hpsearch.models:build", {}, "model.factory 'no_such_module_hpsearch.models:build': "
                                                    "cannot import module 'no_such_module_hpsearch.models'"),
        ("{m}:no_such_function", {}, "module 'hpsearch_test_models' has no attribute 'no_such_function'"),
        ("{m}:wrong_width", {}, "the model returned logits of shape (2, 11) for a batch of 2; expected "
                                "[batch, n_classes] = [2, 10]"),
        ("{m}:narrow_only", {"width": {"type": "int", "low": 8, "high": 64}},
         "model.factory 'hpsearch_test_models:narrow_only' raised ValueError: width 64 is not supported"),
        ("{m}:rgb_cnn", {}, "model from model.factory 'hpsearch_test_models:rgb_cnn' fails on an input batch of shape "
                            "[2, 64] (one sample: [64]; called as factory(params, input_shape=(64,), n_outputs=10)"),
    ],
    ids=["no-module", "no-function", "wrong-output-shape", "fails-at-the-high-end", "wrong-input-shape"],
)
def test_a_factory_that_cannot_serve_the_study_fails_it_before_any_trial(
        tmp_path: Path, local_runs: None, user_models: str, factory: str, space: dict[str, Any], expect: str) -> None:
    """The factory is imported and tried on a batch (at both ends of the space) on the driver: exit 2
    naming the factory and the fix, no trial run and no study left, so the fixed file then runs
    (before: every trial failed, was retried, and the fix was refused as a different spec)."""
    url = f"sqlite:///{tmp_path}/s.db"
    bad = {**SPEC, "space": {**SPEC["space"], **space}, "model": {"factory": factory.format(m=user_models)}}
    code, _, err = invoke("run", write(tmp_path / "s.yaml", bad), "--storage", url, "-q")
    assert code == 2, err
    assert_one_line_error(err, expect)
    assert invoke("ls", "--storage", url, "-o", "json")[1].count('"name"') == 0, "a study was left behind"
    fixed = {**bad, "model": {"factory": f"{user_models}:good"}}
    code, _, err = invoke("run", write(tmp_path / "s.yaml", fixed), "--storage", url, "-q")
    assert code == 0, err
    check_invariants(trials_of(url, "bad"), budget=2, seed=1, keys=tuple(fixed["space"]))


# -- names -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name",
    ["with spaces", "it's \"quoted\" `x` $HOME", "ünïcødé — 研究 ✓", "markup [bold]x[/] [/]", "semi;colon && rm -rf x"],
    ids=["spaces", "quotes", "unicode", "rich-markup", "shell"],
)
def test_study_names_survive_run_show_best_ls(tmp_path: Path, local_runs: None, name: str) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    code, out, err = invoke("run", write(tmp_path / "s.yaml", {**SPEC, "name": name}), "--storage", url)
    assert code == 0, err
    assert "2/2 trials done" in out and name in err  # the progress header shows the name as written
    code, out, _ = invoke("ls", "--storage", url)
    assert code == 0 and name in out
    code, out, _ = invoke("show", name, "--storage", url, "-o", "json")
    assert code == 0 and yaml.safe_load(out)["study"] == name
    code, out, _ = invoke("best", name, "--storage", url)
    assert code == 0 and "held-out test score" in out
    code, out, _ = invoke("resume", name, "--storage", url, "-q")
    assert code == 0 and "2/2 trials done" in out


# -- data ---------------------------------------------------------------------------------------------------

def _csv(path: Path, rows: slice) -> None:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    lines = [",".join([*(f"f{i}" for i in range(64)), "label"])]
    lines += [",".join([*(f"{v:g}" for v in x), str(int(c))]) for x, c in zip(X[rows], y[rows])]
    path.write_text("\n".join(lines) + "\n")


def _csv_study(tmp_path: Path) -> tuple[Path, str]:
    """A finished 2-trial study ``bad`` on a CSV of digits rows 0-400; returns the CSV and the storage URL."""
    data = tmp_path / "digits.csv"
    _csv(data, slice(0, 400))
    spec = {**SPEC, "data": {"source": "csv", "path": str(data), "target": "label"}}
    url = f"sqlite:///{tmp_path}/s.db"
    assert invoke("run", write(tmp_path / "s.yaml", spec), "--storage", url, "-q")[0] == 0
    return data, url


def _resume_refused_then_completed(data: Path, url: str, *error: str) -> None:
    """The resume exits 2 with ``error`` and runs nothing; with the original CSV back it completes exactly."""
    code, _, err = invoke("resume", "bad", "--n-trials", "4", "--storage", url, "-q")
    assert code == 2
    assert_one_line_error(err, *error)
    assert len(trials_of(url, "bad")) == 2, "nothing ran, nothing changed"
    _csv(data, slice(0, 400))  # the original file is back: the study continues
    code, _out, err = invoke("resume", "bad", "--n-trials", "4", "--storage", url, "-q")
    assert code == 0, err
    check_invariants(trials_of(url, "bad"), budget=4, seed=1, keys=("lr",))


def test_dataset_file_missing_on_resume(tmp_path: Path, local_runs: None) -> None:
    data, url = _csv_study(tmp_path)
    data.unlink()
    _resume_refused_then_completed(data, url, f"data file not found: '{data}' (data.path)")


def test_dataset_file_changed_between_runs_is_refused(tmp_path: Path, local_runs: None) -> None:
    data, url = _csv_study(tmp_path)
    _csv(data, slice(400, 800))  # other rows, same path
    _resume_refused_then_completed(
        data, url, f"the data of study 'bad' changed since its trials were scored (data.path '{data}'",
        "Restore the original data to resume", "--study NEW_NAME")


def test_a_first_run_refused_for_its_data_leaves_no_study_and_the_fix_runs(tmp_path: Path, local_runs: None) -> None:
    """A typo'd data path (or target) stops the first run; the corrected file then runs (before: the
    empty study kept the bad spec and refused the corrected one as a changed spec)."""
    data = tmp_path / "digits.csv"
    _csv(data, slice(0, 400))
    url = f"sqlite:///{tmp_path}/s.db"
    for typo in ({"path": str(tmp_path / "digit.csv"), "target": "label"}, {"path": str(data), "target": "labl"}):
        code, _, err = invoke("run", write(tmp_path / "s.yaml", {**SPEC, "data": {"source": "csv", **typo}}),
                              "--storage", url, "-q")
        assert code == 2, err
        assert invoke("ls", "--storage", url, "-o", "json")[1].count('"name"') == 0, "an empty study was left"
    spec = {**SPEC, "data": {"source": "csv", "path": str(data), "target": "label"}}
    code, _, err = invoke("run", write(tmp_path / "s.yaml", spec), "--storage", url, "-q")
    assert code == 0, err
    check_invariants(trials_of(url, "bad"), budget=2, seed=1, keys=("lr",))


def test_a_study_without_trials_takes_a_changed_spec(tmp_path: Path, local_runs: None) -> None:
    """A study left with no trial (e.g. killed during start-up) has nothing to mix: a run with a changed
    spec, even another metric (direction), replaces it and says so."""
    import optuna

    import storage as st
    from search import parse_spec
    from search._open import open_study as _open_study

    url = f"sqlite:///{tmp_path}/s.db"
    _open_study(st.create_storage(url), parse_spec(SPEC), must_exist=False)  # created, then the run died
    changed = {**SPEC, "metric": "val_loss", "seed": 2}
    code, _, err = invoke("run", write(tmp_path / "s.yaml", changed), "--storage", url)
    assert code == 0, err
    assert "study 'bad' had no trials yet; its spec was replaced" in err and "metric" in err
    study = optuna.load_study(study_name="bad", storage=st.create_storage(url))
    assert study.direction.name == "MINIMIZE" and study.user_attrs["hpsearch_spec"]["seed"] == 2
    check_invariants(study.get_trials(deepcopy=False), budget=2, seed=2, keys=("lr",))
    # with trials, a changed spec is still refused
    code, _, err = invoke("run", write(tmp_path / "s.yaml", SPEC), "--storage", url, "-q")
    assert code == 2 and "already exists with a different spec" in err


# -- environment -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("var", "value"), [
    ("HPSEARCH_LEASE_STALE_S", "-1"), ("HPSEARCH_LEASE_STALE_S", "nan"), ("HPSEARCH_LEASE_STALE_S", "inf"),
    ("HPSEARCH_LEASE_STALE_S", "-inf"), ("HPSEARCH_DB_RETRY_ATTEMPTS", "0"), ("HPSEARCH_DB_RETRY_ATTEMPTS", "many"),
])
def test_bad_settings_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    code, _, err = invoke("run", write(tmp_path / "s.yaml", SPEC), "--storage", f"sqlite:///{tmp_path}/s.db")
    assert code == 2
    assert_one_line_error(err, f"environment variable {var}={value!r} must be")


def test_unexpected_error_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("search._api.run_study", boom)
    code, _, err = invoke("run", write(tmp_path / "s.yaml", SPEC))
    assert code == 1
    assert_one_line_error(err, "unexpected ZeroDivisionError: a bug", "HPSEARCH_DEBUG=1")


# -- disk full -----------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 16 MiB tmpfs (root only): room for a study, then filled up by a test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.mark.slow
def test_disk_full(small_disk: Path, tmp_path: Path, local_runs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{small_disk}/s.db"
    study_file = write(tmp_path / "s.yaml", SPEC)
    assert invoke("run", study_file, "--storage", url, "-q")[0] == 0
    _fill(small_disk / "filler")
    monkeypatch.setenv("HPSEARCH_DB_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "1")
    code, _, err = invoke("resume", "bad", "--n-trials", "4", "--storage", url, "-q")
    assert code == 3
    assert_one_line_error(err, f"the disk holding the database {url} is full", "free some space",
                          "hpsearch resume bad")
    (small_disk / "filler").unlink()
    time.sleep(1.2)  # a lease row the failed run could not delete goes stale
    code, _out, err = invoke("resume", "bad", "--n-trials", "4", "--storage", url, "-q")
    assert code == 0, err
    check_invariants(trials_of(url, "bad"), budget=4, seed=1, keys=("lr",))


# -- task, metric and target ---------------------------------------------------------------------------

@pytest.fixture
def no_backend_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that gets as far as starting its backend (Ray) fails the test."""
    class NoStart(LocalBackend):
        def start(self) -> None:
            raise AssertionError("the backend started before the bad input was said")

    monkeypatch.setattr("search._api.make_backend", lambda spec, address=None: NoStart(1))


def _table(path: Path, target: list[Any]) -> str:
    import pandas as pd

    n = len(target)
    pd.DataFrame({"a": np.arange(n, dtype=float), "b": np.arange(n, dtype=float) % 7, "y": target}).to_csv(
        path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("task", "target", "metric", "expect"),
    [
        ("regression", ["low", "high"] * 20, None,
         ["a regression target must be numeric, found 'low' at row 0", "set task: classification"]),
        ("classification", [i / 40 for i in range(40)], None,
         ["labels must be discrete classes, found the float 0.025 at row 1", "set task: regression"]),
        ("classification", [0, 1, 2, 3] * 10, "val_auc",
         ["metric val_auc needs two classes, the labels have 4", "use metric val_f1_macro or val_accuracy"]),
        ("regression", [float(i) for i in range(40)], "val_accuracy",
         ["metric: val_accuracy is not a metric of task regression", "use one of val_loss, val_mse, val_mae, val_r2",
          "or set task: classification"]),
        ("classification", [0, 1] * 20, "val_r2",
         ["metric: val_r2 is not a metric of task classification", "or set task: regression"]),
    ],
    ids=["text-regression-target", "float-class-labels", "auc-of-four-classes", "accuracy-of-regression",
         "r2-of-classification"],
)
def test_a_target_or_metric_that_does_not_fit_the_task_exits_2_before_ray(
        tmp_path: Path, no_backend_start: None, task: str, target: list[Any], metric: str | None,
        expect: list[str]) -> None:
    data = {"source": "csv", "path": _table(tmp_path / "d.csv", target), "target": "y"}
    spec = {**SPEC, "task": task, "data": data, **({"metric": metric} if metric else {})}
    url = f"sqlite:///{tmp_path}/s.db"
    code, _, err = invoke("run", write(tmp_path / "s.yaml", spec), "--storage", url)
    assert code == 2, err
    assert_one_line_error(err, *expect)
    if (tmp_path / "s.db").exists():
        assert invoke("ls", "--storage", url, "-o", "json")[1].count('"name"') == 0, "an empty study was left"


def test_a_loss_of_the_other_task_is_refused(tmp_path: Path) -> None:
    spec = {**SPEC, "training": {"max_epochs": 2, "loss": "huber"}}
    code, _, err = invoke("run", write(tmp_path / "s.yaml", spec), "--storage", f"sqlite:///{tmp_path}/s.db")
    assert code == 2
    assert_one_line_error(err, "training.loss: huber is not a loss for task classification")
