"""The ask/tell loop: budgets, grid, pruning, retries, recovery, resume.

On :class:`~search.SimulatedBackend` (a virtual clock, no threads): what the orchestrator sees does
not depend on how loaded the machine is, so the tests assert exact epochs and orders. One test runs
a study on :class:`~search.LocalBackend` too and checks it gives the same results.
"""

from __future__ import annotations

import signal
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

import search
import storage as st
from search import LocalBackend, SimulatedBackend, UsageError, parse_spec, resume_study, run_study
from trials import load_dataset

from . import fakes
from .conftest import GRID


def load(url: str, name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.create_storage(url))


def states(study: optuna.Study) -> Counter[str]:
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_runs_exactly_the_budget(make_spec, sqlite_url, strategy) -> None:
    res = run_study(make_spec(strategy=strategy, n_trials=7), storage=sqlite_url,
                    backend=SimulatedBackend(2), worker_fn=fakes.quadratic)
    study = load(sqlite_url)
    assert states(study) == {"COMPLETE": 7}
    assert res.done == 7 and res.best is not None
    best = study.best_trial
    assert best.user_attrs["fold_scores"] == [pytest.approx(best.value)] * 2
    assert len(best.intermediate_values) == 5  # one value per epoch
    assert study.user_attrs["test_result"]["trial"] == best.number
    assert res.best.test_score == pytest.approx(fakes.score_of(best.params))


def test_local_backend_gives_the_results_of_the_simulated_one(make_spec, fast_dir) -> None:
    """The in-process threads (a user-facing backend) and the virtual clock: the same grid study, the
    same trials, values and per-epoch values."""
    spec = make_spec(strategy="grid", n_trials=None, space=GRID)
    results = []
    for backend in (LocalBackend(2), SimulatedBackend(2)):
        url = f"sqlite:///{fast_dir}/{type(backend).__name__}.db"
        res = run_study(spec, storage=url, backend=backend, worker_fn=fakes.quadratic)
        trials = sorted(load(url).get_trials(deepcopy=False), key=lambda t: (t.params["lr"], t.params["batch_size"]))
        results.append((res.done, res.best.test_score if res.best else None,
                        [(t.state, t.params, t.value, t.intermediate_values, t.user_attrs["epochs"]) for t in trials]))
    assert results[0] == results[1]
    assert results[0][0] == 6


def test_grid_visits_every_point_once_and_stops(make_spec, sqlite_url) -> None:
    run_study(make_spec(strategy="grid", n_trials=None, space=GRID), storage=sqlite_url,
              backend=SimulatedBackend(2), worker_fn=fakes.quadratic)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    points = Counter((t.params["lr"], t.params["batch_size"]) for t in trials)
    assert len(trials) == 6 and set(points.values()) == {1}
    assert set(points) == {(lr, b) for lr in (0.001, 0.01, 0.1) for b in (32, 64)}


