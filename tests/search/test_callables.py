"""A model factory given as a Python callable (a notebook's function), not an import path.

The in-process backend shows the spec, storage and resume rules; one slow test shows a function
defined in a script's ``__main__`` (as in a notebook) training on real Ray workers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from torch import nn

from search import LocalBackend, SpecError, parse_spec, resume_study, run_study
from search.cli import main
from trials import ModelError

from .resume_checks import ROOT, assert_one_line_error, check_invariants, snapshot, trials_of


def _spec(factory: Any, **kw: Any) -> dict[str, Any]:
    spec = {
        "name": "nb", "strategy": "random", "n_trials": 2, "seed": 1,
        "space": {"lr": {"type": "float", "low": 0.02, "high": 0.1, "log": True},
                  "width": {"type": "int", "low": 4, "high": 16}},
        "data": {"source": "digits"}, "model": {"factory": factory},
        "training": {"max_epochs": 2}, "cv": {"folds": 2},
    }
    spec.update(kw)
    return spec


def _notebook_factory() -> Any:
    """A closure, as a notebook cell defines one: importable by no path."""
    calls: list[int] = []

    def build(params: dict[str, Any], n_features: int, n_classes: int) -> nn.Module:
        calls.append(int(params["width"]))
        w = int(params["width"])
        return nn.Sequential(nn.Linear(n_features, w), nn.ReLU(), nn.Linear(w, n_classes))

    build.calls = calls  # type: ignore[attr-defined]
    return build


def test_a_callable_factory_is_kept_in_the_spec_and_stored_by_name() -> None:
    build = _notebook_factory()
    spec = parse_spec(_spec(build))
    assert spec.model.factory is build
    assert spec.model_dump()["model"]["factory"] is build
    stored = spec.to_dict()["model"]["factory"]
    assert stored == f"python callable {__name__}:_notebook_factory.<locals>.build"
    with pytest.raises(SpecError, match=r"model\.factory was the Python callable .*build, which a stored study "
                                        r"names but cannot import; continue it from Python"):
        parse_spec(spec.to_dict())


def test_a_study_made_with_a_callable_runs_and_resumes_from_the_same_process(tmp_path: Path) -> None:
    """Running the same spec (with its callable) again continues the study; the CLI and resume_study,
    which have only the stored name, refuse with exit 2 and say how to continue."""
    url = f"sqlite:///{tmp_path}/s.db"
    build = _notebook_factory()
    first = run_study(_spec(build), storage=url, backend=LocalBackend(1))
    assert first.done == 2 and first.best is not None and first.test_result is not None
    assert {4, 16} <= set(build.calls)  # the driver's check: both ends of the width range
    before = snapshot(trials_of(url, "nb"))
    again = run_study(parse_spec(_spec(build)), storage=url, backend=LocalBackend(1), n_trials=4)
    assert again.done == 4
    check_invariants(trials_of(url, "nb"), budget=4, seed=1, keys=("lr", "width"), before=before)

    with pytest.raises(Exception, match=r"study 'nb' cannot be resumed from its stored spec: model: model\.factory "
                                        r"was the Python callable"):
        resume_study("nb", storage=url, backend=LocalBackend(1))
    r = CliRunner().invoke(main, ["resume", "nb", "--storage", url], prog_name="hpsearch")
    assert r.exit_code == 2, r.output
    assert_one_line_error(r.stderr, "study 'nb' cannot be resumed from its stored spec")


def test_a_callable_factory_that_cannot_serve_the_study_is_refused_naming_it(tmp_path: Path) -> None:
    def too_wide(params: dict[str, Any], n_features: int, n_classes: int) -> nn.Module:
        return nn.Linear(n_features, n_classes + 2)

    with pytest.raises(ModelError, match=r"model.factory '.*too_wide': the model returned logits of shape "
                                         r"\(2, 12\)") as info:
        run_study(_spec(too_wide), storage=f"sqlite:///{tmp_path}/s.db", backend=LocalBackend(1))
    assert info.value.factory.endswith(":test_a_callable_factory_that_cannot_serve_the_study_is_refused_naming_it."
                                       "<locals>.too_wide")


def test_an_import_path_like_a_stored_callable_in_a_study_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec("python callable __main__:build")), encoding="utf-8")
    r = CliRunner().invoke(main, ["run", str(path), "--storage", f"sqlite:///{tmp_path}/s.db"], prog_name="hpsearch")
    assert r.exit_code == 2
    assert "give model.factory an import path 'package.module:function'" in r.stderr


@pytest.mark.slow
def test_a_function_defined_in_main_trains_on_ray_workers(tmp_path: Path) -> None:
    """Before: a notebook's ``__main__:build`` failed on every Ray worker (they cannot import
    ``__main__``); Ray now ships the function by value, as it ships a task's function."""
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(f"""
        from torch import nn
        from search import run_study

        def build(params, n_features, n_classes):
            return nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, n_classes))

        spec = {yaml.safe_load(yaml.safe_dump(_spec("X")))!r}
        spec["model"] = {{"factory": build}}
        spec["resources"] = {{"max_concurrent": 1}}
        result = run_study(spec, storage="sqlite:///{tmp_path}/s.db")
        print("DONE", result.done, result.best.number, result.test_result is not None)
    """), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DONE 2" in proc.stdout and proc.stdout.rstrip().endswith("True"), proc.stdout
    assert all(t.state.name == "COMPLETE" for t in trials_of(f"sqlite:///{tmp_path}/s.db", "nb"))
