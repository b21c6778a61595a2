"""Several trials as one stack (resources.stack_trials), on the simulated backend (virtual clock:
exact epochs and orders), one test on the in-process threads too.

The stack fake runs each job like ``fakes.quadratic`` and tags the results with the stack they
ran in, so these tests check the orchestrator's grouping, budget and recovery, not the training
(tests/trials and the Ray end-to-end test check that).
"""

from __future__ import annotations

import signal
from collections import Counter, defaultdict

import optuna
import pytest
from optuna.trial import TrialState

import storage as st
from search import (
    Callbacks,
    Interrupted,
    LocalBackend,
    NoTrialCompleted,
    SimulatedBackend,
    parse_spec,
    resume_study,
    run_study,
)

from . import fakes
from .resume_checks import check_invariants, snapshot

# 8 points, 2 batch sizes: trials can share a stack only with the same batch size
SPACE = {"lr": {"values": [0.001, 0.003, 0.01, 0.03]}, "batch_size": {"choices": [32, 64]}}
POINTS = [(lr, b) for lr in (0.001, 0.003, 0.01, 0.03) for b in (32, 64)]


def spec(stack: int, **kw: object) -> dict:
    out = {"name": "s", "strategy": "grid", "seed": 3, "space": SPACE, "data": {"source": "digits"},
           "training": {"max_epochs": 3}, "cv": {"folds": 2}, "resources": {"stack_trials": stack}}
    out.update(kw)
    return out


def trials_of(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="s", storage=st.create_storage(url)).get_trials(deepcopy=False)


def stacks(trials: list[optuna.trial.FrozenTrial]) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list[optuna.trial.FrozenTrial]] = defaultdict(list)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out[t.user_attrs["train_path"]].append(t)
    return out


@pytest.mark.parametrize(("backend", "lanes"), [(SimulatedBackend, 1), (SimulatedBackend, 2), (LocalBackend, 2)])
def test_grid_trials_share_stacks_by_batch_size(sqlite_url, backend, lanes) -> None:
    run_study(spec(4), storage=sqlite_url, backend=backend(lanes), worker_fn=fakes.stackable, refit=False)
    trials = trials_of(sqlite_url)
    check_invariants(trials, budget=8, seed=3, grid=POINTS)
    assert len(trials) == 8  # nothing ran twice
    groups = stacks(trials)
    for members in groups.values():
        assert len({t.params["batch_size"] for t in members}) == 1, "a stack mixes batch sizes"
        assert 1 <= len(members) <= 4
        assert {t.user_attrs["stack_size"] for t in members} == {len(members)}
    assert max(len(m) for m in groups.values()) >= 2, "nothing was stacked"
    assert len(groups) < 8


def test_stack_trials_1_runs_one_trial_per_task(sqlite_url) -> None:
    run_study(spec(1), storage=sqlite_url, backend=SimulatedBackend(2), worker_fn=fakes.stackable, refit=False)
    trials = trials_of(sqlite_url)
    assert len(trials) == 8 and all(t.user_attrs["stack_size"] == 1 for t in trials)


