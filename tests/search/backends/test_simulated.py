"""SimulatedBackend: the real worker functions on a virtual clock (no threads, no sleeps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import pytest

import search
import search.backends
import storage as st
from search import Failed, Finished, Report, SimulatedBackend, TrialJob, run_study
from search.backends import Event
from trials import CVSpec, EpochReport, TrainingSpec, TrialSettings

from .. import fakes

EPOCHS = 4
SETTINGS = TrialSettings(training=TrainingSpec(max_epochs=EPOCHS), cv=CVSpec(folds=2))


def job(number: int, lr: float = 0.01, attempt: int = 0) -> TrialJob:
    return TrialJob(key=f"{number}.{attempt}", number=number, params={"lr": lr}, seed=number, attempt=attempt)


def opened(fn: Callable[..., Any] = fakes.quadratic, **kw: Any) -> SimulatedBackend:
    b = SimulatedBackend(**kw)
    b.open(None, SETTINGS, fn)  # type: ignore[arg-type]  # the fakes do not read the data
    return b


def drain(b: SimulatedBackend, on_poll: Callable[[float, list[Event]], None] | None = None,
          timeout: float = 100.0) -> list[tuple[float, Event]]:
    """Every event until none is due within ``timeout``, with the virtual time it came at."""
    out: list[tuple[float, Event]] = []
    while True:
        events = b.poll(timeout)
        if not events:
            return out
        out += [(b.now(), ev) for ev in events]
        if on_poll is not None:
            on_poll(b.now(), events)


def brief(ev: Event) -> tuple[str, str, int | str | None]:
    if isinstance(ev, Report):
        return ("report", ev.key, ev.report.epoch)
    if isinstance(ev, Finished):
        return ("finished", ev.key, ev.result.epochs_run)
    return ("failed", ev.key, ev.kind)


def test_events_come_in_time_order_ties_in_submission_order() -> None:
    b = opened(max_concurrent=2, epoch_s=lambda j: 1.0 if j.number == 0 else 1.5)
    b.submit(job(0))
    b.submit(job(1))
    got = [(t, brief(ev)) for t, ev in drain(b)]
    assert got == [
        (1.0, ("report", "0.0", 1)), (1.5, ("report", "1.0", 1)), (2.0, ("report", "0.0", 2)),
        (3.0, ("report", "0.0", 3)), (3.0, ("report", "1.0", 2)),  # a tie: the first submitted first
        (4.0, ("report", "0.0", 4)), (4.0, ("finished", "0.0", 4)),
        (4.5, ("report", "1.0", 3)), (6.0, ("report", "1.0", 4)), (6.0, ("finished", "1.0", 4)),
    ]
    assert b.now() == 106.0, "after the last event, a poll with nothing due moves the clock by its timeout"


def test_poll_returns_what_is_due_by_the_new_time_only() -> None:
    b = opened(epoch_s=2.0)
    b.submit(job(0))
    assert b.poll(0.5) == [] and b.now() == 0.5, "nothing due within the timeout: the clock moves by it"
    assert b.poll(1.0) == [] and b.now() == 1.5
    (ev,) = b.poll(1.0)  # due at 2.0, within the timeout: the clock goes there exactly
    assert brief(ev) == ("report", "0.0", 1) and b.now() == 2.0


@pytest.mark.parametrize("fn", [fakes.quadratic, fakes.broken, fakes.oom_at_512, fakes.flaky])
def test_a_jobs_reports_come_before_its_outcome_and_failures_are_those_of_execute(fn) -> None:
    b = opened(fn, max_concurrent=3)
    jobs = [job(0), TrialJob("1.0", 1, {"lr": 0.01, "batch_size": 512}, 1), job(2)]
    for j in jobs:
        b.submit(j)
    events = [ev for _, ev in drain(b)]
    for j in jobs:
        mine = [ev for ev in events if ev.key == j.key]
        *reports, outcome = mine
        assert all(isinstance(r, Report) for r in reports) and not isinstance(outcome, Report)
    outcomes = {ev.key: ev for ev in events if not isinstance(ev, Report)}
    if fn is fakes.quadratic:
        assert all(isinstance(ev, Finished) and ev.result.epochs_run == EPOCHS for ev in outcomes.values())
        assert all((ev.node, ev.started_at, ev.finished_at) == ("simulated", 0.0, EPOCHS) for ev in outcomes.values())
        assert all(ev.result.duration_s == EPOCHS for ev in outcomes.values()), "virtual seconds"
    elif fn is fakes.broken or fn is fakes.flaky:
        assert all(isinstance(ev, Failed) and ev.kind == "error" for ev in outcomes.values())
        assert "RuntimeError: flaky failure of trial 0" in outcomes["0.0"].reason or fn is fakes.broken
    else:
        assert isinstance(outcomes["1.0"], Failed) and outcomes["1.0"].kind == "oom"
        assert isinstance(outcomes["0.0"], Finished)


def test_stop_takes_effect_at_the_next_epoch_boundary() -> None:
    b = opened(max_concurrent=2)
    b.submit(job(0))
    b.submit(job(1))

    def stop_early(now: float, events: list[Event]) -> None:
        if now == 2.0:  # trial 0's epoch 2 was just seen: stop it; it ends after epoch 3
            b.stop("0.0")

    got = drain(b, stop_early)
    mine = [(t, brief(ev)) for t, ev in got if ev.key == "0.0"]
    assert mine == [(1.0, ("report", "0.0", 1)), (2.0, ("report", "0.0", 2)), (3.0, ("report", "0.0", 3)),
                    (3.0, ("finished", "0.0", 3))]
    (fin,) = [ev for _, ev in got if isinstance(ev, Finished) and ev.key == "0.0"]
    assert fin.result.stopped_by_report and fin.finished_at == 3.0
    other = [ev for _, ev in got if isinstance(ev, Finished) and ev.key == "1.0"]
    assert other[0].result.epochs_run == EPOCHS and not other[0].result.stopped_by_report


def test_a_stop_between_epoch_boundaries_ends_the_epoch_in_progress() -> None:
    b = opened(epoch_s=2.0)
    b.submit(job(0))
    assert [brief(e) for e in b.poll(2.0)] == [("report", "0.0", 1)]
    assert b.poll(1.0) == [] and b.now() == 3.0  # mid-way through epoch 2
    b.stop("0.0")
    b.stop("0.0")  # a second stop changes nothing
    got = [(t, brief(ev)) for t, ev in drain(b)]
    assert got == [(4.0, ("report", "0.0", 2)), (4.0, ("finished", "0.0", 2))]


def test_stopping_one_trial_of_a_stack_stops_only_that_one() -> None:
    b = opened(fakes.stackable)
    b.submit_stack([job(0), job(1), job(2)])

    def stop_one(now: float, events: list[Event]) -> None:
        if now == 1.0:
            b.stop("1.0")

    got = drain(b, stop_one)
    reports = {k: [ev.report.epoch for _, ev in got if isinstance(ev, Report) and ev.key == k]
               for k in ("0.0", "1.0", "2.0")}
    assert reports == {"0.0": [1, 2, 3, 4], "1.0": [1, 2], "2.0": [1, 2, 3, 4]}
    finished = {ev.key: (t, ev) for t, ev in got if isinstance(ev, Finished)}
    assert {k: t for k, (t, _) in finished.items()} == {"0.0": 4.0, "1.0": 4.0, "2.0": 4.0}, \
        "one worker: the stack's outcomes come when the stack ends"
    assert [finished[k][1].result.epochs_run for k in ("0.0", "1.0", "2.0")] == [EPOCHS, 2, EPOCHS]
    assert [finished[k][1].result.stopped_by_report for k in ("0.0", "1.0", "2.0")] == [False, True, False]
    assert {finished[k][1].result.stack_size for k in finished} == {3}


def test_a_stack_reports_in_step_whatever_order_its_function_trains_in() -> None:
    # fakes._quadratic_stack trains its jobs one after the other; on the clock they train together
    b = opened(fakes.stackable)
    b.submit_stack([job(0), job(1)])
    got = [(t, brief(ev)) for t, ev in drain(b)]
    assert [x for x in got if x[1][0] == "report"][:4] == [
        (1.0, ("report", "0.0", 1)), (1.0, ("report", "1.0", 1)), (2.0, ("report", "0.0", 2)),
        (2.0, ("report", "1.0", 2))]


def test_crash_fails_the_job_with_kind_crash_in_that_epoch() -> None:
    b = opened(max_concurrent=2, crash=lambda j: 3 if j.number == 0 else (9 if j.number == 1 else None))
    b.submit(job(0))
    b.submit(job(1))  # its crash epoch is after its last: it finishes
    got = drain(b)
    mine = [(t, brief(ev)) for t, ev in got if ev.key == "0.0"]
    assert mine == [(1.0, ("report", "0.0", 1)), (2.0, ("report", "0.0", 2)), (3.0, ("failed", "0.0", "crash"))]
    (failed,) = [ev for _, ev in got if isinstance(ev, Failed)]
    assert "simulated crash in epoch 3" in failed.reason
    assert [brief(ev) for _, ev in got if ev.key == "1.0"][-1] == ("finished", "1.0", EPOCHS)


def test_a_crash_in_a_stack_fails_every_trial_of_it() -> None:
    b = opened(fakes.stackable, crash=lambda j: 2 if j.number == 1 else None)
    b.submit_stack([job(0), job(1)])
    got = [(t, brief(ev)) for t, ev in drain(b)]
    assert got == [(1.0, ("report", "0.0", 1)), (1.0, ("report", "1.0", 1)),
                   (2.0, ("failed", "0.0", "crash")), (2.0, ("failed", "1.0", "crash"))]


def test_cancel_all_drops_the_running_jobs_events() -> None:
    b = opened(max_concurrent=3, epoch_s=lambda j: 1.0 + j.number)
    for n in range(3):
        b.submit(job(n))
    while not any(isinstance(ev, Finished) for ev in b.poll(10)):  # trial 0 ends at 4.0
        pass
    assert b.now() == 4.0
    assert sorted(b.cancel_all()) == ["1.0", "2.0"], "an ended job is not cancelled"
    assert b.poll(100.0) == [] and b.now() == 104.0
    assert b.cancel_all() == []
    b.submit(job(3))  # its lanes are free again
    assert [brief(ev) for _, ev in drain(b)][-1] == ("finished", "3.0", EPOCHS)


def test_capacity_and_misuse_are_clear_errors() -> None:
    with pytest.raises(RuntimeError, match=r"call open\(data, settings, fn\) before"):
        SimulatedBackend().submit(job(0))
    b = opened(max_concurrent=1)
    b.submit(job(0))
    with pytest.raises(RuntimeError, match=r"max_concurrent=1\) already runs 1 jobs \(0.0\); submit 1.0 after"):
        b.submit(job(1))
    b = opened(max_concurrent=2)
    b.submit(job(0))
    with pytest.raises(ValueError, match=r"job key\(s\) 0.0 already running or repeated"):
        b.submit(job(0))
    with pytest.raises(ValueError, match=r"job key\(s\) 1.0 already running or repeated"):
        b.submit_stack([job(1), job(1)])
    with pytest.raises(NotImplementedError, match=r"can_stack=False\) cannot stack trials"):
        opened(can_stack=False).submit_stack([job(0), job(1)])
    for bad in (0, -1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match=r"epoch_s must be a finite number of virtual seconds > 0, got"):
            SimulatedBackend(epoch_s=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"epoch_s\(0.0\) must be .* got -2"):
        opened(epoch_s=lambda j: -2).submit(job(0))
    with pytest.raises(ValueError, match=r"max_concurrent must be an integer >= 1, got 0"):
        SimulatedBackend(0)
    with pytest.raises(ValueError, match=r"crash\(0.0\) returned 0; return the epoch"):
        opened(crash=lambda j: 0).submit(job(0))


def test_a_non_deterministic_worker_is_refused_when_a_stop_replays_it() -> None:
    runs = [0]

    def drifting(data, settings, job, report):  # type: ignore[no-untyped-def]
        runs[0] += 1
        for epoch in range(1, EPOCHS + 1):
            acc = 0.1 * runs[0]  # differs between the first run and the replay
            from trials import MemberReport

            if report(EpochReport(epoch, (MemberReport(0, 1 - acc, 1 - acc, acc, False),))):
                break
        return fakes.quadratic(data, settings, job, lambda r: False)

    b = opened(drifting)
    b.submit(job(0))
    b.poll(1.0)
    with pytest.raises(RuntimeError, match=r"replaying job 0.0 to stop 0.0 at t=1 gave .* must be deterministic"):
        b.stop("0.0")


def test_now_and_describe() -> None:
    b = SimulatedBackend(3)
    assert b.now() == 0.0 and b.describe() == "simulated (virtual clock, max 3 at once)" and b.capacity == 3
    b.close()  # never opened: nothing to do


class Recording(SimulatedBackend):
    """Records what every poll returned, at which virtual time."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.seen: list[tuple[float, list[Event]]] = []

    def poll(self, timeout: float) -> list[Event]:
        events = super().poll(timeout)
        if events:
            self.seen.append((self.now(), events))
        return events