def test_median_pruner_prunes_bad_configs_early(make_spec, sqlite_url) -> None:
    space = {"lr": {"type": "categorical", "choices": [0.01, 1e-4]}}
    spec = make_spec(n_trials=12, seed=4, space=space, training={"max_epochs": 20},
                     pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the bad configuration (lr=1e-4) should be pruned"
    assert all(t.params["lr"] == 1e-4 for t in pruned)
    # pruned at step 1, the first the pruner judges (n_warmup_steps 1); the stop reaches the worker
    # at the next epoch boundary, so it trained exactly one epoch more, whose value is not recorded
    assert all(sorted(t.intermediate_values) == [1] and t.user_attrs["epochs"] == 2 for t in pruned), \
        [(t.number, sorted(t.intermediate_values), t.user_attrs["epochs"]) for t in pruned]
    assert all(t.params["lr"] == 0.01 for t in trials if t.state == TrialState.COMPLETE)


def test_failed_trial_is_retried_with_same_params_and_seed(make_spec, sqlite_url) -> None:
    run_study(make_spec(n_trials=3), storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.flaky)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(failed) == 3 and len(done) == 3
    for f in failed:
        assert f.user_attrs["will_retry"] is True and "flaky failure" in f.user_attrs["fail_reason"]
        (retry,) = [t for t in done if t.user_attrs.get("retry_of") == f.number]
        assert retry.params == f.params and retry.user_attrs["seed"] == f.user_attrs["seed"]


def test_deterministic_failure_stops_after_max_retries(make_spec, sqlite_url) -> None:
    """No trial completed: the API raises (before, it returned ``best=None`` and the README's own
    ``result.best.params`` raised AttributeError), as the CLI exits 4."""
    from search import NoTrialCompleted

    with pytest.raises(NoTrialCompleted, match="no trial of study 't' completed; `hpsearch show t` lists why") as e:
        run_study(make_spec(n_trials=2, retries={"max_retries": 1}), storage=sqlite_url,
                  backend=SimulatedBackend(1), worker_fn=fakes.broken)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    assert sum(not t.user_attrs.get("will_retry") for t in trials) == 2
    assert "always fails" in trials[-1].user_attrs["fail_reason"]
    assert e.value.study == "t" and e.value.result.done == 2 and e.value.result.best is None


def test_resume_runs_only_what_is_missing_and_does_not_replay_sampler(make_spec, sqlite_url) -> None:
    spec = make_spec(n_trials=4)
    run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic, refit=False)
    first = [t.params for t in load(sqlite_url).trials]
    res = resume_study("t", storage=sqlite_url, n_trials=8, backend=SimulatedBackend(1), worker_fn=fakes.quadratic)
    trials = load(sqlite_url).trials
    assert res.done == 8 and len(trials) == 8
    assert [t.params for t in trials[:4]] == first
    later = [t.params for t in trials[4:]]
    assert all(p not in first for p in later), "a resumed seeded sampler must not replay its first points"
    # running the finished study again runs nothing
    again = run_study(make_spec(n_trials=8), storage=sqlite_url, backend=SimulatedBackend(1),
                      worker_fn=fakes.quadratic)
    assert again.done == 8 and len(load(sqlite_url).trials) == 8


def test_orphaned_running_trials_are_failed_and_rerun_once(make_spec, sqlite_url) -> None:
    spec = make_spec(strategy="grid", n_trials=None, space=GRID)
    run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic, refit=False)
    # simulate a killed orchestrator: a fresh study of 6 points with 2 COMPLETE and 2 left RUNNING
    url2 = sqlite_url.replace("study.db", "killed.db")
    from search import make_pruner, make_sampler, parse_spec
    from search._strategies import distributions

    s = parse_spec(spec)
    study = optuna.create_study(storage=st.create_storage(url2), study_name="t", direction="maximize",
                                sampler=make_sampler(s), pruner=make_pruner(s))
    study.set_user_attr("hpsearch_spec", s.to_dict())
    for i in range(4):
        t = study.ask(distributions(s))
        t.set_user_attr("seed", 100 + i)
        if i < 2:
            study.tell(t, 0.5)
    run_study(spec, storage=url2, backend=SimulatedBackend(2), worker_fn=fakes.quadratic)
    trials = load(url2).get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    orphans = [t for t in trials if t.state == TrialState.FAIL]
    assert len(orphans) == 2
    assert all("orchestrator stopped" in t.user_attrs["fail_reason"] for t in orphans)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = Counter((t.params["lr"], t.params["batch_size"]) for t in complete)
    assert len(complete) == 6 and set(points.values()) == {1}
    for o in orphans:
        (rerun,) = [t for t in complete if t.user_attrs.get("retry_of") == o.number]
        assert rerun.params == o.params and rerun.user_attrs["seed"] == o.user_attrs["seed"]


def test_changed_spec_is_refused_with_a_diff(make_spec, sqlite_url) -> None:
    run_study(make_spec(n_trials=2), storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic)
    changed = make_spec(n_trials=2, training={"max_epochs": 6})
    with pytest.raises(UsageError, match=r"training.max_epochs: 5 -> 6"):
        run_study(changed, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic)


def test_resume_unknown_study(sqlite_url, make_spec) -> None:
    run_study(make_spec(n_trials=1), storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic)
    with pytest.raises(st.StudyNotFound, match="nope"):
        resume_study("nope", storage=sqlite_url, backend=SimulatedBackend(1))


def chain(trials: list[optuna.trial.FrozenTrial], first: optuna.trial.FrozenTrial) -> list[optuna.trial.FrozenTrial]:
    """``first`` and its re-runs, in order (``retry_of`` links)."""
    by_origin = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    out = [first]
    while out[-1].number in by_origin:
        out.append(by_origin[out[-1].number])
    return out