def test_random_budget_is_exact_with_a_partial_last_stack(sqlite_url) -> None:
    s = spec(3, strategy="random", n_trials=7,
             space={"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}})
    run_study(s, storage=sqlite_url, backend=SimulatedBackend(2), worker_fn=fakes.stackable, refit=False)
    trials = trials_of(sqlite_url)
    assert Counter(t.state.name for t in trials) == {"COMPLETE": 7}
    assert sorted(len(m) for m in stacks(trials).values()) == [1, 3, 3]


@pytest.mark.parametrize("max_retries", [0, 1])
def test_a_failed_stack_reruns_its_trials_alone(sqlite_url, max_retries) -> None:
    """Whatever retries.max_retries says: the failure may be a stack-mate's."""
    messages: list[str] = []

    class Rec(Callbacks):
        def on_message(self, text: str) -> None:
            messages.append(text)

    s = spec(4, retries={"max_retries": max_retries})
    run_study(s, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.stack_breaks, callbacks=Rec(),
              refit=False)
    trials = trials_of(sqlite_url)
    checked = check_invariants(trials, budget=8, seed=3, grid=POINTS)
    assert checked.failed, "the stacks should have failed"
    assert all("stack of" in t.user_attrs["fail_reason"] for t in checked.failed)
    assert all(t.user_attrs.get("alone") is True for t in checked.retries)
    assert all(t.user_attrs["stack_size"] == 1 for t in checked.complete)
    assert any("running it again alone" in m for m in messages)


def test_interrupt_records_ready_trials_and_resume_runs_each_once(sqlite_url) -> None:
    """Ctrl-C while trials wait to fill a stack: they are recorded like running ones (FAIL, one
    queued re-run each) and the resume completes the grid with nothing run twice."""

    class StopAfterFirst(Callbacks):
        def __init__(self) -> None:
            self.sent = False
            self.started: set[int] = set()
            self.ended: list[int] = []
            self.messages: list[str] = []

        def on_trial_start(self, number, params) -> None:  # type: ignore[no-untyped-def]
            self.started.add(number)

        def on_trial_end(self, trial, done, budget) -> None:  # type: ignore[no-untyped-def]
            self.ended.append(trial.number)
            if not self.sent:  # Ctrl-C once, when the first trial is told
                self.sent = True
                signal.raise_signal(signal.SIGINT)

        def on_message(self, text: str) -> None:
            self.messages.append(text)

    # 1 lane and a pool of 4 over 4 batch sizes x 2 learning rates: a stack holds at most the 2
    # points of one batch size, so 2 pooled trials have not started when Ctrl-C comes.
    space = {"lr": {"values": [0.001, 0.01]}, "batch_size": {"choices": [16, 32, 64, 128]}}
    points = [(lr, b) for lr in (0.001, 0.01) for b in (16, 32, 64, 128)]
    cb = StopAfterFirst()
    with pytest.raises(Interrupted):
        run_study(spec(4, space=space), storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.stackable,
                  callbacks=cb, refit=False)
    trials = trials_of(sqlite_url)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    waited = [t for t in trials if "before it started" in t.user_attrs.get("fail_reason", "")]
    assert len(waited) == 2, [t.user_attrs.get("fail_reason") for t in trials]
    # callbacks pair up: a trial that never started gets no on_trial_end, one message names them all
    assert set(cb.ended) <= cb.started and not {t.number for t in waited} & cb.started
    names = ", ".join(str(t.number) for t in sorted(waited, key=lambda t: t.number))
    assert any(f"trials {names} had not started" in m for m in cb.messages), cb.messages
    # waiting was not the trials' failure: their re-runs keep every retry
    assert all(t.user_attrs["rerun_failures"] == 0 for t in waited)
    before = snapshot(trials)
    resume_study("s", storage=sqlite_url, backend=SimulatedBackend(2), worker_fn=fakes.stackable, refit=False)
    check_invariants(trials_of(sqlite_url), budget=8, seed=3, grid=points, before=before)


def test_stack_trials_with_parallel_folds_is_refused() -> None:
    with pytest.raises(ValueError, match=r"stack_trials: 2 cannot be combined with resources\.parallel_folds"):
        parse_spec(spec(2, resources={"stack_trials": 2, "parallel_folds": True}))


@pytest.mark.parametrize(("can_stack", "fn", "why"), [
    (True, fakes.quadratic, "worker function quadratic cannot train several trials"),
    (False, fakes.stackable, "SimulatedBackend cannot run stacks"),
])
def test_without_a_stack_function_or_backend_support_trials_run_alone(sqlite_url, can_stack, fn, why) -> None:
    messages: list[str] = []

    class Rec(Callbacks):
        def on_message(self, text: str) -> None:
            messages.append(text)

    run_study(spec(4), storage=sqlite_url, backend=SimulatedBackend(2, can_stack=can_stack), worker_fn=fn,
              callbacks=Rec(), refit=False)
    assert all(t.user_attrs["stack_size"] == 1 for t in trials_of(sqlite_url))
    assert any("stack_trials: 4 ignored" in m and why in m for m in messages), messages


@pytest.mark.parametrize("max_retries", [0, 1])
def test_a_rerun_alone_stays_alone_when_it_fails_again(sqlite_url, max_retries) -> None:
    """The stack's failure is not counted as the trial's; its own failure alone is, against max_retries."""
    try:
        run_study(spec(4, retries={"max_retries": max_retries}), storage=sqlite_url, backend=SimulatedBackend(1),
                  worker_fn=fakes.second_fails_alone, refit=False)
    except NoTrialCompleted:  # max_retries 0: every trial failed, as the test means
        assert max_retries == 0
    trials = trials_of(sqlite_url)
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert all(t.user_attrs.get("alone") is True for t in retries)
    first_reruns = [t for t in retries if t.user_attrs["attempt"] == 1]
    assert len(first_reruns) == 8 and all(t.user_attrs["failures"] == 0 for t in first_reruns)
    if max_retries == 0:  # the failure alone is final
        assert Counter(t.state.name for t in trials) == {"FAIL": 16}
        assert all(not t.user_attrs.get("will_retry") for t in first_reruns)
    else:
        assert Counter(t.state.name for t in trials)["COMPLETE"] == 8
        assert {(t.user_attrs["attempt"], t.user_attrs["failures"]) for t in retries} == {(1, 0), (2, 1)}
        assert all(t.user_attrs["stack_size"] == 1 for t in trials if t.state == TrialState.COMPLETE)


def test_a_stack_function_returning_too_few_results_fails_its_trials_not_the_run(sqlite_url) -> None:
    run_study(spec(4), storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.stack_short, refit=False)
    checked = check_invariants(trials_of(sqlite_url), budget=8, seed=3, grid=POINTS)
    assert checked.failed and all("the stack function returned" in t.user_attrs["fail_reason"]
                                  for t in checked.failed)


def test_pruning_stops_one_trial_of_a_stack(sqlite_url) -> None:
    # the lower the lr, the worse (fakes.score_of): the median pruner stops the worse half
    s = spec(4, strategy="random", n_trials=16, space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
             training={"max_epochs": 12}, pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    run_study(s, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.stackable, refit=False)
    trials = trials_of(sqlite_url)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # pruned at step 1, the first the pruner judges; the stop reaches the stack at the next epoch
    # boundary, so that trial trained exactly 2 epochs, the second not recorded
    assert pruned and all(sorted(t.intermediate_values) == [1] and t.user_attrs["epochs"] == 2 for t in pruned), \
        [(t.number, sorted(t.intermediate_values), t.user_attrs["epochs"]) for t in pruned]
    assert any(t.user_attrs["stack_size"] > 1 for t in pruned), "no trial was pruned inside a stack"
    # its stack-mates ran on: each stack with a pruned trial also has a trial that ran all epochs
    for p in pruned:
        mates = [t for t in complete if t.user_attrs["train_path"] == p.user_attrs["train_path"]]
        assert all(t.user_attrs["epochs"] == 12 for t in mates)
    assert any(t.user_attrs["train_path"] == p.user_attrs["train_path"] for p in pruned for t in complete)
    assert max(t.params["lr"] for t in pruned) < max(t.params["lr"] for t in complete)
