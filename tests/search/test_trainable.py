"""A study with your own training function (``trainable``): the spec, the driver's check, trials that
fail with a reason the user can act on, and a study made with a callable (a notebook's function).

In process, on the in-process backend; the SIGKILL + resume of such a study with real Ray is in
test_resume.py, the example (examples/custom_loop.yaml) in the Makefile's ``examples`` target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from torch import nn

from search import LocalBackend, SpecError, parse_spec, resume_study, run_study
from search.cli import main
from trials import TrainableError, TrainContext

from . import trainables
from .resume_checks import assert_one_line_error, check_invariants, snapshot, study_exists, trials_of


def _spec(trainable: Any, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "own", "strategy": "random", "n_trials": 3, "seed": 2, "trainable": trainable,
        "space": {"lr": {"type": "float", "low": 0.02, "high": 0.1, "log": True},
                  "width": {"type": "categorical", "choices": [8, 16]}},
        "data": {"source": "digits"}, "training": {"max_epochs": 3}, "cv": {"folds": 2},
        "retries": {"max_retries": 1},
    }
    spec.update(kw)
    return spec


def test_the_spec_takes_an_import_path_or_a_callable_and_any_param_names() -> None:
    spec = parse_spec(_spec("tests.search.trainables:train", space={"clip": {"type": "float", "low": 0.1,
                                                                              "high": 1.0}}))
    assert spec.to_dict()["trainable"] == "tests.search.trainables:train"
    assert spec.settings.trainable == "tests.search.trainables:train"
    assert spec.settings.reported_metrics == ("val_loss", "val_accuracy")
    by_value = parse_spec(_spec(trainables.train))
    assert by_value.settings.trainable is trainables.train
    assert by_value.to_dict()["trainable"] == "python callable tests.search.trainables:train"
    with pytest.raises(SpecError, match=r"trainable was the Python callable tests.search.trainables:train, which a "
                                        r"stored study names but cannot import"):
        parse_spec(by_value.to_dict())
    stored_before = {k: v for k, v in _spec(None, space={"lr": {"type": "float", "low": 0.02, "high": 0.1}}).items()
                     if k != "trainable"}
    old = parse_spec(stored_before, stored=True)  # a spec stored before the key existed loads unchanged
    assert old.trainable is None and old.settings.trainable is None


@pytest.mark.parametrize(("extra", "match"), [
    ({"model": {"factory": "tests.search.trainables:train"}}, r"model.factory: not used with trainable"),
    ({"resources": {"stack_trials": 2}}, r"resources.stack_trials: 2 cannot be combined with trainable"),
    ({"trainable": "not a path"}, r"trainable must be an import path of the form 'package.module:function'"),
])
def test_keys_a_trainable_cannot_use_are_refused(extra: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        parse_spec({**_spec("tests.search.trainables:train"), **extra})


def test_a_study_with_a_trainable_runs_refits_and_tests(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    result = run_study(_spec("tests.search.trainables:train", pruner={"type": "median", "n_startup_trials": 1}),
                       storage=url, backend=LocalBackend(1))
    assert result.done == 3 and result.best is not None and len(result.best.fold_scores) == 2
    assert result.test_result is not None and result.test_result["test_score"] > 0.5
    assert result.test_result["refit_epochs"] == result.test_result["cv_epochs"]
    trials = trials_of(url, "own")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["train_path"] == "trainable"
            assert sorted(t.intermediate_values) == [1, 2, 3]  # every epoch reached the pruner
            assert len(t.user_attrs["curves"]["val_accuracy"]) == 2
    r = CliRunner().invoke(main, ["export-model", "own", "--storage", url, "--out", str(tmp_path / "m.pt")],
                           prog_name="hpsearch")
    assert r.exit_code == 2
    assert_one_line_error(r.stderr, "trained by your own training function (trainable tests.search.trainables:train)")


def test_a_trainable_that_fails_the_drivers_check_leaves_no_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"

    def no_report(ctx: TrainContext) -> nn.Module:
        return nn.Linear(ctx.input_shape[0], ctx.n_outputs)

    with pytest.raises(TrainableError, match=r"returned in fold 0 without calling ctx.report.*driver's check"):
        run_study(_spec(no_report), storage=url, backend=LocalBackend(1))
    assert not study_exists(url, "own")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec("tests.search.trainables:no_such_function")), encoding="utf-8")
    r = CliRunner().invoke(main, ["run", str(path), "--storage", url], prog_name="hpsearch")
    assert r.exit_code == 2, r.output
    assert_one_line_error(r.stderr, "module 'tests.search.trainables' has no attribute 'no_such_function'")
    assert not study_exists(url, "own")


@pytest.mark.parametrize(("fn", "reason"), [
    ("breaks_on_workers", ["TrainableError: trainable tests.search.trainables:breaks_on_workers raised "
                           "FileNotFoundError: no checkpoint named", "in fold 0; its traceback ends:",
                           "in _load_weights", 'raise FileNotFoundError(f"no checkpoint named {name}")']),
    ("nan_on_workers", ["reported val_loss=nan at epoch 2 of fold 0"]),
])
def test_a_trainable_that_fails_on_the_workers_fails_its_trials_with_the_reason(tmp_path: Path, fn: str,
                                                                                reason: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(Exception, match="no trial of study 'own' completed"):
        run_study(_spec(f"tests.search.trainables:{fn}", n_trials=1), storage=url, backend=LocalBackend(1))
    trials = trials_of(url, "own")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]  # the trial and its one retry
    for t in trials:
        for part in reason:
            assert part in t.user_attrs["fail_reason"], t.user_attrs["fail_reason"]


def test_a_study_made_with_a_callable_trainable_resumes_from_the_same_process_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"

    def notebook_train(ctx: TrainContext) -> nn.Module:  # a notebook's function: importable by no path
        return trainables.train(ctx)

    first = run_study(_spec(notebook_train, n_trials=2), storage=url, backend=LocalBackend(1))
    assert first.done == 2 and first.test_result is not None
    before = snapshot(trials_of(url, "own"))
    again = run_study(_spec(notebook_train, n_trials=2), storage=url, backend=LocalBackend(1), n_trials=3)
    assert again.done == 3
    check_invariants(trials_of(url, "own"), budget=3, seed=2, keys=("lr", "width"), before=before)
    with pytest.raises(Exception, match=r"cannot be resumed from its stored spec: trainable: trainable was the "
                                        r"Python callable"):
        resume_study("own", storage=url, backend=LocalBackend(1))
    r = CliRunner().invoke(main, ["resume", "own", "--storage", url], prog_name="hpsearch")
    assert r.exit_code == 2, r.output
    assert_one_line_error(r.stderr, "study 'own' cannot be resumed from its stored spec")


@pytest.mark.slow
def test_parallel_folds_on_ray_score_each_fold_as_lockstep_does(tmp_path: Path) -> None:
    """One Ray task per fold (``resources.parallel_folds``) gives every fold score and per-epoch value
    that the folds in lockstep in one task give: each fold has its own random state either way."""
    from .test_resume import local_ray

    url = f"sqlite:///{tmp_path}/s.db"
    got = {}
    with local_ray():  # one Ray for both runs (CI's time): each run uses the one it finds connected
        for parallel in (False, True):
            name = f"pf-{parallel}"
            run_study(_spec("tests.search.trainables:train", name=name, n_trials=2, cv={"folds": 3},
                            resources={"cpus_per_trial": 2 if parallel else 1, "max_concurrent": 1,
                                       "parallel_folds": parallel}), storage=url, refit=False)
            got[parallel] = [(t.params, t.user_attrs["fold_scores"], t.intermediate_values)
                             for t in trials_of(url, name)]
    assert got[True] == got[False] and len(got[True]) == 2


@pytest.mark.slow
def test_a_trainable_defined_in_main_trains_on_ray_workers(tmp_path: Path) -> None:
    """A notebook's training function (``__main__:train``) reaches the Ray workers by value."""
    import subprocess
    import sys
    import textwrap

    from .resume_checks import ROOT

    spec = _spec("X", n_trials=2, resources={"max_concurrent": 1})
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(f"""
        import torch.nn.functional as F
        from torch import nn
        from search import run_study

        def train(ctx):
            model = nn.Linear(ctx.input_shape[0], ctx.n_outputs)
            opt = __import__("torch").optim.SGD(model.parameters(), lr=ctx.params["lr"])
            for epoch in range(1, ctx.max_epochs + 1):
                for x, y in ctx.loader("train"):
                    loss = F.cross_entropy(model(x), y)
                    opt.zero_grad(); loss.backward(); opt.step()
                if ctx.val is None:
                    ctx.report(epoch)
                    continue
                x, y = ctx.val.tensors
                out = model(x)
                if ctx.report(epoch, val_loss=F.cross_entropy(out, y).item(),
                              val_accuracy=(out.argmax(1) == y).float().mean().item()):
                    break
            return model

        spec = {spec!r}
        spec["trainable"] = train
        result = run_study(spec, storage="sqlite:///{tmp_path}/s.db")
        print("DONE", result.done, result.test_result["test_score"] > 0.5)
    """), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith("DONE 2 True"), proc.stdout
    trials = trials_of(f"sqlite:///{tmp_path}/s.db", "own")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