def test_an_interrupt_does_not_use_up_a_trials_retries(make_spec, sqlite_url) -> None:
    """Ctrl-C, resume, then the re-run fails by its own fault: with ``max_retries: 1`` it is still
    retried, since the interrupt was not the trial's failure."""
    from search import Callbacks, Interrupted

    class StopAtFirstEnd(Callbacks):
        sent = False

        def on_trial_end(self, trial, done, budget) -> None:  # type: ignore[no-untyped-def]
            if not self.sent:  # Ctrl-C once, when the first trial is told
                self.sent = True
                signal.raise_signal(signal.SIGINT)

    spec = make_spec(n_trials=4, retries={"max_retries": 1})
    # 2 lanes, trial 1 slower than trial 0: when trial 0 is told, trial 1 is in flight
    with pytest.raises(Interrupted):
        run_study(spec, storage=sqlite_url, backend=SimulatedBackend(2, epoch_s=lambda job: 1.0 + job.number),
                  worker_fn=fakes.fails_first_rerun, callbacks=StopAtFirstEnd(), refit=False)
    resume_study("t", storage=sqlite_url, backend=SimulatedBackend(2), worker_fn=fakes.fails_first_rerun, refit=False)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    assert states(load(sqlite_url))["COMPLETE"] == 4
    interrupted = [t for t in trials if "interrupted" in t.user_attrs.get("fail_reason", "")]
    assert [t.number for t in interrupted] == [1]
    for t in interrupted:
        first, rerun, again = chain(trials, t)
        assert rerun.state == TrialState.FAIL and "fails on its first re-run" in rerun.user_attrs["fail_reason"]
        assert (rerun.user_attrs["attempt"], rerun.user_attrs["failures"]) == (1, 0)
        assert again.state == TrialState.COMPLETE, "the interrupt used up the trial's one retry"
        assert (again.user_attrs["attempt"], again.user_attrs["failures"]) == (2, 1)
        assert again.params == first.params and again.user_attrs["seed"] == first.user_attrs["seed"]


@pytest.mark.parametrize("rerun_failures", [None, 0, 1])
def test_a_stopped_orchestrator_does_not_use_up_a_trials_retries(make_spec, sqlite_url, rerun_failures) -> None:
    """A trial left RUNNING by a killed orchestrator (``rerun_failures`` None), or one that failed and
    was marked for a re-run the orchestrator died before queueing: the recovery queues the re-run with
    the failures the trial had (``rerun_failures``), so with ``max_retries: 1`` one more own failure
    is retried exactly when none was counted before."""
    from search import make_pruner, make_sampler, parse_spec
    from search._strategies import distributions

    spec = make_spec(strategy="grid", n_trials=None, space=GRID, retries={"max_retries": 1})
    s = parse_spec(spec)
    study = optuna.create_study(storage=st.create_storage(sqlite_url), study_name="t", direction="maximize",
                                sampler=make_sampler(s), pruner=make_pruner(s))
    study.set_user_attr("hpsearch_spec", s.to_dict())
    left = study.ask(distributions(s))
    left.set_user_attr("seed", 7)
    if rerun_failures is not None:
        left.set_user_attr("fail_reason", "RuntimeError: boom")
        left.set_user_attr("will_retry", True)
        left.set_user_attr("rerun_failures", rerun_failures)
        study.tell(left, state=TrialState.FAIL)
    run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.fails_first_rerun, refit=False)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    first, rerun, *rest = chain(trials, trials[0])
    assert rerun.state == TrialState.FAIL and (rerun.user_attrs["attempt"], rerun.user_attrs["failures"]) == (
        1, rerun_failures or 0)
    if rerun_failures == 1:  # already failed once by its own fault: no second retry
        assert rest == [] and not rerun.user_attrs.get("will_retry")
    else:
        (again,) = rest
        assert again.state == TrialState.COMPLETE and again.params == first.params
        assert again.user_attrs["seed"] == 7


