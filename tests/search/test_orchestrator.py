"""The ask/tell loop on the in-process backend: budgets, grid, pruning, retries, recovery, resume."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

import storage as st
from search import LocalBackend, UsageError, resume_study, run_study

from . import fakes
from .conftest import GRID


def load(url: str, name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.create_storage(url))


def states(study: optuna.Study) -> Counter[str]:
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_runs_exactly_the_budget(make_spec, sqlite_url, strategy) -> None:
    res = run_study(make_spec(strategy=strategy, n_trials=7), storage=sqlite_url,
                    backend=LocalBackend(2), worker_fn=fakes.quadratic)
    study = load(sqlite_url)
    assert states(study) == {"COMPLETE": 7}
    assert res.done == 7 and res.best is not None
    best = study.best_trial
    assert best.user_attrs["fold_scores"] == [pytest.approx(best.value)] * 2
    assert len(best.intermediate_values) == 5  # one value per epoch
    assert study.user_attrs["test_result"]["trial"] == best.number
    assert res.best.test_score == pytest.approx(fakes.score_of(best.params))


def test_grid_visits_every_point_once_and_stops(make_spec, sqlite_url) -> None:
    run_study(make_spec(strategy="grid", n_trials=None, space=GRID), storage=sqlite_url,
              backend=LocalBackend(2), worker_fn=fakes.quadratic)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    points = Counter((t.params["lr"], t.params["batch_size"]) for t in trials)
    assert len(trials) == 6 and set(points.values()) == {1}
    assert set(points) == {(lr, b) for lr in (0.001, 0.01, 0.1) for b in (32, 64)}


def test_median_pruner_prunes_bad_configs_early(make_spec, sqlite_url, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_EPOCH_S", "0.01")
    space = {"lr": {"type": "categorical", "choices": [0.01, 1e-4]}}
    spec = make_spec(n_trials=12, seed=4, space=space, training={"max_epochs": 20},
                     pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    run_study(spec, storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.quadratic)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the bad configuration (lr=1e-4) should be pruned"
    assert all(t.params["lr"] == 1e-4 for t in pruned)
    assert all(t.user_attrs["epochs"] < 20 for t in pruned)
    assert all(t.params["lr"] == 0.01 for t in trials if t.state == TrialState.COMPLETE)


def test_failed_trial_is_retried_with_same_params_and_seed(make_spec, sqlite_url) -> None:
    run_study(make_spec(n_trials=3), storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.flaky)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(failed) == 3 and len(done) == 3
    for f in failed:
        assert f.user_attrs["will_retry"] is True and "flaky failure" in f.user_attrs["fail_reason"]
        (retry,) = [t for t in done if t.user_attrs.get("retry_of") == f.number]
        assert retry.params == f.params and retry.user_attrs["seed"] == f.user_attrs["seed"]


def test_deterministic_failure_stops_after_max_retries(make_spec, sqlite_url) -> None:
    res = run_study(make_spec(n_trials=2, retries={"max_retries": 1}), storage=sqlite_url,
                    backend=LocalBackend(1), worker_fn=fakes.broken)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    assert sum(not t.user_attrs.get("will_retry") for t in trials) == 2
    assert "always fails" in trials[-1].user_attrs["fail_reason"]
    assert res.done == 2 and res.best is None


def test_resume_runs_only_what_is_missing_and_does_not_replay_sampler(make_spec, sqlite_url) -> None:
    spec = make_spec(n_trials=4)
    run_study(spec, storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.quadratic, refit=False)
    first = [t.params for t in load(sqlite_url).trials]
    res = resume_study("t", storage=sqlite_url, n_trials=8, backend=LocalBackend(1), worker_fn=fakes.quadratic)
    trials = load(sqlite_url).trials
    assert res.done == 8 and len(trials) == 8
    assert [t.params for t in trials[:4]] == first
    later = [t.params for t in trials[4:]]
    assert all(p not in first for p in later), "a resumed seeded sampler must not replay its first points"
    # running the finished study again runs nothing
    again = run_study(make_spec(n_trials=8), storage=sqlite_url, backend=LocalBackend(1),
                      worker_fn=fakes.quadratic)
    assert again.done == 8 and len(load(sqlite_url).trials) == 8


def test_orphaned_running_trials_are_failed_and_rerun_once(make_spec, sqlite_url) -> None:
    spec = make_spec(strategy="grid", n_trials=None, space=GRID)
    run_study(spec, storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.quadratic, refit=False)
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
    run_study(spec, storage=url2, backend=LocalBackend(2), worker_fn=fakes.quadratic)
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
    run_study(make_spec(n_trials=2), storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.quadratic)
    changed = make_spec(n_trials=2, training={"max_epochs": 6})
    with pytest.raises(UsageError, match=r"training.max_epochs: 5 -> 6"):
        run_study(changed, storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.quadratic)


def test_resume_unknown_study(sqlite_url, make_spec) -> None:
    run_study(make_spec(n_trials=1), storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.quadratic)
    with pytest.raises(st.StudyNotFound, match="nope"):
        resume_study("nope", storage=sqlite_url, backend=LocalBackend(1))


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
                raise KeyboardInterrupt

    spec = make_spec(n_trials=4, retries={"max_retries": 1})
    # 2 lanes: when the first trial is told, the other lane's trial is in flight
    with pytest.raises(Interrupted):
        run_study(spec, storage=sqlite_url, backend=LocalBackend(2), worker_fn=fakes.fails_first_rerun,
                  callbacks=StopAtFirstEnd(), refit=False)
    resume_study("t", storage=sqlite_url, backend=LocalBackend(2), worker_fn=fakes.fails_first_rerun, refit=False)
    trials = load(sqlite_url).get_trials(deepcopy=False)
    assert states(load(sqlite_url))["COMPLETE"] == 4
    interrupted = [t for t in trials if "interrupted" in t.user_attrs.get("fail_reason", "")]
    assert interrupted
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
    run_study(spec, storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.fails_first_rerun, refit=False)
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

    from search._progress import ProgressCallbacks

    class Rec(ProgressCallbacks):  # what the CLI prints, captured
        def on_message(self, text: str) -> None:
            messages.append(text)

    res = run_study(make_spec(strategy="tpe", n_trials=40, seed=0, space=space), storage=sqlite_url,
                    backend=LocalBackend(1), worker_fn=fakes.oom_at_512, callbacks=Rec(enabled=False),
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
                    backend=LocalBackend(1), worker_fn=fakes.diverges, refit=False)
    trials = {t.params["lr"]: t for t in load(sqlite_url).get_trials(deepcopy=False)}
    assert res.done == 2 and len(trials) == 2, "a diverged trial is not re-run"
    bad, good = trials[0.5], trials[0.01]
    assert bad.state == TrialState.FAIL and "val_loss is nan (training diverged)" in bad.user_attrs["fail_reason"]
    assert not bad.user_attrs.get("will_retry")
    assert good.state == TrialState.COMPLETE and good.user_attrs["value_std"] == 0.0


def test_resuming_a_finished_study_starts_no_backend(make_spec, sqlite_url) -> None:
    """Nothing to run or refit: no Ray start (seconds), no data loading; the summary as stored."""
    run_study(make_spec(n_trials=3), storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.quadratic)

    class Never(LocalBackend):
        def start(self) -> None:
            raise AssertionError("a finished study started its backend")

    res = resume_study("t", storage=sqlite_url, backend=Never(1), worker_fn=fakes.quadratic)
    assert res.done == 3 and res.best is not None and res.best.test_score is not None
    with pytest.raises(AssertionError, match="started its backend"):  # more budget: it does run
        resume_study("t", storage=sqlite_url, n_trials=4, backend=Never(1), worker_fn=fakes.quadratic)