def test_the_same_study_twice_gives_the_same_events(tmp_path) -> None:
    """Two lanes, TPE, the median pruner stopping trials mid-way (replays), a flaky worker (retries):
    event for event the same, times included."""
    spec = {"name": "d", "strategy": "tpe", "n_trials": 6, "seed": 2, "data": {"source": "digits"},
            "space": {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
            "training": {"max_epochs": 4}, "cv": {"folds": 2}, "tpe": {"n_startup_trials": 3},
            "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1}}
    runs = []
    for i in range(2):
        backend = Recording(2, epoch_s=lambda j: 1.0 + (j.number % 3) / 4)
        run_study(spec, storage=f"sqlite:///{tmp_path}/{i}.db", backend=backend, worker_fn=fakes.flaky)
        runs.append(backend.seen)
        trials = optuna.load_study(study_name="d", storage=st.create_storage(f"sqlite:///{tmp_path}/{i}.db")).trials
        assert any(t.state.name == "PRUNED" for t in trials) and any(t.state.name == "FAIL" for t in trials)
    assert runs[0] == runs[1]
    assert len(runs[0]) > 10


def test_exported_from_search_and_search_backends() -> None:
    assert search.SimulatedBackend is search.backends.SimulatedBackend is SimulatedBackend
    for package in (search, search.backends):
        assert sorted(set(package.__all__) - {"__version__"}) == package.__dir__(), package.__name__