def test_out_of_memory_is_pruned_not_retried_and_tpe_learns_to_avoid_it(make_spec, sqlite_url) -> None:
    """A trial out of memory alone is PRUNED (reason kept, ``oom``), not re-run. Recorded FAIL,
    Optuna's TPE ignored it and proposed batch size 512 in 21-28 of the 30 trials after its 10
    random ones (seeds 0-5, measured when this changed); PRUNED, in 3-4 of 30."""
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
             "batch_size": {"type": "categorical", "choices": [16, 32, 64, 512]}}
    messages: list[str] = []

    from search.cli._progress import ProgressCallbacks

    class Rec(ProgressCallbacks):  # what the CLI prints, captured
        def on_message(self, text: str) -> None:
            messages.append(text)

    res = run_study(make_spec(strategy="tpe", n_trials=40, seed=0, space=space), storage=sqlite_url,
                    backend=SimulatedBackend(1), worker_fn=fakes.oom_at_512, callbacks=Rec(enabled=False),
                    refit=False)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    assert len(trials) == 40 and res.done == 40, "an out-of-memory trial is not re-run"
    oom = [t for t in trials if t.params["batch_size"] == 512]
    assert oom and all(t.state == TrialState.PRUNED and t.user_attrs["oom"] is True for t in oom)
    assert all("out of memory at batch_size=512" in t.user_attrs["fail_reason"] for t in oom)
    assert all(t.state == TrialState.COMPLETE for t in trials if t.params["batch_size"] != 512)
    after_startup = [t for t in trials if t.number >= 10]
    assert sum(t.params["batch_size"] == 512 for t in after_startup) <= 8, "TPE kept proposing the OOM size"
    assert any("recorded as PRUNED" in m and "batch_size=512" in m for m in messages), messages


def test_a_diverged_fold_fails_its_trial_not_the_run(make_spec, sqlite_url) -> None:
    """``metric: val_loss`` and a fold whose loss is nan: that trial is FAIL with the reason, the
    others complete (before: the run crashed computing the folds' spread, and so did every resume)."""
    space = {"lr": {"values": [0.01, 0.5]}}
    res = run_study(make_spec(strategy="grid", n_trials=None, space=space, metric="val_loss"), storage=sqlite_url,
                    backend=SimulatedBackend(1), worker_fn=fakes.diverges, refit=False)
    trials = {t.params["lr"]: t for t in load(sqlite_url).get_trials(deepcopy=False)}
    assert res.done == 2 and len(trials) == 2, "a diverged trial is not re-run"
    bad, good = trials[0.5], trials[0.01]
    assert bad.state == TrialState.FAIL and "val_loss is nan (training diverged)" in bad.user_attrs["fail_reason"]
    assert not bad.user_attrs.get("will_retry")
    assert good.state == TrialState.COMPLETE and good.user_attrs["value_std"] == 0.0


def test_resuming_a_finished_study_starts_no_backend(make_spec, sqlite_url) -> None:
    """Nothing to run or refit: no Ray start (seconds), no data loading; the summary as stored."""
    run_study(make_spec(n_trials=3), storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic)

    class Never(SimulatedBackend):
        def start(self) -> None:
            raise AssertionError("a finished study started its backend")

    res = resume_study("t", storage=sqlite_url, backend=Never(1), worker_fn=fakes.quadratic)
    assert res.done == 3 and res.best is not None and res.best.test_score is not None
    with pytest.raises(AssertionError, match="started its backend"):  # more budget: it does run
        resume_study("t", storage=sqlite_url, n_trials=4, backend=Never(1), worker_fn=fakes.quadratic)


def test_a_failed_refit_is_recorded_and_a_resume_does_not_redo_it(make_spec, sqlite_url) -> None:
    """Before: the finished search exited 1, and every resume started the backend, reloaded the data
    and failed the same way."""
    from click.testing import CliRunner

    from search import StudyResult
    from search.cli import main as cli

    res: StudyResult = run_study(make_spec(n_trials=2), storage=sqlite_url, backend=LocalBackend(1),
                                 worker_fn=fakes.refit_fails)
    assert res.done == 2 and res.best is not None and res.best.test_score is None
    assert res.refit_error == "RuntimeError: the refit ran out of disk"
    stored = load(sqlite_url).user_attrs["hpsearch_refit_error"]
    assert stored == {"trial": res.best.number, "reason": "RuntimeError: the refit ran out of disk"}

    def must_not_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the resume of a finished study ran a job")

    class NoStart(LocalBackend):
        def start(self) -> None:
            raise AssertionError("the resume of a finished study started its backend")

    again = resume_study("t", storage=sqlite_url, backend=NoStart(1), worker_fn=must_not_run)
    assert again.refit_error == res.refit_error
    out = CliRunner().invoke(cli, ["best", "t", "--storage", sqlite_url, "-o", "json"])
    assert out.exit_code == 0 and '"refit_error": "RuntimeError: the refit ran out of disk"' in out.output


