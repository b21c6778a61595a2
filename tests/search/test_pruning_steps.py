"""Pruning judged at each reported step, even when several epochs arrive in one poll; and the
progress bar's best value of a resumed study."""

from __future__ import annotations

import statistics

import optuna
import pytest
from optuna.trial import TrialState

import storage as st
from search import SimulatedBackend, run_study
from search.backends import Event, Report
from search.cli._progress import ProgressCallbacks

from . import fakes

EPOCHS = 5
# score 1.0 (lr=0.01) or 0.05 (lr=1e-4) times epoch / EPOCHS: a bad trial is below the median at every step
SPACE = {"lr": {"type": "categorical", "choices": [0.01, 1e-4]}}


class BatchingBackend(SimulatedBackend):
    """Holds a job's reports back until its outcome, then delivers them all in one poll: the
    orchestrator sees every epoch of a trial at once, as from a worker that outran its polls
    (too late for a stop: the job has ended)."""

    def __init__(self, max_concurrent: int = 1) -> None:
        super().__init__(max_concurrent)
        self._held: dict[str, list[Event]] = {}

    def poll(self, timeout: float) -> list[Event]:
        out: list[Event] = []
        for ev in super().poll(timeout):
            if isinstance(ev, Report):
                self._held.setdefault(ev.key, []).append(ev)
            else:
                out += [*self._held.pop(ev.key, []), ev]
        return out


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=st.create_storage(url)).get_trials(deepcopy=False)


def test_a_batch_of_reports_is_pruned_at_its_first_pruned_step(make_spec, sqlite_url) -> None:
    # the median pruner may prune from step 2 on; the worker ran all epochs before any was seen
    spec = make_spec(n_trials=12, seed=4, space=SPACE, training={"max_epochs": EPOCHS},
                     pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 2})
    run_study(spec, storage=sqlite_url, backend=BatchingBackend(1), worker_fn=fakes.quadratic, refit=False)
    trials = trials_of(sqlite_url, "t")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the bad configuration (lr=1e-4) should be pruned"
    for t in pruned:
        assert t.params["lr"] == 1e-4 and t.user_attrs["epochs"] == EPOCHS  # trained on: no stop in time
        assert sorted(t.intermediate_values) == [1, 2], "values after the pruned step were recorded"
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1))


def test_a_prune_decision_at_the_last_epoch_is_ignored(make_spec, sqlite_url) -> None:
    # n_warmup_steps=EPOCHS: the median pruner may prune only at the last epoch
    spec = make_spec(n_trials=10, seed=4, space=SPACE, training={"max_epochs": EPOCHS},
                     pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": EPOCHS})
    run_study(spec, storage=sqlite_url, backend=SimulatedBackend(1), worker_fn=fakes.quadratic, refit=False)
    trials = trials_of(sqlite_url, "t")
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert all(sorted(t.intermediate_values) == list(range(1, EPOCHS + 1)) for t in trials)

    # the pruner would have pruned a bad trial: below the median of the trials complete before it
    def would_prune(t: optuna.trial.FrozenTrial) -> bool:
        before = [u.intermediate_values[EPOCHS] for u in trials if u.number < t.number]
        return len(before) >= 2 and t.intermediate_values[EPOCHS] < statistics.median(before)

    assert any(would_prune(t) for t in trials if t.params["lr"] == 1e-4)
    assert all(t.value == pytest.approx(fakes.score_of(t.params)) for t in trials)


def test_pruning_a_batch_stops_one_trial_of_a_stack(make_spec, sqlite_url) -> None:
    spec = make_spec(n_trials=12, seed=4, space=SPACE, training={"max_epochs": EPOCHS},
                     resources={"stack_trials": 2},
                     pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 2})
    run_study(spec, storage=sqlite_url, backend=BatchingBackend(1), worker_fn=fakes.stackable, refit=False)
    trials = trials_of(sqlite_url, "t")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(sorted(t.intermediate_values) == [1, 2] for t in pruned)
    assert all(sorted(t.intermediate_values) == list(range(1, EPOCHS + 1)) for t in complete)
    mixed = [(p, c) for p in pruned for c in complete
             if p.user_attrs["stack_size"] == 2 and c.user_attrs["train_path"] == p.user_attrs["train_path"]]
    assert mixed, "no stack had one trial pruned and its mate complete"
    assert all(p.params["lr"] == 1e-4 and c.params["lr"] == 0.01 for p, c in mixed)


def test_successive_halving_sees_the_rungs_of_earlier_steps_of_a_batch(make_spec, sqlite_url) -> None:
    # rungs at steps 1 and 3 (min_resource 1, reduction_factor 3); a plain Optuna loop records each
    # rung once, with the value at its step: a later step of the batch must not redo rung 0
    spec = make_spec(n_trials=8, seed=4, space=SPACE, training={"max_epochs": EPOCHS},
                     pruner={"type": "successive_halving", "min_resource": 1, "reduction_factor": 3})
    run_study(spec, storage=sqlite_url, backend=BatchingBackend(1), worker_fn=fakes.quadratic, refit=False)
    trials = trials_of(sqlite_url, "t")
    assert any("completed_rung_1" in t.system_attrs for t in trials)
    for t in trials:
        for rung, step in ((0, 1), (1, 3)):
            if f"completed_rung_{rung}" in t.system_attrs:
                assert t.system_attrs[f"completed_rung_{rung}"] == t.intermediate_values[step]


@pytest.mark.parametrize(("direction", "best"), [("maximize", 0.9), ("minimize", 0.2)])
def test_progress_starts_from_the_stored_best(direction: str, best: float) -> None:
    study = optuna.create_study(direction=direction)
    for v in (0.5, 0.9, 0.2):
        study.add_trial(optuna.trial.create_trial(value=v))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, intermediate_values={1: 5.0}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    with ProgressCallbacks(enabled=True) as cb:
        cb.on_start(study, 5, 10, "here")
        assert cb._best == best
        assert cb._progress is not None and cb._progress.tasks[0].fields["best"] == f"best {best:.4g}"


def test_progress_of_a_study_without_complete_trials_has_no_best() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    cb = ProgressCallbacks(enabled=False)
    cb.on_start(study, 1, 2, "here")
    assert cb._best is None