def test_a_refit_that_never_ends_times_out_and_is_recorded(make_spec, sqlite_url) -> None:
    import threading

    release = threading.Event()

    def hangs(data, settings, job, report):  # type: ignore[no-untyped-def]
        if job.kind == "refit":
            release.wait(60)
        return fakes.quadratic(data, settings, job, report)

    class ShortRefit(search.Orchestrator):
        def refit_timeout_s(self) -> float:
            return 0.2

    spec = parse_spec(make_spec(n_trials=1))
    study = optuna.create_study(storage=sqlite_url, study_name="t", direction="maximize")
    backend = LocalBackend(1)
    backend.open(load_dataset(spec.data, spec.cv, spec.seed), spec.settings, hangs)
    try:
        orch = ShortRefit(study, spec, backend)
        orch.run()
        assert orch.refit_best() is None
    finally:
        release.set()
        backend.close()
    reason = study.user_attrs["hpsearch_refit_error"]["reason"]
    assert reason == "it did not finish within 0.2 s (ten times the longest trial, at least 10 minutes)"


def test_a_grid_runs_every_point_or_is_refused(make_spec, sqlite_url) -> None:
    """Before: n_trials below the grid size ran the first points, printed "2/2 done" and reported a best."""
    from search import SpecError

    with pytest.raises(SpecError, match="n_trials: 2 is below the grid's 6 points"):
        run_study(make_spec(strategy="grid", n_trials=2, space=GRID), storage=sqlite_url, backend=LocalBackend(1),
                  worker_fn=fakes.quadratic)
    run_study(make_spec(strategy="grid", n_trials=None, space=GRID), storage=sqlite_url, backend=LocalBackend(1),
              worker_fn=fakes.quadratic, refit=False)
    with pytest.raises(UsageError, match="--n-trials 3: study 't' is a grid of 6 points"):
        resume_study("t", storage=sqlite_url, n_trials=3, backend=LocalBackend(1), worker_fn=fakes.quadratic)


def test_a_missing_data_file_is_said_before_the_backend_starts(make_spec, sqlite_url, tmp_path) -> None:
    """Before, "file not found" came after Ray had started (8-10 s in)."""
    from trials import DataError

    class NoStart(LocalBackend):
        def start(self) -> None:
            raise AssertionError("the backend started before the data was checked")

    spec = make_spec(data={"source": "csv", "path": str(tmp_path / "missing.csv"), "target": "y"})
    with pytest.raises(DataError, match=r"missing\.csv"):
        run_study(spec, storage=sqlite_url, backend=NoStart(1), worker_fn=fakes.quadratic)
    assert "t" not in [s.study_name for s in optuna.get_all_study_summaries(sqlite_url)], "no empty study left"


def test_a_finished_study_with_a_queued_re_run_it_no_longer_needs_does_not_start(make_spec, sqlite_url) -> None:
    """Before, any WAITING trial (a re-run queued before the budget was lowered) made every resume
    start the backend and load the data, to do nothing."""
    run_study(make_spec(n_trials=2), storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic)
    study = load(sqlite_url)
    study.enqueue_trial(study.trials[0].params, user_attrs={"retry_of": 0})

    class NoStart(LocalBackend):
        def start(self) -> None:
            raise AssertionError("the resume of a finished study started its backend")

    res = resume_study("t", storage=sqlite_url, backend=NoStart(1), worker_fn=fakes.quadratic)
    assert res.done == 2


def test_the_original_class_labels_are_stored_with_the_study(make_spec, sqlite_url, tmp_path) -> None:
    """String labels train (before: refused, "encode classes as integers"); their classes, in code order,
    are a study attribute, so a prediction's code maps back to the user's label."""
    import numpy as np
    import pandas as pd

    from storage import StudyAttr
    from trials import decode_labels

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(80, 3)), columns=["a", "b", "c"]).assign(kind=["yes", "no"] * 40)
    df.to_csv(tmp_path / "d.csv", index=False)
    spec = make_spec(n_trials=2, data={"source": "csv", "path": str(tmp_path / "d.csv"), "target": "kind"})
    run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic)
    classes = load(sqlite_url).user_attrs[StudyAttr.CLASSES]
    assert classes == ["no", "yes"]
    assert decode_labels(np.array([1, 0]), classes).tolist() == ["yes", "no"]


@pytest.mark.parametrize(("metric", "direction"), [("val_r2", "maximize"), ("val_mae", "minimize")])
def test_a_regression_study_scores_folds_and_the_test_split_in_its_metric(
        make_spec, sqlite_url, metric, direction) -> None:
    """diabetes (bundled) end to end on real training: direction from the metric, per-fold scores, their
    std, learning curves of every metric, and the test score in the study's metric."""
    from search.inspect import best_of, show_study

    spec = make_spec(task="regression", metric=metric, n_trials=2, data={"source": "diabetes"},
                     space={"lr": {"type": "float", "low": 0.003, "high": 0.01, "log": True}},
                     model={"hidden": [16], "dropout": 0.0},
                     training={"max_epochs": 4, "optimizer": "adam", "monitor": metric})
    run_study(spec, storage=sqlite_url, backend=LocalBackend(1))
    study = load(sqlite_url)
    assert study.direction.name.lower() == direction
    assert show_study("t", sqlite_url)["direction"] == direction
    best = best_of("t", sqlite_url)
    assert len(best["fold_scores"]) == 2 and best["value"] == pytest.approx(sum(best["fold_scores"]) / 2)
    assert best["value_std"] > 0
    trial = study.best_trial
    assert set(trial.user_attrs["curves"]) == {"train_loss", "val_loss", "val_mse", "val_mae", "val_r2"}
    assert len(trial.intermediate_values) == trial.user_attrs["epochs"]
    test = best["test_result"]
    assert test["metric"] == metric.replace("val_", "test_") and best["test_score"] == test[test["metric"]]
    assert {"test_mse", "test_mae", "test_r2", "test_loss"} <= set(test) and test["test_accuracy"] is None
    assert test["test_mse"] > 0


def test_a_study_stored_before_task_and_loss_existed_resumes_with_its_file(make_spec, sqlite_url) -> None:
    """Specs stored before `task` and `training.loss` were keys lack them: the same study file still
    resumes (the stored spec reads them as their defaults), and does not count as a changed spec."""
    spec = make_spec(n_trials=2)
    run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic, refit=False)
    study = load(sqlite_url)
    old = dict(study.user_attrs["hpsearch_spec"])
    old.pop("task")
    old["training"] = {k: v for k, v in old["training"].items() if k != "loss"}
    study.set_user_attr("hpsearch_spec", old)
    res = run_study(make_spec(n_trials=3), storage=sqlite_url, backend=SimulatedBackend(1),
                    worker_fn=fakes.quadratic, refit=False)
    assert res.done == 3


def test_a_maximized_classification_metric_drives_values_curves_pruning_and_the_test_score(
        make_spec, sqlite_url) -> None:
    """metric val_f1_macro on real training: the trial value is the mean of the folds' F1 at their
    restored epochs, the per-epoch values the pruner sees are the folds' mean F1, and the test score is
    the test F1."""
    spec = make_spec(metric="val_f1_macro", n_trials=3, model={"hidden": [16]},
                     space={"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
                     training={"max_epochs": 3, "monitor": "val_f1_macro"},
                     pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    run_study(spec, storage=sqlite_url, backend=LocalBackend(1))
    study = load(sqlite_url)
    assert study.direction.name.lower() == "maximize"
    for t in study.get_trials(deepcopy=False):
        curves = t.user_attrs["curves"]["val_f1_macro"]
        for step, value in t.intermediate_values.items():
            assert value == pytest.approx(sum(c[min(step, len(c)) - 1] for c in curves) / len(curves), abs=1e-5)
        if t.state == TrialState.COMPLETE:
            best = [c[e - 1] for c, e in zip(curves, t.user_attrs["fold_epochs"])]
            assert t.user_attrs["fold_scores"] == pytest.approx(best, abs=1e-5)
            assert t.value == pytest.approx(sum(best) / len(best), abs=1e-5)
    test = study.user_attrs["test_result"]
    assert test["metric"] == "test_f1_macro" and test["test_score"] == test["test_f1_macro"]
    assert 0.5 < test["test_f1_macro"] <= 1.0 and test["test_accuracy"] is not None
